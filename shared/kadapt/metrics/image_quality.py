"""Image-quality metrics on magnitude volumes (numpy), fastMRI ``evaluate.py`` conventions.

Inputs are real magnitude volumes ``(slices, H, W)``; a 2D ``(H, W)`` image is one slice. NMSE, NMAE and
HFEN are ratios over the whole volume; PSNR uses ``data_range = gt.max()`` over the volume; SSIM is the
mean over slices of a 7 x 7 uniform-window SSIM with that same volume data range. Everything is computed
in float64 and returned as a Python float. ``maxval`` overrides the volume maximum (fastMRI's argument).

Volume-level, not slice-averaged, PSNR/NMSE: slice averages overstated PSNR by about 5 dB in fastMRI's
history (handbook, science.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from kadapt.errors import InvalidInputError, NonFiniteDataError

Volume = NDArray[np.float64]

#: SSIM constants and window of Wang et al. 2004 as used by fastMRI / scikit-image.
SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03

#: HFEN's Laplacian of Gaussian (Ravishankar & Bresler 2011, cited as [RB11a] in seed 000 section 4):
#: sigma 1.5 pixels on a 15 x 15 support (radius 7 = int(truncate * sigma + 0.5)).
HFEN_SIGMA = 1.5
HFEN_RADIUS = 7


def _as_volumes(gt: NDArray[Any], pred: NDArray[Any]) -> tuple[Volume, Volume]:
    """Validate a (gt, pred) pair and return float64 ``(slices, H, W)`` copies / views."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise InvalidInputError(f"gt shape {gt.shape} and pred shape {pred.shape} differ")
    if gt.ndim not in (2, 3):
        raise InvalidInputError(
            f"metrics need magnitude volumes (slices, H, W) or (H, W), got shape {gt.shape}"
        )
    for name, array in (("gt", gt), ("pred", pred)):
        if np.iscomplexobj(array) or not np.issubdtype(array.dtype, np.number):
            raise InvalidInputError(
                f"{name} must be a real magnitude array, got dtype {array.dtype} (pass magnitudes)"
            )
        if not np.all(np.isfinite(array)):
            raise NonFiniteDataError(f"{name} of shape {array.shape} holds NaN or Inf")
    gt64 = gt.astype(np.float64, copy=False)
    pred64 = pred.astype(np.float64, copy=False)
    if gt64.ndim == 2:
        return gt64[np.newaxis], pred64[np.newaxis]
    return gt64, pred64


def _data_range(gt: Volume, maxval: float | None) -> float:
    data_range = float(gt.max()) if maxval is None else float(maxval)
    if not data_range > 0.0:
        raise InvalidInputError(f"data range (maxval) must be positive, got {data_range}")
    return data_range


def _energy_ratio(error: float, reference: float, name: str) -> float:
    if reference <= 0.0:
        raise InvalidInputError(f"{name} is undefined for an all-zero gt (reference norm {reference})")
    return error / reference


def _nmse(gt: Volume, pred: Volume) -> float:
    return _energy_ratio(float(np.sum((gt - pred) ** 2)), float(np.sum(gt**2)), "nmse")


def _nmae(gt: Volume, pred: Volume) -> float:
    return _energy_ratio(float(np.sum(np.abs(gt - pred))), float(np.sum(np.abs(gt))), "nmae")


def _psnr(gt: Volume, pred: Volume, maxval: float | None) -> float:
    data_range = _data_range(gt, maxval)
    mse = float(np.mean((gt - pred) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def _ssim_map(gt: Volume, pred: Volume, maxval: float | None) -> Volume:
    if min(gt.shape[-2:]) < SSIM_WINDOW:
        raise InvalidInputError(f"SSIM needs H and W >= {SSIM_WINDOW}, got shape {gt.shape}")
    data_range = _data_range(gt, maxval)
    size = (1, SSIM_WINDOW, SSIM_WINDOW)

    def local_mean(x: Volume) -> Volume:
        return np.asarray(ndimage.uniform_filter(x, size=size, mode="reflect"), dtype=np.float64)

    # Unbiased window statistics: scikit-image's use_sample_covariance=True (N / (N - 1)).
    samples = SSIM_WINDOW**2
    covariance_norm = samples / (samples - 1)
    mean_gt = local_mean(gt)
    mean_pred = local_mean(pred)
    var_gt = covariance_norm * (local_mean(gt * gt) - mean_gt**2)
    var_pred = covariance_norm * (local_mean(pred * pred) - mean_pred**2)
    covariance = covariance_norm * (local_mean(gt * pred) - mean_gt * mean_pred)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    numerator = (2 * mean_gt * mean_pred + c1) * (2 * covariance + c2)
    denominator = (mean_gt**2 + mean_pred**2 + c1) * (var_gt + var_pred + c2)
    result: Volume = numerator / denominator
    return result


def _ssim(gt: Volume, pred: Volume, maxval: float | None) -> float:
    pixelwise = _ssim_map(gt, pred, maxval)
    # scikit-image averages without the border the window's padding touches.
    border = (SSIM_WINDOW - 1) // 2
    per_slice = pixelwise[:, border:-border, border:-border].mean(axis=(-2, -1))
    return float(np.mean(per_slice))


def _hfen(gt: Volume, pred: Volume) -> float:
    log_gt = laplacian_of_gaussian(gt)
    log_pred = laplacian_of_gaussian(pred)
    return _energy_ratio(float(np.linalg.norm(log_gt - log_pred)), float(np.linalg.norm(log_gt)), "hfen")


def nmse(gt: NDArray[Any], pred: NDArray[Any]) -> float:
    """Normalised MSE over the volume: ``||gt - pred||^2 / ||gt||^2``; gt, pred ``(slices, H, W)``."""
    return _nmse(*_as_volumes(gt, pred))


def nmae(gt: NDArray[Any], pred: NDArray[Any]) -> float:
    """Normalised MAE over the volume: ``sum|gt - pred| / sum|gt|``; gt, pred ``(slices, H, W)``."""
    return _nmae(*_as_volumes(gt, pred))


def psnr(gt: NDArray[Any], pred: NDArray[Any], maxval: float | None = None) -> float:
    """PSNR in dB over the volume: ``10 log10(maxval^2 / MSE)`` with ``maxval = gt.max()`` by default.

    gt, pred ``(slices, H, W)``. Identical volumes give ``inf``.
    """
    return _psnr(*_as_volumes(gt, pred), maxval)


def ssim_map(gt: NDArray[Any], pred: NDArray[Any], maxval: float | None = None) -> Volume:
    """Per-pixel SSIM ``(slices, H, W)`` (before the border crop) of gt, pred ``(slices, H, W)``.

    Wang et al. 2004 with 7 x 7 uniform windows, K1 = 0.01, K2 = 0.03, and the unbiased (sample)
    covariance ``N / (N - 1)`` as scikit-image's ``use_sample_covariance=True``; windows are filtered per
    slice (size 1 along the slice axis) with reflect padding, as scikit-image does in 2D.
    """
    return _ssim_map(*_as_volumes(gt, pred), maxval)


def ssim(gt: NDArray[Any], pred: NDArray[Any], maxval: float | None = None) -> float:
    """Mean over slices of the 7 x 7 uniform-window SSIM, ``data_range = gt.max()`` over the volume.

    gt, pred ``(slices, H, W)``. Each slice's SSIM is the mean of :func:`ssim_map` without the 3-pixel
    border that the window's padding touches -- scikit-image's ``structural_similarity`` as fastMRI's
    ``evaluate.py`` calls it, vectorised over slices.
    """
    return _ssim(*_as_volumes(gt, pred), maxval)


def hfen(gt: NDArray[Any], pred: NDArray[Any]) -> float:
    """High-frequency error norm ``||LoG(gt) - LoG(pred)|| / ||LoG(gt)||`` over the volume.

    gt, pred ``(slices, H, W)``; the LoG is 2D per slice (seed 000 section 4 / [RB11a], seed 004's HFEN
    loss term).
    """
    return _hfen(*_as_volumes(gt, pred))


def laplacian_of_gaussian(volume: NDArray[Any]) -> Volume:
    """HFEN's LoG (sigma 1.5, 15 x 15 support, zero padding) per slice: ``(slices, H, W)`` -> same shape."""
    slices = np.asarray(volume, dtype=np.float64)
    if slices.ndim == 2:
        slices = slices[np.newaxis]
    filtered = np.empty_like(slices)
    # Zero padding, like MATLAB's imfilter with fspecial('log', 15, 1.5) in the HFEN reference code.
    for index, image in enumerate(slices):
        filtered[index] = ndimage.gaussian_laplace(
            image, sigma=HFEN_SIGMA, mode="constant", cval=0.0, truncate=HFEN_RADIUS / HFEN_SIGMA
        )
    return filtered


def evaluate_volume(gt: NDArray[Any], pred: NDArray[Any], maxval: float | None = None) -> dict[str, float]:
    """All metrics of one volume: keys ``nmse``, ``psnr``, ``ssim``, ``nmae``, ``hfen``.

    gt, pred magnitude ``(slices, H, W)`` (or one ``(H, W)`` slice); ``maxval`` defaults to ``gt.max()``.
    """
    gt64, pred64 = _as_volumes(gt, pred)
    return {
        "nmse": _nmse(gt64, pred64),
        "psnr": _psnr(gt64, pred64, maxval),
        "ssim": _ssim(gt64, pred64, maxval),
        "nmae": _nmae(gt64, pred64),
        "hfen": _hfen(gt64, pred64),
    }
