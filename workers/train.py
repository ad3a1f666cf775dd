"""Straight-line training and evaluation, shared by the search trials and the retraining.

L1 loss and Adam with step decay (EDSR's recipe, scaled by the profile), each step in the profile's precision
(fp32, or bf16 autocast: search_space/precision.py); evaluation always runs and scores in fp32, so that a model
trained in either precision is measured alike. `report` is a plain callable that
the orchestrator wraps for Ray; nothing here imports Ray, MLflow or boto3. A run resumed from its
checkpoint ends with the same weights as one that was never interrupted (tests/test_train.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from search_space.acla import parameter_groups
from search_space.backbone import build_network
from search_space.genotype import Genotype
from search_space.optim import Adam, StepLR
from search_space.precision import autocast

from .checkpoint import load_checkpoint, save_checkpoint
from .data import DataError, DataSpec, ImageSet, PatchSampler, evaluation_pairs, prepare_pairs, to_tensor
from .device import training_device
from .metrics import image_metrics
from .profiles import Profile
from .tasks import TaskSpec

Report = Callable[[dict], None]


@dataclass(frozen=True)
class TrainHooks:
    """How a distributed worker (Ray Train, orchestrator/retrain.py) runs `train`: its model wrapper (DDP), its
    own patch stream (a rank's sampler is seeded apart, and restarts rather than resuming rank 0's state), whether
    it evaluates at the end, and a callback for every checkpoint written: (path, step, metrics)."""
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    sampler_seed: int | None = None
    # (rank, world size): this worker draws its share of the profile's batch, so that the workers together draw
    # one global batch per step, whatever their number (more workers: the same model, sooner)
    batch_share: tuple[int, int] | None = None
    evaluate: bool = True
    on_checkpoint: Callable[[str, int, dict], None] | None = None


@dataclass
class TrainResult:
    model: torch.nn.Module
    metrics: dict
    steps: int
    checkpoint: str | None
    history: list[dict] = field(default_factory=list)


def batch_share(batch_size: int, rank: int, world_size: int) -> int:
    """Rank `rank`'s part of a global batch split across `world_size` workers: as even as it goes, the first
    ranks taking one more where it does not divide. ValueError where some worker would get none."""
    if world_size > batch_size:
        raise ValueError(f"{world_size} workers cannot share a batch of {batch_size}; expected at most {batch_size} "
                         f"workers")
    return batch_size // world_size + (1 if rank < batch_size % world_size else 0)


def make_sampler(task: TaskSpec, image_set: ImageSet, profile: Profile, seed: int,
                 share: tuple[int, int] | None = None) -> PatchSampler:
    """The profile's batches of patches, or (`share` = (rank, world size)) one worker's part of each."""
    target_patch = profile.patch * task.scale
    pairs = prepare_pairs(image_set, task, min_size=target_patch)
    size = profile.batch_size if share is None else batch_share(profile.batch_size, *share)
    return PatchSampler(pairs, task, patch_size=target_patch, batch_size=size, seed=seed)


def make_optimizer(model: torch.nn.Module, profile: Profile):
    """Adam (0.9, 0.999, eps 1e-8) at the profile's rate (ACLA's sampling offsets at 0.1x, as Deformable-DETR
    trains them), decayed by lr_gamma every lr_step iterations."""
    groups = parameter_groups(model.parameters(), model, profile.lr)
    optimizer = Adam(groups, lr=profile.lr, betas=(0.9, 0.999), eps=1e-8)
    scheduler = StepLR(optimizer, step_size=profile.lr_step, gamma=profile.lr_gamma)
    return optimizer, scheduler


def train_step(model: torch.nn.Module, optimizer: Adam, inputs: torch.Tensor,
               targets: torch.Tensor, precision: str = "fp32") -> float:
    """One step of L1 and Adam; the forward pass in `precision` (the output, the loss and the gradients of the
    fp32 weights come back in fp32)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(precision, inputs.device):
        output = model(inputs)
    loss = F.l1_loss(output.float(), targets)
    loss.backward()
    optimizer.step()
    return loss.item()


def train(*, genotype: Genotype, task: TaskSpec, data: DataSpec, profile: Profile, report: Report | None = None,
          resume_from: str | None = None, checkpoint_path: str | None = None, steps: int | None = None,
          stop_after: int | None = None, seed: int = 0, init_state: dict | None = None,
          checkpoint_every: int = 0, device: torch.device | None = None,
          hooks: TrainHooks | None = None) -> TrainResult:
    """Train `genotype` for `steps` (default: the profile's proxy schedule) and evaluate it on `data.valid`.

    `stop_after` ends early without changing the schedule (an interruption); `resume_from` continues exactly.
    `device` defaults to `training_device()` (the GPU when there is one).
    """
    hooks = hooks or TrainHooks()
    total = profile.train_steps if steps is None else steps
    torch.manual_seed(seed)
    device = device or training_device()
    model = build_network(genotype).to(device)  # the bare network: what checkpoints hold
    if init_state is not None:  # weights inherited from the supernet, where shapes match
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in init_state.items() if k in own and own[k].shape == v.shape}, strict=False)
    net = hooks.wrap_model(model) if hooks.wrap_model else model  # what steps (DDP on a Ray Train worker)
    optimizer, scheduler = make_optimizer(model, profile)
    sampler = make_sampler(task, data.train, profile, seed if hooks.sampler_seed is None else hooks.sampler_seed,
                           hooks.batch_share)
    step = 0
    if resume_from:
        payload = load_checkpoint(resume_from)
        if Genotype.from_json(payload["genotype"]) != genotype:
            raise DataError(f"{resume_from}: checkpoint holds a different genotype")
        model.load_state_dict(payload["model"])
        state = payload["training_state"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if hooks.sampler_seed is None:
            sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        step = payload["step"]
    last = min(total, stop_after) if stop_after is not None else total
    history: list[dict] = []
    net.train()
    started, data_seconds = time.perf_counter(), 0.0
    while step < last:
        fetch = time.perf_counter()
        inputs, targets = next(sampler)
        inputs, targets = inputs.to(device), targets.to(device)
        data_seconds += time.perf_counter() - fetch
        loss = train_step(net, optimizer, inputs, targets, profile.precision)
        scheduler.step()
        step += 1
        if step % profile.log_every == 0 or step == last:
            record = {"step": step, "total_steps": total, "loss": loss, "lr": scheduler.get_last_lr()[0],
                      "patches": int(inputs.shape[0]),  # this worker's share of the batch
                      "data_share": data_seconds / max(time.perf_counter() - started, 1e-9)}
            history.append(record)
            if report:
                report(record)
        if checkpoint_path and checkpoint_every and step % checkpoint_every == 0 and step < last:
            _save(checkpoint_path, model, genotype, task, profile, step, optimizer, scheduler, sampler)
            if hooks.on_checkpoint:
                hooks.on_checkpoint(checkpoint_path, step, {})
    done = step == total and hooks.evaluate
    metrics = evaluate(model, task, data.valid, crop=profile.valid_crop) if done else {}
    if checkpoint_path:
        _save(checkpoint_path, model, genotype, task, profile, step, optimizer, scheduler, sampler, metrics)
        if hooks.on_checkpoint:
            hooks.on_checkpoint(checkpoint_path, step, metrics)
    return TrainResult(model=model, metrics=metrics, steps=step, checkpoint=checkpoint_path, history=history)


@torch.no_grad()
def measure_active_keys(model: torch.nn.Module, task: TaskSpec, image_set: ImageSet, *, crop: int = 0,
                        seed: int = 0) -> list[list[float]]:
    """The mean keys a query keeps, per adaptive module (in position order) and reference layer, over the
    validation images (pixel-weighted): what an adaptive derived network costs on real data (its `expected_keys`).
    Empty where the network has no adaptive module."""
    was_training = model.training
    device = model_device(model)
    model.eval()
    totals: list[list[float]] | None = None
    pixels = 0
    for _, _, degraded in evaluation_pairs(task, image_set, seed=seed, crop=crop):
        model(to_tensor(degraded).unsqueeze(0).to(device))
        counts = [m.key_counts(expected=False) for m in model.attention]
        counts = [c for c in counts if c is not None]
        weight = degraded.shape[0] * degraded.shape[1]
        totals = [[weight * v for v in c] for c in counts] if totals is None else [
            [t + weight * v for t, v in zip(total, c)] for total, c in zip(totals, counts)]
        pixels += weight
    model.train(was_training)
    return [[t / max(pixels, 1) for t in total] for total in (totals or [])]


def model_device(model: torch.nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.zeros(0)).device


def _save(path, model, genotype, task, profile, step, optimizer, scheduler, sampler, metrics=None) -> None:
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "sampler": sampler.state(),
             "torch_rng": torch.get_rng_state()}
    save_checkpoint(path, model=model, genotype=genotype, task=task, profile=profile.name, step=step,
                    training_state=state, metrics=metrics)


def to_uint8_image(tensor: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] to uint8 (H, W, C), or (H, W) for one channel: clamp, x255, round."""
    array = (tensor.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: TaskSpec, image_set: ImageSet, *, crop: int = 0, seed: int = 0) -> dict:
    """Mean PSNR/SSIM (Y and RGB) of the model and of the task's classical baseline over whole images (or a
    centre crop), with seeded noise and the task's border crop; outputs are quantised to uint8 first."""
    was_training = model.training
    device = model_device(model)
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    for _, target, degraded in evaluation_pairs(task, image_set, seed=seed, crop=crop):
        count += 1
        output = to_uint8_image(model(to_tensor(degraded).unsqueeze(0).to(device))[0])
        baseline = task.baseline(degraded)
        if baseline.dtype != np.uint8:  # the noisy input, as an image
            baseline = to_uint8_image(to_tensor(baseline))
        for prefix, result in (("", output), ("input_", baseline)):
            for key, value in image_metrics(target, result, border=task.border).items():
                totals[prefix + key] = totals.get(prefix + key, 0.0) + value
    model.train(was_training)
    metrics = {key: value / count for key, value in totals.items()}
    metrics["images"] = count
    return metrics
