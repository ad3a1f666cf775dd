"""Restoring an image of any size with a trained network, tile by tile.

Each tile is the network's input window: its core (`tile` pixels a side) plus `margin` pixels of context on every
side (clipped at the image border). Of each window's output only the core, widened by `blend` pixels, is kept,
and neighbouring cores are blended across their seam with linear weights. Where the network's receptive field
is within `margin - blend` pixels (the convolutions of an EDSR body; ACLA's keys near their start), every kept
pixel saw what it sees in the whole image, so the tiled output equals the untiled one; the blending hides the
seams of what reaches further (learned offsets, a non-local block's pooled keys). Memory is bounded by the
window, not by the image.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from search_space.precision import autocast

from .data import to_tensor
from .train import model_device, to_uint8_image

MIN_SIDE = 8  # the smallest input side: one JPEG block, four Bayer tiles
DEFAULT_TILE = 512
DEFAULT_MARGIN = 32
DEFAULT_BLEND = 8


def spans(length: int, tile: int) -> list[tuple[int, int]]:
    """The cores along one axis: [start, end) pieces of at most `tile` pixels covering 0..length."""
    if tile <= 0 or tile >= length:
        return [(0, length)]
    count = -(-length // tile)
    edges = [round(i * length / count) for i in range(count + 1)]  # even pieces, none a sliver
    return list(zip(edges[:-1], edges[1:]))


def ramp(start: int, end: int, blend: int, total: int) -> np.ndarray:
    """Weights along one axis for a core [start, end) widened by `blend` into its neighbours: 1 inside, linear
    over the 2*blend pixels around each interior seam, 0 beyond; the image's own borders are not faded."""
    lo, hi = max(0, start - blend), min(total, end + blend)
    position = np.arange(lo, hi) + 0.5
    weight = np.ones(hi - lo)
    if blend == 0:
        return weight
    if start > 0:
        weight = np.minimum(weight, np.clip((position - (start - blend)) / (2 * blend), 0, 1))
    if end < total:
        weight = np.minimum(weight, np.clip(((end + blend) - position) / (2 * blend), 0, 1))
    return weight


def tiles(height: int, width: int, tile: int) -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
    for rows in spans(height, tile):
        for cols in spans(width, tile):
            yield rows, cols


@torch.no_grad()
def restore_array(model: torch.nn.Module, degraded: np.ndarray, *, scale: int, tile: int = DEFAULT_TILE,
                  margin: int = DEFAULT_MARGIN, blend: int = DEFAULT_BLEND,
                  on_tile: Callable[[], None] | None = None, precision: str = "fp32") -> np.ndarray:
    """The restored uint8 image of a degraded one (uint8 or float in [0, 1], (H, W[, C])), `tile` input pixels
    a side at a time (0: the whole image at once), the network run in `precision` (search_space/precision.py)."""
    height, width = degraded.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"image is {width}x{height} pixels; the model needs at least {MIN_SIDE}x{MIN_SIDE}")
    blend = min(blend, margin)
    device = model_device(model)
    image = to_tensor(degraded)  # (C, H, W) float
    channels = image.shape[0]
    total = np.zeros((channels, height * scale, width * scale))
    weights = np.zeros((height * scale, width * scale))
    for (top, bottom), (left, right) in tiles(height, width, tile):
        y0, y1 = max(0, top - margin), min(height, bottom + margin)
        x0, x1 = max(0, left - margin), min(width, right + margin)
        with autocast(precision, device):
            window = model(image[:, y0:y1, x0:x1].unsqueeze(0).to(device))[0]
        window = window.float().clamp(0, 1).double().cpu().numpy()
        # the kept piece, in output pixels: the core widened by `blend` (both scaled)
        ky0, ky1 = max(0, top - blend) * scale, min(height, bottom + blend) * scale
        kx0, kx1 = max(0, left - blend) * scale, min(width, right + blend) * scale
        piece = window[:, ky0 - y0 * scale:ky1 - y0 * scale, kx0 - x0 * scale:kx1 - x0 * scale]
        weight = np.outer(ramp(top * scale, bottom * scale, blend * scale, height * scale),
                          ramp(left * scale, right * scale, blend * scale, width * scale))
        total[:, ky0:ky1, kx0:kx1] += piece * weight
        weights[ky0:ky1, kx0:kx1] += weight
        if on_tile:
            on_tile()
    return to_uint8_image(torch.from_numpy(total / weights))


def tile_count(height: int, width: int, tile: int) -> int:
    return len(spans(height, tile)) * len(spans(width, tile))


def score_images(model: torch.nn.Module, task, image_set, *, seed: int = 0, tile: int = DEFAULT_TILE,
                 on_image: Callable[[], None] | None = None, precision: str = "fp32") -> list[dict]:
    """Per clean image: the model's PSNR/SSIM (Y and RGB, the task's border), the degraded input's own score
    where it has the target's size (car, denoise, demosaic) and the classical baseline's (bicubic for sr,
    bilinear for demosaic). The degradation is the evaluation's: seeded noise per image, as workers.train.evaluate.
    The network runs in `precision`; the scores are computed on the uint8 outputs, in float64."""
    from .data import evaluation_pairs
    from .metrics import image_metrics
    rows = []
    for name, target, degraded in evaluation_pairs(task, image_set, seed=seed):
        output = restore_array(model, degraded, scale=task.scale, tile=tile, precision=precision)
        row = {"image": name, **image_metrics(target, output, border=task.border)}
        as_image = degraded if degraded.dtype == np.uint8 else to_uint8_image(to_tensor(degraded))
        if as_image.shape == target.shape:
            row.update({f"input_{k}": v for k, v in image_metrics(target, as_image, border=task.border).items()})
        if task.entry.baseline is not None:
            baseline = task.baseline(degraded)
            row.update({f"baseline_{k}": v for k, v in image_metrics(target, baseline, border=task.border).items()})
        rows.append(row)
        if on_image:
            on_image()
    return rows


def mean_scores(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if k != "image"]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}
