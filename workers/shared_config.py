"""What a sweep's shared supernet is configured with, and which sizes (widths and depths) it must cover
(workers/shared_run.py trains it): plain data and arithmetic, without torch, so that the driver builds a sweep's
configuration (orchestrator/shared_supernet.py) without importing any training code. The search rates and the
proxy's budget, shared with a single search (workers/search_run.py), live here for the same reason."""
from __future__ import annotations

from dataclasses import dataclass

from search_space.cost import genotype_macs
from search_space.genotype import Genotype
from search_space.registry import get_kind

from .backbones import check_feasible, parse_backbone
from .profiles import Profile
from .tasks import TaskSpec


@dataclass(frozen=True, kw_only=True)
class SearchRates:
    """How a search runs, beyond its backbone and budget (a single search's, and a sweep's shared supernet's): the
    attention kind and candidate keys per reference layer, the penalty weight, the gate temperature, the learning
    rates and the seed. Keyword-only, after the fields of the configurations built on it."""
    max_keys: int = 9
    attention: str = "acla"
    penalty_weight: float = 1.0
    gate_temperature: float = 1.0
    weight_lr: float = 1e-3
    arch_lr: float = 3e-3
    seed: int = 0


def proxy_budget(target: Genotype, proxy: Genotype, budget_macs: float) -> float:
    """The budget scaled by the proxy backbone's share of the target's bare cost (the penalty's budget)."""
    return budget_macs * genotype_macs(proxy.bare()) / genotype_macs(target.bare())


CONFIG_FIELDS = ("budgets", "stages", "max_keys", "attention", "penalty_weight", "gate_temperature", "weight_lr",
                 "arch_lr", "seed")


@dataclass(frozen=True)
class SharedConfig(SearchRates):
    task: TaskSpec
    budgets: tuple[float, ...]  # MACs at the target scale, one per budget of the sweep
    stages: int

    def fields(self) -> dict:
        """Everything but the task, as plain JSON data (what a checkpoint and a Ray Train worker carry)."""
        return {name: getattr(self, name) for name in CONFIG_FIELDS} | {"budgets": [float(b) for b in self.budgets]}

    @classmethod
    def from_fields(cls, task: TaskSpec, fields: dict) -> "SharedConfig":
        return cls(task=task, **{**fields, "budgets": tuple(fields["budgets"])})

    def genotype(self, channels: int, blocks: int) -> Genotype:
        """The bare backbone of `channels` x `blocks` with this search's attention kind and candidate keys."""
        return Genotype(task=self.task.name, scale=self.task.scale, in_channels=self.task.in_channels,
                        channels=channels, blocks=blocks, stages=self.stages, attention=self.attention,
                        max_keys=self.max_keys, adaptive=get_kind(self.attention).adaptive)


def covered_sizes(config: SharedConfig, profile: Profile) -> dict[tuple[int, int], float]:
    """Each proxy size (width, depth) that some budget's backbone needs, with the budget (at the proxy's scale)
    that prices its keys: the tightest among the budgets that offer it. The supernet holds the widest and
    deepest of them; a shallower size runs the first blocks of each stage (search_space/elastic.py), so every
    set of budgets is covered: the profile's depths are whole numbers of blocks per stage (search_space/
    genotype.py checks that of every backbone)."""
    offered = {budget: [parse_backbone(label) for label in check_feasible(config.task, profile, budget)]
               for budget in config.budgets}
    priced = {}
    for budget, backbones in offered.items():
        for channels, blocks in backbones:
            target, proxy = config.genotype(channels, blocks), config.genotype(profile.proxy_channels(channels), blocks)
            size, width_budget = (proxy.channels, blocks), proxy_budget(target, proxy, budget)
            priced[size] = min(priced.get(size, width_budget), width_budget)
    return dict(sorted(priced.items()))
