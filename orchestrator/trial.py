"""One search trial as a plain function: differentiable search, derivation within the budget, a short proxy
training, evaluation and a latency measurement. Ray calls it through a thin wrapper in driver.py; the
overhead benchmark calls it directly.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from search_space.cost import count_parameters, genotype_macs
from search_space.genotype import Genotype

from workers.profiles import Profile
from workers.search_run import SearchConfig, run_search
from workers.tasks import TaskSpec
from workers.train import DataSpec, Report, train

# Widths and depths the outer search may pick, per profile. Depth is a multiple of the stage count.
BACKBONE_CHOICES = {
    "smoke": {"channels": (8,), "blocks": (4,), "stages": 2},
    "quick": {"channels": (16, 24, 32), "blocks": (4, 8), "stages": 4},
    "paper": {"channels": (32, 48, 64), "blocks": (8, 12, 16), "stages": 4},
}
LATENCY_INPUT = 128  # side of the square input the worker times a forward pass on


@dataclass(frozen=True)
class TrialSettings:
    task: TaskSpec
    budget_macs: float
    profile: Profile
    data: DataSpec
    attention: str = "acla"
    seed: int = 0


def backbone_label(channels: int, blocks: int) -> str:
    return f"c{channels}-b{blocks}"


def parse_backbone(label: str) -> tuple[int, int]:
    channels, blocks = label.split("-")
    return int(channels[1:]), int(blocks[1:])


def feasible_backbones(task: TaskSpec, profile: Profile, budget_macs: float) -> tuple[list[str], int]:
    """Backbone labels whose bare cost fits the budget, and the smallest bare cost among all choices."""
    choices = BACKBONE_CHOICES[profile.name]
    feasible, smallest = [], None
    for channels in choices["channels"]:
        for blocks in choices["blocks"]:
            bare = genotype_macs(Genotype(task=task.name, scale=task.scale, in_channels=task.in_channels,
                                          channels=channels, blocks=blocks, stages=choices["stages"]))
            smallest = bare if smallest is None else min(smallest, bare)
            if bare <= budget_macs:
                feasible.append(backbone_label(channels, blocks))
    return feasible, smallest


@torch.no_grad()
def measure_latency_ms(model: torch.nn.Module, in_channels: int, repeats: int = 3) -> float:
    model.eval()
    x = torch.rand(1, in_channels, LATENCY_INPUT, LATENCY_INPUT)
    model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run_trial(params: dict, settings: TrialSettings, report: Report | None = None) -> dict:
    """Search, derive, proxy-train and measure one point of the outer search space. Returns flat metrics."""
    started = time.perf_counter()
    task, profile = settings.task, settings.profile
    channels, blocks = parse_backbone(params["backbone"])
    config = SearchConfig(task=task, budget_macs=settings.budget_macs, channels=channels, blocks=blocks,
                          stages=BACKBONE_CHOICES[profile.name]["stages"], max_keys=profile.max_keys,
                          attention=settings.attention, penalty_weight=params["penalty_weight"],
                          gate_temperature=params["gate_temperature"], weight_lr=params["weight_lr"],
                          arch_lr=params["arch_lr"], seed=settings.seed)
    found = run_search(config, settings.data, profile, report)
    trained = train(genotype=found.genotype, task=task, data=settings.data, profile=profile,
                    init_state=found.supernet_state, seed=settings.seed)
    genotype = found.genotype
    keys = [k for position in genotype.keys for k in position]
    metrics = trained.metrics
    return {
        "psnr": metrics[task.headline_metric], "ssim": metrics[task.headline_metric.replace("psnr", "ssim")],
        "psnr_y": metrics["psnr_y"], "ssim_y": metrics["ssim_y"], "psnr_rgb": metrics["psnr_rgb"],
        "ssim_rgb": metrics["ssim_rgb"], "input_psnr": metrics["input_" + task.headline_metric],
        "macs": genotype_macs(genotype), "params": count_parameters(trained.model),
        "num_modules": len(genotype.positions), "mean_active_keys": sum(keys) / len(keys) if keys else 0.0,
        "latency_ms": measure_latency_ms(trained.model, task.in_channels),
        "genotype": genotype.to_json(),
        "trial_seconds": time.perf_counter() - started,  # the trial function alone, wherever it runs
    }
