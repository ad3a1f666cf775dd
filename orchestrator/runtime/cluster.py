"""What the Ray cluster offers, and what a trial and a retrain worker ask of it: read from the cluster's alive
nodes (`ray.nodes()`), never from the driver's machine, so a CPU-only driver still asks for the workers' GPUs
and a request no node can meet fails before any trial starts, in one line.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.runtime.errors import UsageError


@dataclass(frozen=True)
class NodeShape:
    host: str
    ip: str
    cpus: float
    gpus: float

    def describe(self) -> str:
        return f"{self.host} ({self.ip}): {self.cpus:g} CPU" + (f", {self.gpus:g} GPU" if self.gpus else "")


def node_shapes(ray) -> list[NodeShape]:
    """The alive nodes of the connected cluster."""
    return [NodeShape(host=n.get("NodeManagerHostname", "?"), ip=n.get("NodeManagerAddress", "?"),
                      cpus=float(n["Resources"].get("CPU", 0)), gpus=float(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


def fits(shapes: list[NodeShape], cpus: float, gpus: float) -> bool:
    return any(s.cpus >= cpus and s.gpus >= gpus for s in shapes)


def refuse(what: str, cpus: float, gpus: float, shapes: list[NodeShape]) -> UsageError:
    asked = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    offered = "; ".join(s.describe() for s in shapes) or "no alive node"
    return UsageError(f"{what} asks {asked}, which no node can give; the nodes offer: {offered}")


def trial_resources(shapes: list[NodeShape], concurrency: int) -> dict:
    """One GPU a trial where the cluster has GPUs (with the CPUs of its node's share), else the cluster's CPUs
    shared among the concurrent trials, never more than the largest node has."""
    gpu_nodes = [s for s in shapes if s.gpus >= 1]
    if gpu_nodes:
        cpus = max(1, int(min(s.cpus // s.gpus for s in gpu_nodes)))
        gpus = 1
    else:
        total = sum(s.cpus for s in shapes)
        cpus = max(1, min(int(total // max(1, concurrency)), int(max((s.cpus for s in shapes), default=0))))
        gpus = 0
    if not fits(shapes, cpus, gpus):
        raise refuse("a trial", cpus, gpus, shapes)
    return {"cpu": cpus, "gpu": gpus}


def retrain_resources(shapes: list[NodeShape], workers: int) -> tuple[bool, dict | None, int]:
    """(use_gpu, resources per worker, torch threads per worker) for `workers` Ray Train workers, checked to fit
    the cluster as a whole."""
    gpu_nodes = [s for s in shapes if s.gpus >= 1]
    if gpu_nodes:
        if sum(int(s.gpus) for s in gpu_nodes) < workers:
            raise refuse(f"retraining with {workers} workers", 1, 1, shapes)
        return True, None, max(1, int(min(s.cpus // s.gpus for s in gpu_nodes)))
    per_worker = max(1, int(sum(s.cpus for s in shapes) // workers))
    per_worker = min(per_worker, int(max((s.cpus for s in shapes), default=0)) or 1)
    placeable = sum(int(s.cpus // per_worker) for s in shapes)
    if placeable < workers:
        raise refuse(f"retraining with {workers} workers", per_worker, 0, shapes)
    return False, {"CPU": per_worker}, per_worker


def check_artifact_root(shapes: list[NodeShape], storage) -> None:
    """A cluster of several nodes writes checkpoints from every node: only S3 is seen by all of them."""
    if len(shapes) > 1 and not storage.is_s3:
        raise UsageError(f"the artifact root {storage.root} is a local path, but the Ray cluster has {len(shapes)} "
                         f"nodes, whose checkpoints would land on their own disks; pass --artifact-root s3://BUCKET/PREFIX")


def use_granted_cpus() -> None:
    """Inside a Ray task or trial: as many torch threads as CPUs Ray granted it, capped by OMP_NUM_THREADS
    (workers/device.py's torch_threads)."""
    import ray
    import torch

    from workers.device import torch_threads
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(torch_threads(cpus))
