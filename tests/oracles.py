"""Independent oracles: naive per-pixel loops in float64, written from the definitions, not from our code."""
from __future__ import annotations

import math

import torch


def naive_bilinear(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """image (C, H, W); read at (x, y) in pixels; taps outside the image read zero."""
    _, height, width = image.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(image.shape[0], dtype=torch.float64)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                out += wy * wx * image[:, yy, xx].double()
    return out


def naive_deformable_sample(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = values.shape
    keys = offsets.shape[1]
    out = torch.zeros(batch, channels, keys, height, width, dtype=torch.float64)
    for b in range(batch):
        for k in range(keys):
            for y in range(height):
                for x in range(width):
                    dx, dy = offsets[b, k, y, x].tolist()
                    out[b, :, k, y, x] = naive_bilinear(values[b], x + dx, y + dy)
    return out


def naive_cross_layer_attention(values, offsets, logits, gates):
    """values: list of L (B,C,H,W) projected refs; offsets (B,L,K,H,W,2); logits, gates (B,L,K,H,W).
    Per pixel: softmax over the (layer, key) pairs whose gate is 1, then the weighted sum of samples."""
    batch, channels, height, width = values[0].shape
    layers, keys = offsets.shape[1], offsets.shape[2]
    out = torch.zeros(batch, channels, height, width, dtype=torch.float64)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                on = [(l, k) for l in range(layers) for k in range(keys) if gates[b, l, k, y, x] > 0.5]
                if not on:
                    continue
                exps = [math.exp(float(logits[b, l, k, y, x])) for l, k in on]
                total = sum(exps)
                for (l, k), e in zip(on, exps):
                    dx, dy = offsets[b, l, k, y, x].tolist()
                    out[b, :, y, x] += e / total * naive_bilinear(values[l][b], x + dx, y + dy)
    return out
