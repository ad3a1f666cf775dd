"""`restore` and `evaluate` on local checkpoints: tiles that match the whole image, memory bounded by the tile,
and `evaluate --data` equal, image by image, to degrade -> restore -> compare."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from search_space.backbone import build_network
from search_space.genotype import Genotype
from workers.checkpoint import save_checkpoint
from workers.restore import ramp, restore_array, spans
from workers.tasks import task_from_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def acla(*argv, cwd):
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": ROOT, "ACLA_HOME": str(cwd / "home")}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def network(task: str, scale: int = 1, seed: int = 0) -> tuple[torch.nn.Module, Genotype]:
    """A small ACLA network with its initial weights moved off their start (every module does something)."""
    torch.manual_seed(seed)
    genotype = Genotype(task=task, scale=scale, in_channels=3, channels=8, blocks=4, stages=2, attention="acla",
                        max_keys=2, adaptive=True, positions=[1, 3], keys=[[2], [2, 1]])
    net = build_network(genotype).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net, genotype


def photo(path, size, seed):
    rng = np.random.default_rng(seed)
    smooth = rng.random((size[0] // 4 + 1, size[1] // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:size[0], :size[1]]
    Image.fromarray((smooth * 200 + rng.random((*size, 3)) * 55).astype(np.uint8)).save(path)


def test_spans_cover_the_axis_and_seam_weights_sum_to_one():
    assert spans(70, 24) == [(0, 23), (23, 47), (47, 70)] and spans(10, 0) == [(0, 10)] and spans(10, 64) == [(0, 10)]
    left, right = ramp(0, 23, 4, 70), ramp(23, 47, 4, 70)  # kept [0, 27) and [19, 51)
    overlap = left[19:27] + right[:8]
    np.testing.assert_allclose(overlap, 1.0)
    assert left[0] == 1.0 and right[-1] < 0.1  # the image border is not faded; an interior seam is


@pytest.mark.parametrize("task,scale", [("car", 1), ("sr", 2), ("demosaic", 1)])
def test_tiled_restoration_matches_the_whole_image(task, scale):
    net, _ = network(task, scale)
    image = (np.random.default_rng(1).random((61, 45, 3)) * 255).astype(np.uint8)
    whole = restore_array(net, image, scale=scale, tile=0)
    tiled = restore_array(net, image, scale=scale, tile=20, margin=16, blend=4)
    assert whole.shape == (61 * scale, 45 * scale, 3)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1


def test_memory_is_bounded_by_the_tile_not_the_image():
    net, _ = network("car")
    seen = []
    net.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    restore_array(net, np.zeros((130, 97, 3), np.uint8), scale=1, tile=32, margin=8)
    assert max(h for h, _ in seen) <= 32 + 2 * 8 and max(w for _, w in seen) <= 32 + 2 * 8 and len(seen) == 5 * 4  # ceil(130/32) x ceil(97/32)


def test_restore_cli_tiled_and_untiled_and_evaluate_matches_compare(tmp_path):
    net, genotype = network("car")
    save_checkpoint(tmp_path / "m.pt", model=net, genotype=genotype, task=task_from_options("car"), profile="smoke", step=0)
    clean = tmp_path / "clean"
    clean.mkdir()
    for index, size in enumerate([(40, 56), (48, 48)]):
        photo(clean / f"img{index}.png", size, index)
    # restore: any size, tiled (seams blended) within 1/255 of whole
    for index in range(2):
        out = acla("degrade", "--task", "car", f"clean/img{index}.png", f"deg{index}.png", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    outs = {}
    for tile in ("0", "16"):
        (tmp_path / f"out{tile}").mkdir()
        out = acla("restore", "--model", "m.pt", "deg0.png", "deg1.png", "-o", f"out{tile}", "--tile", tile,
                   "--task", "car", "--json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["task"] == "car-q10" and [o["output"] for o in result["outputs"]] == [f"out{tile}/deg0.png", f"out{tile}/deg1.png"]
        outs[tile] = [np.asarray(Image.open(tmp_path / o["output"])).astype(int) for o in result["outputs"]]
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(outs["0"], outs["16"]))
    # evaluate --data: per image, what compare says of degrade -> restore (whole images)
    out = acla("evaluate", "--model", "m.pt", "--data", "clean", "--tile", "0", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["count"] == 2 and [r["image"] for r in report["per_image"]] == ["img0", "img1"]
    for index, row in enumerate(report["per_image"]):
        out = acla("compare", "--task", "car", f"clean/img{index}.png", f"out0/deg{index}.png", "--json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        compared = json.loads(out.stdout)
        assert abs(compared["psnr_y"] - row["psnr_y"]) < 1e-3 and abs(compared["ssim_y"] - row["ssim_y"]) < 1e-3
        out = acla("compare", "--task", "car", f"clean/img{index}.png", f"deg{index}.png", "--json", cwd=tmp_path)
        assert abs(json.loads(out.stdout)["psnr_y"] - row["input_psnr_y"]) < 1e-3  # the JPEG's own score
    mean = report["mean"]
    assert abs(mean["psnr_y"] - np.mean([r["psnr_y"] for r in report["per_image"]])) < 1e-3
    assert not (tmp_path / "home").exists()  # a local checkpoint needs no store


def test_restore_never_replaces_an_input(tmp_path):
    """An output that would be one of the inputs (same folder, or the same file through a link) is one line and
    exit status 2, and the input is left as it was."""
    net, genotype = network("car")
    save_checkpoint(tmp_path / "m.pt", model=net, genotype=genotype, task=task_from_options("car"), profile="smoke", step=0)
    photo(tmp_path / "in.png", (40, 40), 0)
    (tmp_path / "elsewhere").mkdir()
    os.link(tmp_path / "in.png", tmp_path / "elsewhere" / "in.png")  # the same file under another name
    before = (tmp_path / "in.png").read_bytes()
    for folder in (".", "elsewhere", str(tmp_path)):
        out = acla("restore", "--model", "m.pt", "in.png", "-o", folder, "--task", "car", cwd=tmp_path)
        assert out.returncode == 2 and "would replace the input itself" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert (tmp_path / "in.png").read_bytes() == before
    (tmp_path / "out").mkdir()
    out = acla("restore", "--model", "m.pt", "in.png", "-o", "out", "--task", "car", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
