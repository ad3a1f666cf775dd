"""A training process's torch threads: the CPUs Ray granted it, capped by the user's OMP_NUM_THREADS (Ray's
convention); and inside a real Ray trial, the threads it computes with."""
import pytest

from workers.device import torch_threads


@pytest.mark.parametrize("granted,omp,expected", [
    (2, None, 2), (2.0, None, 2), (0.5, None, 1),  # fractional grants: at least one thread
    (4, "1", 1), (2, "8", 2),  # the user's setting caps, never raises
    (3, "", 3), (3, "two", 3), (3, "0", 3),  # unset or unreadable: the grant
])
def test_threads_are_the_grant_capped_by_omp_num_threads(granted, omp, expected, monkeypatch):
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert torch_threads(granted) == expected


def test_a_ray_task_granted_two_cpus_computes_with_its_threads(run_dir):
    """In a real local Ray (2 CPUs): a task granted both gets 2 torch threads, or 1 where its environment says
    OMP_NUM_THREADS=1 (a user's setting, which Ray hands to its workers; here through the task's runtime_env)."""
    import os
    import secrets
    import subprocess
    import sys
    probe = ("import ray, torch\n"
             "from orchestrator.runtime.cluster import use_granted_cpus\n"
             f"ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir={run_dir!r})\n"
             "@ray.remote(num_cpus=2)\n"
             "def threads():\n    use_granted_cpus()\n    return torch.get_num_threads()\n"
             "capped = threads.options(runtime_env={'env_vars': {'OMP_NUM_THREADS': '1'}})\n"
             "print(ray.get([threads.remote(), capped.remote()]))\nray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "RAY_ADDRESS")}
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # token auth from the environment: Ray writes no token file
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=180,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[2, 1]"
