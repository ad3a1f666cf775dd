"""A sweep's one supernet, trained once with Ray Train before its budgets' trials, and handed to them.

The supernet trains on the sweep's Ray Train workers (`--retrain-workers`, DDP-style: each worker draws its share
of the batch and the gradients are averaged before every step, workers/shared_run.py). Rank 0's checkpoints go to
Ray Train's storage in the artifact store, under a name fixed by the sweep's id: a sweep cut off while its
supernet trains is resumed by Ray Train itself, from the latest checkpoint there, when `resume` starts the same
training again. The finished supernet is stored as a manifest-checked set under `shared-supernets/<sweep id>/`;
a resumed sweep takes it from there (and stops with one line where it is gone or fails its check), and every
trial gets its bytes through Ray's object store, on whatever node it runs.
"""
from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

from orchestrator.runtime.errors import UsageError

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
    import ray.train.torch

    from workers.shared_run import SharedConfig, load_shared_checkpoint, train_shared_supernet
    from workers.train import TrainHooks
    from orchestrator.retrain.ray_train import put_progress, report_checkpoint, restored_checkpoint, worker_context

    rank, world, task, profile, data = worker_context(config)
    shared = SharedConfig.from_fields(task, config["shared"])
    restored = restored_checkpoint(SHARED_FILE)  # a failed worker group's, or a sweep cut off and resumed
    resumed_step = int(load_shared_checkpoint(restored)["step"]) if restored else 0
    steps = config["steps"]
    hooks = TrainHooks(sampler_seed=None if world == 1 else shared.seed + 1000 * rank, batch_share=(rank, world),
                       on_checkpoint=lambda written, step, _: report_checkpoint(
                           rank, {"step": step, "resumed_from_step": resumed_step}, written))
    train_shared_supernet(shared, data, profile, steps=steps, hooks=hooks,
                          checkpoint_path=restored or str(Path(tempfile.mkdtemp(prefix="acla-shared-")) / SHARED_FILE),
                          checkpoint_every=max(1, steps // CHECKPOINTS),
                          report=functools.partial(put_progress, config["progress"]) if rank == 0 else None,
                          device=ray.train.torch.get_device(),
                          reduce_gradients=functools.partial(average_across_workers, world) if world > 1 else None)


def shared_config(job):
    """The supernet's configuration (workers/shared_run.py's SharedConfig) for `job`'s sweep."""
    from workers.shared_config import SharedConfig
    profile = job.profile
    return SharedConfig(task=job.task, budgets=tuple(job.sweep.budgets), stages=profile.stages,
                        max_keys=profile.max_keys, attention=job.attention, weight_lr=profile.weight_lr,
                        arch_lr=profile.arch_lr, seed=job.seed)


def stored_supernet(job, store, *, trained_before: bool) -> dict:
    """The sweep's stored supernet, checked against its manifest ({bytes, uri, resumed_from: None}), or {} where
    none is stored yet. Where the sweep's state says it was finished (`trained_before`: its trials began), a missing
    set is an error, not a reason to train it again: the trials so far were derived from it."""
    from storage.manifest import verify_artifact_set
    from storage.stores import StorageError
    prefix = f"{SHARED_SETS}/{job.sweep.id}"
    if not store.exists(f"{prefix}/manifest.json"):
        if trained_before:
            raise UsageError(f"the sweep's shared supernet is missing from {store.uri(prefix)}; its trials so far "
                             f"were derived from it, so it cannot be trained again alike: restore it from a copy, "
                             f"or start the sweep anew")
        return {}
    try:
        verify_artifact_set(store, prefix)
        recorded = store.get_bytes(f"{prefix}/{SHARED_FILE}")
    except StorageError as err:
        raise UsageError(f"the sweep's shared supernet ({store.uri(prefix)}) fails its manifest check: {err}; "
                         f"restore it from a copy, or start the sweep anew") from None
    return {"bytes": recorded, "uri": store.uri(prefix), "resumed_from": None}


def train_shared_supernet(job, run, store) -> dict:
    """Train the sweep's supernet with Ray Train (continuing from its latest checkpoint where a cut-off sweep left
    one) and store it: {bytes, uri, resumed_from: the step its training continued from (0: from its start),
    seconds}."""
    from storage.manifest import put_artifact_set

    from orchestrator.retrain.ray_train import fit_on_workers
    prefix = f"{SHARED_SETS}/{job.sweep.id}"
    started = time.perf_counter()
    result, _ = fit_on_workers(shared_loop_per_worker, {"shared": shared_config(job).fields()}, task=job.task,
                               profile_name=job.profile.name, precision=job.profile.precision, data=job.data,
                               storage=run.storage,
                               name=f"shared-{job.sweep.id}", num_workers=job.retrain_workers,
                               steps=job.profile.search_steps, description="the sweep's shared supernet",
                               show_bar=not job.json)
    local = Path(result.checkpoint.to_directory(tempfile.mkdtemp(prefix="acla-shared-final-"))) / SHARED_FILE
    put_artifact_set(store, prefix, {SHARED_FILE: local})
    return {"bytes": local.read_bytes(), "uri": store.uri(prefix),
            "resumed_from": int(result.metrics.get("resumed_from_step", 0)), "seconds": time.perf_counter() - started}
