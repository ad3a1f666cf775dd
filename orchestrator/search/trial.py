"""One search trial as a plain function: differentiable search, derivation within the budget, a short proxy
training, evaluation and a latency measurement. Ray calls it through a thin wrapper in driver.py; the
overhead benchmark calls it directly.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from search_space.cost import count_parameters, genotype_macs

from workers.backbones import parse_backbone
from workers.data import DataSpec
from workers.profiles import Profile
from workers.tasks import TaskSpec

if TYPE_CHECKING:
    from workers.train import Report

@dataclass(frozen=True)
class TrialSettings:
    task: TaskSpec
    budget_macs: float
    profile: Profile
    data: DataSpec
    attention: str = "acla"
    seed: int = 0
    checkpoint_root: str | None = None  # where a trial keeps its progress, to continue after an interruption
    shared_supernet: bytes | str | None = None  # a sweep's trained supernet (its checkpoint, or a path): derive


def trial_folder(settings: TrialSettings, params: dict) -> Path | None:
    """The trial's checkpoint folder, named by what determines its result (config, seed, budget, profile and its
    precision): the same trial run again (Tune's retry, or `resume`) finds it and continues. On a cluster it is
    found where the run directory is shared; elsewhere the trial starts over, which gives the same result."""
    if settings.checkpoint_root is None:
        return None
    key = json.dumps({"params": params, "seed": settings.seed, "budget": settings.budget_macs,
                      "profile": settings.profile.name, "precision": settings.profile.precision,
                      "task": settings.task.label}, sort_keys=True)
    return Path(settings.checkpoint_root) / hashlib.sha256(key.encode()).hexdigest()[:20]


PROGRESS_KEYS = ("train_loss", "val_loss", "expected_macs", "loss")  # the numbers a progress report carries


def progress_report(report: Report | None, phase: str, offset: int) -> Report | None:
    """The search's or the proxy training's log records as flat progress reports, on one step axis (training
    continues after the search's steps)."""
    if report is None:
        return None

    def forward(record: dict) -> None:
        report({"progress_phase": phase, "progress_step": offset + int(record["step"]),
                **{f"progress_{k}": float(record[k]) for k in PROGRESS_KEYS if k in record}})
    return forward


def run_trial(params: dict, settings: TrialSettings, report: Report | None = None,
              keep_weights: Callable[[dict], None] | None = None) -> dict:
    """Search at the proxy width, derive at the target width within the budget, proxy-train the proxy genotype
    (inheriting the supernet's weights; a sweep's trial derives from its shared supernet instead of searching, and
    fine-tunes for the profile's `sweep_steps()`) and measure. Returns flat metrics: `macs` of the target genotype
    (what retraining builds), `proxy_macs` of what was trained here. `keep_weights` gets the proxy-trained weights
    (on the CPU), which the retraining widens and starts from."""
    # torch and the training code, here: the driver imports this module for Tune without paying for them
    from search_space.backbone import build_network
    from workers.device import describe_device, training_device
    from workers.latency import measure_latency_ms
    from workers.search_run import (SearchConfig, load_search_result, position_scores, run_search,
                                    save_search_result)
    from workers.train import measure_active_keys, train
    started = time.perf_counter()
    task, profile = settings.task, settings.profile
    channels, blocks = parse_backbone(params["backbone"])
    device = training_device()
    folder = trial_folder(settings, params)
    if settings.shared_supernet:  # a sweep's trial: its backbone derived from the sweep's one supernet
        from workers.shared_run import derive_backbone, load_shared_search
        shared, shared_config = load_shared_search(settings.shared_supernet, task, profile, device)
        found = derive_backbone(shared, shared_config, settings.data, profile, params["backbone"],
                                settings.budget_macs, device)
    elif folder is not None and (folder / "search.pt").is_file():  # searched before it was interrupted
        found = load_search_result(folder / "search.pt")
    else:
        config = SearchConfig(task=task, budget_macs=settings.budget_macs, channels=channels, blocks=blocks,
                              stages=profile.stages, max_keys=profile.max_keys,
                              attention=settings.attention, penalty_weight=params["penalty_weight"],
                              gate_temperature=params["gate_temperature"], weight_lr=params["weight_lr"],
                              arch_lr=params["arch_lr"], seed=settings.seed)
        found = run_search(config, settings.data, profile, progress_report(report, "search", 0), device=device)
        if folder is not None:
            save_search_result(found, folder / "search.pt")
    saved = None if folder is None else str(folder / "train.pt")
    steps = profile.sweep_steps() if settings.shared_supernet else profile.train_steps
    trained = train(genotype=found.proxy_genotype, task=task, data=settings.data, profile=profile, steps=steps,
                    init_state=found.supernet_state, seed=settings.seed, device=device, checkpoint_path=saved,
                    checkpoint_every=max(1, steps // 10),
                    resume_from=saved if saved and os.path.isfile(saved) else None,
                    report=progress_report(report, "train", profile.search_steps))
    genotype = found.genotype
    if genotype.expected_keys:  # the derived adaptive modules' keys on the validation images, measured on the
        # proxy-trained network at the proxy width (the target network shares its gates' design)
        measured = measure_active_keys(trained.model, task, settings.data.valid, crop=profile.valid_crop)
        genotype = genotype.replace(expected_keys=[[round(min(m, cap), 4) for m, cap in zip(means, caps)]
                                                   for means, caps in zip(measured, genotype.keys)])
    keys = [k for position in (genotype.expected_keys or genotype.keys) for k in position]
    if keep_weights is not None:
        keep_weights({k: v.detach().cpu() for k, v in trained.model.state_dict().items()})
    metrics = trained.metrics
    target = build_network(genotype)
    result = {
        "psnr": metrics[task.headline_metric], "ssim": metrics[task.headline_metric.replace("psnr", "ssim")],
        "psnr_y": metrics["psnr_y"], "ssim_y": metrics["ssim_y"], "psnr_rgb": metrics["psnr_rgb"],
        "ssim_rgb": metrics["ssim_rgb"], "input_psnr": metrics["input_" + task.headline_metric],
        "input_psnr_y": metrics["input_psnr_y"], "input_psnr_rgb": metrics["input_psnr_rgb"],
        "macs": genotype_macs(genotype), "macs_expected": genotype_macs(genotype, expected=True),
        "proxy_macs": genotype_macs(found.proxy_genotype),
        "params": count_parameters(target), "proxy_channels": found.proxy_genotype.channels,
        "proxy_steps": steps,  # a sweep's trial fine-tunes fewer: its winner's retraining tops it up (orchestrator/retrain/winners.py)
        "num_modules": len(genotype.positions), "mean_active_keys": sum(keys) / len(keys) if keys else 0.0,
        "latency_ms": measure_latency_ms(target, task.in_channels),
        "genotype": genotype.to_json(),
        **describe_device(device, profile.precision),  # where it ran and which attention implementation served it (MLflow params)
        "position_scores": json.dumps(position_scores(found.outcome)),
        "trial_seconds": time.perf_counter() - started,  # the trial function alone, wherever it runs
    }
    if folder is not None:  # done: its progress is no longer needed
        shutil.rmtree(folder, ignore_errors=True)
    return result
