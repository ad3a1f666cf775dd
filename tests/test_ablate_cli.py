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
               "--search-steps", "4", "--search-warmup", "1", "--eval-data", eval_folder, "--json", home=run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert {"task", "budget_macs", "steps", "seed", "eval_data", "variants"} <= set(report)
    assert (report["task"], report["budget_macs"], report["steps"], report["seed"]) == ("car-q10", 2_000_000_000, 2, 0)
    assert report["eval_data"] == eval_folder
    variants = {v["name"]: v for v in report["variants"]}
    expected = ["plain", "plain-matched", "nonlocal", "cla", "acla-all", "acla-random", "acla-searched"]
    if "acla-random" in report["skipped"]:  # the smoke search may keep no position: no random placement of its cost
        expected.remove("acla-random")
        assert "acla-random left out" in out.stderr
    assert list(variants) == expected
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
            if name == "acla-random":  # one of its placements
                assert list(genotype.positions) in [p["positions"] for p in v["placements"]]
            else:
                assert genotype == Genotype.from_dict(v["genotype"])
            assert task.label == "car-q10"
    assert abs(variants["plain-matched"]["macs"] - searched["macs"]) <= 0.05 * searched["macs"]

    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    parent = client.get_run(report["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["acla_kind"] == "ablation"
    assert (parent.data.tags["search_steps"], parent.data.tags["search_warmup"]) == ("4", "1")  # the overrides
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{report['parent_run_id']}'")
    assert sorted(c.data.tags["variant"] for c in children) == sorted(variants)
    for child in children:
        assert child.data.metrics["psnr_y"] == pytest.approx(variants[child.data.tags["variant"]]["psnr_y"])
    names = {a.path for a in client.list_artifacts(report["parent_run_id"], "ablation")}
    assert names == {"ablation/ablation.md", "ablation/ablation.json", "ablation/ablation.png"}
    table = Path(client.download_artifacts(report["parent_run_id"], "ablation/ablation.md")).read_text()
    assert all(f"| {name} |" in table for name in variants)


def test_ablate_pairs_seeds_and_draws_random_placements(run_dir, eval_folder, tmp_path):
    """A given genotype, 3 paired seeds: every variant's gain over plain-matched per seed, with its interval, in
    the JSON, the table and MLflow; acla-random trains 3 placements of the searched cost."""
    from mlflow.tracking import MlflowClient
    genotype = tmp_path / "searched.json"
    genotype.write_text(json.dumps({"version": 1, "task": "car", "scale": 1, "in_channels": 3, "channels": 8,
                                    "blocks": 4, "stages": 2, "attention": "acla-shared", "adaptive": True,
                                    "max_keys": 4, "positions": [0, 2], "keys": [[2], [2, 2]]}))
    out = acla("ablate", "--task", "car", "--budget", "2G", "--profile", "smoke", "--steps", "2", "--seeds", "3",
               "--genotype", str(genotype), "--variants", "plain-matched,cla,acla-random,acla-searched",
               "--eval-data", eval_folder, "--json", home=run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    variants = {v["name"]: v for v in report["variants"]}
    assert list(variants) == ["plain-matched", "cla", "acla-random", "acla-searched"]
    assert variants["cla"]["genotype"]["attention"] == "cla-shared"  # the searched kind's fixed-key form
    for name in ("cla", "acla-random", "acla-searched"):
        gap = variants[name]["gap_y"]
        ours, theirs = variants[name]["psnr_y_seeds"], variants["plain-matched"]["psnr_y_seeds"]
        differences = [a - b for a, b in zip(ours, theirs)]
        assert gap["pairs"] == 3 and gap["mean"] == pytest.approx(sum(differences) / 3)
        assert gap["low"] <= gap["mean"] <= gap["high"]
        assert "gap_rgb" in variants[name]
    placements = variants["acla-random"]["placements"]
    assert len(placements) == 3 and len({tuple(p["positions"]) for p in placements}) == 3
    assert all(tuple(p["positions"]) != (0, 2) for p in placements)
    assert all(abs(p["macs"] - variants["acla-searched"]["macs"]) <= 0.05 * variants["acla-searched"]["macs"]
               for p in placements)
    assert len(variants["acla-random"]["checkpoints"]) == 9  # 3 placements x 3 seeds
    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    table = Path(client.download_artifacts(report["parent_run_id"], "ablation/ablation.md")).read_text()
    assert "acla-random placement 2" in table and "vs plain-matched" in table


@pytest.mark.parametrize("extra,message", [
    (["--budget", "100M"], "below the smallest feasible network, the smoke profile's bare"),
    (["--budget", "2G", "--steps", "0"], "must be 1 or more"),
    (["--budget", "2G", "--steps", "-3"], "must be 1 or more"),
    (["--budget", "2G", "--eval-data", "/nonexistent/folder"], "--eval-data /nonexistent/folder: not a folder"),
    (["--budget", "2G", "--eval-data", "EMPTY"], "no images found"),
    (["--budget", "2G", "--genotype", "GENOTYPE"], "variant acla-searched exceeds the budget by"),
    (["--budget", "2G", "--seeds", "0"], "must be 1 or more"),
    (["--budget", "2G", "--variants", "plain,wide"], "unknown variant(s) wide"),
    (["--budget", "2G", "--seeds", "-2"], "must be 1 or more"),
    (["--budget", "LONE_MACS", "--genotype", "LONE", "--variants", "acla-random"],
     "variant acla-random: 1 random placement(s) other than the searched one"),
    (["--budget", "2G", "--genotype", "ALIEN"], "unknown attention 'transformer'"),
    (["--budget", "2G", "--search-steps", "4", "--search-warmup", "4"], "leaves no architecture step"),
    (["--budget", "2G", "--resume", "0123456789ab"], "--resume 0123456789ab: no such ablation of car-q10"),
    (["--budget", "2G", "--resume", "last"], "'last' is not an ablation ID"),
])
def test_ablate_bad_input_is_one_line(run_dir, tmp_path, extra, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    genotype = tmp_path / "big.json"
    keys = [[4]] * 2 + [[4, 4]] * 2
    genotype.write_text(json.dumps({"version": 1, "task": "car", "scale": 1, "in_channels": 3, "channels": 18,
                                    "blocks": 4, "stages": 2, "attention": "acla", "adaptive": True, "max_keys": 4,
                                    "positions": [0, 1, 2, 3], "keys": keys}))
    small = {"version": 1, "task": "car", "scale": 1, "in_channels": 3, "channels": 8, "blocks": 4, "stages": 2,
             "attention": "acla", "adaptive": True, "max_keys": 4, "positions": [0], "keys": [[1]]}
    lone, alien = tmp_path / "lone.json", tmp_path / "alien.json"
    lone.write_text(json.dumps(small))
    alien.write_text(json.dumps({**small, "attention": "transformer"}))
    from search_space.cost import genotype_macs
    from search_space.genotype import Genotype
    # A budget of exactly the lone module's cost: only the other stage-0 position fits beside it.
    paths = {"EMPTY": str(empty), "GENOTYPE": str(genotype), "LONE": str(lone), "ALIEN": str(alien),
             "LONE_MACS": str(genotype_macs(Genotype.from_dict(small)))}
    extra = [paths.get(e, e) for e in extra]
    out = acla("ablate", "--task", "car", "--profile", "smoke", *extra, home=run_dir)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr
    assert not files_under(run_dir)  # nothing half-written
    assert not os.path.exists(os.path.join(run_dir, "mlflow.db"))


def test_ablate_killed_then_resumed_trains_only_what_is_missing(run_dir, eval_folder, tmp_path):
    """An ablation killed with -9 once its first training is kept, resumed with --resume ID: the kept trainings
    are read back untouched, the rest trained, and the report equals that of the same ablation uninterrupted.
    A resume with other settings is refused in one line."""
    import glob
    import hashlib
    import time

    from tests.procs import kill_with_environment, with_environment
    from tests.test_orchestrator_verbs import start_and_kill
    genotype = tmp_path / "searched.json"
    genotype.write_text(json.dumps({"version": 1, "task": "car", "scale": 1, "in_channels": 3, "channels": 8,
                                    "blocks": 4, "stages": 2, "attention": "acla", "adaptive": True,
                                    "max_keys": 4, "positions": [0, 2], "keys": [[2], [2, 2]]}))
    argv = ["ablate", "--task", "car", "--budget", "2G", "--profile", "smoke", "--steps", "30", "--seeds", "2",
            "--genotype", str(genotype), "--variants", "plain-matched,acla-searched", "--eval-data", eval_folder,
            "--json"]
    clean = tmp_path / "clean"
    clean.mkdir()
    uninterrupted = acla(*argv, home=str(clean))
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    env = {**os.environ, "ACLA_HOME": run_dir, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    manifests = f"{run_dir}/artifacts/ablations/*/*/*/manifest.json"
    start_and_kill(argv, run_dir, env, lambda: bool(glob.glob(manifests)))
    # Ray's workers rename themselves and outlive their raylet until their task ends: kill them too (the machine
    # is gone), or one could still finish its training and keep it after the snapshot below
    kill_with_environment(f"ACLA_HOME={run_dir}")
    deadline = time.time() + 30
    while with_environment(f"ACLA_HOME={run_dir}") and time.time() < deadline:
        time.sleep(0.2)
    kept = {path: hashlib.sha256(Path(path).with_name("model.pt").read_bytes()).hexdigest()
            for path in glob.glob(manifests)}
    assert 1 <= len(kept) <= 3
    [plan] = glob.glob(f"{run_dir}/artifacts/ablations/*/*/plan.json")
    ablation_id = Path(plan).parent.name
    if os.path.exists(os.path.join(run_dir, "mlflow.db")):  # nothing recorded for the cut-off run
        from mlflow.tracking import MlflowClient
        client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
        experiments = [e.experiment_id for e in client.search_experiments()]
        assert not client.search_runs(experiments, filter_string="tags.acla_kind = 'ablation'")

    [row] = json.loads(acla("status", "--json", home=run_dir).stdout)["ablations"]
    assert (row["id"], row["kept"], row["trainings"], row["recorded"]) == (ablation_id, len(kept), 4, False)
    assert row["resume"] == f"acla-orch {' '.join(argv)} --resume {ablation_id}"

    other = acla(*argv[:8], "31", *argv[9:], "--resume", ablation_id, home=run_dir)
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1
    assert f"--resume {ablation_id}: that ablation ran with steps 30, not 31" in other.stderr

    resumed = acla(*argv, "--resume", ablation_id, home=run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(kept)} of 4 trainings kept from before" in resumed.stderr
    assert f"ablation {ablation_id}; if it is cut off, run the same command with --resume {ablation_id}" in \
        resumed.stderr
    for path, digest in kept.items():  # read back, never trained or written again
        assert hashlib.sha256(Path(path).with_name("model.pt").read_bytes()).hexdigest() == digest
    report, reference = json.loads(resumed.stdout), json.loads(uninterrupted.stdout)
    assert report["ablation_id"] == ablation_id
    from mlflow.tracking import MlflowClient
    parent = MlflowClient(f"sqlite:///{run_dir}/mlflow.db").get_run(report["parent_run_id"])
    assert parent.data.tags["ablation_id"] == ablation_id and parent.info.status == "FINISHED"
    [row] = json.loads(acla("status", "--json", home=run_dir).stdout)["ablations"]
    assert (row["kept"], row["recorded"], row["resume"]) == (4, True, None)
    for ours, theirs in zip(report["variants"], reference["variants"], strict=True):
        assert ours["name"] == theirs["name"] and ours["genotype"] == theirs["genotype"]
        assert ours["psnr_y_seeds"] == theirs["psnr_y_seeds"]  # seeded: the same to the last digit
        assert len(ours["checkpoints"]) == 2 and all(uri.startswith(f"file://{run_dir}") for uri in ours["checkpoints"])
    assert report["variants"][1]["gap_y"] == reference["variants"][1]["gap_y"]


def test_the_stored_command_line_hides_a_password():
    """The ablate command kept in its plan and its MLflow tags: as typed, but a password in a URI hidden."""
    from orchestrator.cli.ablate import command_line
    line = command_line(["/x/orchestrator/cli.py", "ablate", "--task", "car", "--budget", "13G",
                         "--tracking-uri", "postgresql://user:hunter2@db:5432/mlflow", "--resume", "0123456789ab"])
    assert "hunter2" not in line
    assert line == "acla-orch ablate --task car --budget 13G --tracking-uri 'postgresql://user:***@db:5432/mlflow' " \
        "--resume 0123456789ab"
