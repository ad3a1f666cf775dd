"""What a stranger on the network, or a tampered artifact, can do: nothing.

The local Ray a search starts listens on loopback only, and runs with token authentication (other users of the
machine reach loopback too), with a per-run token that lives only in the environment of its processes.
"""
import ipaddress
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.procs import mentioning, processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLD_A_LOCAL_RAY = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from orchestrator.runtime.ray_session import ray_session
    from orchestrator.runtime.settings import RunSettings
    run = RunSettings(run_dir=Path(sys.argv[1]), tracking_uri="", artifact_root="", ray_address=None)
    with ray_session(run) as ray:
        print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "token": os.environ["RAY_AUTH_TOKEN"]}),
              flush=True)
        sys.stdin.readline()
""")

CONNECT = textwrap.dedent("""
    import sys, ray
    try:
        ray.init(address=sys.argv[1], include_dashboard=False, logging_level="ERROR")
        print("CONNECTED", int(ray.cluster_resources()["CPU"]))
    except Exception as err:
        print("REFUSED", type(err).__name__)
""")


def listening_addresses(pids: set[int]) -> list[str]:
    """host:port of every TCP socket in LISTEN state held by one of `pids` (from /proc, no tools needed)."""
    inodes = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                    continue
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # /proc prints host order
                host = str(ipaddress.ip_address(words))
                found.append(f"{host}:{int(port, 16)}")
    return found


def is_loopback(address: str) -> bool:
    host = ipaddress.ip_address(address.rsplit(":", 1)[0])
    return host.is_loopback or (host.version == 6 and host.ipv4_mapped is not None and host.ipv4_mapped.is_loopback)


def connect(gcs: str, home: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # a client on this machine joins a loopback-only Ray
    out = subprocess.run([sys.executable, "-c", CONNECT, gcs], env={**environ, "HOME": home, **env},
                         capture_output=True, text=True, timeout=120)
    return out.stdout.strip().splitlines()[-1]


def agent_log_once_bound(path: Path, patience: float = 60.0) -> str:
    """The dashboard agent's log once it says where its HTTP server is, or that it failed to bind (with a fixed
    port taken, Ray's agent retries for 3.3 s, then logs the failure): on a loaded machine the line can come
    seconds after a client has connected, so the test waits for it rather than reading the log too early."""
    deadline = time.monotonic() + patience
    while True:
        text = path.read_text() if path.exists() else ""
        if "Dashboard agent http address" in text or "failed to bind" in text.lower() or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def test_local_ray_listens_on_loopback_only_refuses_a_client_without_its_token_and_writes_it_nowhere(run_dir,
                                                                                                     tmp_path):
    """Even when the user's environment says RAY_AUTH_MODE=disabled. With Ray's fixed dashboard-agent port
    taken, as another Ray on the machine takes it, the agent binds a port of its own, with no failed retries."""
    import socket
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_AUTH_MODE": "disabled", "HOME": str(tmp_path)}
    env.pop("RAY_AUTH_TOKEN", None)
    squatter = socket.socket()
    try:
        squatter.bind(("127.0.0.1", 52365))  # Ray's default agent port; if it is taken already, so much the better
        squatter.listen()
    except OSError:
        pass
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_LOCAL_RAY, run_dir], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        started = json.loads(holder.stdout.readline())
        listening = listening_addresses({pid for pid, _ in mentioning(run_dir)} | {holder.pid})
        assert len(listening) >= 2 and all(is_loopback(a) for a in listening), listening  # GCS, raylet, ...
        assert started["gcs"].startswith("127.0.0.1:")
        stranger = tmp_path / "stranger"
        stranger.mkdir()
        assert connect(started["gcs"], str(stranger)) == "REFUSED ConnectionError"
        assert connect(started["gcs"], str(stranger), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=started["token"]) == \
            "CONNECTED " + str(os.cpu_count())
        agent_log = agent_log_once_bound(Path(run_dir) / "ray" / "session_latest" / "logs" / "dashboard_agent.log")
        assert "Dashboard agent http address: 127.0.0.1:" in agent_log and "failed to bind" not in agent_log.lower()
        # no idle Python workers started ahead of need (a search's trials could not take them; driver.py)
        raylet, = [pid for pid, line in mentioning(run_dir) if line.split()[0].endswith("/raylet")]
        workers = [line for _, parent, line in processes() if parent == raylet and
                   (line.startswith("ray::") or "workers/default_worker.py" in line.split(" ", 2)[1])]
        assert [w for w in workers if "Agent" not in w] == [], workers
        # nor a log monitor (the driver reads no worker output) or an autoscaler monitor (one fixed machine)
        monitors = [line for _, line in mentioning(run_dir) if "log_monitor.py" in line or "/autoscaler/" in line]
        assert monitors == [], monitors
    finally:
        holder.communicate("\n", timeout=60)
        squatter.close()
    assert holder.returncode == 0
    token = started["token"].encode()
    for folder in (run_dir, str(tmp_path)):  # the run's files and logs, and the home where Ray would save one
        for parent, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(parent, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as handle:
                        assert token not in handle.read(), path


class PlantsAMarker:
    """A pickle that runs code when loaded: it creates the file named in its argument."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_registered_model_loads_without_unpickling_and_refuses_a_crafted_pickle(tmp_path):
    import glob
    import mlflow.pyfunc
    import numpy as np
    import torch
    from orchestrator.tracking.runs import MODEL_CODE
    from search_space.backbone import build_network
    from search_space.genotype import Genotype
    from workers.checkpoint import save_checkpoint
    from workers.tasks import task_from_options

    genotype = Genotype(task="car", scale=1, in_channels=3, channels=8, blocks=2, stages=1)
    checkpoint = save_checkpoint(tmp_path / "model.pt", model=build_network(genotype), genotype=genotype,
                                 task=task_from_options("car"), profile="smoke", step=0)
    mlflow.pyfunc.save_model(str(tmp_path / "model"), python_model=MODEL_CODE, artifacts={"checkpoint": str(checkpoint)})
    assert not glob.glob(str(tmp_path / "model" / "**" / "*.pkl"), recursive=True)  # no pickle in the model
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    assert loaded.predict(np.zeros((1, 3, 8, 8), np.float32)).shape == (1, 3, 8, 8)

    marker = tmp_path / "code-ran"
    stored = glob.glob(str(tmp_path / "model" / "artifacts" / "*"))
    assert len(stored) == 1
    torch.save({"model": PlantsAMarker(str(marker))}, stored[0])  # the tampered weights file
    try:
        mlflow.pyfunc.load_model(str(tmp_path / "model"))
        raise AssertionError("a crafted pickle was loaded")
    except Exception as err:
        assert "not a readable acla-orch checkpoint" in str(err), err
    assert not marker.exists()
    torch.load(stored[0], weights_only=False)  # what a pickle-based loader would have done: run its code
    assert marker.exists()


def test_cluster_configuration_turns_on_token_authentication():
    import yaml
    with open(os.path.join(ROOT, "infra", "ray", "cluster-aws.yaml")) as handle:
        config = yaml.safe_load(handle)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if " ray start" in c or c.startswith("ray start") or "/ray start" in c]
    assert len(ray_starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ") for c in ray_starts)
    mounts = config["file_mounts"]
    assert mounts["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"  # from the user's machine, not the repo
