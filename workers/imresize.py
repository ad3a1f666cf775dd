"""MATLAB-compatible bicubic `imresize` (antialiased when shrinking), as the SR literature makes its LR images.

Follows MATLAB's imresize.m: the Keys cubic kernel (a = -0.5) of width 4, widened by 1/scale and scaled by
`scale` when downsampling (antialiasing), output pixel x (1-based) centred at x/scale + (1 - 1/scale)/2,
out-of-range taps mirrored (symmetric padding), height first, then width, rounding to uint8 after each pass.
That order reproduces ../shared/datasets/Set5/LR_bicubic (x3 exactly).
"""
from __future__ import annotations

import numpy as np


def cubic(x: np.ndarray) -> np.ndarray:
    absx = np.abs(x)
    absx2, absx3 = absx ** 2, absx ** 3
    return ((1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
            + (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2)))


def contributions(in_length: int, out_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out, P) and 0-based source indices (out, P) for one dimension."""
    kernel_width = 4.0
    if scale < 1:  # antialiasing: stretch the kernel over the input
        kernel = lambda t: scale * cubic(scale * t)  # noqa: E731
        kernel_width /= scale
    else:
        kernel = cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(np.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]  # 1-based, as in MATLAB
    weights = kernel(u[:, None] - indices)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(1, in_length + 1), np.arange(in_length, 0, -1)])
    indices = mirror[np.mod(indices - 1, mirror.size).astype(np.int64)]
    used = np.any(weights != 0, axis=0)
    return weights[:, used], indices[:, used] - 1


def _resize_axis(image: np.ndarray, out_length: int, scale: float, axis: int) -> np.ndarray:
    weights, indices = contributions(image.shape[axis], out_length, scale)
    moved = np.moveaxis(image.astype(np.float64), axis, 0)  # (in, ...)
    gathered = moved[indices]  # (out, P, ...)
    shape = weights.shape + (1,) * (moved.ndim - 1)
    out = (gathered * weights.reshape(shape)).sum(axis=1)
    return np.moveaxis(out, 0, axis)


def round_to_uint8(values: np.ndarray) -> np.ndarray:
    """MATLAB's uint8 conversion: round half away from zero, saturate."""
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize a uint8 (H, W) or (H, W, C) image by `scale`, as MATLAB `imresize(image, scale, 'bicubic')`."""
    if image.dtype != np.uint8:
        raise ValueError(f"imresize expects a uint8 image, got {image.dtype}")
    out_height = int(np.ceil(image.shape[0] * scale))
    out_width = int(np.ceil(image.shape[1] * scale))
    resized = round_to_uint8(_resize_axis(image, out_height, scale, axis=0))
    return round_to_uint8(_resize_axis(resized, out_width, scale, axis=1))


def crop_to_multiple(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom and right edges so both sides are multiples of `scale` (the SR convention)."""
    height, width = image.shape[:2]
    return image[: height - height % scale, : width - width % scale]
