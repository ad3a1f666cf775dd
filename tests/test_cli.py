"""The command line as a user meets it: JSON on success; one line and exit 2 on bad input, nothing half-written."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd, env_extra=None):
    env = {**os.environ, "ACLA_HOME": str(cwd / "runs"), "PYTHONPATH": ROOT, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def image(tmp_path):
    array = np.asarray(Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 6, 3)).astype(np.uint8))
                       .resize((48, 40), Image.BICUBIC))
    path = tmp_path / "clean.png"
    Image.fromarray(array).save(path)
    return path


def test_cost_budget_and_genotype(tmp_path):
    out = run("cost", "--task", "car", "--budget", "50GFLOPs", "--json", cwd=tmp_path)
    assert out.returncode == 0 and json.loads(out.stdout)["budget_macs"] == 50_000_000_000
    genotype = {"version": 1, "task": "sr", "scale": 4, "in_channels": 3, "channels": 64, "blocks": 16, "stages": 4}
    (tmp_path / "g.json").write_text(json.dumps(genotype))
    out = run("cost", "--task", "sr", "--scale", "4", "--genotype", "g.json", "--json", cwd=tmp_path)
    result = json.loads(out.stdout)
    assert result["reference_output"] == [720, 1280] and result["macs"] > 0 and result["params"] > 1_000_000


def test_cost_help_says_flop_is_mac(tmp_path):
    assert "1 FLOP = 1 multiply-accumulate" in run("cost", "--help", cwd=tmp_path).stdout.replace("\n", " ")


@pytest.mark.parametrize("args", [
    ["cost", "--task", "car", "--budget", "fifty"],
    ["cost", "--task", "car", "--budget=-5G"],
    ["cost", "--task", "car", "--budget", "0"],
    ["cost", "--task", "car", "--budget", "nan"],
    ["cost", "--task", "deblur", "--budget", "5G"],
    ["cost", "--task", "sr", "--scale", "5", "--budget", "5G"],
    ["cost", "--task", "sr", "--genotype", "missing.json"],
    ["cost", "--task", "car", "--scale", "2", "--budget", "5G"],
    ["search", "--task", "car", "--budget", "1M", "--profile", "smoke"],
    ["search", "--task", "car", "--budget", "50G", "--profile", "huge"],
    ["search", "--task", "car", "--budget", "50G", "--profile", "smoke", "--search-steps", "3", "--search-warmup", "3"],
    ["search", "--task", "car", "--budget", "50G", "--profile", "smoke", "--search-warmup=-1"],
    ["search", "--task", "car", "--budget", "50G", "--profile", "smoke", "--search-steps", "0"],
])
def test_bad_input_is_one_line_exit_2(args, tmp_path):
    out = run(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("change,fragment", [({"colour": 1}, "unknown field"), ({"version": 9}, "version"),
                                             ({"positions": [99]}, "out of range")])
def test_bad_genotype_file(change, fragment, tmp_path):
    genotype = {"version": 1, "task": "car", "scale": 1, "in_channels": 3, "channels": 8, "blocks": 4, "stages": 2,
                "attention": "nonlocal", **change}
    (tmp_path / "g.json").write_text(json.dumps(genotype))
    out = run("cost", "--task", "car", "--genotype", "g.json", cwd=tmp_path)
    assert out.returncode == 2 and fragment in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_search_budget_below_backbone_names_smallest(tmp_path):
    out = run("search", "--task", "car", "--budget", "100M", "--profile", "smoke", cwd=tmp_path)
    assert out.returncode == 2 and "smallest feasible" in out.stderr and "368050176" in out.stderr


def test_degrade_then_compare(image, tmp_path):
    out = run("degrade", "--task", "sr", "--scale", "4", str(image), "lr.png", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "lr.png").size == (12, 10)
    run("degrade", "--task", "car", "--quality", "10", str(image), "jpeg.png", cwd=tmp_path)
    out = run("compare", str(image), "jpeg.png", "--task", "car", "--json", cwd=tmp_path)
    metrics = json.loads(out.stdout)
    assert metrics["border"] == 0 and 15 < metrics["psnr_y"] < 60 and 0 < metrics["ssim_rgb"] <= 1


def test_compare_and_degrade_bad_input(image, tmp_path):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "other.png")
    out = run("compare", str(image), "other.png", "--task", "denoise", cwd=tmp_path)
    assert out.returncode == 2 and "other.png" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    (tmp_path / "broken.png").write_bytes(image.read_bytes()[:50])
    out = run("degrade", "--task", "denoise", "broken.png", "out.png", cwd=tmp_path)
    assert out.returncode == 2 and "broken.png" in out.stderr
    assert not (tmp_path / "out.png").exists()
    out = run("degrade", "--task", "denoise", str(image), "out.jpg", cwd=tmp_path)
    assert out.returncode == 2 and "lossless" in out.stderr and not (tmp_path / "out.jpg").exists()


def test_train_a_genotype_file(tmp_path):
    genotype = {"version": 1, "task": "denoise", "scale": 1, "in_channels": 3, "channels": 8, "blocks": 4, "stages": 2,
                "attention": "acla", "adaptive": True, "max_keys": 4, "positions": [1, 3], "keys": [[2], [3, 1]]}
    (tmp_path / "g.json").write_text(json.dumps(genotype))
    out = run("train", "--task", "denoise", "--genotype", "g.json", "--profile", "smoke", "--output", "t.pt",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["steps"] == 6 and (tmp_path / "t.pt").exists()
    out = run("train", "--task", "car", "--genotype", "g.json", "--profile", "smoke", cwd=tmp_path)
    assert out.returncode == 2 and "not car" in out.stderr


DATASETS = os.environ.get("ACLA_DATASETS", os.path.join(os.path.dirname(ROOT), "shared", "datasets"))


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATASETS, "classic5")) and not os.environ.get("CI"),
                    reason="shared datasets not present")
def test_evaluate_checkpoint_on_benchmark(tmp_path):
    genotype = {"version": 1, "task": "car", "scale": 1, "in_channels": 1, "channels": 8, "blocks": 2, "stages": 1}
    (tmp_path / "g.json").write_text(json.dumps(genotype))
    out = run("train", "--task", "car", "--gray", "--genotype", "g.json", "--profile", "smoke", "--output", "m.pt",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = run("evaluate", "--model", "m.pt", "--benchmark", "classic5", "--datasets", DATASETS, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["count"] == 5 and result["images"] == "classic5" and result["task"] == "car-q10-gray"
    mean = result["mean"]
    assert mean["psnr_y"] == mean["psnr_rgb"] and 20 < mean["input_psnr_y"] < 35  # gray: Y is the image
    assert len(result["per_image"]) == 5 and "baseline_psnr_y" not in mean  # car's classical baseline is the input
    rows = result["per_image"]
    counted = {m: sum(r[m] > r[f"input_{m}"] for r in rows) for m in ("psnr_y", "psnr_rgb")}
    assert result["better_than_input"] == counted
    out = run("evaluate", "--model", "m.pt", "--benchmark", "classic5", "--datasets", DATASETS, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[1].split()
    assert header[:5] == ["image", "psnr_y", "input_psnr_y", "psnr_rgb", "input_psnr_rgb"]
    assert f"better than its input: Y {counted['psnr_y']} of 5, RGB {counted['psnr_rgb']} of 5 images" in out.stdout
    out = run("evaluate", "--model", "m.pt", "--benchmark", "Set7", "--datasets", DATASETS, cwd=tmp_path)
    assert out.returncode == 2 and "Set7" in out.stderr
    # from a folder outside the clone, the sets come from ACLA_DATASETS; with nothing set, from the per-user folder,
    # and a set that is not there is one line naming where it looked
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "m.pt").write_bytes((tmp_path / "m.pt").read_bytes())
    out = run("evaluate", "--model", "m.pt", "--benchmark", "classic5", "--json", cwd=elsewhere,
              env_extra={"ACLA_DATASETS": os.path.abspath(DATASETS)})
    assert out.returncode == 0 and json.loads(out.stdout)["count"] == 5, out.stderr
    cache = tmp_path / "cache"
    out = run("evaluate", "--model", "m.pt", "--benchmark", "LIVE1", cwd=elsewhere,
              env_extra={"ACLA_DATASETS": "", "XDG_CACHE_HOME": str(cache)})
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"no LIVE1 test set in {cache / 'acla-orch' / 'datasets'}" in out.stderr
    assert "docs/datasets.md" in out.stderr and "Traceback" not in out.stderr


def test_the_search_summary_fits_80_columns_with_full_run_ids_and_positions():
    from orchestrator.search.job import summary_lines
    run_ids = [f"{i:x}" * 32 for i in range(1, 4)]
    trials = [{"run_id": run_ids[0], "backbone": {"channels": 256, "blocks": 16}, "macs": 1234.5e9, "psnr": 31.234,
               "pareto": True, "retrained_psnr": 31.5, "positions": list(range(16)),
               "keys": [[9] * (1 + i // 4) for i in range(16)]},
              {"run_id": run_ids[1], "backbone": {"channels": 56, "blocks": 8}, "macs": 32.1e9, "psnr": 29.9,
               "pareto": False, "retrained_psnr": None, "positions": [], "keys": []}]
    summary = {"experiment": "acla-denoise-sigma25-gray", "parent_run_id": run_ids[2], "task": "denoise-sigma25",
               "budget_macs": 50e9, "profile": "quick", "trials": trials,
               "retrained": [{"alias": "models:/acla-denoise-sigma25@budget-50G", "run_id": run_ids[2]}]}
    lines = summary_lines(summary)
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    assert all(run_id in text for run_id in run_ids) and "50GMACs" in text
    assert "after blocks " + ", ".join(map(str, range(16))) in " ".join(text.split())  # wrapped, never cut
    # a colour task: each trial's RGB beside its Y, proxy and retrained
    trials[0].update(psnr_rgb=27.125, retrained_psnr_rgb=28.25)
    trials[1].update(psnr_rgb=26.5, retrained_psnr_rgb=None)
    lines = summary_lines({**summary, "task": "car-q10"})
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if line.startswith("MLflow run id"))
    assert header.split()[-5:] == ["Y", "RGB", "retrained", "Y,", "RGB"]
    first = next(line for line in lines if line.startswith(run_ids[0])).split()
    assert first[-5:] == ["31.23", "27.12", "*", "31.50,", "28.25"]


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`acla-orch cost ... | head`: the reader closes the pipe; no traceback, the status a SIGPIPE'd tool gives."""
    reader, writer = os.pipe()
    os.close(reader)  # the reader has gone before the first line is written
    try:
        out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "cost", "--budget", "50G", "--task", "car"],
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT}, stdout=writer,
                             stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(writer)
    assert out.returncode == 141 and out.stderr == "", out.stderr[-2000:]


def test_version(tmp_path):
    out = run("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("acla-orch ")


def test_front_axes_fit_the_points_and_a_wide_sweep_is_logarithmic():
    from orchestrator.tracking.pareto import axis_limits
    low, high, log = axis_limits([40.0, 48.0, 50.0])
    assert not log and low < 40.0 < 50.0 < high and high - low < 15  # not stretched from zero
    low, high, log = axis_limits([0.8, 20.0, 50.0])
    assert log and low < 0.8 and high > 50.0


def test_network_drawing_is_an_image(tmp_path):
    from PIL import Image as PILImage
    from orchestrator.tracking.drawing import draw_network
    from search_space.genotype import Genotype
    genotype = Genotype(task="sr", scale=2, in_channels=3, channels=16, blocks=8, stages=4, attention="acla",
                        max_keys=9, adaptive=True, positions=[1, 6], keys=[[3], [9, 4, 2, 7]])
    draw_network(genotype, str(tmp_path / "net.png"))
    with PILImage.open(tmp_path / "net.png") as image:
        assert image.format == "PNG" and image.width > 400
