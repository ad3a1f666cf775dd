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

from search_space.registry import TASKS, get_task, resolve  # the tasks and their options, once

from .imresize import crop_to_multiple, imresize, round_to_uint8
from .metrics import as_255, rgb_to_y


@dataclass(frozen=True)
class TaskSpec:
    """One task variant: the task's registry entry (search_space/registry.py) with its option's value."""
    name: str
    scale: int = 1
    sigma: float = 25.0
    quality: int = 10
    gray: bool = False

    def __post_init__(self) -> None:
        task = get_task(self.name)
        option = task.option
        if option is not None:
            value = getattr(self, option.name)
            if value not in option.values:
                shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in option.values)
                raise ValueError(f"{option.name} {value:g} is not supported for {self.name}; expected one of {shown}")
        if not task.upscales and self.scale != 1:
            raise ValueError(f"--scale applies to {', '.join(n for n, t in TASKS.items() if t.upscales)} only, "
                             f"not {self.name}")
        if self.gray and not task.gray:
            raise ValueError(f"--gray applies to {', '.join(n for n, t in TASKS.items() if t.gray)} only")

    @property
    def entry(self):
        return get_task(self.name)

    @property
    def in_channels(self) -> int:
        return 1 if self.gray else 3

    @property
    def border(self) -> int:
        return self.scale if self.entry.border_is_scale else 0

    @property
    def label(self) -> str:
        """The variant's name: sr-x2, denoise-sigma25, car-q10 (-gray), demosaic."""
        option = self.entry.option
        detail = option.label.format(getattr(self, option.name)) if option else "rggb"
        return f"{self.name}-{detail}" + ("-gray" if self.gray else "")

    @property
    def headline_metric(self) -> str:
        """The metric papers report for the task: Y for sr and car, RGB for denoise and demosaic."""
        return self.entry.headline_metric

    def prepare_target(self, image: np.ndarray) -> np.ndarray:
        """The clean image as the task sees it: gray/Y for gray car, RGB otherwise; cropped for sr."""
        image = to_gray_y(image) if self.gray else to_rgb(image)
        return crop_to_multiple(image, self.scale) if self.entry.upscales else image

    def degrade(self, target: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The network input for a prepared target. Denoise needs `rng` (seeded at evaluation)."""
        return resolve(self.entry.degrade)(self, target, rng)

    def baseline(self, degraded: np.ndarray) -> np.ndarray:
        """The classical reference output: bicubic for sr, bilinear demosaic, the input itself otherwise."""
        return degraded if self.entry.baseline is None else resolve(self.entry.baseline)(self, degraded)


def task_from_options(name: str, *, gray: bool = False, **options) -> TaskSpec:
    """A TaskSpec from the CLI's option flags (None where not given): the task's own option, or its default
    (sr x2, sigma 25, q10). Another task's option is refused."""
    task = get_task(name)
    given = {key: value for key, value in options.items() if value is not None}
    for key in given:
        if task.option is None or key != task.option.name:
            owners = [n for n, t in TASKS.items() if t.option is not None and t.option.name == key]
            raise ValueError(f"--{key} applies to {', '.join(owners) or 'no task'} only, not {name}")
    if task.option is not None:
        value = given.get(task.option.name, task.option.default)
        given[task.option.name] = type(task.option.default)(value)
    return TaskSpec(name, gray=gray, **given)


# The degradations and classical baselines the task table names, each (spec, image[, rng]).
def degrade_sr(spec: TaskSpec, target: np.ndarray, rng=None) -> np.ndarray:
    return imresize(target, 1 / spec.scale)


def add_gaussian_noise(spec: TaskSpec, target: np.ndarray, rng=None) -> np.ndarray:
    if rng is None:
        raise ValueError("denoise needs a random generator for its noise")
    noise = rng.normal(0.0, spec.sigma, target.shape)
    return ((target.astype(np.float64) + noise) / 255.0).astype(np.float32)  # not clipped


def jpeg_degrade(spec: TaskSpec, target: np.ndarray, rng=None) -> np.ndarray:
    return jpeg_roundtrip(target, spec.quality)


def bayer_degrade(spec: TaskSpec, target: np.ndarray, rng=None) -> np.ndarray:
    return bayer_mosaic(target)


def bicubic_baseline(spec: TaskSpec, degraded: np.ndarray) -> np.ndarray:
    return imresize(degraded, spec.scale)


def bilinear_baseline(spec: TaskSpec, degraded: np.ndarray) -> np.ndarray:
    return bilinear_demosaic(degraded)


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
    from scipy.ndimage import convolve  # here: scipy.ndimage takes a quarter second to import, for this only
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
