"""Budgeted differentiable search (DARTS-style alternation, Liu et al. 2019) over where to insert attention
and how many keys each reference layer keeps.

Weights step on one batch with the task loss; architecture parameters step on the next batch with the task
loss plus a budget penalty that is zero while E[MACs] <= budget and grows linearly beyond it. The search is a
plain function: no Ray, no MLflow; progress goes to a `report` callable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .budget import format_macs
from .cost import genotype_macs
from .genotype import Genotype, refs_at_position
from .supernet import Supernet


class BudgetError(ValueError):
    """The budget is below the smallest feasible network."""

    def __init__(self, budget_macs: float, smallest_macs: int) -> None:
        self.budget_macs, self.smallest_macs = budget_macs, smallest_macs
        super().__init__(f"budget {format_macs(budget_macs)}MACs is below the bare backbone's "
                         f"{format_macs(smallest_macs)}MACs; the smallest feasible budget for this backbone is "
                         f"{smallest_macs} MACs ({format_macs(smallest_macs)}FLOPs)")


def check_budget(base: Genotype, budget_macs: float) -> int:
    """The bare backbone's MACs; raise BudgetError when even that exceeds the budget."""
    bare = genotype_macs(Genotype.from_dict({**base.to_dict(), "positions": [], "keys": []}))
    if bare > budget_macs:
        raise BudgetError(budget_macs, bare)
    return bare


def derive_genotype(*, base: Genotype, position_probs: Sequence[float], active_keys: Sequence[Sequence[float]],
                    budget_macs: float) -> Genotype:
    """Keep positions with p > 0.5, fix their key counts (rounded mean active keys, at least 1), then drop the
    least likely positions until the network fits the budget. The result never exceeds the budget."""
    check_budget(base, budget_macs)
    if len(position_probs) != base.blocks or len(active_keys) != base.blocks:
        raise ValueError(f"need one probability and one key list per position ({base.blocks})")
    kept = [i for i, p in enumerate(position_probs) if p > 0.5]

    def keys_at(position: int) -> list[int]:
        refs = refs_at_position(position, base.blocks, base.stages)
        if base.attention == "acla":
            counts = list(active_keys[position])[:refs]
            return [min(base.max_keys, max(1, int(math.floor(float(k) + 0.5)))) for k in counts]
        return [base.max_keys] * refs

    def genotype_of(positions: list[int]) -> Genotype:
        uses_keys = base.attention in ("acla", "cla")
        return Genotype.from_dict({**base.to_dict(), "positions": positions,
                                   "keys": [keys_at(p) for p in positions] if uses_keys else []})

    genotype = genotype_of(kept)
    while genotype_macs(genotype) > budget_macs:
        kept.remove(min(kept, key=lambda i: (position_probs[i], -i)))
        genotype = genotype_of(kept)
    return genotype


@dataclass
class SearchOutcome:
    genotype: Genotype
    position_probs: list[float]
    active_keys: list[list[float]]
    history: list[dict] = field(default_factory=list)


def budget_penalty(expected_macs: torch.Tensor, budget_macs: float) -> torch.Tensor:
    """Zero while E[MACs] <= budget, then linear in the relative excess."""
    return torch.relu(expected_macs / budget_macs - 1.0)


def search_architecture(
    *,
    supernet: Supernet,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    budget_macs: float,
    steps: int,
    weight_lr: float = 1e-3,
    arch_lr: float = 3e-3,
    penalty_weight: float = 1.0,
    gate_temperature: float = 1.0,
    report: Callable[[dict], None] | None = None,
    report_every: int = 10,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
    key_momentum: float = 0.9,
    warmup_steps: int = 0,
) -> SearchOutcome:
    """Alternate weight and architecture steps on separate batches; return the derived genotype.

    The first `warmup_steps` steps train the weights only: a new module starts as the identity, and until its
    weights have learned something its first effect on the loss is noise, which would push every position
    probability down before any module has had a chance (the early bias DARTS variants warm up against).
    """
    check_budget(supernet.base, budget_macs)
    supernet.set_gate_temperature(gate_temperature)
    weight_opt = torch.optim.Adam(supernet.weight_parameters(), lr=weight_lr)
    arch_opt = torch.optim.Adam(supernet.arch_parameters(), lr=arch_lr, betas=(0.5, 0.999))
    keys_avg: list[list[float]] | None = None
    history: list[dict] = []
    supernet.train()
    for step in range(1, steps + 1):
        inputs, targets = next(batches)
        weight_opt.zero_grad(set_to_none=True)
        train_loss = loss_fn(supernet(inputs), targets)
        train_loss.backward()
        weight_opt.step()

        inputs, targets = next(batches)
        arch_opt.zero_grad(set_to_none=True)
        arch_step = step > warmup_steps
        with torch.set_grad_enabled(arch_step):  # during the warm-up the validation loss is only reported
            val_loss = loss_fn(supernet(inputs), targets)
            expected = supernet.expected_macs()
            penalty = penalty_weight * budget_penalty(expected, budget_macs)
        if arch_step:
            (val_loss + penalty).backward()
            arch_opt.step()

        keys_now = supernet.active_keys()
        keys_avg = keys_now if keys_avg is None else [
            [key_momentum * a + (1 - key_momentum) * b for a, b in zip(avg, now)] for avg, now in zip(keys_avg, keys_now)]
        if step % report_every == 0 or step == steps:
            record = {"step": step, "train_loss": train_loss.item(), "val_loss": val_loss.item(),
                      "penalty": penalty.item(), "expected_macs": expected.item(),
                      "position_probs": [round(p, 4) for p in supernet.position_probs().tolist()]}
            history.append(record)
            if report is not None:
                report(record)
    probs = [float(p) for p in supernet.position_probs().detach()]
    keys_avg = keys_avg or supernet.active_keys()
    genotype = derive_genotype(base=supernet.base, position_probs=probs, active_keys=keys_avg, budget_macs=budget_macs)
    return SearchOutcome(genotype=genotype, position_probs=probs, active_keys=keys_avg, history=history)
