"""Metrics against scikit-image (fastMRI evaluate.py's references) and hand formulas."""

from __future__ import annotations

import numpy as np
import pytest
import sigpy
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from kadapt.errors import InvalidInputError, NonFiniteDataError
from kadapt.metrics import evaluate_volume, hfen, laplacian_of_gaussian, nmae, nmse, psnr, ssim, ssim_map


def phantom_volume(slices: int = 3, height: int = 48, width: int = 40) -> np.ndarray:
    """Magnitude volume (slices, H, W) with a different scale per slice."""
    image = np.abs(sigpy.shepp_logan((height, width)))
    return np.stack([image * (0.7 + 0.3 * index) for index in range(slices)])


@pytest.fixture
def volume_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    gt = phantom_volume()
    pred = np.abs(gt + 0.05 * rng.standard_normal(gt.shape) + ndimage.shift(gt, (0, 1, 0)) * 0.1)
    return gt, pred


def test_psnr_matches_scikit_image_with_the_volume_max(volume_pair) -> None:
    gt, pred = volume_pair
    expected = peak_signal_noise_ratio(gt, pred, data_range=gt.max())
    assert psnr(gt, pred) == pytest.approx(expected, rel=1e-12)
    assert psnr(gt, pred, maxval=2.0) == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=2.0))
    assert psnr(gt, gt) == float("inf")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ssim_matches_scikit_image_mean_over_slices(volume_pair, dtype: type) -> None:
    gt, pred = (array.astype(dtype) for array in volume_pair)
    data_range = float(gt.max())
    per_slice = [
        structural_similarity(
            g.astype(np.float64),
            p.astype(np.float64),
            win_size=7,
            data_range=data_range,
            K1=0.01,
            K2=0.03,
            use_sample_covariance=True,
            gaussian_weights=False,
        )
        for g, p in zip(gt, pred, strict=True)
    ]
    assert ssim(gt, pred) == pytest.approx(float(np.mean(per_slice)), abs=1e-6)
    assert ssim(gt, gt) == pytest.approx(1.0, abs=1e-12)


def test_ssim_uses_the_volume_max_not_the_slice_max(volume_pair) -> None:
    gt, pred = volume_pair
    darkest_alone = ssim(gt[0], pred[0])
    darkest_in_volume = structural_similarity(gt[0], pred[0], win_size=7, data_range=gt.max())
    assert ssim(gt[:1], pred[:1], maxval=gt.max()) == pytest.approx(darkest_in_volume, abs=1e-9)
    assert darkest_alone != pytest.approx(darkest_in_volume, abs=1e-4)


def test_ssim_map_keeps_the_volume_shape(volume_pair) -> None:
    gt, pred = volume_pair
    pixelwise = ssim_map(gt, pred)
    assert pixelwise.shape == gt.shape
    assert np.all(pixelwise <= 1.0 + 1e-12)


def test_nmse_and_nmae_match_hand_formulas(volume_pair) -> None:
    gt, pred = volume_pair
    assert nmse(gt, pred) == pytest.approx(
        np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2, rel=1e-12
    )
    assert nmae(gt, pred) == pytest.approx(np.sum(np.abs(gt - pred)) / np.sum(np.abs(gt)), rel=1e-12)
    # Volume-level, not a mean of per-slice ratios.
    per_slice_mean = np.mean([nmse(g, p) for g, p in zip(gt, pred, strict=True)])
    assert nmse(gt, pred) != pytest.approx(per_slice_mean, rel=1e-3)
    assert nmse(gt, np.zeros_like(gt)) == pytest.approx(1.0)


def test_hfen_is_the_relative_error_of_the_laplacian_of_gaussian(volume_pair) -> None:
    gt, pred = volume_pair
    log_gt = np.stack([ndimage.gaussian_laplace(g, 1.5, mode="constant", truncate=7 / 1.5) for g in gt])
    log_pred = np.stack([ndimage.gaussian_laplace(p, 1.5, mode="constant", truncate=7 / 1.5) for p in pred])
    expected = np.linalg.norm(log_gt - log_pred) / np.linalg.norm(log_gt)
    assert hfen(gt, pred) == pytest.approx(expected, rel=1e-12)
    assert hfen(gt, gt) == 0.0
    # Scale invariant, and blind to a constant offset (the LoG kernel has zero sum).
    assert hfen(3 * gt, 3 * pred) == pytest.approx(hfen(gt, pred), rel=1e-9)
    padded_gt = np.pad(gt, ((0, 0), (10, 10), (10, 10)))
    assert hfen(padded_gt, padded_gt + 0.01) < 0.05


def test_laplacian_of_gaussian_works_per_slice_on_a_15_pixel_support() -> None:
    impulse = np.zeros((2, 31, 31))
    impulse[0, 15, 15] = 1.0
    response = laplacian_of_gaussian(impulse)
    assert np.all(response[1] == 0)  # no leakage between slices
    nonzero_rows = np.flatnonzero(np.any(response[0] != 0, axis=1))
    assert nonzero_rows.min() == 15 - 7
    assert nonzero_rows.max() == 15 + 7
    assert response[0, 15, 15] < 0  # a bright point has a negative Laplacian


def test_evaluate_volume_reports_every_metric(volume_pair) -> None:
    gt, pred = volume_pair
    report = evaluate_volume(gt, pred)
    assert set(report) == {"nmse", "psnr", "ssim", "nmae", "hfen"}
    assert report == {
        "nmse": nmse(gt, pred),
        "psnr": psnr(gt, pred),
        "ssim": ssim(gt, pred),
        "nmae": nmae(gt, pred),
        "hfen": hfen(gt, pred),
    }
    assert all(isinstance(value, float) for value in report.values())


def test_a_2d_image_is_one_slice(volume_pair) -> None:
    gt, pred = volume_pair
    assert evaluate_volume(gt[1], pred[1]) == evaluate_volume(gt[1:2], pred[1:2])


@pytest.mark.parametrize(
    ("gt_shape", "pred_shape", "message"),
    [
        ((2, 16, 16), (2, 16, 15), r"\(2, 16, 16\).*\(2, 16, 15\)"),
        ((2, 2, 16, 16), (2, 2, 16, 16), "volumes"),
    ],
)
def test_bad_shapes_raise_invalid_input_naming_them(gt_shape, pred_shape, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        evaluate_volume(np.ones(gt_shape), np.ones(pred_shape))


def test_bad_values_raise_named_errors() -> None:
    gt = np.ones((1, 16, 16))
    with pytest.raises(InvalidInputError, match="complex"):
        nmse(gt.astype(np.complex64), gt)
    with pytest.raises(NonFiniteDataError, match="pred"):
        psnr(gt, np.full_like(gt, np.nan))
    with pytest.raises(InvalidInputError, match="all-zero gt"):
        nmse(np.zeros_like(gt), gt)
    with pytest.raises(InvalidInputError, match="data range"):
        ssim(np.zeros_like(gt), gt)
    with pytest.raises(InvalidInputError, match=">= 7"):
        ssim(np.ones((1, 6, 16)), np.ones((1, 6, 16)))
