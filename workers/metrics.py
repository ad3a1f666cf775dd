"""PSNR and SSIM with the restoration field's conventions.

- Y channel: BT.601 studio range, as MATLAB `rgb2ycbcr`: Y = 16 + (65.481 R + 128.553 G + 24.966 B) for
  R, G, B in [0, 1], so Y lies in [16, 235] on the 0-255 scale; the data range stays 255.
- SSIM: Wang et al. 2004 as in their MATLAB `ssim_index.m`: an 11x11 Gaussian window with sigma 1.5,
  K1 = 0.01, K2 = 0.03, 'valid' filtering; RGB SSIM is the mean over channels.
- Inputs are uint8 images (data range 255) or float arrays/tensors in [0, 1]; `as_255` makes that explicit.
- SR crops a border of `scale` pixels before measuring; the other tasks crop none.
"""
from __future__ import annotations

import numpy as np

DATA_RANGE = 255.0


def as_255(image) -> np.ndarray:
    """A float64 (H, W[, C]) array on the 0-255 scale, from uint8 (0-255) or float in [0, 1] (array or tensor)."""
    if hasattr(image, "detach"):  # a torch tensor (C, H, W) or (H, W) in [0, 1]
        array = image.detach().cpu().double().numpy()
        if array.ndim == 3:
            array = array.transpose(1, 2, 0)
        return array * DATA_RANGE
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array.astype(np.float64)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float64) * DATA_RANGE
    raise ValueError(f"images must be uint8 (0-255) or float in [0, 1], got {array.dtype}")


def rgb_to_y(image_255: np.ndarray) -> np.ndarray:
    """Y of BT.601 studio range (MATLAB rgb2ycbcr) from RGB on the 0-255 scale; gray images pass through."""
    if image_255.ndim == 2:
        return image_255
    rgb = image_255 / DATA_RANGE
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def crop_border(image: np.ndarray, border: int) -> np.ndarray:
    return image[border:-border, border:-border] if border > 0 else image


def psnr(reference: np.ndarray, test: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """PSNR in dB of two float arrays on a scale whose peak is `data_range`."""
    if reference.shape != test.shape:
        raise ValueError(f"images differ in size: {reference.shape} vs {test.shape}")
    mse = np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(data_range ** 2 / mse))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    window = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return window / window.sum()


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    from scipy.ndimage import correlate1d  # here: scipy.ndimage's import is a quarter second, for SSIM only
    out = correlate1d(correlate1d(image, window, axis=0), window, axis=1)
    pad = window.size // 2
    return out[pad:-pad, pad:-pad]


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """SSIM of two (H, W) or (H, W, C) float arrays; channels are averaged."""
    if reference.shape != test.shape:
        raise ValueError(f"images differ in size: {reference.shape} vs {test.shape}")
    if reference.ndim == 3:
        return float(np.mean([ssim(reference[..., c], test[..., c], data_range) for c in range(reference.shape[2])]))
    window = gaussian_window()
    if min(reference.shape) < window.size:
        raise ValueError(f"SSIM needs images of at least {window.size}x{window.size}, got {reference.shape}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    x, y = reference.astype(np.float64), test.astype(np.float64)
    mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
    sigma_x = _filter_valid(x * x, window) - mu_x ** 2
    sigma_y = _filter_valid(y * y, window) - mu_y ** 2
    sigma_xy = _filter_valid(x * y, window) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
    denominator = (mu_x ** 2 + mu_y ** 2 + c1) * (sigma_x + sigma_y + c2)
    return float(np.mean(numerator / denominator))


def image_metrics(reference, test, *, border: int = 0) -> dict[str, float]:
    """PSNR/SSIM on Y and on all channels (RGB, or the one gray channel), cropping `border` pixels."""
    ref, out = crop_border(as_255(reference), border), crop_border(as_255(test), border)
    if ref.shape != out.shape:
        raise ValueError(f"images differ in size: {ref.shape[:2]} vs {out.shape[:2]}")
    ref_y, out_y = rgb_to_y(ref), rgb_to_y(out)
    return {"psnr_y": psnr(ref_y, out_y), "ssim_y": ssim(ref_y, out_y),
            "psnr_rgb": psnr(ref, out), "ssim_rgb": ssim(ref, out)}
