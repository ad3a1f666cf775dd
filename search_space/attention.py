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

from .acla import ACLA

ATTENTION_KINDS = ("acla", "cla", "nonlocal", "none")


class NonLocal(nn.Module):
    """Embedded-Gaussian non-local block: z = x + W softmax(theta(x)^T phi(x)) g(x), over all H*W pixels."""

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.channels, self.inner = channels, inner
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.out.weight)  # identity at initialisation, as in the paper
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, refs: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        batch, _, height, width = x.shape
        query = self.theta(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, HW, inner)
        key = self.phi(x).flatten(2).transpose(1, 2).unsqueeze(1)
        value = self.g(x).flatten(2).transpose(1, 2).unsqueeze(1)
        # Embedded Gaussian is an unscaled softmax; SDPA avoids materialising the HW x HW matrix where it can.
        y = F.scaled_dot_product_attention(query, key, value, scale=1.0)  # (B, 1, HW, inner)
        y = y.squeeze(1).transpose(1, 2).reshape(batch, self.inner, height, width)
        return x + self.out(y)


class NoAttention(nn.Module):
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
) -> nn.Module:
    """Build one attention module of `kind` for a position with `num_refs` reference layers."""
    if kind == "acla":
        return ACLA(channels, num_refs, keys_per_ref, adaptive=True, active_keys=active_keys)
    if kind == "cla":
        return ACLA(channels, num_refs, keys_per_ref, adaptive=False)
    if kind == "nonlocal":
        return NonLocal(channels)
    if kind == "none":
        return NoAttention()
    raise ValueError(f"unknown attention kind {kind!r}; expected one of {', '.join(ATTENTION_KINDS)}")
