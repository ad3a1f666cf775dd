"""Attention variants that can stand at an insertion position, all with one contract:
constructed channels first, `forward(x, refs) -> tensor shaped like x` (refs ignored where unused).

- `acla`: Adaptive Cross-Layer Attention (search_space/acla.py).
- `cla`: cross-layer attention with a fixed K and no gates (ACLA with adaptive=False).
- `nonlocal`: the same-layer non-local block, embedded-Gaussian form (Wang et al., CVPR 2018).
- `none`: the plain backbone.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cost import nonlocal_grid
from .genotype import NONLOCAL_GRID
from .registry import get_kind, resolve


class AttentionModule(nn.Module):
    """What the supernet asks of every module at a position (none of it by attribute name): its reference
    layers, its gate parameters and temperature, and its key counts of the last forward pass. A kind without
    keys or gates keeps these defaults."""
    num_refs = 0

    def gate_parameters(self) -> list[nn.Parameter]:
        return []

    def set_gate_temperature(self, temperature: float) -> None:
        pass

    def key_counts(self, expected: bool) -> list | None:
        """Mean keys per query per reference layer of the last forward pass (`expected`: differentiable); None
        where the kind uses all its keys or none."""
        return None

    def key_quantiles(self) -> list[float] | None:
        """The 90th percentile of a query's keys per reference layer in the last forward pass; None as above."""
        return None


class NonLocal(AttentionModule):
    """Embedded-Gaussian non-local block (Wang et al., CVPR 2018): z = x + W softmax(theta(x)^T phi(k)) g(k),
    where every query pixel attends to keys k pooled to a fixed grid of at most 16 x 16 (adaptive average
    pooling, as the asymmetric pyramid non-local block of Zhu et al., ICCV 2019, pools its keys). Wang et al.
    subsample their keys too; a fixed grid keeps the cost linear in the pixels, so a non-local block can stand
    within a budget at 256x256 (the full form costs 836 GMACs there at 32 channels). On maps no larger than the
    grid the pooling is the identity and this is the original block.
    """

    def __init__(self, channels: int, reduction: int = 2, grid: int = NONLOCAL_GRID) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.channels, self.inner, self.grid = channels, inner, grid
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.out.weight)  # identity at initialisation, as in the paper
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, refs: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        batch, _, height, width = x.shape
        grid = nonlocal_grid(height, width, self.grid)
        pooled = x if grid == (height, width) else F.adaptive_avg_pool2d(x, grid)
        query = self.theta(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, HW, inner)
        key = self.phi(pooled).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, keys, inner)
        value = self.g(pooled).flatten(2).transpose(1, 2).unsqueeze(1)
        # Embedded Gaussian is an unscaled softmax; SDPA avoids materialising the HW x keys matrix where it can.
        y = F.scaled_dot_product_attention(query, key, value, scale=1.0)  # (B, 1, HW, inner)
        y = y.squeeze(1).transpose(1, 2).reshape(batch, self.inner, height, width)
        return x + self.out(y)


class NoAttention(AttentionModule):
    """The plain backbone's position: returns x unchanged."""

    def forward(self, x: torch.Tensor, refs: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        return x


def make_attention(
    kind: str,
    *,
    channels: int,
    num_refs: int,
    keys_per_ref: int,
    active_keys: Sequence[int] | None = None,
    nonlocal_grid: int = NONLOCAL_GRID,
) -> nn.Module:
    """Build one attention module of `kind` (its registry entry's factory) for a position with `num_refs`
    reference layers."""
    entry = get_kind(kind)
    if entry.build is None:
        return NoAttention()
    return resolve(entry.build)(channels=channels, num_refs=num_refs, keys_per_ref=keys_per_ref,
                                active_keys=active_keys, nonlocal_grid=nonlocal_grid)


def build_nonlocal(*, channels: int, nonlocal_grid: int = NONLOCAL_GRID, **_) -> NonLocal:
    return NonLocal(channels, grid=nonlocal_grid)
