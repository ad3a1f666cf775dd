import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from workers.metrics import as_255, image_metrics, psnr, rgb_to_y, ssim


def test_psnr_by_hand():
    ref = np.zeros((4, 4))
    test = ref.copy()
    test[0, 0] = 16.0  # MSE = 256 / 16 = 16 -> PSNR = 10 log10(255^2 / 16)
    assert psnr(ref, test) == pytest.approx(10 * np.log10(255 ** 2 / 16))
    assert psnr(ref, ref) == float("inf")


def test_y_channel_matches_matlab_rgb2ycbcr():
    # MATLAB: rgb2ycbcr(uint8([255 255 255])) -> Y 235; black -> 16; pure red -> 81.481 (double before rounding)
    pixels = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], dtype=np.uint8)
    y = rgb_to_y(as_255(pixels))
    np.testing.assert_allclose(y, [[235.0, 16.0, 81.481]], atol=1e-9)


def test_ssim_matches_scikit_image():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (40, 37, 3)).astype(np.float64)
    test = np.clip(ref + rng.normal(0, 20, ref.shape), 0, 255)
    for channel in range(3):
        want = structural_similarity(ref[..., channel], test[..., channel], data_range=255, gaussian_weights=True,
                                     sigma=1.5, use_sample_covariance=False)
        assert ssim(ref[..., channel], test[..., channel]) == pytest.approx(want, abs=1e-10)
    assert ssim(ref, ref) == pytest.approx(1.0)


def test_ssim_constant_images_by_hand():
    # Constant images a and b: SSIM = (2ab + C1) / (a^2 + b^2 + C1) (the contrast term is C2 / C2 = 1)
    a, b = np.full((20, 20), 100.0), np.full((20, 20), 110.0)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1))


def test_inputs_uint8_and_float_agree_and_border_crops():
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, (30, 30, 3)).astype(np.uint8)
    test = rng.integers(0, 256, (30, 30, 3)).astype(np.uint8)
    from_uint8 = image_metrics(ref, test, border=3)
    from_float = image_metrics(torch.from_numpy(ref).permute(2, 0, 1) / 255.0, test.astype(np.float64) / 255, border=3)
    for key in from_uint8:
        assert from_float[key] == pytest.approx(from_uint8[key], abs=1e-5)
    cropped = psnr(rgb_to_y(as_255(ref))[3:-3, 3:-3], rgb_to_y(as_255(test))[3:-3, 3:-3])
    assert from_uint8["psnr_y"] == pytest.approx(cropped)


def test_size_mismatch_and_bad_dtype():
    with pytest.raises(ValueError, match="differ in size"):
        image_metrics(np.zeros((20, 20), np.uint8), np.zeros((20, 21), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        as_255(np.zeros((4, 4), np.int32))
