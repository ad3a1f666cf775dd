"""Budgeted differentiable search (DARTS-style alternation, Liu et al. 2019) over where to insert attention
and how many keys each reference layer keeps.

Weights step on one batch with the task loss; architecture parameters step on the next batch with the task
loss plus a budget penalty that is zero while E[MACs] <= budget and grows linearly beyond it. The search is a
plain function: no Ray, no MLflow; progress goes to a `report` callable.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .acla import OFFSET_LR_SCALE, parameter_groups
from .budget import check_budget
from .cost import genotype_macs
from .genotype import Genotype, refs_at_position
from .registry import get_kind
from .supernet import Supernet


def check_bare_budget(base: Genotype, budget_macs: float) -> int:
    """The bare backbone's MACs, checked against the budget (search_space/budget.py's one check)."""
    bare = genotype_macs(base.bare())
    check_budget(budget_macs, bare, f"the bare {base.channels}ch x {base.blocks} backbone for {base.task}")
    return bare


def module_macs(base: Genotype, position: int, keys: Sequence[int]) -> int:
    """MACs that inserting the module of `base.attention` at `position` with `keys` adds to the network."""
    bare = base.bare()
    one = bare.replace(positions=[position], keys=[list(keys)] if base.uses_keys else [])
    return genotype_macs(one) - genotype_macs(bare)


def derived_keys(base: Genotype, position: int, active_keys: Sequence[float]) -> list[int]:
    """A derived module's key count per reference layer: ACLA's rounded mean active keys (1..max_keys); every
    candidate key for CLA."""
    refs = refs_at_position(position, base.blocks, base.stages)
    if get_kind(base.attention).adaptive:
        return [min(base.max_keys, max(1, int(math.floor(float(k) + 0.5)))) for k in list(active_keys)[:refs]]
    return [base.max_keys] * refs


def derive_genotype(*, base: Genotype, position_scores: Sequence[float], active_keys: Sequence[Sequence[float]],
                    budget_macs: float, score_errors: Sequence[float] | None = None) -> Genotype:
    """Fill the budget by ranking: each position whose measured gain is positive, in order of gain per MAC.

    `position_scores[i]` is how much the held-out loss rises when position i is switched off (DARTS-PT's
    perturbation score, in loss units), and `score_errors[i]` its standard error (default 0): a position counts
    as gainful only when its score exceeds its error, since a decision inside the noise is a coin flip. Key
    counts are the rounded mean active keys (at least 1). A position that does not fit what is left of the
    budget is skipped and cheaper ones are still tried (a greedy knapsack), so the result never exceeds the
    budget, and fills it as far as gainful positions allow; what a gainless search leaves unspent goes to width
    in the outer search. Ties go to the earlier position. Pure: the same inputs give the same genotype.
    """
    bare_macs = check_bare_budget(base, budget_macs)
    errors = [0.0] * base.blocks if score_errors is None else list(score_errors)
    if len(position_scores) != base.blocks or len(active_keys) != base.blocks or len(errors) != base.blocks:
        raise ValueError(f"need one score, one error and one key list per position ({base.blocks})")

    def keys_at(position: int) -> list[int]:
        return derived_keys(base, position, active_keys[position])

    cost = {i: module_macs(base, i, keys_at(i)) for i in range(base.blocks)}
    gainful = [i for i in range(base.blocks)
               if math.isfinite(position_scores[i]) and position_scores[i] > max(0.0, errors[i])]
    ranked = sorted(gainful, key=lambda i: (-position_scores[i] / max(cost[i], 1), i))
    left = budget_macs - bare_macs
    kept = []
    for position in ranked:
        if cost[position] <= left:
            kept.append(position)
            left -= cost[position]
    kept.sort()
    return base.replace(positions=kept, keys=[keys_at(p) for p in kept] if base.uses_keys else [])


@torch.no_grad()
def measure_position_scores(supernet: Supernet, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                            loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss) -> list[float]:
    """DARTS-PT's perturbation score per position: the held-out loss with that position switched off, minus
    the loss with every position on at its current weight. Deterministic (eval mode: gates are thresholded,
    no noise) and paired (the same batches for every position), so the differences are not sampling noise."""
    was_training = supernet.training
    supernet.eval()
    weights = supernet.position_probs().detach()
    base_loss = sum(loss_fn(supernet.net(x, position_weights=weights), y).item() for x, y in batches)
    scores = []
    for position in range(len(weights)):
        off = weights.clone()
        off[position] = 0.0
        loss = sum(loss_fn(supernet.net(x, position_weights=off), y).item() for x, y in batches)
        scores.append((loss - base_loss) / len(batches))
    supernet.train(was_training)
    return scores


@dataclass
class SearchOutcome:
    genotype: Genotype
    position_probs: list[float]
    active_keys: list[list[float]]
    position_scores: list[float]  # mean perturbation score over the last part of the search (loss units)
    score_spread: list[float]  # its standard deviation over those measurements: how settled each position is
    score_errors: list[float]  # the standard error of the mean score (spread / sqrt(measurements))
    history: list[dict] = field(default_factory=list)


def budget_penalty(expected_macs: torch.Tensor, budget_macs: float) -> torch.Tensor:
    """Zero while E[MACs] <= budget, then linear in the relative excess."""
    return torch.relu(expected_macs / budget_macs - 1.0)


def score_steps(steps: int, warmup_steps: int, window: float, measurements: int) -> list[int]:
    """The steps after which position scores are measured: evenly over the last `window` of the search (at
    least its final step), never inside the warm-up."""
    first = min(steps, max(warmup_steps + 1, steps - max(1, int(round(window * steps))) + 1))
    count = max(1, min(measurements, steps - first + 1))
    return sorted({first + round(k * (steps - first) / max(1, count - 1)) for k in range(count)} | {steps})


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
    score_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    score_window: float = 0.5,
    score_measurements: int = 8,
    offset_lr_scale: float = OFFSET_LR_SCALE,
) -> SearchOutcome:
    """Alternate weight and architecture steps on separate batches; return the derived genotype.

    The first `warmup_steps` steps train the weights only: a new module starts as the identity (its fusion is
    zero), so every position's architecture gradient is exactly zero until its weights have learned something.
    Over the last `score_window` of the steps each position's perturbation score is measured
    `score_measurements` times on the held-out `score_batches` (default: two batches drawn first from
    `batches`); the genotype is derived from their mean, by ranking (`derive_genotype`). A search run at a
    proxy scale derives again on the target backbone from the same scores (workers/search_run.py).
    """
    check_bare_budget(supernet.base, budget_macs)
    supernet.set_gate_temperature(gate_temperature)
    if score_batches is None:
        score_batches = [next(batches) for _ in range(2)]
    weight_opt = torch.optim.Adam(parameter_groups(supernet.weight_parameters(), supernet, weight_lr, offset_lr_scale),
                                  lr=weight_lr)
    arch_opt = torch.optim.Adam(supernet.arch_parameters(), lr=arch_lr, betas=(0.5, 0.999))
    measure_at = set(score_steps(steps, warmup_steps, score_window, score_measurements))
    keys_avg: list[list[float]] | None = None
    history: list[dict] = []
    score_log: list[list[float]] = []
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
        if step in measure_at:
            score_log.append(measure_position_scores(supernet, score_batches, loss_fn))
        if step % report_every == 0 or step == steps:
            record = {"step": step, "train_loss": train_loss.item(), "val_loss": val_loss.item(),
                      "penalty": penalty.item(), "expected_macs": expected.item(),
                      "position_probs": [round(p, 4) for p in supernet.position_probs().tolist()]}
            if score_log:
                record["position_scores"] = [round(v, 6) for v in score_log[-1]]
            history.append(record)
            if report is not None:
                report(record)
    probs = [float(p) for p in supernet.position_probs().detach()]
    keys_avg = keys_avg or supernet.active_keys()
    per_position = list(zip(*score_log))
    scores = [statistics.fmean(values) for values in per_position]
    spread = [statistics.stdev(values) if len(values) > 1 else 0.0 for values in per_position]
    errors = [value / math.sqrt(len(score_log)) for value in spread]
    genotype = derive_genotype(base=supernet.base, position_scores=scores, active_keys=keys_avg, budget_macs=budget_macs,
                               score_errors=errors)
    return SearchOutcome(genotype=genotype, position_probs=probs, active_keys=keys_avg, position_scores=scores,
                         score_spread=spread, score_errors=errors, history=history)
