"""Retraining of fixed architectures with Ray Train's TorchTrainer (DDP; gloo on CPU, NCCL on GPU).

The per-worker loop builds its own data and model from plain arguments and reuses workers/'s
`make_sampler`, `train_step` and `evaluate`. Rank 0 evaluates and writes the self-describing checkpoint;
Ray Train keeps the best one by PSNR under `storage_path`.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from search_space.backbone import build_network
from search_space.genotype import Genotype
from workers.checkpoint import save_checkpoint
from workers.data import ImageSet
from workers.profiles import get_profile
from workers.tasks import TaskSpec
from workers.train import DataSpec, evaluate, make_optimizer, make_sampler, train_step

CHECKPOINT_FILE = "model.pt"


def retrain_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(max(1, int(config["threads_per_worker"])))
    genotype = Genotype.from_json(config["genotype"])
    task = TaskSpec(**config["task"])
    profile = get_profile(config["profile"])
    data = DataSpec(ImageSet(**config["train_set"]), ImageSet(**config["valid_set"]))
    torch.manual_seed(config["seed"])  # the same initial weights on every rank (DDP broadcasts them too)
    model = ray.train.torch.prepare_model(build_network(genotype))
    optimizer, scheduler = make_optimizer(model, profile)
    sampler = make_sampler(task, data.train, profile, seed=config["seed"] + 1000 * rank)  # each rank its own patches
    device = ray.train.torch.get_device()
    steps, reports = config["steps"], max(1, config["reports"])
    every = max(1, steps // reports)
    loss = float("nan")
    for step in range(1, steps + 1):
        inputs, targets = next(sampler)
        loss = train_step(model, optimizer, inputs.to(device), targets.to(device))
        scheduler.step()
        if step % every and step != steps:
            continue
        metrics = {"step": step, "loss": loss}
        bare = model.module if hasattr(model, "module") else model
        if rank == 0:
            evaluation = evaluate(bare, task, data.valid, crop=profile.valid_crop)
            metrics.update({"psnr": evaluation[task.headline_metric], **evaluation})
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder) / CHECKPOINT_FILE, model=bare, genotype=genotype, task=task,
                                profile=profile.name, step=step, metrics=evaluation)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report({**metrics, "psnr": float("nan")})


@dataclass(frozen=True)
class RetrainOutcome:
    metrics: dict
    checkpoint_uri: str  # where Ray Train keeps the best checkpoint (file:// or s3://)
    checkpoint_key: str  # the same, relative to the artifact root
    checkpoint_file: str  # a local copy of its model.pt


def retrain_genotype(*, genotype: Genotype, task: TaskSpec, profile_name: str, data: DataSpec, storage,
                     name: str, num_workers: int, steps: int, seed: int = 0) -> RetrainOutcome:
    """`storage` is the run's StorageConfig: Ray Train writes through its pyarrow filesystem (disk or S3)."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    filesystem, root = storage.pyarrow_filesystem()
    use_gpu = torch.cuda.is_available()
    threads = max(1, (os.cpu_count() or 1) // num_workers)
    config = {"genotype": genotype.to_json(), "task": dataclasses.asdict(task), "profile": profile_name,
              "train_set": dataclasses.asdict(data.train), "valid_set": dataclasses.asdict(data.valid),
              "steps": steps, "reports": 4, "seed": seed, "threads_per_worker": threads}
    trainer = TorchTrainer(
        retrain_loop_per_worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": threads}),
        run_config=RunConfig(name=name, storage_path=f"{root}/ray-train", storage_filesystem=filesystem,
                             checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="psnr",
                                                                checkpoint_score_order="max")))
    result = trainer.fit()
    if result.error:
        raise result.error
    best = result.best_checkpoints[0][0] if result.best_checkpoints else result.checkpoint
    best_metrics = result.best_checkpoints[0][1] if result.best_checkpoints else result.metrics
    local = best.to_directory(tempfile.mkdtemp(prefix="acla-ckpt-"))
    key = best.path[len(root):].lstrip("/")
    uri = f"{storage.root.rstrip('/')}/{key}" if storage.is_s3 else Path(best.path).as_uri()
    return RetrainOutcome(metrics=best_metrics, checkpoint_uri=uri, checkpoint_key=key,
                          checkpoint_file=str(Path(local) / CHECKPOINT_FILE))
