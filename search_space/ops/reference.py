"""ACLA's attention in plain torch ops, on any device: the reference that the fused kernels must match, as
Deformable-DETR keeps `ms_deform_attn_core_pytorch` beside its CUDA op (tests/test_cpu_kernel.py)."""
from __future__ import annotations

from typing import Sequence

import torch

from ..sampling import deformable_sample


def masked_softmax(logits: torch.Tensor, gates: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax of `logits` over `dim` in which keys with gate 0 take no part.

    `gates` may carry straight-through gradients: its forward value must be 0 or 1. With every gate off the
    weights are 0 and the denominator falls back to the unmasked sum, so the gate gradients stay finite.
    """
    if gates is None:
        return torch.softmax(logits, dim=dim)
    shifted = torch.exp(logits - logits.amax(dim=dim, keepdim=True).detach())  # any shift is exact for a softmax
    on = (shifted * gates).sum(dim=dim, keepdim=True)
    denominator = torch.where(on > 0, on, shifted.sum(dim=dim, keepdim=True))
    return shifted * gates / denominator


def reference_attend(values: Sequence[torch.Tensor], offsets: torch.Tensor, logits: torch.Tensor,
                     gates: torch.Tensor | None, keys_per_ref: int, bias: torch.Tensor) -> torch.Tensor:
    """`attend` through torch ops and grid_sample (`deformable_sample`), on any device."""
    weights = masked_softmax(logits, gates)
    out = bias
    for value, offset, weight in zip(values, offsets.split(keys_per_ref, dim=3), weights.split(keys_per_ref, dim=3)):
        sampled = deformable_sample(value, offset.permute(0, 3, 1, 2, 4))  # (B, C, k, H, W)
        out = out + (sampled * weight.permute(0, 3, 1, 2).unsqueeze(1)).sum(dim=2).permute(0, 2, 3, 1)
    return out
