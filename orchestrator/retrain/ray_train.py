"""Retraining of fixed architectures with Ray Train's TorchTrainer (DDP; gloo on CPU, NCCL on GPU).

Each worker runs `workers.train.train`, the same loop as every other training, through its hooks: the model
wrapped for DDP, the rank's own patches, and each checkpoint handed to Ray Train (rank 0's, with the final
evaluation in the last one). Ray Train keeps the latest under `storage_path`. A worker group that fails (a dead
worker or node) is started again once (FailureConfig), and resumes from that checkpoint through
`ray.train.get_checkpoint()`; the reports say from which step (`resumed_from_step`).

Ray Train V2's reports reach its controller actor, not the driver; so rank 0 also puts its training records
(step, loss, every `log_every` steps) on a small Ray queue that the driver reads while `fit()` runs, for the
progress bar (or any `progress` callback).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from search_space.genotype import Genotype
from workers.checkpoint import load_checkpoint
from workers.data import DataSpec, ImageSet
from workers.profiles import get_profile
from workers.tasks import TaskSpec

from orchestrator.runtime.progress import loss_status, progress_bar

CHECKPOINT_FILE = "model.pt"


def worker_context(config: dict) -> tuple[int, int, TaskSpec, object, DataSpec]:
    """In a Ray Train worker: its rank and world size (its torch threads set to its share), and the task,
    profile and data that `fit_on_workers` put in `config`."""
    import ray.train
    import torch  # in the worker: the driver imports this module without torch
    context = ray.train.get_context()
    from workers.device import torch_threads
    torch.set_num_threads(torch_threads(config["threads_per_worker"]))
    data = DataSpec(ImageSet(**config["train_set"]), ImageSet(**config["valid_set"]))
    profile = dataclasses.replace(get_profile(config["profile"]), precision=config["precision"])
    return context.get_world_rank(), context.get_world_size(), TaskSpec(**config["task"]), profile, data


def restored_checkpoint(file_name: str) -> str | None:
    """The file of the checkpoint that Ray Train hands this worker group (a failed group's, or a run started
    again under its name), copied to a local folder; None where there is none."""
    import ray.train
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    return str(Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="acla-resume-"))) / file_name)


def report_checkpoint(rank: int, report: dict, written: str) -> None:
    """Every rank reports at the same steps; rank 0's report carries the checkpoint (the folder of `written`)."""
    import ray.train
    if rank == 0:
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(str(Path(written).parent)))
    else:
        ray.train.report(report)


def retrain_loop_per_worker(config: dict) -> None:
    import ray.train.torch

    from workers.train import TrainHooks, train

    rank, world, task, profile, data = worker_context(config)
    genotype = Genotype.from_json(config["genotype"])
    resume_from = restored_checkpoint(CHECKPOINT_FILE)  # set when this worker group replaces one that failed
    resumed_step = int(load_checkpoint(resume_from)["step"]) if resume_from else 0

    def on_checkpoint(path: str, step: int, metrics: dict) -> None:
        report_checkpoint(rank, {"step": step, "resumed_from_step": resumed_step, **metrics,
                                 "psnr": metrics.get(task.headline_metric, math.nan)}, path)

    steps = config["steps"]
    hooks = TrainHooks(wrap_model=ray.train.torch.prepare_model, sampler_seed=config["seed"] + 1000 * rank,
                       batch_share=(rank, world), evaluate=rank == 0, on_checkpoint=on_checkpoint)
    train(genotype=genotype, task=task, data=data, profile=profile, steps=steps, seed=config["seed"],
          report=functools.partial(put_progress, config["progress"]) if rank == 0 else None,
          device=ray.train.torch.get_device(), resume_from=resume_from, init_state=config["init_state"],
          checkpoint_path=str(Path(tempfile.mkdtemp(prefix="acla-retrain-")) / CHECKPOINT_FILE),
          checkpoint_every=max(1, steps // max(1, config["reports"])), hooks=hooks)


@dataclass(frozen=True)
class RetrainOutcome:
    metrics: dict
    checkpoint_uri: str  # where Ray Train keeps the final checkpoint (file:// or s3://)
    checkpoint_key: str  # the same, relative to the artifact root
    checkpoint_file: str  # a local copy of its model.pt


def put_progress(queue, record: dict) -> None:
    """Rank 0's training record to the driver: never waits and never fails a training. A full queue drops the
    record; a queue that is gone (with its driver's node) drops them all; no queue (nobody reads them) none."""
    from ray.exceptions import RayActorError
    from ray.util.queue import Full
    if queue is None:
        return
    try:
        queue.put_nowait({k: record[k] for k in ("step", "total_steps", "loss")})
    except (Full, RayActorError):
        pass


def fit_reporting(trainer, queue, progress) -> object:
    """trainer.fit(), while a thread hands each record that rank 0 puts on `queue` to `progress`."""
    import threading

    from ray.exceptions import RayActorError
    from ray.util.queue import Empty
    if queue is None:
        return trainer.fit()
    done = threading.Event()

    def drain() -> None:  # the progress shown is lost with the queue (its node gone), never the training's result
        while True:
            try:
                progress(queue.get_nowait())
            except (Empty, RayActorError):
                return

    def follow() -> None:
        while not done.wait(0.5):
            drain()
    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        return trainer.fit()
    finally:
        done.set()
        follower.join()
        drain()


def lean_trainer(base: type, *, local: bool) -> type:
    """`base` (Ray Train's DataParallelTrainer or TorchTrainer) without the helpers that have nothing to do here.
    Every fit otherwise starts, besides its controller and workers, a `DatasetManager` actor (for Ray Datasets,
    which these trainings do not use: they read their own images) and, on the driver's node, a detached
    `PlacementGroupCleaner` that polls the controller each second to free its resources should the controller die
    while the cluster lives on. On a local Ray that this process started the cluster ends with the driver, so
    nothing is left to free. Each of them is a Python process importing Ray: about 2.2-2.6 CPU-seconds per fit,
    measured per process on a smoke sweep. A Ray without these callbacks keeps its own list."""
    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:
        return base
    if not hasattr(base, "_create_default_callbacks"):
        return base

    class Lean(base):
        def _create_default_callbacks(self):
            return [callback for callback in super()._create_default_callbacks()
                    if not (isinstance(callback, DatasetsCallback) and not self.datasets)
                    and not (isinstance(callback, PlacementGroupCleanerCallback) and local)]
    Lean.__name__ = Lean.__qualname__ = base.__name__
    return Lean


def fit_on_workers(loop: Callable[[dict], None], config: dict, *, task: TaskSpec, profile_name: str, precision: str,
                   data: DataSpec,
                   storage, name: str, num_workers: int, steps: int, description: str,
                   progress: Callable[[dict], None] | None = None, show_bar: bool = True) -> tuple[object, str]:
    """Run `loop` on `num_workers` Ray Train workers (Ray Train's result, raising its error, and the storage root).
    `config` gets the task, profile, data, steps, each worker's threads and the progress queue. Ray Train keeps the
    latest checkpoint under `<artifact root>/ray-train/<name>`, and a run started again under that name continues
    from it. `progress` gets rank 0's records as they come; without it, a bar on a terminal shows them."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import ray

    from orchestrator.runtime.cluster import node_shapes, retrain_resources
    from orchestrator.runtime.ray_session import STARTED_HERE
    filesystem, root = storage.pyarrow_filesystem()
    use_gpu, per_worker, threads = retrain_resources(node_shapes(ray), num_workers)  # the cluster's, not ours
    shown = progress is not None or (show_bar and sys.stderr.isatty())  # else no one reads rank 0's records
    config = {**config, "task": dataclasses.asdict(task), "profile": profile_name, "precision": precision,
              "steps": steps,
              "train_set": dataclasses.asdict(data.train), "valid_set": dataclasses.asdict(data.valid),
              "threads_per_worker": threads,
              "progress": Queue(maxsize=10_000, actor_options={  # on the driver's node, which it dies with
                  "num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(
                      ray.get_runtime_context().get_node_id(), soft=True)}) if shown else None}
    try:  # the queue's actor goes whatever happens from here
        # one worker has no peer to reduce with: no torch process group to set up (about 3.5 s of each fit), and
        # the driver does not import torch for TorchTrainer (about 1.8 s)
        if num_workers > 1:
            from ray.train.torch import TorchTrainer as base
        else:
            base = DataParallelTrainer
        trainer = lean_trainer(base, local=STARTED_HERE["local"])(
            loop, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                         resources_per_worker=per_worker),
            run_config=RunConfig(name=name, storage_path=f"{root}/ray-train", storage_filesystem=filesystem,
                                 checkpoint_config=CheckpointConfig(num_to_keep=1),  # the latest: the trained model
                                 failure_config=FailureConfig(max_failures=1)))
        with progress_bar(f"{description} on {num_workers} Ray Train worker(s)", steps,
                          enabled=show_bar and progress is None) as bar:
            result = fit_reporting(trainer, config["progress"],
                                   progress or (lambda record: bar.update(record["step"], loss_status(record))))
    finally:
        if config["progress"] is not None:
            ray.kill(config["progress"].actor, no_restart=True)
    if result.error:
        raise result.error
    return result, root


def retrain_genotype(*, genotype: Genotype, task: TaskSpec, profile_name: str, precision: str, data: DataSpec, storage,
                     name: str, num_workers: int, steps: int, seed: int = 0,
                     progress: Callable[[dict], None] | None = None,
                     init_state: dict | None = None) -> RetrainOutcome:
    """`storage` is the run's StorageConfig: Ray Train writes through its pyarrow filesystem (disk or S3).
    `progress` gets rank 0's training records ({step, total_steps, loss}) as they come; without it, a progress
    bar on a terminal shows them. `init_state`: the weights every worker starts from (the trial's, widened)."""
    config = {"genotype": genotype.to_json(), "reports": 4, "seed": seed, "init_state": init_state}
    result, root = fit_on_workers(retrain_loop_per_worker, config, task=task, profile_name=profile_name,
                                  precision=precision, data=data,
                                  storage=storage, name=name, num_workers=num_workers, steps=steps,
                                  description=name, progress=progress)
    final, final_metrics = result.checkpoint, result.metrics
    local = final.to_directory(tempfile.mkdtemp(prefix="acla-ckpt-"))
    key = final.path[len(root):].lstrip("/")
    uri = f"{storage.root.rstrip('/')}/{key}" if storage.is_s3 else Path(final.path).as_uri()
    return RetrainOutcome(metrics=final_metrics, checkpoint_uri=uri, checkpoint_key=key,
                          checkpoint_file=str(Path(local) / CHECKPOINT_FILE))
