"""Deformable key sampling: bilinear reads of a feature map at per-pixel, per-key offsets.

This is the sampling of Deformable-DETR (Zhu et al. 2021, MSDeformAttn) on one level: key k of query
pixel (y, x) is read at (x + dx, y + dy), in pixels, bilinearly, and each of the four taps that falls
outside the image reads zero. The reference implementation here uses `grid_sample`; faster kernels must
match it (see tests/test_sampling.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def spread_offsets(num_keys: int) -> torch.Tensor:
    """A fixed starting pattern of `num_keys` integer offsets (dx, dy): the query pixel, then rings around it.

    Points of the square grid are taken by distance, then by angle, so 9 keys are the 3x3 neighbourhood,
    as Deformable-DETR spreads its initial sampling points around the reference point.
    """
    radius = 0
    while (2 * radius + 1) ** 2 < num_keys:
        radius += 1
    points = [(dx, dy) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    points.sort(key=lambda p: (p[0] ** 2 + p[1] ** 2, math.atan2(p[1], p[0])))
    return torch.tensor(points[:num_keys], dtype=torch.float32)  # (K, 2)


def deformable_sample(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Sample `values` (B, C, H, W) at `offsets` (B, K, H, W, 2) in pixels (dx, dy); returns (B, C, K, H, W)."""
    if values.dim() != 4 or offsets.dim() != 5 or offsets.shape[-1] != 2:
        raise ValueError(f"expected values (B,C,H,W) and offsets (B,K,H,W,2), got {tuple(values.shape)} and {tuple(offsets.shape)}")
    batch, channels, height, width = values.shape
    keys = offsets.shape[1]
    if offsets.shape[0] != batch or offsets.shape[2:4] != (height, width):
        raise ValueError(f"offsets {tuple(offsets.shape)} do not match values {tuple(values.shape)}")
    xs = torch.arange(width, dtype=offsets.dtype, device=offsets.device).view(1, 1, 1, width)
    ys = torch.arange(height, dtype=offsets.dtype, device=offsets.device).view(1, 1, height, 1)
    # align_corners=False puts pixel i at normalised (2i + 1) / size - 1, which grid_sample maps back to i exactly.
    grid_x = (2 * (xs + offsets[..., 0]) + 1) / width - 1  # (B, K, H, W)
    grid_y = (2 * (ys + offsets[..., 1]) + 1) / height - 1
    grid = torch.stack((grid_x, grid_y), dim=-1).view(batch, keys * height, width, 2)
    sampled = F.grid_sample(values, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled.view(batch, channels, keys, height, width)
