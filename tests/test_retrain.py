"""Retraining on Ray Train runs the shared training loop (workers.train) and survives a dead worker: the
worker group starts again and resumes from its last checkpoint through `ray.train.get_checkpoint()`."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from tests.procs import descendants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RETRAIN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from orchestrator.runtime.ray_session import ray_session
    from orchestrator.retrain.ray_train import retrain_genotype
    from orchestrator.runtime.settings import RunSettings
    from search_space.genotype import Genotype
    from workers.data import embedded_sets
    from workers.tasks import task_from_options
    from workers.train import DataSpec
    home = Path(sys.argv[1])
    run = RunSettings(run_dir=home, tracking_uri="", artifact_root=str(home / "artifacts"), ray_address=None)
    genotype = Genotype(task="car", scale=1, in_channels=3, channels=8, blocks=2, stages=1)
    records = []
    with ray_session(run):
        outcome = retrain_genotype(genotype=genotype, task=task_from_options("car"), profile_name="smoke",
                                   precision="fp32", data=DataSpec(*embedded_sets()), storage=run.storage, name="resume-test",
                                   num_workers=1, steps=int(sys.argv[2]), seed=0, progress=records.append)
    print(json.dumps({**{k: v for k, v in outcome.metrics.items() if isinstance(v, (int, float))},
                      "progress": records}))
""")


def registered_checkpoint(snapshot: str) -> bool:
    try:
        with open(snapshot) as handle:
            return json.load(handle).get("latest_checkpoint_result") is not None
    except (OSError, ValueError):  # not there yet, or being written
        return False


def test_a_dead_retrain_worker_resumes_from_its_last_checkpoint(tmp_path):
    home, steps = str(tmp_path / "home"), 400
    script = subprocess.Popen([sys.executable, "-c", RETRAIN, home, str(steps)], cwd=str(tmp_path),
                              env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.time() + 240
    # Ray Train's controller writes this snapshot when it has registered a checkpoint (the first, at step 100):
    # a worker group started after that resumes from it. (Waiting a fixed 3 s after the checkpoint reached the
    # disk instead let a quiet machine finish all 400 steps first.)
    snapshot = os.path.join(home, "artifacts", "ray-train", "resume-test", "checkpoint_manager_snapshot.json")
    while time.time() < deadline and script.poll() is None and not registered_checkpoint(snapshot):
        time.sleep(0.05)
    running = descendants(script.pid)
    workers = [pid for pid, line in running if line.startswith("ray::RayTrainWorker")]
    assert script.poll() is None and workers, "the retrain ended before a worker could be killed"
    # one machine that ends with this driver: nothing preempts it, nothing outlives it to clean up after; and no
    # Ray Dataset to serve: no helper actor for any of them
    assert not [line for _, line in running if line.startswith(("ray::Preemption", "ray::PlacementGroupCleaner",
                                                                "ray::DatasetManager"))], running
    os.kill(workers[0], signal.SIGKILL)
    stdout, stderr = script.communicate(timeout=600)
    assert script.returncode == 0, stderr[-3000:]
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert metrics["step"] == steps and metrics["psnr"] == metrics["psnr"]  # finished, evaluated
    assert 0 < metrics["resumed_from_step"] < steps  # the new worker group continued, it did not start over
    # the driver saw rank 0's steps while Ray Train ran (every log_every = 2 steps of the smoke profile), from both
    # worker groups: the first up to the kill, the second from its checkpoint to the end
    seen = [r["step"] for r in metrics["progress"]]
    assert seen[-1] == steps and all(r["total_steps"] == steps and r["loss"] > 0 for r in metrics["progress"])
    restarts = [i for i in range(1, len(seen)) if seen[i] <= seen[i - 1]]
    # the second group starts again after its checkpoint; where the first got past that step before it was
    # killed, its steps show once more (none where the kill came right at the checkpoint)
    assert len(restarts) <= 1 and all(seen[i] == metrics["resumed_from_step"] + 2 for i in restarts), seen
    assert sorted(set(seen)) == list(range(2, steps + 1, 2))


PROGRESS = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import ray
    from ray.util.queue import Queue
    from orchestrator.runtime.ray_session import ray_session
    from orchestrator.retrain.ray_train import fit_reporting, put_progress
    from orchestrator.runtime.settings import RunSettings
    home = Path(sys.argv[1])
    run = RunSettings(run_dir=home, tracking_uri="", artifact_root=str(home / "artifacts"), ray_address=None)
    record = lambda step: {"step": step, "total_steps": 8, "loss": 0.5, "lr": 1e-4}
    with ray_session(run):
        full = Queue(maxsize=1, actor_options={"num_cpus": 0})
        put_progress(full, record(2))
        put_progress(full, record(4))  # full: dropped, no wait
        kept = [full.get_nowait()["step"], full.qsize()]
        queue = Queue(maxsize=100, actor_options={"num_cpus": 0})

        class Training:  # what rank 0 does during TorchTrainer.fit(): puts records, here until its queue is gone
            def fit(self):
                put_progress(queue, record(2))
                put_progress(queue, record(4))
                time.sleep(1.5)  # the driver's follower reads them meanwhile
                ray.kill(queue.actor, no_restart=True)
                put_progress(queue, record(6))  # a queue that is gone fails no training
                return "fitted"
        seen = []
        result = fit_reporting(Training(), queue, seen.append)
    print(json.dumps({"kept": kept, "result": result, "seen": seen}))
""")


def test_progress_records_never_wait_or_fail_the_training(tmp_path):
    out = subprocess.run([sys.executable, "-c", PROGRESS, str(tmp_path / "home")], cwd=str(tmp_path), text=True,
                         env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["kept"] == [2, 0] and result["result"] == "fitted"
    assert result["seen"] == [{"step": 2, "total_steps": 8, "loss": 0.5}, {"step": 4, "total_steps": 8, "loss": 0.5}]
