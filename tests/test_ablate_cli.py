"""`acla-orch ablate` end to end at the smoke profile, on a real local Ray and MLflow (sqlite), and its bad input."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_orchestrator import acla

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FIELDS = {"name", "genotype", "macs", "params", "psnr_y", "ssim_y", "input_psnr_y", "train_seconds", "checkpoint"}


@pytest.fixture
def eval_folder(tmp_path):
    """Three 64x64 crops of Kodak photographs: images that no search or training step reads."""
    folder = tmp_path / "eval"
    folder.mkdir()
    for index in (1, 2, 3):
        image = np.asarray(Image.open(DATASETS / "Kodak24" / f"kodim{index:02d}.png"))[100:164, 200:264]
        Image.fromarray(image).save(folder / f"crop{index}.png")
    return str(folder)


def files_under(folder):
    return [p for p in Path(folder).rglob("*") if p.is_file()]


def test_ablate_smoke_end_to_end(run_dir, eval_folder):
    from mlflow.tracking import MlflowClient
    from search_space.genotype import Genotype
    from workers.checkpoint import model_from_checkpoint

    out = acla("ablate", "--task", "car", "--budget", "2G", "--profile", "smoke", "--steps", "2", "--seeds", "2",
               "--eval-data", eval_folder, "--json", home=run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert {"task", "budget_macs", "steps", "seed", "eval_data", "variants"} <= set(report)
    assert (report["task"], report["budget_macs"], report["steps"], report["seed"]) == ("car-q10", 2_000_000_000, 2, 0)
    assert report["eval_data"] == eval_folder
    variants = {v["name"]: v for v in report["variants"]}
    assert list(variants) == ["plain", "plain-matched", "nonlocal", "cla", "acla-all", "acla-searched"]
    searched = variants["acla-searched"]
    assert Genotype.from_dict(searched["genotype"]) == Genotype.from_dict(report["searched_genotype"])
    for name, v in variants.items():
        assert FIELDS <= set(v)
        assert np.isfinite(v["psnr_y"]) and len(v["psnr_y_seeds"]) == 2
        assert v["psnr_y_spread"] == pytest.approx(max(v["psnr_y_seeds"]) - min(v["psnr_y_seeds"]))
        assert v["macs"] <= 2e9 or name == "acla-all"
        assert v["input_psnr_y"] == variants["plain"]["input_psnr_y"]  # the same degraded images for all
        for uri in v["checkpoints"]:
            model, genotype, task, _ = model_from_checkpoint(uri.removeprefix("file://"))
            assert genotype == Genotype.from_dict(v["genotype"]) and task.label == "car-q10"
    assert abs(variants["plain-matched"]["macs"] - searched["macs"]) <= 0.05 * searched["macs"]

    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    parent = client.get_run(report["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["acla_kind"] == "ablation"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{report['parent_run_id']}'")
    assert sorted(c.data.tags["variant"] for c in children) == sorted(variants)
    for child in children:
        assert child.data.metrics["psnr_y"] == pytest.approx(variants[child.data.tags["variant"]]["psnr_y"])
    names = {a.path for a in client.list_artifacts(report["parent_run_id"], "ablation")}
    assert names == {"ablation/ablation.md", "ablation/ablation.json", "ablation/ablation.png"}
    table = Path(client.download_artifacts(report["parent_run_id"], "ablation/ablation.md")).read_text()
    assert all(f"| {name} |" in table for name in variants)


@pytest.mark.parametrize("extra,message", [
    (["--budget", "100M"], "below the smallest feasible network, the smoke profile's bare"),
    (["--budget", "2G", "--steps", "0"], "must be 1 or more"),
    (["--budget", "2G", "--steps", "-3"], "must be 1 or more"),
    (["--budget", "2G", "--eval-data", "/nonexistent/folder"], "--eval-data /nonexistent/folder: not a folder"),
    (["--budget", "2G", "--eval-data", "EMPTY"], "no images found"),
    (["--budget", "2G", "--genotype", "GENOTYPE"], "variant acla-searched exceeds the budget by"),
    (["--budget", "2G", "--seeds", "0"], "must be 1 or more"),
    (["--budget", "2G", "--variants", "plain,wide"], "unknown variant(s) wide"),
])
def test_ablate_bad_input_is_one_line(run_dir, tmp_path, extra, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    genotype = tmp_path / "big.json"
    keys = [[4]] * 2 + [[4, 4]] * 2
    genotype.write_text(json.dumps({"version": 1, "task": "car", "scale": 1, "in_channels": 3, "channels": 18,
                                    "blocks": 4, "stages": 2, "attention": "acla", "adaptive": True, "max_keys": 4,
                                    "positions": [0, 1, 2, 3], "keys": keys}))
    extra = [str(empty) if e == "EMPTY" else str(genotype) if e == "GENOTYPE" else e for e in extra]
    out = acla("ablate", "--task", "car", "--profile", "smoke", *extra, home=run_dir)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr
    assert not files_under(run_dir)  # nothing half-written
    assert not os.path.exists(os.path.join(run_dir, "mlflow.db"))
