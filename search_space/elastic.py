"""One weight-sharing supernet for several backbone widths: slimmable networks (Yu et al., ICLR 2019), as
Once-for-All (Cai et al., ICLR 2020) and BigNAS (Yu et al., ECCV 2020) train them.

The widest search supernet (search_space/supernet.py) holds every tensor. A backbone of c channels runs on
the first c channels of every layer: the first c input and output channels of a convolution, the first c*r^2
outputs of an upsampler (its pixel shuffle groups channels by output channel, so they are the first c
channels' sub-pixels), and every channel of a layer whose size does not depend on the width (the offset, logit
and gate predictors' outputs, the tail's colour channels). The architecture parameters (the position logits
and the key gates) are shared by every width.

A narrower network is the same `Supernet` class built at that width, run with `torch.func.functional_call` on
slices (views) of the widest one's tensors: its gradients flow back into the shared tensors, and neither the
backbone nor the attention modules know that they are elastic. Widths, not depths: every width has the
widest's blocks and stages (the quick and smoke profiles offer one depth).

Sandwich sampling (BigNAS; slimmable networks' "sandwich rule"): each weight step trains the widest and the
narrowest network and `random_widths` others drawn at random, and sums their gradients.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
import torch.nn as nn
from torch.func import functional_call

from .genotype import Genotype
from .supernet import Supernet


def slice_to(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The leading part of `tensor` with `shape` (a view): the first n entries along every axis."""
    if len(shape) != tensor.dim() or any(n > m for n, m in zip(shape, tensor.shape)):
        raise ValueError(f"cannot slice a tensor of shape {tuple(tensor.shape)} to {tuple(shape)}")
    return tensor[tuple(slice(0, n) for n in shape)]


class _Method(nn.Module):
    """Calls one of the supernet's methods by name, so that `functional_call` can run any of them (not only
    forward) on the shared tensors."""

    def __init__(self, supernet: Supernet) -> None:
        super().__init__()
        self.supernet = supernet

    def forward(self, name: str, *args, **kwargs):
        target = self.supernet
        for part in name.split("."):
            target = getattr(target, part)
        return target(*args, **kwargs)


class WidthView:
    """The shared supernet at one width. It answers what a `Supernet` answers (forward, `net`, the expected
    MACs and key counts, train/eval), computed on slices of the widest supernet's tensors."""

    def __init__(self, elastic: "ElasticSupernet", width: int) -> None:
        self.width = width
        self._elastic = elastic
        template = Supernet(base=elastic.base.replace(channels=width))
        self._method = _Method(template).to(next(elastic.parameters()).device)
        template.train(elastic.training)
        self.base = template.base
        self.adaptive = template.adaptive
        own = {**dict(template.named_parameters()), **dict(template.named_buffers())}
        self._shapes = {name: value.shape for name, value in own.items()}  # fixed: read once, not every forward

    @property
    def template(self) -> Supernet:
        return self._method.supernet

    def tensors(self) -> dict[str, torch.Tensor]:
        """The widest supernet's parameters and buffers, each sliced to this width's shape, keyed as this
        width's own."""
        widest = {**dict(self._elastic.widest.named_parameters()), **dict(self._elastic.widest.named_buffers())}
        return {f"supernet.{name}": slice_to(widest[name], shape) for name, shape in self._shapes.items()}

    def call(self, name: str, *args, **kwargs):
        return functional_call(self._method, self.tensors(), (name, *args), kwargs)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.call("forward", x)

    @property
    def net(self):
        """`net(x, position_weights=...)`, as a `Supernet`'s network (what the position scores run)."""
        return lambda x, **kwargs: self.call("net", x, **kwargs)

    @property
    def training(self) -> bool:
        return self.template.training

    def train(self, mode: bool = True) -> "WidthView":
        self.template.train(mode)
        return self

    def eval(self) -> "WidthView":
        return self.train(False)

    def set_gate_temperature(self, temperature: float) -> None:
        self.template.set_gate_temperature(temperature)

    def position_probs(self) -> torch.Tensor:
        return self.call("position_probs")

    def expected_macs(self) -> torch.Tensor:
        """E[MACs] at this width, from this view's last forward pass."""
        return self.call("expected_macs")

    def expected_key_macs(self) -> torch.Tensor:
        return self.call("expected_key_macs")

    def active_keys(self) -> list[list[float]]:
        return self.template.active_keys()

    def key_quantiles(self) -> list[list[float]]:
        return self.template.key_quantiles()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This width's tensors, copied, keyed as a `Supernet` of this width keys them."""
        return {name.removeprefix("supernet."): value.detach().clone() for name, value in self.tensors().items()}


class ElasticSupernet(nn.Module):
    """The search supernet at the widest of `widths`, whose narrower widths share its tensors."""

    def __init__(self, *, base: Genotype, widths: Sequence[int], alpha_init: float = 0.0) -> None:
        super().__init__()
        widths = sorted({int(w) for w in widths})
        if not widths or widths[0] < 1:
            raise ValueError(f"an elastic supernet needs one or more positive widths, not {list(widths)}")
        self.widths = tuple(widths)
        self.widest = Supernet(base=base.replace(channels=widths[-1]), alpha_init=alpha_init)
        self.base = self.widest.base
        self._views: dict[int, WidthView] = {}  # structure only: kept out of the module tree and its state_dict

    def at(self, width: int) -> WidthView:
        if width not in self.widths:
            raise ValueError(f"width {width} is not one of the supernet's ({', '.join(map(str, self.widths))})")
        if width not in self._views:
            self._views[width] = WidthView(self, width)
        return self._views[width]

    def train(self, mode: bool = True) -> "ElasticSupernet":
        super().train(mode)
        for view in self._views.values():
            view.train(mode)
        return self

    def arch_parameters(self) -> list[nn.Parameter]:
        return self.widest.arch_parameters()

    def weight_parameters(self) -> list[nn.Parameter]:
        return self.widest.weight_parameters()

    def set_gate_temperature(self, temperature: float) -> None:
        self.widest.set_gate_temperature(temperature)
        for view in self._views.values():
            view.set_gate_temperature(temperature)


def sandwich_widths(widths: Sequence[int], rng: random.Random, random_widths: int = 2) -> list[int]:
    """The widths one weight step trains: the widest, the narrowest, and `random_widths` drawn uniformly (with
    replacement) from the widths between them (from all of them where there are none between)."""
    ordered = sorted(set(widths))
    if len(ordered) == 1:
        return ordered
    between = ordered[1:-1] or ordered
    return [ordered[-1], ordered[0], *(rng.choice(between) for _ in range(random_widths))]
