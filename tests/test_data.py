import numpy as np
import pytest
from PIL import Image

from workers.data import (DataError, ImageSet, PatchSampler, embedded_sets, folder_sets, load_image, prepare_pairs)
from workers.tasks import TaskSpec


def save(path, array, mode=None, **kwargs):
    Image.fromarray(array, mode=mode).save(path, **kwargs) if mode else Image.fromarray(array).save(path, **kwargs)
    return path


def test_modes_are_converted_on_purpose(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3)).astype(np.uint8)
    assert np.array_equal(load_image(save(tmp_path / "rgb.png", rgb)), rgb)
    gray = rgb[..., 0]
    assert load_image(save(tmp_path / "gray.png", gray)).shape == (6, 5)
    opaque = np.concatenate([rgb, np.full((6, 5, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(load_image(save(tmp_path / "rgba.png", opaque)), rgb)
    clear = opaque.copy()
    clear[..., 3] = 0
    assert (load_image(save(tmp_path / "clear.png", clear)) == 255).all()  # composited on white
    sixteen = (gray.astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(tmp_path / "16.png")
    assert np.array_equal(load_image(tmp_path / "16.png"), gray)
    palette = Image.fromarray(rgb).convert("P")
    palette.save(tmp_path / "p.png")
    assert np.array_equal(load_image(tmp_path / "p.png"), np.asarray(palette.convert("RGB")))


def test_bad_files_are_named(tmp_path):
    path = save(tmp_path / "cut.png", np.zeros((40, 40, 3), np.uint8))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match="cut.png"):
        load_image(path)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="text.png"):
        load_image(tmp_path / "text.png")
    with pytest.raises(DataError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match="floating-point"):
        load_image(tmp_path / "f.tif")


def test_empty_folder_and_small_images(tmp_path):
    with pytest.raises(DataError, match="no images"):
        folder_sets(tmp_path)
    small = ImageSet("s", (str(save(tmp_path / "small.png", np.zeros((20, 20, 3), np.uint8))),))
    with pytest.raises(DataError, match="small"):
        prepare_pairs(small, TaskSpec("sr", scale=4), min_size=48)


def test_div2k_layout(tmp_path):
    for split in ("DIV2K_train_HR", "DIV2K_valid_HR"):
        (tmp_path / split).mkdir()
        save(tmp_path / split / "0001.png", np.zeros((8, 8, 3), np.uint8))
    train_set, valid_set = folder_sets(tmp_path)
    assert train_set.name == "DIV2K-train" and "DIV2K_valid_HR" in valid_set.paths[0]


def test_embedded_images_ship_with_scikit_image():
    train_set, valid_set = embedded_sets()
    assert len(train_set.paths) >= 5 and len(valid_set.paths) >= 1
    assert not set(train_set.paths) & set(valid_set.paths)
    for name, image in valid_set.images():
        assert image.dtype == np.uint8 and image.ndim == 3, name


def test_decoding_is_cached(tmp_path):
    path = save(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    assert load_image(path) is load_image(path)


@pytest.mark.parametrize("task", [TaskSpec("sr", scale=3), TaskSpec("demosaic"), TaskSpec("denoise"), TaskSpec("car")],
                         ids=lambda t: t.label)
def test_patches_are_aligned_and_seeded(task, tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (40, 44, 3)).astype(np.uint8)
    pairs = prepare_pairs(ImageSet("x", (str(save(tmp_path / "x.png", image)),)), task, min_size=12)
    sampler = PatchSampler(pairs, task, patch_size=12, batch_size=3, seed=5)
    inputs, targets = next(sampler)
    assert targets.shape == (3, 3, 12, 12) and inputs.shape == (3, 3, 12 // task.scale, 12 // task.scale)
    again = PatchSampler(pairs, task, patch_size=12, batch_size=3, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(next(again), (inputs, targets)))
    if task.name == "demosaic":  # the input stays an RGGB mosaic after flips and rotations
        assert (inputs[:, 1, 0::2, 0::2] == 0).all() and (inputs[:, 0, 1::2, :] == 0).all()


def test_decompression_bomb_is_a_data_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels is over twice the limit: Pillow refuses
    with pytest.raises(DataError, match="above Pillow.s limit"):
        load_image(path)


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    """ACLA_MAX_PIXELS bounds what is decoded (default 40 Mpixels), checked from the header before decoding."""
    from workers.data import DEFAULT_MAX_PIXELS, DataError, ImageSet, check_images, load_image, max_pixels
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(path)
    monkeypatch.delenv("ACLA_MAX_PIXELS", raising=False)
    assert max_pixels() == DEFAULT_MAX_PIXELS == 40_000_000
    monkeypatch.setenv("ACLA_MAX_PIXELS", "11999")
    with pytest.raises(DataError, match="120x100 .*ACLA_MAX_PIXELS"):
        load_image(path)
    with pytest.raises(DataError, match="ACLA_MAX_PIXELS"):
        check_images(ImageSet("one", (str(path),)))
    monkeypatch.setenv("ACLA_MAX_PIXELS", "12000")
    assert load_image(path).shape == (100, 120, 3)
    check_images(ImageSet("one", (str(path),)), min_side=100)
    with pytest.raises(DataError, match="smaller than the 101x101 patch"):
        check_images(ImageSet("one", (str(path),)), min_side=101)
    monkeypatch.setenv("ACLA_MAX_PIXELS", "lots")
    with pytest.raises(DataError, match="not a number"):
        max_pixels()


def test_cli_benchmark_names_are_the_data_layers():
    from orchestrator.cli.main import BENCHMARK_NAMES
    from workers.data import BENCHMARKS
    assert BENCHMARK_NAMES == tuple(BENCHMARKS)
