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
backbone nor the attention modules know that they are elastic.

Depths are elastic too, as Once-for-All makes them: a network of d blocks in S stages runs the first d/S blocks
of each of the deepest network's stages (and their positions' modules and logits), so its reference layers (the
head and each stage's output) are the same layers' and every module keeps its number of references. A size is a
(width, depth) pair; the supernet holds the widest and deepest of its sizes.

Sandwich sampling (BigNAS; slimmable networks' "sandwich rule"): each weight step trains the largest and the
smallest network (by MACs) and `random_widths` other sizes drawn at random, and sums their gradients.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
import torch.nn as nn
from torch.func import functional_call

from .cost import genotype_macs
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


def block_map(depth: int, deepest: int, stages: int) -> list[int]:
    """The deepest network's block that each block of a `depth`-block network (same stages) runs on: the first
    depth/stages blocks of each stage."""
    if depth % stages or deepest % stages or depth > deepest:
        raise ValueError(f"a {depth}-block network is not a part of a {deepest}-block one in {stages} stages")
    per, deepest_per = depth // stages, deepest // stages
    return [(j // per) * deepest_per + j % per for j in range(depth)]


def _holder_name(name: str, blocks: list[int]) -> str:
    """A view's tensor name (`net.body.1.conv1.weight`) as the deepest supernet names it: its block and
    position renumbered by `blocks` (block_map's)."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "net" and parts[1] in ("body", "attention"):
        parts[2] = str(blocks[int(parts[2])])
    return ".".join(parts)


class WidthView:
    """The shared supernet at one size (width, and depth: the deepest's by default). It answers what a `Supernet`
    answers (forward, `net`, the expected MACs and key counts, train/eval), computed on slices of the widest,
    deepest supernet's tensors."""

    def __init__(self, elastic: "ElasticSupernet", width: int, depth: int | None = None) -> None:
        self.width = width
        self.depth = depth = depth or elastic.base.blocks
        self._elastic = elastic
        blocks = block_map(depth, elastic.base.blocks, elastic.base.stages)
        # alpha's entries of this depth's positions: a slice (a view) at full depth, else a gather (grads flow)
        self._alpha = slice(0, depth) if depth == elastic.base.blocks else blocks
        template = Supernet(base=elastic.base.replace(channels=width, blocks=depth))
        self._method = _Method(template).to(next(elastic.parameters()).device)
        template.train(elastic.training)
        self.base = template.base
        self.adaptive = template.adaptive
        own = {**dict(template.named_parameters()), **dict(template.named_buffers())}
        # fixed, so read once rather than at every call: each tensor's shape and the holder's tensor it cuts
        self._sources = {name: (_holder_name(name, blocks), value.shape) for name, value in own.items()
                         if name != "alpha"}

    @property
    def template(self) -> Supernet:
        return self._method.supernet

    def tensors(self) -> dict[str, torch.Tensor]:
        """The widest supernet's parameters and buffers, each sliced to this width's shape, keyed as this
        width's own."""
        widest = {**dict(self._elastic.widest.named_parameters()), **dict(self._elastic.widest.named_buffers())}
        tensors = {f"supernet.{name}": slice_to(widest[source], shape)
                   for name, (source, shape) in self._sources.items()}
        tensors["supernet.alpha"] = widest["alpha"][self._alpha]
        return tensors

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
    """The search supernet at the widest of `widths` (at `base.blocks`), or of `sizes` ((width, depth) pairs:
    at the widest width and the deepest depth among them), whose smaller sizes share its tensors. `sizes`
    lists them all from the smallest to the largest by MACs; `widths` is the short form for one depth."""

    def __init__(self, *, base: Genotype, widths: Sequence[int] = (), alpha_init: float = 0.0,
                 sizes: Sequence[tuple[int, int]] = ()) -> None:
        super().__init__()
        pairs = {(int(w), int(d)) for w, d in sizes} | {(int(w), base.blocks) for w in widths}
        if not pairs or min(w for w, _ in pairs) < 1 or min(d for _, d in pairs) < 1:
            raise ValueError(f"an elastic supernet needs one or more positive sizes, not {sorted(pairs)}")
        deepest = max(d for _, d in pairs)
        self.widest = Supernet(base=base.replace(channels=max(w for w, _ in pairs), blocks=deepest),
                               alpha_init=alpha_init)
        self.base = self.widest.base
        for _, depth in pairs:
            block_map(depth, deepest, base.stages)  # every depth must be a part of the deepest
        self.sizes = tuple(sorted(pairs, key=lambda p: (genotype_macs(self.base.replace(channels=p[0],
                                                                                           blocks=p[1])), p)))
        self._views: dict[tuple[int, int], WidthView] = {}  # structure only: out of the module tree and state_dict

    def at(self, width: int, depth: int | None = None) -> WidthView:
        size = (width, depth or self.base.blocks)
        if size not in self.sizes:
            named = ", ".join(f"{w}x{d}" for w, d in self.sizes)
            raise ValueError(f"size {size[0]}x{size[1]} is not one of the supernet's ({named})")
        if size not in self._views:
            self._views[size] = WidthView(self, *size)
        return self._views[size]

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


def sandwich_widths(ordered: Sequence, rng: random.Random, random_widths: int = 2) -> list:
    """The sizes one weight step trains, from `ordered` (distinct sizes, or widths, from the smallest to the
    largest: `ElasticSupernet.sizes`): the largest, the smallest, and `random_widths` drawn uniformly (with
    replacement) from those between them (from all of them where there are none between)."""
    ordered = list(ordered)
    if len(ordered) == 1:
        return ordered
    between = ordered[1:-1] or ordered
    return [ordered[-1], ordered[0], *(rng.choice(between) for _ in range(random_widths))]
