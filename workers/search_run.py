"""`run_search`: the differentiable search (search_space/search.py) on the task's data pipeline.

Weight steps and architecture steps draw separate batches from two seeded samplers over the training
images, as DARTS splits its training data. Plain function: `report` is any callable.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from search_space.cost import genotype_macs
from search_space.genotype import Genotype
from search_space.search import SearchOutcome, search_architecture
from search_space.supernet import Supernet

from .profiles import Profile
from .tasks import TaskSpec
from .train import DataSpec, Report, make_sampler


@dataclass(frozen=True)
class SearchConfig:
    task: TaskSpec
    budget_macs: float
    channels: int
    blocks: int
    stages: int
    max_keys: int = 9
    attention: str = "acla"
    penalty_weight: float = 1.0
    gate_temperature: float = 1.0
    weight_lr: float = 1e-3
    arch_lr: float = 3e-3
    seed: int = 0

    def base_genotype(self) -> Genotype:
        return Genotype(task=self.task.name, scale=self.task.scale, in_channels=self.task.in_channels,
                        channels=self.channels, blocks=self.blocks, stages=self.stages, attention=self.attention,
                        max_keys=self.max_keys, adaptive=self.attention == "acla")


@dataclass
class SearchResult:
    genotype: Genotype
    macs: int
    outcome: SearchOutcome
    supernet_state: dict


def _alternate(weight_batches, arch_batches):
    while True:
        yield next(weight_batches)
        yield next(arch_batches)


def run_search(config: SearchConfig, data: DataSpec, profile: Profile, report: Report | None = None) -> SearchResult:
    torch.manual_seed(config.seed)
    supernet = Supernet(base=config.base_genotype())
    batches = _alternate(make_sampler(config.task, data.train, profile, config.seed),
                         make_sampler(config.task, data.train, profile, config.seed + 1))
    outcome = search_architecture(supernet=supernet, batches=batches, budget_macs=config.budget_macs,
                                  steps=profile.search_steps, weight_lr=config.weight_lr, arch_lr=config.arch_lr,
                                  penalty_weight=config.penalty_weight, gate_temperature=config.gate_temperature,
                                  report=report, report_every=profile.log_every, warmup_steps=profile.search_warmup)
    return SearchResult(genotype=outcome.genotype, macs=genotype_macs(outcome.genotype), outcome=outcome,
                        supernet_state={k.removeprefix("net."): v for k, v in supernet.state_dict().items()})
