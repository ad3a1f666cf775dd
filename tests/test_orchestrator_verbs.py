"""sweep (several budgets, one Ray session, one front), then retrain --run-id; and the same sweep killed with -9
twice and finished by `resume` as if uninterrupted. On real Ray and MLflow. Both tests read one
uninterrupted sweep, run once for this file (pytest-xdist hands a file to one worker)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from orchestrator.search.state import SearchState
from tests.test_orchestrator import acla

SWEEP = ["sweep", "--budgets", "1.5G,2G", "--task", "car", "--profile", "smoke", "--trials", "2", "--concurrency",
         "1", "--no-retrain", "--search-steps", "40", "--retrain-workers", "1", "--json"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """(run directory, summary) of SWEEP run once, uninterrupted: the retrain test goes on in its directory, the
    kill -9 test compares with its summary (read before anything else is written there)."""
    home = str(tmp_path_factory.mktemp("swept"))
    out = acla(*SWEEP, home=home)
    assert out.returncode == 0, out.stderr[-3000:]
    return home, json.loads(out.stdout)["searches"]


def test_sweep_then_retrain_one_trial(swept):
    from mlflow.tracking import MlflowClient
    run_dir, searches = swept
    assert [s["budget_macs"] for s in searches] == [1_500_000_000, 2_000_000_000]
    assert all(t["macs"] <= s["budget_macs"] for s in searches for t in s["trials"])
    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("acla-car-q10")
    trials = client.search_runs([experiment.experiment_id], filter_string="tags.acla_kind = 'trial'")
    assert len(trials) == 4 and all(r.data.tags["pareto"] in ("true", "false") for r in trials)  # one front over all
    # the width line: one plain point per budget, each within its budget, and the sweep's front drawn with both
    from orchestrator.search.width import width_points
    line = width_points(client, experiment.experiment_id)
    assert [p["budget_macs"] for p in line] == [1.5e9, 2e9] and all(p["macs"] <= p["budget_macs"] for p in line)
    assert [s["width"]["run_id"] for s in searches] == [p["run_id"] for p in line]
    from workers.profiles import get_profile
    assert all(p["steps"] == get_profile("smoke").sweep_steps() for p in line)  # fine-tuned as the sweep's trials
    # one shared supernet for both budgets: trained once, from its start, stored with its manifest, named on each
    # budget's parent run; each trial's genotype is the one derived from it at its backbone's width
    from storage.manifest import verify_artifact_set
    from storage.stores import StorageConfig, open_store
    from workers.shared_run import derive_backbone, load_shared_search
    parents = [client.get_run(s["parent_run_id"]).data.tags for s in searches]
    assert len({tags["shared_supernet"] for tags in parents}) == 1
    assert parents[0]["shared_supernet_resumed_from_step"] == "0" and "shared_supernet_resumed_from_step" in parents[1]
    store = open_store(StorageConfig(f"{run_dir}/artifacts"))
    # the search drew its front and width line from its own records: the store's width points are MLflow's, and the
    # table's front flags are the tags MLflow shows
    from orchestrator.search.front import width_line
    from storage.trial_table import read_trials
    assert [(p["run_id"], p["psnr"]) for p in width_line(store, "acla-car-q10", [])] == \
        [(p["run_id"], p["psnr"]) for p in line]
    assert {r["run_id"]: str(r["pareto"]).lower() for r in read_trials(store, "acla-car-q10").to_pylist()} == \
        {r.info.run_id: r.data.tags["pareto"] for r in trials}
    prefix = parents[0]["shared_supernet"].split("/artifacts/", 1)[1]
    verify_artifact_set(store, prefix)
    from workers.data import embedded_sets
    from workers.profiles import get_profile
    from workers.tasks import task_from_options
    from workers.train import DataSpec
    profile, data = get_profile("smoke"), DataSpec(*embedded_sets())
    shared, config = load_shared_search(store.get_bytes(f"{prefix}/shared.pt"), task_from_options("car"), profile)
    for search in searches:
        trial = client.get_run(search["trials"][0]["run_id"])
        derived = derive_backbone(shared, config, data, profile, trial.data.params["backbone"], search["budget_macs"])
        assert search["trials"][0]["positions"] == list(derived.genotype.positions)
    trial_id = searches[0]["trials"][0]["run_id"]
    out = acla("retrain", "--run-id", trial_id, "--json", "--retrain-workers", "1", home=run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    retrained = json.loads(out.stdout)
    assert retrained["trial_run_id"] == trial_id and retrained["alias"] is None  # registered, alias untouched
    # the sweep's trial fine-tuned 3 steps: its retraining trains the 3 a search's trial has more, then widens
    assert "topped up by 3 steps at its width" in retrained["init"], retrained["init"]
    assert client.get_registered_model("acla-car-q10").aliases == {}
    out = acla("retrain", "--run-id", trial_id, "--json", "--retrain-workers", "1", "--set-alias", home=run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    retrained = json.loads(out.stdout)
    assert retrained["trial_run_id"] == trial_id
    assert retrained["alias"] in ("models:/acla-car-q10@budget-1500M", None)  # None: worse than its input
    from tests.test_orchestrator import aliased_version
    assert aliased_version(client, retrained, "budget-1500M", retrained["run_id"]).run_id == retrained["run_id"]
    # the registered model loads through its own code, unpickling nothing, and restores an image
    import mlflow.pyfunc
    import numpy as np
    mlflow.set_tracking_uri(f"sqlite:///{run_dir}/mlflow.db")
    loaded = mlflow.pyfunc.load_model("models:/acla-car-q10@budget-1500M")
    restored = loaded.predict(np.full((1, 3, 16, 16), 0.5, dtype=np.float32))
    assert restored.shape == (1, 3, 16, 16) and np.isfinite(restored).all()
    assert loaded.unwrap_python_model().genotype.task == "car"
    # the registered model restores and evaluates by its alias and by its run id; evaluate logs to that run
    from pathlib import Path

    from tests.test_restore import photo
    (Path(run_dir) / "clean").mkdir()
    photo(Path(run_dir) / "clean" / "a.png", (32, 40), 0)
    for reference in ("models:/acla-car-q10@budget-1500M", retrained["run_id"]):
        out = acla("restore", "--model", reference, "clean/a.png", "-o", run_dir, "--task", "car", "--json", home=run_dir)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "Downloading artifacts" not in out.stderr  # MLflow's bar stays off for a small model
        assert json.loads(out.stdout)["outputs"][0]["output_size"] == [40, 32]
    out = acla("evaluate", "--model", "models:/acla-car-q10@budget-1500M", "--data", "clean", "--json", home=run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    evaluated = json.loads(out.stdout)
    assert evaluated["run_id"] == retrained["run_id"]
    logged = client.get_run(retrained["run_id"]).data.metrics
    assert abs(logged["eval_clean_psnr_y"] - evaluated["mean"]["psnr_y"]) < 1e-3
    out = acla("restore", "--model", trial_id, "clean/a.png", "-o", ".", home=run_dir)
    assert out.returncode == 2 and "keeps no trained weights" in out.stderr
    out = acla("retrain", "--run-id", "0123456789abcdef0123456789abcdef", home=run_dir)
    assert out.returncode == 2 and "no MLflow run" in out.stderr
    # a trial_id tag is never a path: a tampered one is refused before anything is written
    other = searches[1]["trials"][0]["run_id"]
    client.set_tag(other, "trial_id", "/../../../../tmp/acla-escape")
    out = acla("retrain", "--run-id", other, home=run_dir)
    assert out.returncode == 2 and "not a plain name" in out.stderr and len(out.stderr.strip().splitlines()) == 1

    # A second task variant in the same run directory is its own problem: its own experiment, front, table,
    # registered model and aliases; the q10 trials' front tags and alias are left as they were.
    q10_tags = {r.info.run_id: r.data.tags["pareto"] for r in trials}
    out = acla("search", "--budget", "2G", "--task", "car", "--quality", "40", "--profile", "smoke", "--trials", "1",
               "--no-retrain", "--no-width", "--json", home=run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    q40 = json.loads(out.stdout)
    assert q40["experiment"] == "acla-car-q40" and q40["task"] == "car-q40"
    q40_experiment = client.get_experiment_by_name("acla-car-q40")
    assert [r.info.run_id for r in client.search_runs([q40_experiment.experiment_id], "tags.acla_kind = 'trial'")] \
        == [q40["trials"][0]["run_id"]]
    assert {r.info.run_id: r.data.tags["pareto"] for r in client.search_runs(
        [experiment.experiment_id], "tags.acla_kind = 'trial'")} == q10_tags
    assert client.get_model_version_by_alias("acla-car-q10", "budget-1500M").run_id == retrained["run_id"]
    for source in ("mlflow", "table"):
        out = acla("pareto", "--task", "car", "--quality", "40", "--source", source, "--json", home=run_dir)
        assert out.returncode == 0, out.stderr[-3000:]
        front = json.loads(out.stdout)
        assert front["experiment"] == "acla-car-q40" and [r["run_id"] for r in front["front"]] == [q40["trials"][0]["run_id"]]
    out = acla("status", "--task", "car", "--quality", "10", "--json", home=run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert {s["experiment"] for s in json.loads(out.stdout)["searches"]} == {"acla-car-q10"}
    out = acla("status", home=run_dir)
    assert "acla-car-q40" in out.stdout and "budget 2G" in out.stdout and "budget 1.5G" in out.stdout


def trial_set(summary: dict) -> list[tuple]:
    return sorted((t["macs"], round(t["psnr"], 4), json.dumps(t["positions"]), t["pareto"]) for t in summary["trials"])


def start_and_kill(argv, home, env, ready) -> None:
    """Start `acla-orch argv` in `home`, wait until `ready()`, then kill -9 it and everything in its session."""
    from tests.procs import kill_mentioning
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *argv], env=env, cwd=home,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None and not ready():
        time.sleep(0.1)
    assert driver.poll() is None, f"{argv[0]} ended before it could be killed"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything it started in its session
    driver.wait()
    kill_mentioning(home)  # Ray's daemons, should any have left the session: the machine is gone


def test_kill_9_twice_then_resume_finishes_the_sweep_as_if_uninterrupted(swept, tmp_path):
    """A sweep of two budgets (one shared supernet) killed with -9 while its supernet trains, resumed, and that
    resume killed in the second trial of the budget whose trials run first (the costlier): `resume --last`
    finishes it as one job (the supernet from Ray Train's checkpoint, the cut-off budget continued, the other
    budget's trials run, each budget's width point), equal to the uninterrupted sweep."""
    import glob

    from mlflow.tracking import MlflowClient
    from storage.manifest import verify_artifact_set
    from storage.stores import StorageConfig, open_store

    uninterrupted = swept[1]
    broken = str(tmp_path / "broken")
    os.makedirs(broken)

    env = {**os.environ, "ACLA_HOME": broken, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    # 1: while the supernet trains, once Ray Train's controller has registered a checkpoint of it
    from tests.test_retrain import registered_checkpoint
    start_and_kill(SWEEP, broken, env, lambda: any(map(registered_checkpoint, glob.glob(
        f"{broken}/artifacts/ray-train/shared-*/checkpoint_manager_snapshot.json"))))
    assert not glob.glob(f"{broken}/artifacts/shared-supernets/*")  # never finished, so never stored
    status = json.loads(acla("status", "--json", home=broken).stdout)
    # every budget's search begins before the supernet trains: both cut off, none ran a trial
    assert sorted((float(s["budget_macs"]), s["status"]) for s in status["searches"]) == \
        [(1.5e9, "INTERRUPTED"), (2e9, "INTERRUPTED")]
    assert [(s["budgets"], s["not_begun"]) for s in status["sweeps"]] == [([1.5e9, 2e9], [])]
    parents = {float(s["budget_macs"]): s["run_id"] for s in status["searches"]}
    first_parent, second_parent = parents[2e9], parents[1.5e9]  # the costlier budget's trials run first
    assert SearchState(broken).trials(first_parent) == SearchState(broken).trials(second_parent) == []

    # 2: the resume, during the costlier budget's second trial (one finished, one running)
    state = SearchState(broken)
    start_and_kill(["resume", "--last", "--json"], broken, env,
                   lambda: [t["state"] for t in state.trials(first_parent)] == ["finished", "running"])
    assert SearchState(broken).trials(second_parent) == []  # its trials come after the costlier budget's
    kept = SearchState(broken).trials(first_parent)[0]  # the trial that finished before the kill
    client = MlflowClient(f"sqlite:///{broken}/mlflow.db")
    resumed_from = int(client.get_run(first_parent).data.tags["shared_supernet_resumed_from_step"])
    assert 0 < resumed_from < 40  # the supernet went on from Ray Train's checkpoint, not from its start
    assert len(glob.glob(f"{broken}/artifacts/shared-supernets/*/manifest.json")) == 1  # finished and stored
    # its trials were derived from that supernet: a resume refuses one that fails its check, or is gone, in one
    # line and exit 2, writing nothing
    stored, = glob.glob(f"{broken}/artifacts/shared-supernets/*/shared.pt")
    intact = open(stored, "rb").read()
    before = sorted(os.listdir(broken))
    folder = os.path.dirname(stored)
    for damage, expected in ((lambda: open(stored, "ab").write(b"x"), "fails its manifest check"),
                             (lambda: os.rename(folder, folder + ".gone"), "is missing")):
        damage()
        out = acla("resume", "--last", home=broken)
        assert out.returncode == 2 and expected in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert sorted(os.listdir(broken)) == before
        if os.path.exists(folder + ".gone"):
            os.rename(folder + ".gone", folder)
        open(stored, "wb").write(intact)
    status = json.loads(acla("status", "--json", home=broken).stdout)
    assert [s["status"] for s in status["searches"]] == ["INTERRUPTED"] * 2
    assert [(s["budgets"], s["not_begun"]) for s in status["sweeps"]] == [([1.5e9, 2e9], [])]

    out = acla("resume", "--last", "--json", home=broken)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = json.loads(out.stdout)["searches"]
    assert [s["budget_macs"] for s in resumed] == [s["budget_macs"] for s in uninterrupted] == [1.5e9, 2e9]
    assert [s["parent_run_id"] for s in resumed] == [second_parent, first_parent]

    # each budget's front, and every trial, equal the uninterrupted sweep's
    assert [trial_set(s) for s in resumed] == [trial_set(s) for s in uninterrupted]
    # each budget's width point (the plain net at the same cost), equal too
    assert [(s["width"]["macs"], round(s["width"]["psnr"], 4)) for s in resumed] == \
        [(s["width"]["macs"], round(s["width"]["psnr"], 4)) for s in uninterrupted]
    # one FINISHED MLflow trial run per trial, the cut-off attempt's run KILLED (where the driver's sender had made
    # it before the kill: the search state knows a trial first, its run follows), none left RUNNING, both parents
    # FINISHED
    experiment = client.get_experiment_by_name("acla-car-q10")
    runs = client.search_runs([experiment.experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    trial_runs = [r for r in runs if r.data.tags.get("acla_kind") == "trial"]
    assert sorted(r.info.status for r in trial_runs) in (["FINISHED"] * 4, ["FINISHED"] * 4 + ["KILLED"])
    assert [client.get_run(s["parent_run_id"]).info.status for s in resumed] == ["FINISHED"] * 2
    # no finished trial ran twice: the interrupted one ran again, nothing else did; the other budget's ran once
    # (this budget has one backbone, so its trials' configs are alike: they are told apart by their ids)
    trials = SearchState(broken).trials(first_parent)
    assert [t["state"] for t in trials] == ["finished", "interrupted", "finished"]  # in the order they started
    assert (trials[0]["trial_id"], trials[0]["mlflow_run_id"]) == (kept["trial_id"], kept["mlflow_run_id"])
    assert trials[2]["config"] == trials[1]["config"] and trials[2]["trial_id"] != trials[1]["trial_id"]
    assert [t["state"] for t in SearchState(broken).trials(second_parent)] == ["finished"] * 2
    assert acla("resume", "--last", home=broken).returncode == 2  # nothing left to resume
    # every artifact set verifies
    store = open_store(StorageConfig(os.path.join(broken, "artifacts")))
    manifests = [key.rsplit("/", 1)[0] for key in store.list() if key.endswith("manifest.json")]
    assert len(manifests) >= 6  # four genotypes and the two trial tables
    for prefix in manifests:
        verify_artifact_set(store, prefix)


def test_a_model_worse_than_its_input_gets_no_alias():
    from orchestrator.retrain.winners import worse_than_input
    better = {"psnr_y": 28.9, "input_psnr_y": 28.4, "psnr_rgb": 25.9, "input_psnr_rgb": 25.7}
    assert worse_than_input(better, color=True) is None
    damaged = {**better, "psnr_rgb": 25.3}  # Y up, RGB down: a colour cast
    message = worse_than_input(damaged, color=True)
    assert message.startswith("no alias") and "in RGB" in message and "25.30 dB against the input's 25.70" in message
    assert worse_than_input(damaged, color=False) is None  # a gray model is scored in Y only
    assert "in Y and RGB" in worse_than_input({**damaged, "psnr_y": 28.0}, color=True)
