"""Images in, training batches out: decoding (once, cached), dataset layouts, and seeded random patches.

Sources: the everyday photographs bundled inside the scikit-image, scikit-learn and matplotlib wheels (the embedded default, no download),
any folder of images, the DIV2K layout (DIV2K_train_HR / DIV2K_valid_HR), and benchmark folders laid out
as docs/datasets.md says (Set5/HR, Set14, Kodak24, McMaster, CBSD68, classic5, LIVE1).
Patches get random flips and 90-degree rotations from a seeded numpy generator whose state is saved in
checkpoints, so a resumed run draws the same batches as an uninterrupted one.
"""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from .tasks import TaskSpec

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
# The embedded default: everyday colour photographs that ship inside two registry wheels (nothing is fetched at run
# time), chosen to look like users' photos: people, buildings, vehicles, flowers, a cat, a cup. Earlier defaults
# also held a Hubble deep field, a microscopy stain and a retina, whose colours taught the model a blue-purple cast.
# None of them is in any evaluation set used here (Set5, Set14, Kodak24, McMaster, CBSD68, classic5, LIVE1).
#   scikit-image (BSD-3-Clause; its data/README and each loader's docstring give the sources): astronaut (NASA,
#     public domain), rocket (SpaceX, CC0), motorcycle_left/right (Middlebury stereo 2014), chelsea and coffee
#     (by Stefan van der Walt and Rachel Michaelson, CC0).
#   scikit-learn (BSD-3-Clause; sklearn/datasets/images/README.txt): china and flower (Flickr, CC BY 2.0).
#   matplotlib (PSF-based licence; mpl-data/sample_data): grace_hopper (US Navy photograph, public domain).
EMBEDDED_TRAIN = ("astronaut", "rocket", "motorcycle_left", "motorcycle_right", "china", "flower", "grace_hopper")
EMBEDDED_VALID = ("chelsea", "coffee")
_EMBEDDED_FILES = {"astronaut": ("skimage", "data/astronaut.png"), "rocket": ("skimage", "data/rocket.jpg"),
                   "motorcycle_left": ("skimage", "data/motorcycle_left.png"),
                   "motorcycle_right": ("skimage", "data/motorcycle_right.png"),
                   "china": ("sklearn", "datasets/images/china.jpg"), "flower": ("sklearn", "datasets/images/flower.jpg"),
                   "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
                   "chelsea": ("skimage", "data/chelsea.png"), "coffee": ("skimage", "data/coffee.png")}
BENCHMARKS = {"Set5": "Set5/HR", "Set14": "Set14", "Kodak24": "Kodak24", "McMaster": "McMaster", "CBSD68": "CBSD68",
              "classic5": "classic5", "LIVE1": "LIVE1"}


class DataError(ValueError):
    """An image or a folder that cannot be used; the message names it."""


DEFAULT_MAX_PIXELS = 40_000_000  # an 8K photograph (33 Mpixels) fits; ACLA_MAX_PIXELS changes it


def max_pixels() -> int:
    """The largest image, in pixels, that is decoded (ACLA_MAX_PIXELS, default 40 million): the metrics and the
    degradations hold several float copies of an image, so a bigger one would exhaust the memory instead."""
    text = os.environ.get("ACLA_MAX_PIXELS", "")
    try:
        value = int(float(text)) if text else DEFAULT_MAX_PIXELS
    except ValueError:
        raise DataError(f"ACLA_MAX_PIXELS={text!r} is not a number; expected a pixel count such as 40000000") from None
    if value < 1:
        raise DataError(f"ACLA_MAX_PIXELS={text!r} must be 1 or more")
    return value


def _open_checked(path: str) -> Image.Image:
    """The image opened (header only), refused before any decoding when it is above the pixel limit."""
    limit = max_pixels()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
        try:
            image = Image.open(path)
        except Image.DecompressionBombError:  # Pillow's hard stop, far above the default limit
            raise DataError(f"{path}: image is above Pillow's limit of {2 * Image.MAX_IMAGE_PIXELS} pixels; "
                            f"expected at most {limit} (ACLA_MAX_PIXELS)") from None
    width, height = image.size
    if width * height > limit:
        image.close()
        raise DataError(f"{path}: image is {width}x{height} ({width * height / 1e6:.1f} Mpixels), above the limit of "
                        f"{limit / 1e6:.1f} Mpixels; set ACLA_MAX_PIXELS to allow it")
    return image


@functools.lru_cache(maxsize=512)
def _decode(path: str, mtime_ns: int) -> np.ndarray:
    try:
        with _open_checked(path) as image, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            return _to_uint8_array(image, path)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{path}: cannot decode image ({err.__class__.__name__}: {err})") from None


def check_images(image_set: "ImageSet", min_side: int = 1) -> None:
    """Every image of the set readable, within the pixel limit, and at least `min_side` pixels on each side,
    checked from the headers (and the PNG checksums) without decoding: a bad file is one line naming it,
    before any trial starts, rather than a failure inside every trial."""
    for path in image_set.paths:
        try:
            with _open_checked(path) as image:
                width, height = image.size
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DataError(f"{path}: cannot decode image ({err.__class__.__name__}: {err})") from None
        if min(width, height) < min_side:
            raise DataError(f"{path}: image {width}x{height} is smaller than the {min_side}x{min_side} patch "
                            f"or scale it needs; remove it or use a smaller --profile patch")


def patch_tiles(image_set: "ImageSet", side: int) -> int:
    """How many non-overlapping side x side patches the set's images hold in all, from their headers."""
    total = 0
    for path in image_set.paths:
        with _open_checked(path) as image:
            width, height = image.size
        total += (width // side) * (height // side)
    return total


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) or (H, W), once per file version (cached)."""
    path = str(path)
    try:
        stat = os.stat(path)
    except OSError as err:
        raise DataError(f"{path}: cannot read image ({err.strerror})") from None
    array = _decode(path, stat.st_mtime_ns)
    array.setflags(write=False)
    return array


def _to_uint8_array(image: Image.Image, path: str) -> np.ndarray:
    """RGB and L pass; palette, CMYK, YCbCr and LA convert; 16-bit keeps its top 8 bits; alpha is
    composited on white unless fully opaque; float images are rejected."""
    mode = image.mode
    if mode in ("RGB", "L"):
        return np.asarray(image)
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise DataError(f"{path}: integer image with values outside 0..65535 is not supported")
        return (values >> 8).astype(np.uint8) if values.max() > 255 else values.astype(np.uint8)
    if mode == "F":
        raise DataError(f"{path}: floating-point images are not supported; expected 8- or 16-bit RGB or gray")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
        if mode == "RGB":
            return np.asarray(image)
    if mode in ("RGBA", "LA", "PA"):
        rgba = np.asarray(image.convert("RGBA")).astype(np.float64)
        alpha = rgba[..., 3:4] / 255.0
        if np.all(alpha == 1):
            return rgba[..., :3].astype(np.uint8)
        return np.floor(rgba[..., :3] * alpha + 255.0 * (1 - alpha) + 0.5).astype(np.uint8)
    if mode in ("CMYK", "YCbCr", "1", "HSV", "LAB", "RGBX"):
        return np.asarray(image.convert("L" if mode == "1" else "RGB"))
    raise DataError(f"{path}: image mode {mode} is not supported; expected RGB, gray, palette or 16-bit")


@dataclass(frozen=True)
class ImageSet:
    """Named uint8 images, decoded once."""
    name: str
    paths: tuple[str, ...]

    def images(self) -> list[tuple[str, np.ndarray]]:
        return [(Path(p).stem, load_image(p)) for p in self.paths]


@dataclass(frozen=True)
class DataSpec:
    """A run's training and validation images."""
    train: ImageSet
    valid: ImageSet


def list_images(folder: str | os.PathLike) -> tuple[str, ...]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of images")
    paths = tuple(sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
    if not paths:
        raise DataError(f"{folder}: no images found; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    return paths


def embedded_sets() -> tuple[ImageSet, ImageSet]:
    """Train and validation sets from the photographs bundled with scikit-image, scikit-learn and matplotlib (located from
    each package's spec, without importing it)."""
    import importlib.util

    def paths(names):
        files = (_EMBEDDED_FILES[n] for n in names)
        return tuple(str(Path(importlib.util.find_spec(package).origin).parent / path) for package, path in files)
    return ImageSet("embedded-train", paths(EMBEDDED_TRAIN)), ImageSet("embedded-valid", paths(EMBEDDED_VALID))


def folder_sets(folder: str | os.PathLike, valid_fraction: float = 0.1) -> tuple[ImageSet, ImageSet]:
    """DIV2K layout if present, else every image of the folder with a deterministic split (every k-th to validation)."""
    folder = Path(folder)
    if (folder / "DIV2K_train_HR").is_dir():
        valid = folder / "DIV2K_valid_HR"
        return (ImageSet("DIV2K-train", list_images(folder / "DIV2K_train_HR")),
                ImageSet("DIV2K-valid", list_images(valid) if valid.is_dir() else ()))
    paths = list_images(folder)
    if len(paths) < 2:
        return ImageSet(folder.name, paths), ImageSet(folder.name + "-valid", paths)
    step = max(2, round(1 / valid_fraction))
    valid = paths[::step]
    return ImageSet(folder.name, tuple(p for p in paths if p not in valid)), ImageSet(folder.name + "-valid", valid)


def user_datasets_folder() -> Path:
    """The per-user folder for the test sets: $XDG_CACHE_HOME/acla-orch/datasets (~/.cache/... by default),
    %LOCALAPPDATA%\\acla-orch\\datasets on Windows."""
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "acla-orch" / "datasets"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "acla-orch" / "datasets"


def datasets_root(given: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Where the test sets are, and what said so: the --datasets flag, else $ACLA_DATASETS, else the per-user
    folder. Never a folder beside the working directory."""
    if given:
        return Path(given), "--datasets"
    if os.environ.get("ACLA_DATASETS"):
        return Path(os.environ["ACLA_DATASETS"]), "ACLA_DATASETS"
    return user_datasets_folder(), "the per-user data folder"


def benchmark_set(root: str | os.PathLike | None, name: str) -> ImageSet:
    """A test set from the datasets folder (`datasets_root(root)`), laid out as docs/datasets.md says (e.g.
    name 'Set5' reads <root>/Set5/HR). A set that is not there is a DataError naming the folder looked in."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    folder, source = datasets_root(root)
    where = folder / BENCHMARKS[name]
    if not where.is_dir():
        raise DataError(f"no {name} test set in {folder} (from {source}): expected its images in {where}; set "
                        f"--datasets or ACLA_DATASETS to the folder that holds {BENCHMARKS[name]}, or put it in "
                        f"{user_datasets_folder()} (docs/datasets.md)")
    return ImageSet(name, list_images(where))


@dataclass
class Pair:
    """A prepared (degraded input, clean target) image pair; the input is None for on-the-fly degradations."""
    name: str
    target: np.ndarray
    degraded: np.ndarray | None


def prepare_pairs(image_set: ImageSet, task: TaskSpec, *, min_size: int) -> list[Pair]:
    """Targets for the task, with deterministic degradations (sr, car) computed once."""
    pairs = []
    for name, image in image_set.images():
        target = task.prepare_target(image)
        if min(target.shape[:2]) < min_size:
            raise DataError(f"{name}: image {target.shape[1]}x{target.shape[0]} is smaller than the "
                            f"{min_size}x{min_size} patch or scale it needs")
        degraded = task.degrade(target) if task.name in ("sr", "car") else None
        pairs.append(Pair(name, target, degraded))
    return pairs


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 or float (H, W[, C]) to float32 (C, H, W) in [0, 1] (uint8 / 255; float kept)."""
    array = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    array = array[..., None] if array.ndim == 2 else array
    import torch  # here, not at the top: the CLI checks images before it pays for torch's import
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _augment(image: np.ndarray, flip: bool, rotations: int) -> np.ndarray:
    image = image[:, ::-1] if flip else image
    return np.rot90(image, rotations, axes=(0, 1))


class PatchSampler:
    """Endless seeded batches of (input, target) patches. `patch_size` is the target patch; SR inputs are
    `patch_size / scale`. Its state (the numpy generator's) goes into checkpoints."""

    def __init__(self, pairs: list[Pair], task: TaskSpec, *, patch_size: int, batch_size: int, seed: int) -> None:
        if not pairs:
            raise DataError("no training images")
        if patch_size % max(task.scale, 2 if task.name == "demosaic" else 1):
            raise DataError(f"patch size {patch_size} must be a multiple of the scale {task.scale}")
        self.pairs, self.task = pairs, task
        self.patch_size, self.batch_size = patch_size, batch_size
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        import torch
        inputs, targets = zip(*(self._patch() for _ in range(self.batch_size)))
        return torch.stack(inputs), torch.stack(targets)

    def _patch(self) -> tuple[torch.Tensor, torch.Tensor]:
        task, rng, size = self.task, self.rng, self.patch_size
        pair = self.pairs[rng.integers(len(self.pairs))]
        scale = task.scale
        height, width = pair.target.shape[:2]
        top = int(rng.integers(0, (height - size) // scale + 1)) * scale
        left = int(rng.integers(0, (width - size) // scale + 1)) * scale
        flip, rotations = bool(rng.integers(2)), int(rng.integers(4))
        target = _augment(pair.target[top:top + size, left:left + size], flip, rotations)
        if pair.degraded is not None:  # sr, car: crop the precomputed input at the same place
            lr = size // scale
            degraded = pair.degraded[top // scale:top // scale + lr, left // scale:left // scale + lr]
            degraded = _augment(degraded, flip, rotations)
        else:  # denoise, demosaic: degrade the augmented clean patch, so the Bayer phase stays RGGB
            degraded = task.degrade(np.ascontiguousarray(target), rng)
        return to_tensor(degraded), to_tensor(np.ascontiguousarray(target))


def centre_crop(image: np.ndarray, size: int, multiple: int) -> np.ndarray:
    if size <= 0:
        return image
    height, width = image.shape[:2]
    crop_h, crop_w = min(size, height) // multiple * multiple, min(size, width) // multiple * multiple
    top, left = (height - crop_h) // 2 // multiple * multiple, (width - crop_w) // 2 // multiple * multiple
    return image[top:top + crop_h, left:left + crop_w]


def evaluation_pairs(task: TaskSpec, image_set: "ImageSet", *, seed: int = 0, crop: int = 0):
    """(name, clean target, degraded input) per image of a set, one at a time, degraded as every evaluation
    degrades it: the task's target (gray, cropped to the scale), an optional centre crop, seeded noise per image."""
    images = image_set.images()
    if not images:
        raise DataError(f"{image_set.name}: no images")
    for index, (name, image) in enumerate(images):
        target = centre_crop(task.prepare_target(image), crop, max(task.scale, 2))
        yield name, target, task.degrade(target, np.random.default_rng([seed, index]))
