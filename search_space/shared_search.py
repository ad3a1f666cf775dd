"""The search of a sweep: one shared supernet (search_space/elastic.py) for every budget's backbone width, then a
genotype per budget, derived from position scores measured at that budget's width.

Each step is DARTS's alternation (search_space/search.py), made elastic:
- a weight step trains the sandwich of sizes (the largest, the smallest and two at random; a size is a width,
  and a depth where the profile offers several) on one batch and sums their gradients (BigNAS);
- an architecture step takes the next batch at one size, in turn, and prices that size's keys against that
  size's budget (its tightest: the smallest budget that the size serves), with the same budget penalty,
  key price and decoupled price step as a single search.

The position scores of a width are DARTS-PT's perturbation scores (the held-out loss with a position switched
off, minus the loss with all on), measured on the finished supernet at that width, with the standard error of
their paired per-batch differences. A plain object: no Ray, no MLflow.
"""
from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .acla import OFFSET_LR_SCALE, parameter_groups
from .elastic import ElasticSupernet, WidthView, sandwich_widths
from .genotype import Genotype
from .optim import Adam
from .precision import autocast
from .search import (GATE_LR, KEY_PRICE, PRICE_LR, budget_penalty, check_bare_budget, derive_genotype,
                     key_price_term)

Batch = tuple[torch.Tensor, torch.Tensor]


class SharedSupernetSearch:
    """The optimizers and the step rule for an elastic supernet. `budgets[size]` is the budget (MACs, at the
    size's own scale) that prices that size's keys; a size is (width, depth), or a width alone where the supernet
    has one depth. Its whole state is in `state_dict`."""

    def __init__(self, elastic: ElasticSupernet, budgets: dict[int, float], *, weight_lr: float = 1e-3,
                 arch_lr: float = 3e-3, penalty_weight: float = 1.0, gate_temperature: float = 1.0,
                 seed: int = 0, random_widths: int = 2, key_price: float = KEY_PRICE, gate_lr: float = GATE_LR,
                 price_lr: float = PRICE_LR, offset_lr_scale: float = OFFSET_LR_SCALE,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
                 reduce_gradients: Callable[[list[torch.Tensor]], None] | None = None,
                 precision: str = "fp32") -> None:
        """`reduce_gradients` averages a list of gradient tensors in place across data-parallel workers (each
        drawing its share of the batch), before every optimizer step, as DDP does; None on one worker.
        `precision` is the forward passes' (search_space/precision.py); losses and weights stay fp32."""
        budgets = {(k if isinstance(k, tuple) else (k, elastic.base.blocks)): b for k, b in budgets.items()}
        if set(budgets) != set(elastic.sizes):
            raise ValueError(f"need one budget per size {list(elastic.sizes)}, got {sorted(budgets)}")
        self.elastic, self.budgets, self.loss_fn = elastic, budgets, loss_fn
        self.bare = {size: check_bare_budget(elastic.at(*size).base, b) for size, b in budgets.items()}
        self.penalty_weight, self.key_price, self.price_lr = penalty_weight, key_price, price_lr
        self.random_widths = random_widths
        self.reduce_gradients = reduce_gradients
        self.precision = precision
        self.rng = random.Random(seed)
        self.steps_done = 0
        elastic.set_gate_temperature(gate_temperature)
        self.weight_opt = Adam(parameter_groups(elastic.weight_parameters(), elastic.widest, weight_lr,
                                                offset_lr_scale), lr=weight_lr)
        self.gate_params = [p for m in elastic.widest.net.attention for p in m.gate_parameters()]
        gate_ids = {id(p) for p in self.gate_params}
        groups = [{"params": [p for p in elastic.arch_parameters() if id(p) not in gate_ids], "lr": arch_lr}]
        if gate_ids:
            groups.append({"params": self.gate_params, "lr": gate_lr})
        self.arch_opt = Adam(groups, lr=arch_lr, betas=(0.5, 0.999))

    def weight_step(self, batch: Batch) -> dict[int, float]:
        """One weight step on the sandwich of sizes; the loss at each size trained, keyed (width, depth)."""
        inputs, targets = batch
        self.weight_opt.zero_grad(set_to_none=True)
        losses = {}
        for size in sandwich_widths(self.elastic.sizes, self.rng, self.random_widths):
            view = self.elastic.at(*size).train()
            with autocast(self.precision, inputs.device):
                output = view(inputs)
            loss = self.loss_fn(output.float(), targets)
            loss.backward()
            losses[size] = loss.item()
        self._reduce(self.elastic.weight_parameters())
        self.weight_opt.step()
        return losses

    def arch_step(self, batch: Batch, *, update: bool = True) -> dict:
        """One architecture step at the next size in turn (`update=False`: measure only, as during a warm-up)."""
        sizes = self.elastic.sizes
        size = sizes[self.steps_done % len(sizes)]
        self.steps_done += 1
        view, budget = self.elastic.at(*size).train(), self.budgets[size]
        inputs, targets = batch
        self.arch_opt.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(update):
            with autocast(self.precision, inputs.device):
                output = view(inputs)
            val_loss = self.loss_fn(output.float(), targets)
            expected = view.expected_macs()
            penalty = self.penalty_weight * budget_penalty(expected, budget)
            price = key_price_term(view.expected_key_macs(), self.bare[size], budget, self.key_price)
        if update:
            price_grads = (torch.autograd.grad(price, self.gate_params, retain_graph=True, allow_unused=True)
                           if self.gate_params and price.requires_grad else [])
            (val_loss + penalty).backward()
            self._reduce(self.elastic.arch_parameters())
            if self.reduce_gradients is not None:
                price_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.gate_params, price_grads)]
                self.reduce_gradients(price_grads)
            self.arch_opt.step()
            with torch.no_grad():  # the price, decoupled from Adam (search_space/search.py)
                for param, grad in zip(self.gate_params, price_grads):
                    if grad is not None:
                        param.sub_(self.price_lr * grad)
        return {"width": size[0], "depth": size[1], "val_loss": val_loss.item(), "penalty": penalty.item(),
                "key_price": price.item(), "expected_macs": expected.item()}

    def _reduce(self, params: list[torch.nn.Parameter]) -> None:
        if self.reduce_gradients is None:
            return
        for p in params:  # every worker reduces the same tensors, in the same order
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.reduce_gradients([p.grad for p in params])

    def state_dict(self) -> dict:
        return {"elastic": self.elastic.state_dict(), "weight_opt": self.weight_opt.state_dict(),
                "arch_opt": self.arch_opt.state_dict(), "rng": list(self.rng.getstate()[1]),
                "rng_version": self.rng.getstate()[0], "rng_gauss": self.rng.getstate()[2],
                "steps_done": self.steps_done}

    def load_state_dict(self, state: dict) -> None:
        self.elastic.load_state_dict(state["elastic"])
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.rng.setstate((state["rng_version"], tuple(state["rng"]), state["rng_gauss"]))
        self.steps_done = state["steps_done"]


@dataclass(frozen=True)
class WidthScores:
    """What a width's derivation rests on, measured on the finished supernet."""
    width: int
    depth: int
    position_scores: list[float]  # mean perturbation score per position (loss units)
    score_errors: list[float]  # the standard error of each, over the paired per-batch differences
    active_keys: list[list[float]]  # mean active keys per query, per position and reference layer
    key_caps: list[list[float]]  # the 90th percentile of a query's active keys, likewise


@torch.no_grad()
def measure_width(view: WidthView, batches: Sequence[Batch],
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss) -> WidthScores:
    """Perturbation scores at one width, in eval mode (gates thresholded, no noise), paired: every position is
    switched off on the same batches, so each batch gives one difference and their spread gives the error."""
    was_training = view.training
    view.eval()
    weights = view.position_probs().detach()
    base_losses, keys, caps, off_losses = [], [], [], []
    for x, y in batches:  # each position off continues from the full pass's features after its block
        output, batch_keys, batch_caps, without = view.call("perturbed_outputs", x, weights)
        base_losses.append(loss_fn(output, y).item())
        keys.append(batch_keys)
        caps.append(batch_caps)
        off_losses.append([loss_fn(off, y).item() for off in without])
    scores, errors = [], []
    for position in range(len(weights)):
        diffs = [losses[position] - base for losses, base in zip(off_losses, base_losses)]
        scores.append(statistics.fmean(diffs))
        errors.append(statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0)
    view.train(was_training)
    return WidthScores(width=view.width, depth=view.depth, position_scores=scores, score_errors=errors,
                       active_keys=_mean_lists(keys), key_caps=_mean_lists(caps))


def _mean_lists(values: list[list[list[float]]]) -> list[list[float]]:
    return [[statistics.fmean(column) for column in zip(*per_position)] for per_position in zip(*values)]


def derive_for_budget(scores: WidthScores, target: Genotype, budget_macs: float) -> Genotype:
    """The genotype of one budget: its target backbone (`target`, bare, at the full width that the scored width
    proxies), filled by ranking with the scores measured at the scored width (search_space/search.py)."""
    return derive_genotype(base=target.bare(), position_scores=scores.position_scores,
                           active_keys=scores.active_keys, budget_macs=budget_macs,
                           score_errors=scores.score_errors, key_caps=scores.key_caps)
