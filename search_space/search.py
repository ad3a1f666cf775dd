"""Budgeted differentiable search (DARTS-style alternation, Liu et al. 2019) over where to insert attention
and how many keys each reference layer keeps.

Weights step on one batch with the task loss; architecture parameters step on the next batch with the task
loss and a budget penalty that is zero while E[MACs] <= budget and grows linearly beyond it. Keys are priced
always: the MACs of the expected active keys, as a share of what the budget leaves for attention, in loss
units (as L0 regularisation prices a gate, Louizos et al. 2018), so a tight budget makes a key dearer than a
loose one. The gates step on the task loss with Adam at their own, faster rate (GATE_LR), so that they can move
within a short search, and on the price by a decoupled plain-gradient step (PRICE_LR), as AdamW decouples its
weight decay (Loshchilov and Hutter, ICLR 2019): Adam's per-parameter normalisation would otherwise make any
price, however small, move a gate at full speed, and a loose budget would lose as many keys as a tight one. The search is a plain function: no Ray, no MLflow; progress goes to a `report` callable.
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
from .optim import Adam
from .precision import autocast
from .registry import get_kind
from .significance import holm_passes, decision_errors
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


KEY_PRICE = 1.0  # loss units for keys that would take all of the budget's attention share (see budget_headroom)
GATE_LR = 0.05  # Adam on the task loss: a gate logit can move about 2 in the quick profile's 40 architecture steps
# The price's plain-gradient step: a key costing 1% of the attention headroom, at a position with p = 1, loses
# about 0.05 logit per step (20 x 0.01 x sigmoid' <= 0.25).
PRICE_LR = 20.0
KEY_QUANTILE = 0.9  # an adaptive derived module's cap: the 90th percentile of a query's active keys


def derived_keys(base: Genotype, position: int, active_keys: Sequence[float],
                 key_caps: Sequence[float] | None = None) -> list[int]:
    """A derived module's key count per reference layer. Adaptive kinds: the cap on a query's gated-on keys, the
    search's 90th-percentile count rounded up (1..max_keys), or, where no percentile was recorded, the rounded
    mean active keys. Fixed kinds: every candidate key."""
    refs = refs_at_position(position, base.blocks, base.stages)
    if get_kind(base.attention).adaptive:
        if key_caps is not None:
            return [min(base.max_keys, max(1, math.ceil(float(k) - 1e-6))) for k in list(key_caps)[:refs]]
        return [min(base.max_keys, max(1, int(math.floor(float(k) + 0.5)))) for k in list(active_keys)[:refs]]
    return [base.max_keys] * refs


def derive_genotype(*, base: Genotype, position_scores: Sequence[float], active_keys: Sequence[Sequence[float]],
                    budget_macs: float, score_errors: Sequence[float] | None = None,
                    key_caps: Sequence[Sequence[float]] | None = None) -> Genotype:
    """Fill the budget by ranking: each position whose measured gain is positive, in order of gain per MAC.

    `position_scores[i]` is how much the held-out loss rises when position i is switched off (DARTS-PT's
    perturbation score, in loss units), and `score_errors[i]` its standard error (default 0): a position counts
    as gainful only when its gain is significant across all the positions tested together (Holm's method over
    one-sided z-tests at 5% family-wise, search_space/significance.py), since a decision inside the noise is a
    coin flip, and with 8 positions one of them clears one standard error by chance. Key
    counts are the caps of `derived_keys` (costed at the cap: a bound), and an adaptive genotype carries the
    mean active keys, at most the cap, as its `expected_keys`. A position that does not fit what is left of the
    budget is skipped and cheaper ones are still tried (a greedy knapsack), so the result never exceeds the
    budget, and fills it as far as gainful positions allow; what a gainless search leaves unspent goes to width
    in the outer search. Ties go to the earlier position. Pure: the same inputs give the same genotype.
    """
    bare_macs = check_bare_budget(base, budget_macs)
    errors = [0.0] * base.blocks if score_errors is None else list(score_errors)
    if len(position_scores) != base.blocks or len(active_keys) != base.blocks or len(errors) != base.blocks:
        raise ValueError(f"need one score, one error and one key list per position ({base.blocks})")

    def keys_at(position: int) -> list[int]:
        return derived_keys(base, position, active_keys[position], None if key_caps is None else key_caps[position])

    def expected_at(position: int) -> list[float]:
        return [round(min(float(mean), cap), 4) for mean, cap in zip(active_keys[position], keys_at(position))]

    cost = {i: module_macs(base, i, keys_at(i)) for i in range(base.blocks)}
    gainful = [i for i, passed in enumerate(holm_passes(position_scores, decision_errors(base.task, errors))) if passed]
    ranked = sorted(gainful, key=lambda i: (-position_scores[i] / max(cost[i], 1), i))
    left = budget_macs - bare_macs
    kept = []
    for position in ranked:
        if cost[position] <= left:
            kept.append(position)
            left -= cost[position]
    kept.sort()
    adaptive = get_kind(base.attention).adaptive
    return base.replace(positions=kept, keys=[keys_at(p) for p in kept] if base.uses_keys else [],
                        expected_keys=[expected_at(p) for p in kept] if adaptive else [])


@torch.no_grad()
def measure_position_scores(supernet: Supernet, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                            loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss) -> list[float]:
    """DARTS-PT's perturbation score per position: the held-out loss with that position switched off, minus
    the loss with every position on at its current weight. Deterministic (eval mode: gates are thresholded,
    no noise) and paired (the same batches for every position), so the differences are not sampling noise."""
    was_training = supernet.training
    supernet.eval()
    weights = supernet.position_probs().detach()
    base_loss, losses = 0.0, [0.0] * len(weights)
    for x, y in batches:  # each position off continues from the full pass's features after its block
        output, _, _, without = supernet.perturbed_outputs(x, weights)
        base_loss += loss_fn(output, y).item()
        for position, off in enumerate(without):
            losses[position] += loss_fn(off, y).item()
    supernet.train(was_training)
    return [(loss - base_loss) / len(batches) for loss in losses]


@dataclass
class SearchOutcome:
    genotype: Genotype
    position_probs: list[float]
    active_keys: list[list[float]]
    position_scores: list[float]  # mean perturbation score over the last part of the search (loss units)
    score_spread: list[float]  # its standard deviation over those measurements: how settled each position is
    score_errors: list[float]  # the standard error of the mean score (spread / sqrt(measurements))
    history: list[dict] = field(default_factory=list)
    key_caps: list[list[float]] = field(default_factory=list)  # the 90th-percentile keys per query (moving average)


def budget_penalty(expected_macs: torch.Tensor, budget_macs: float) -> torch.Tensor:
    """Zero while E[MACs] <= budget, then linear in the relative excess."""
    return torch.relu(expected_macs / budget_macs - 1.0)


def budget_headroom(bare_macs: float, budget_macs: float) -> float:
    """What the budget leaves for attention (at least 1% of it): the unit in which keys are priced."""
    return max(budget_macs - bare_macs, 0.01 * budget_macs)


def key_price_term(key_macs: torch.Tensor, bare_macs: float, budget_macs: float, key_price: float) -> torch.Tensor:
    """The always-on price of the expected active keys: `key_price` loss units for keys that would fill the
    attention headroom, so the same key costs more under a tighter budget."""
    return key_price * key_macs / budget_headroom(bare_macs, budget_macs)


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
    key_price: float = KEY_PRICE,
    gate_lr: float = GATE_LR,
    price_lr: float = PRICE_LR,
    precision: str = "fp32",
) -> SearchOutcome:
    """Alternate weight and architecture steps on separate batches; return the derived genotype.

    The first `warmup_steps` steps train the weights only: a new module starts as the identity (its fusion is
    zero), so every position's architecture gradient is exactly zero until its weights have learned something.
    Over the last `score_window` of the steps each position's perturbation score is measured
    `score_measurements` times on the held-out `score_batches` (default: two batches drawn first from
    `batches`); the genotype is derived from their mean, by ranking (`derive_genotype`). A search run at a
    proxy scale derives again on the target backbone from the same scores (workers/search_run.py).
    Both steps' forward passes run in `precision` (search_space/precision.py); the scores are measured in fp32,
    as every validation is.
    """
    bare_macs = check_bare_budget(supernet.base, budget_macs)
    supernet.set_gate_temperature(gate_temperature)
    if score_batches is None:
        score_batches = [next(batches) for _ in range(2)]
    weight_opt = Adam(parameter_groups(supernet.weight_parameters(), supernet, weight_lr, offset_lr_scale),
                      lr=weight_lr)
    gate_params = [p for m in supernet.net.attention for p in m.gate_parameters()]
    gate_ids = {id(p) for p in gate_params}
    arch_groups = [{"params": [p for p in supernet.arch_parameters() if id(p) not in gate_ids], "lr": arch_lr}]
    if gate_ids:
        arch_groups.append({"params": [p for p in supernet.arch_parameters() if id(p) in gate_ids], "lr": gate_lr})
    arch_opt = Adam(arch_groups, lr=arch_lr, betas=(0.5, 0.999))
    measure_at = set(score_steps(steps, warmup_steps, score_window, score_measurements))
    keys_avg: list[list[float]] | None = None
    caps_avg: list[list[float]] | None = None
    history: list[dict] = []
    score_log: list[list[float]] = []
    supernet.train()
    for step in range(1, steps + 1):
        inputs, targets = next(batches)
        weight_opt.zero_grad(set_to_none=True)
        with autocast(precision, inputs.device):
            output = supernet(inputs)
        train_loss = loss_fn(output.float(), targets)
        train_loss.backward()
        weight_opt.step()

        inputs, targets = next(batches)
        arch_opt.zero_grad(set_to_none=True)
        arch_step = step > warmup_steps
        with torch.set_grad_enabled(arch_step):  # during the warm-up the validation loss is only reported
            with autocast(precision, inputs.device):
                output = supernet(inputs)
            val_loss = loss_fn(output.float(), targets)
            expected = supernet.expected_macs()
            penalty = penalty_weight * budget_penalty(expected, budget_macs)
            price = key_price_term(supernet.expected_key_macs(), bare_macs, budget_macs, key_price)
        if arch_step:
            # The price's gradient reaches the gates only (the key counts come from their sigmoid); taken first,
            # then applied after Adam's step on the task loss (decoupled).
            price_grads = (torch.autograd.grad(price, gate_params, retain_graph=True, allow_unused=True)
                           if gate_params and price.requires_grad else [])
            (val_loss + penalty).backward()
            arch_opt.step()
            with torch.no_grad():
                for param, grad in zip(gate_params, price_grads):
                    if grad is not None:
                        param.sub_(price_lr * grad)

        keys_avg = _moving_average(keys_avg, supernet.active_keys(), key_momentum)
        caps_avg = _moving_average(caps_avg, supernet.key_quantiles(), key_momentum)
        if step in measure_at:
            score_log.append(measure_position_scores(supernet, score_batches, loss_fn))
        if step % report_every == 0 or step == steps:
            record = {"step": step, "train_loss": train_loss.item(), "val_loss": val_loss.item(),
                      "penalty": penalty.item(), "key_price": price.item(), "expected_macs": expected.item(),
                      "active_keys": [round(sum(k) / len(k), 3) if k else 0.0 for k in keys_avg],
                      "position_probs": [round(p, 4) for p in supernet.position_probs().tolist()]}
            if score_log:
                record["position_scores"] = [round(v, 6) for v in score_log[-1]]
            history.append(record)
            if report is not None:
                report(record)
    probs = [float(p) for p in supernet.position_probs().detach()]
    keys_avg = keys_avg or supernet.active_keys()
    caps_avg = caps_avg or supernet.key_quantiles()
    per_position = list(zip(*score_log))
    scores = [statistics.fmean(values) for values in per_position]
    spread = [statistics.stdev(values) if len(values) > 1 else 0.0 for values in per_position]
    errors = [value / math.sqrt(len(score_log)) for value in spread]
    genotype = derive_genotype(base=supernet.base, position_scores=scores, active_keys=keys_avg, budget_macs=budget_macs,
                               score_errors=errors, key_caps=caps_avg)
    return SearchOutcome(genotype=genotype, position_probs=probs, active_keys=keys_avg, position_scores=scores,
                         score_spread=spread, score_errors=errors, history=history, key_caps=caps_avg)


def _moving_average(average: list[list[float]] | None, now: list[list[float]], momentum: float) -> list[list[float]]:
    if average is None:
        return now
    return [[momentum * a + (1 - momentum) * b for a, b in zip(avg, cur)] for avg, cur in zip(average, now)]
