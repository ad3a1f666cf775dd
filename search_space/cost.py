"""Analytic cost: multiply-accumulates (MACs) and parameters.

The field writes "FLOPs" for multiply-accumulates (fvcore, ptflops, the ACLA authors' torch-summary
mult-adds), and so do we: 1 FLOP = 1 MAC here. Bias additions, ReLUs, residual additions and softmaxes are
not counted, as in those tools; for a conv-only network our count equals `FlopCounterMode`'s total / 2.
Reference sizes follow the field: a 1280x720 *output* for SR (so a 640x360 input at x2, 426x240 at x3,
320x180 at x4) and 256x256 for denoise, car and demosaic.
ACLA's deformable sampling is counted by formula, as the fused kernel computes it: 4 bilinear taps per active
key, each a multiply-add over the C channels (search_space/ops/acla_attend.py). Its value projections carry the
output fusion: L convs C -> C per pixel plus, once per call, the L*C*C*C + C*C*L products that merge them
(search_space/acla.py). The shared-value kinds project once, after the sum: C*C per pixel, no merge.
An adaptive derived module's cost depends on the data (each query keeps its gated-on keys, up to a cap): the
genotype's `keys` are the caps, and every budget check counts the caps, a bound the network never exceeds.
The mean count measured on validation images (`expected_keys`) gives the expected MACs, shown beside them.
"""
from __future__ import annotations

from typing import Sequence

from .genotype import NONLOCAL_GRID, Genotype, refs_at_position
from .registry import get_kind, get_task, resolve


def upsampler_steps(scale: int) -> list[int]:
    """EDSR's pixel-shuffle steps: x2 and x4 as repeated x2, x3 as one x3."""
    if scale == 1:
        return []
    if scale == 3:
        return [3]
    if scale in (2, 4):
        return [2] * (scale // 2)
    raise ValueError(f"scale {scale} is not supported; expected 1, 2, 3 or 4")


def reference_input_size(task: str, scale: int) -> tuple[int, int]:
    """The input (height, width) at which the field quotes a network's MACs (the task table's reference size is
    the output's for a task that upscales)."""
    height, width = get_task(task).reference_size
    return (height // scale, width // scale) if get_task(task).upscales else (height, width)


def conv_macs(in_channels: int, out_channels: int, kernel: int, pixels: int) -> int:
    return in_channels * out_channels * kernel * kernel * pixels


def backbone_macs(*, scale: int, in_channels: int, channels: int, blocks: int, height: int, width: int) -> int:
    """MACs of the bare backbone (no attention) for an input of height x width."""
    pixels = height * width
    total = conv_macs(in_channels, channels, 3, pixels)  # head
    total += blocks * 2 * conv_macs(channels, channels, 3, pixels)  # residual blocks
    total += conv_macs(channels, channels, 3, pixels)  # body end
    for step in upsampler_steps(scale):
        total += conv_macs(channels, channels * step * step, 3, pixels)
        pixels *= step * step
    total += conv_macs(channels, in_channels, 3, pixels)  # tail, at output size
    return total


def acla_macs_per_pixel(*, channels: int, num_refs: int, keys_per_ref: int, adaptive: bool,
                        active_keys: Sequence[float], shared_values: bool = False) -> float:
    """Per query pixel: the 1x1 predictors, the value projections (fusion folded in) and the sampling."""
    predicted = num_refs * keys_per_ref * (4 if adaptive else 3)  # offsets (2), logits (1), gates (1)
    fixed = channels * predicted + (1 if shared_values else num_refs) * channels * channels
    sampling = 4 * channels * sum(active_keys)  # 4 bilinear taps over the C channels, per key
    return fixed + sampling


def nonlocal_grid(height: int, width: int, grid: int = NONLOCAL_GRID) -> tuple[int, int]:
    """The pooled key grid of a non-local block on a height x width map (no pooling below the grid size)."""
    return min(height, grid), min(width, grid)


def nonlocal_macs(*, channels: int, height: int, width: int, grid: int = NONLOCAL_GRID, reduction: int = 2) -> int:
    """The pooled non-local block (search_space/attention.py): queries at every pixel, keys on a grid of at
    most grid x grid; the average pooling is not counted, as the field's counters do not count it."""
    inner = max(1, channels // reduction)
    pixels = height * width
    grid_h, grid_w = nonlocal_grid(height, width, grid)
    keys = grid_h * grid_w
    projections = 2 * channels * inner * pixels + 2 * channels * inner * keys  # theta and out; phi and g
    attention = 2 * pixels * keys * inner  # theta^T phi, then the weighted sum of g
    return projections + attention


def acla_macs(*, channels: int, num_refs: int, keys_per_ref: int, adaptive: bool, active_keys: Sequence[float],
              height: int, width: int, **_) -> float:
    """One ACLA (or CLA) module: the value merge once per call, then the per-pixel work."""
    merge = num_refs * channels ** 3 + channels * channels * num_refs
    return merge + height * width * acla_macs_per_pixel(channels=channels, num_refs=num_refs, keys_per_ref=keys_per_ref,
                                                        adaptive=adaptive, active_keys=active_keys)


def acla_shared_macs(*, channels: int, num_refs: int, keys_per_ref: int, adaptive: bool,
                     active_keys: Sequence[float], height: int, width: int, **_) -> float:
    """One shared-value ACLA (or CLA) module: per pixel only, one projection after the sum."""
    return height * width * acla_macs_per_pixel(channels=channels, num_refs=num_refs, keys_per_ref=keys_per_ref,
                                                adaptive=adaptive, active_keys=active_keys, shared_values=True)


def nonlocal_module_macs(*, channels: int, height: int, width: int, nonlocal_grid: int = NONLOCAL_GRID, **_) -> int:
    return nonlocal_macs(channels=channels, height=height, width=width, grid=nonlocal_grid)


def attention_macs(*, kind: str, channels: int, num_refs: int, keys_per_ref: int, adaptive: bool,
                   active_keys: Sequence[float], height: int, width: int, nonlocal_grid: int = NONLOCAL_GRID) -> float:
    """MACs of one module of `kind`, by the formula its registry entry names (search_space/registry.py)."""
    entry = get_kind(kind)
    if entry.macs is None:
        return 0
    return resolve(entry.macs)(channels=channels, num_refs=num_refs, keys_per_ref=keys_per_ref, adaptive=adaptive,
                               active_keys=active_keys, height=height, width=width, nonlocal_grid=nonlocal_grid)


def genotype_macs(genotype: Genotype, size: tuple[int, int] | None = None, expected: bool = False) -> int:
    """MACs of the derived network of `genotype` for an input `size` (default: the reference size): exact, or
    for an adaptive kind the bound at its key caps. `expected` counts the genotype's measured mean keys instead
    (`expected_keys`; the caps where it has none)."""
    height, width = size or reference_input_size(genotype.task, genotype.scale)
    total = backbone_macs(scale=genotype.scale, in_channels=genotype.in_channels, channels=genotype.channels,
                          blocks=genotype.blocks, height=height, width=width)
    keys = genotype.keys or [()] * len(genotype.positions)
    if expected and genotype.expected_keys:
        keys = genotype.expected_keys
    for position, position_keys in zip(genotype.positions, keys):
        total += attention_macs(kind=genotype.attention, channels=genotype.channels,
                                num_refs=refs_at_position(position, genotype.blocks, genotype.stages),
                                keys_per_ref=genotype.max_keys, adaptive=genotype.adaptive,
                                active_keys=position_keys, height=height, width=width,
                                nonlocal_grid=genotype.nonlocal_grid)
    return int(total)


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
