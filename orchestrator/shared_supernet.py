"""A sweep's one supernet (issue #22), trained once with Ray Train before its budgets' trials, and handed to them.

The supernet trains on the sweep's Ray Train workers (`--retrain-workers`, DDP-style: each worker draws its share
of the batch and the gradients are averaged before every step, workers/shared_run.py). Rank 0's checkpoints go to
Ray Train's storage in the artifact store, under a name fixed by the sweep's id: a sweep cut off while its
supernet trains is resumed by Ray Train itself, from the latest checkpoint there, when `resume` starts the same
training again. The finished supernet is stored as a manifest-checked set under `shared-supernets/<sweep id>/`;
a resumed sweep takes it from there (and stops with one line where it is gone or fails its check), and every
trial gets its bytes through Ray's object store, on whatever node it runs.
"""
from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from pathlib import Path

from workers.data import DataSpec, ImageSet
from workers.profiles import get_profile
from workers.tasks import TaskSpec

from .errors import UsageError

SHARED_SETS = "shared-supernets"
SHARED_FILE = "shared.pt"
CHECKPOINTS = 8  # checkpoints over the supernet's training


def average_across_workers(world: int, tensors: list) -> None:
    """DDP's averaging, for tensors that no DDP wrapper sees (the elastic widths run on slices)."""
    import torch.distributed as dist
    for tensor in tensors:
        dist.all_reduce(tensor)
        tensor.div_(world)


def shared_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch  # in the worker: the driver imports this module without torch

    from workers.shared_run import SharedConfig, load_shared_checkpoint, train_shared_supernet
    from workers.train import TrainHooks
    from .retrain import put_progress

    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.set_num_threads(max(1, int(config["threads_per_worker"])))
    task, profile = TaskSpec(**config["task"]), get_profile(config["profile"])
    data = DataSpec(ImageSet(**config["train_set"]), ImageSet(**config["valid_set"]))
    shared = SharedConfig(task=task, **{**config["shared"], "budgets": tuple(config["shared"]["budgets"])})
    path = str(Path(tempfile.mkdtemp(prefix="acla-shared-")) / SHARED_FILE)
    resumed_step = 0
    checkpoint = ray.train.get_checkpoint()  # a failed worker group's, or a sweep cut off and resumed
    if checkpoint is not None:
        found = Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="acla-shared-resume-"))) / SHARED_FILE
        Path(path).write_bytes(found.read_bytes())
        resumed_step = int(load_shared_checkpoint(path)["step"])

    def on_checkpoint(written: str, step: int, metrics: dict) -> None:  # every rank, at the same steps
        report = {"step": step, "resumed_from_step": resumed_step}
        if rank == 0:
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(str(Path(written).parent)))
        else:
            ray.train.report(report)

    steps = config["steps"]
    hooks = TrainHooks(sampler_seed=None if world == 1 else shared.seed + 1000 * rank, batch_share=(rank, world),
                       on_checkpoint=on_checkpoint)
    train_shared_supernet(shared, data, profile, steps=steps, checkpoint_path=path,
                          checkpoint_every=max(1, steps // CHECKPOINTS), hooks=hooks,
                          report=functools.partial(put_progress, config["progress"]) if rank == 0 else None,
                          device=ray.train.torch.get_device(),
                          reduce_gradients=functools.partial(average_across_workers, world) if world > 1 else None)


def shared_config_fields(job) -> dict:
    """The supernet's configuration (workers/shared_run.py's SharedConfig, but its task) for `job`'s sweep."""
    profile = job.profile
    return {"budgets": [float(b) for b in job.sweep.budgets], "stages": profile.stages, "max_keys": profile.max_keys,
            "attention": job.attention, "weight_lr": profile.weight_lr, "arch_lr": profile.arch_lr, "seed": job.seed}


def check_coverage(job) -> None:
    """One line (UsageError) where the sweep's budgets cannot share one supernet."""
    from workers.shared_run import CoverageError, SharedConfig, covered_widths
    config = SharedConfig(task=job.task, **{**shared_config_fields(job), "budgets": tuple(job.sweep.budgets)})
    try:
        covered_widths(config, job.profile)
    except CoverageError as err:
        raise UsageError(str(err)) from None


def recorded_supernet(store, sweep_id: str) -> bytes | None:
    """The finished supernet of a sweep, checked against its manifest; None where none was stored."""
    from storage.manifest import verify_artifact_set
    from storage.stores import StorageError
    prefix = f"{SHARED_SETS}/{sweep_id}"
    if not store.exists(f"{prefix}/manifest.json"):
        return None
    try:
        verify_artifact_set(store, prefix)
        return store.get_bytes(f"{prefix}/{SHARED_FILE}")
    except StorageError as err:
        raise UsageError(f"the sweep's shared supernet ({store.uri(prefix)}) fails its manifest check: {err}; "
                         f"restore it from a copy, or start the sweep anew") from None


def stored_supernet(job, store, *, trained_before: bool) -> dict:
    """The sweep's stored supernet ({bytes, uri, resumed_from: None}), or {} where none is stored yet. Where the
    sweep's state says it was finished (`trained_before`: its trials began), a missing set is an error, not a
    reason to train it again: the trials so far were derived from it."""
    prefix = f"{SHARED_SETS}/{job.sweep.id}"
    recorded = recorded_supernet(store, job.sweep.id)
    if recorded is not None:
        return {"bytes": recorded, "uri": store.uri(prefix), "resumed_from": None}
    if trained_before:
        raise UsageError(f"the sweep's shared supernet is missing from {store.uri(prefix)}; its trials so far were "
                         f"derived from it, so it cannot be trained again alike: restore it from a copy, or start the sweep anew")
    return {}


def train_shared_supernet(job, run, store) -> dict:
    """Train the sweep's supernet (continuing from Ray Train's latest checkpoint where a cut-off sweep left one)
    and store it: {bytes, uri, resumed_from: the step its training continued from, 0 from its start}."""
    from storage.manifest import put_artifact_set
    prefix = f"{SHARED_SETS}/{job.sweep.id}"
    started = time.perf_counter()
    local, resumed_from = train_on_ray(job, run)
    put_artifact_set(store, prefix, {SHARED_FILE: local})
    return {"bytes": Path(local).read_bytes(), "uri": store.uri(prefix), "resumed_from": resumed_from,
            "seconds": time.perf_counter() - started}


def train_on_ray(job, run) -> tuple[str, int]:
    """Ray Train the supernet: a local copy of its final checkpoint, and the step it continued from (0: from the
    start)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    import ray

    from .cluster import node_shapes, retrain_resources
    from .progress import loss_status, progress_bar
    from .retrain import fit_reporting
    filesystem, root = run.storage.pyarrow_filesystem()
    workers = job.retrain_workers
    use_gpu, per_worker, threads = retrain_resources(node_shapes(ray), workers)
    steps = job.profile.search_steps
    config = {"task": dataclasses.asdict(job.task), "profile": job.profile.name, "steps": steps,
              "train_set": dataclasses.asdict(job.data.train), "valid_set": dataclasses.asdict(job.data.valid),
              "shared": shared_config_fields(job), "threads_per_worker": threads,
              "progress": Queue(maxsize=10_000, actor_options={"num_cpus": 0})}
    name = f"shared-{job.sweep.id}"
    try:
        trainer = TorchTrainer(
            shared_loop_per_worker, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=per_worker),
            run_config=RunConfig(name=name, storage_path=f"{root}/ray-train", storage_filesystem=filesystem,
                                 checkpoint_config=CheckpointConfig(num_to_keep=1),
                                 failure_config=FailureConfig(max_failures=1)))
        with progress_bar(f"the sweep's shared supernet on {workers} Ray Train worker(s)", steps,
                          enabled=not job.json) as bar:
            result = fit_reporting(trainer, config["progress"],
                                   lambda record: bar.update(record["step"], loss_status(record)))
    finally:
        ray.kill(config["progress"].actor, no_restart=True)
    if result.error:
        raise result.error
    local = Path(result.checkpoint.to_directory(tempfile.mkdtemp(prefix="acla-shared-final-"))) / SHARED_FILE
    return str(local), int(result.metrics.get("resumed_from_step", 0))
