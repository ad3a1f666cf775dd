"""Input checks shared by every verb and the engines below the CLI: the core's input errors as one-line usage
errors, genotype files, output folders, atomic image writes, training data checked before Ray starts."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from orchestrator.runtime.errors import UsageError


@contextmanager
def user_errors():
    """Input errors from the core become one-line usage errors."""
    from search_space.budget import BudgetError
    from workers.checkpoint import CheckpointError
    from storage.stores import StorageError
    from workers.data import DataError
    try:
        yield
    except (DataError, CheckpointError, BudgetError, StorageError) as err:
        raise UsageError(str(err)) from None


def read_genotype(path: str):
    from search_space.genotype import Genotype
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read genotype file {path}: {getattr(err, 'strerror', None) or err}") from None
    try:
        return Genotype.from_json(text)
    except ValueError as err:
        raise UsageError(f"genotype file {path}: {err}") from None


def run_home() -> Path:
    return Path(os.environ.get("ACLA_HOME", "acla-runs"))


def check_output_folder(path: Path) -> None:
    """The folder an output goes to exists and is writable: a mistyped folder is an error, not a new tree."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{path}: folder {folder} is not writable")


def write_image_atomically(path: Path, image: np.ndarray) -> None:
    from PIL import Image
    from workers.atomic import write_atomically
    suffix = path.suffix.lower()
    if suffix not in (".png", ".bmp", ".tif", ".tiff", ".ppm"):
        raise UsageError(f"{path}: output must be a lossless image (.png, .bmp, .tif or .ppm), got '{suffix or 'no suffix'}'")
    check_output_folder(path)
    write_atomically(path, lambda temporary: Image.fromarray(image).save(temporary))


def check_training_data(data, task, profile) -> None:
    """Every training and validation image readable, and the training images big enough for the profile's
    patches, from their headers: before Ray starts, not inside each trial."""
    from workers.data import check_images, patch_tiles
    side = profile.patch * task.scale
    with user_errors():
        check_images(data.train, min_side=side)
        check_images(data.valid)
        tiles = patch_tiles(data.train, side)
    if tiles < profile.batch_size:
        raise UsageError(f"{len(data.train.paths)} training image(s) hold only {tiles} non-overlapping {side}x{side} "
                         f"patch(es); the {profile.name} profile draws {profile.batch_size} per batch: expected more "
                         f"or larger images, together at least {profile.batch_size} patches of {side}x{side}")
