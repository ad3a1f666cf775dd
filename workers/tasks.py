"""The four restoration tasks, each defined once, as the literature defines it.

- sr (x2/x3/x4): LR = MATLAB bicubic imresize (antialiased, uint8) of HR cropped to a multiple of the scale.
  Metrics on Y with a border of `scale` pixels.
- denoise (sigma 15/25/50): additive white Gaussian noise on the 0-255 scale, not clipped. RGB metrics.
- demosaic: RGGB Bayer (R at (0,0), G at (0,1) and (1,0), B at (1,1)); the network input is the 3-channel
  masked mosaic. The bilinear demosaic is the classical baseline. RGB metrics.
- car (JPEG q 10/20/30/40): Pillow JPEG at 4:2:0, color RGB, or gray on the Y channel (classic5). Metrics on Y
  (and RGB for color).
Images are uint8 numpy arrays (H, W, 3) or (H, W); network tensors are float in [0, 1].
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import convolve

from search_space.genotype import QUALITIES, SIGMAS, SR_SCALES, TASK_NAMES  # the task names and options, once

from .imresize import crop_to_multiple, imresize, round_to_uint8
from .metrics import as_255, rgb_to_y



@dataclass(frozen=True)
class TaskSpec:
    name: str
    scale: int = 1
    sigma: float = 25.0
    quality: int = 10
    gray: bool = False

    def __post_init__(self) -> None:
        if self.name not in TASK_NAMES:
            raise ValueError(f"unknown task {self.name!r}; expected one of {', '.join(TASK_NAMES)}")
        if self.name == "sr" and self.scale not in SR_SCALES:
            raise ValueError(f"scale {self.scale} is not supported; expected one of {', '.join(map(str, SR_SCALES))}")
        if self.name != "sr" and self.scale != 1:
            raise ValueError(f"--scale applies to sr only, not {self.name}")
        if self.name == "denoise" and self.sigma not in SIGMAS:
            raise ValueError(f"sigma {self.sigma:g} is not supported; expected one of {', '.join(f'{v:g}' for v in SIGMAS)}")
        if self.name == "car" and self.quality not in QUALITIES:
            raise ValueError(f"JPEG quality {self.quality} is not supported; expected one of "
                             f"{', '.join(map(str, QUALITIES))}")
        if self.gray and self.name != "car":
            raise ValueError("--gray applies to car only")

    @property
    def in_channels(self) -> int:
        return 1 if self.gray else 3

    @property
    def border(self) -> int:
        return self.scale if self.name == "sr" else 0

    @property
    def label(self) -> str:
        detail = {"sr": f"x{self.scale}", "denoise": f"sigma{self.sigma:g}", "car": f"q{self.quality}", "demosaic": "rggb"}
        return f"{self.name}-{detail[self.name]}" + ("-gray" if self.gray else "")

    @property
    def headline_metric(self) -> str:
        """The metric papers report for the task: Y for sr and car, RGB for denoise and demosaic."""
        return "psnr_y" if self.name in ("sr", "car") else "psnr_rgb"

    def prepare_target(self, image: np.ndarray) -> np.ndarray:
        """The clean image as the task sees it: gray/Y for gray car, RGB otherwise; cropped for sr."""
        image = to_gray_y(image) if self.gray else to_rgb(image)
        return crop_to_multiple(image, self.scale) if self.name == "sr" else image

    def degrade(self, target: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The network input for a prepared target. Denoise needs `rng` (seeded at evaluation)."""
        if self.name == "sr":
            return imresize(target, 1 / self.scale)
        if self.name == "denoise":
            if rng is None:
                raise ValueError("denoise needs a random generator for its noise")
            noise = rng.normal(0.0, self.sigma, target.shape)
            return ((target.astype(np.float64) + noise) / 255.0).astype(np.float32)  # not clipped
        if self.name == "demosaic":
            return bayer_mosaic(target)
        return jpeg_roundtrip(target, self.quality)

    def baseline(self, degraded: np.ndarray) -> np.ndarray:
        """The classical reference output: bicubic for sr, bilinear demosaic, the input itself otherwise."""
        if self.name == "sr":
            return imresize(degraded, self.scale)
        if self.name == "demosaic":
            return bilinear_demosaic(degraded)
        return degraded


def task_from_options(name: str, *, scale: int | None = None, sigma: float | None = None, quality: int | None = None,
                      gray: bool = False) -> TaskSpec:
    """A TaskSpec with the task's defaults (sr x2, sigma 25, q10) for options left out."""
    if name == "sr":
        return TaskSpec(name, scale=scale or 2)
    if scale is not None:
        raise ValueError(f"--scale applies to sr only, not {name}")
    return TaskSpec(name, sigma=25.0 if sigma is None else float(sigma), quality=quality or 10, gray=gray)


def to_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def to_gray_y(image: np.ndarray) -> np.ndarray:
    """Y of BT.601 studio range as uint8 (how gray JPEG benchmarks are made from color images)."""
    return image if image.ndim == 2 else round_to_uint8(rgb_to_y(as_255(image)))


def bayer_mask(height: int, width: int) -> np.ndarray:
    """(H, W, 3) 0/1 mask of the RGGB pattern."""
    mask = np.zeros((height, width, 3), dtype=np.uint8)
    mask[0::2, 0::2, 0] = 1
    mask[0::2, 1::2, 1] = 1
    mask[1::2, 0::2, 1] = 1
    mask[1::2, 1::2, 2] = 1
    return mask


def bayer_mosaic(image: np.ndarray) -> np.ndarray:
    """The 3-channel masked RGGB mosaic of an RGB uint8 image."""
    return image * bayer_mask(*image.shape[:2])


def bilinear_demosaic(mosaic: np.ndarray) -> np.ndarray:
    """Bilinear demosaicing as normalised convolution: each missing sample is the mean of its nearest
    same-colour neighbours (4-neighbour cross for G, 2 or 4 diagonal/axial for R and B); known samples stay."""
    mask = bayer_mask(*mosaic.shape[:2]).astype(np.float64)
    kernels = [np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float64),
               np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float64),
               np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float64)]
    out = np.empty(mosaic.shape, dtype=np.float64)
    for c, kernel in enumerate(kernels):
        weighted = convolve(mosaic[..., c].astype(np.float64), kernel, mode="constant")
        weights = convolve(mask[..., c], kernel, mode="constant")
        out[..., c] = weighted / weights
    return round_to_uint8(out)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode with Pillow at `quality` (4:2:0 chroma subsampling for color) and decode."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=2)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("L" if image.ndim == 2 else "RGB"))
