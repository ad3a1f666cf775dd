"""The outer search's backbones for a budget, and the one check that the budget can hold any of them.

Every depth of the profile's `block_choices` at every width (a multiple of `channel_step`) whose bare cost is
50-100% of the budget is on offer, so the network a user gets spends the budget on width or on attention.
"""
from __future__ import annotations

from search_space.budget import check_budget, format_macs
from search_space.cost import genotype_macs
from search_space.genotype import Genotype

from .profiles import Profile
from .tasks import TaskSpec

FILL_FLOOR = 0.5  # the outer search's backbones cost at least this share of the budget, bare


def unused_budget_warning(task: TaskSpec, profile: Profile, budget_macs: float) -> str | None:
    """A one-line warning when the profile's widest backbone leaves more than half the budget unused."""
    feasible, _ = feasible_backbones(task, profile, budget_macs)
    widest = max((bare_macs(task, *parse_backbone(label), profile.stages) for label in feasible), default=0)
    if feasible and widest < FILL_FLOOR * budget_macs:
        return (f"acla-orch: warning: the {profile.name} profile's widest backbone ({feasible[-1]}, "
                f"{format_macs(widest)}MACs) uses {widest / budget_macs:.0%} of the {format_macs(budget_macs)}MACs "
                f"budget; the networks found will cost less than it allows")
    return None


def backbone_label(channels: int, blocks: int) -> str:
    return f"c{channels}-b{blocks}"


def parse_backbone(label: str) -> tuple[int, int]:
    channels, blocks = label.split("-")
    return int(channels[1:]), int(blocks[1:])


def bare_macs(task: TaskSpec, channels: int, blocks: int, stages: int) -> int:
    return genotype_macs(Genotype(task=task.name, scale=task.scale, in_channels=task.in_channels,
                                  channels=channels, blocks=blocks, stages=stages))


def feasible_backbones(task: TaskSpec, profile: Profile, budget_macs: float) -> tuple[list[str], int]:
    """The target backbones the outer search may pick, and the smallest bare cost among all widths and depths.

    Every depth of `profile.block_choices` at every width (a multiple of `channel_step` from `min_channels` to
    `max_channels`) whose bare cost is 50-100% of the budget, so the network a user gets spends the budget they
    asked for, on width or on attention. Where no width lands in that band (a budget above the profile's
    widest backbone) the widest one that fits is offered alone.
    """
    widths = range(profile.min_channels, profile.max_channels + 1, profile.channel_step)
    costs = {(c, b): bare_macs(task, c, b, profile.stages) for b in profile.block_choices for c in widths}
    fitting = [key for key, cost in costs.items() if cost <= budget_macs]
    banded = [key for key in fitting if costs[key] >= FILL_FLOOR * budget_macs]
    chosen = banded or ([max(fitting, key=lambda key: costs[key])] if fitting else [])
    return [backbone_label(c, b) for c, b in sorted(chosen)], min(costs.values())


def check_feasible(task: TaskSpec, profile: Profile, budget_macs: float) -> list[str]:
    """The budget's backbones; BudgetError (search_space/budget.py's one check) when there is none."""
    feasible, smallest = feasible_backbones(task, profile, budget_macs)
    check_budget(budget_macs, smallest, f"the {profile.name} profile's narrowest backbone for {task.label}")
    return feasible
