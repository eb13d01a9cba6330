"""Coil combination, sensitivity estimation and coil compression (numpy; ESPIRiT maps, which need sigpy,
are in :mod:`kadapt.kspace.espirit`, so the gateway and sampler can import this module).

Layout: coil images / k-space ``(..., coil, H, W)`` (fastMRI's), readout kx along H, phase encode ky
along W; sensitivity maps ``(coil, H, W)`` complex64. Maps are normalised so that ``sum_c |S_c|^2 = 1``
where there is signal, which makes :func:`sense_combine` of fully sampled coil images the
(phase-carrying) RSS image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import InvalidInputError
from kadapt.kspace.fft import ifft2c
from kadapt.kspace.preprocess import acs_start

ComplexArray = NDArray[np.complexfloating[Any, Any]]
RealArray = NDArray[np.floating[Any]]

#: Floor of the denominator ``sum_c |S_c|^2`` in :func:`sense_combine` (maps are zero off the object).
SENSE_EPS = 1e-8


def require_coil_kspace(kspace: ComplexArray, name: str) -> None:
    if kspace.ndim != 3:
        raise InvalidInputError(f"{name} needs k-space of shape (coil, H, W), got shape {kspace.shape}")
    if not np.iscomplexobj(kspace):
        raise InvalidInputError(f"{name} needs complex k-space, got dtype {kspace.dtype}")


def rss(images: NDArray[Any], axis: int = -3) -> RealArray:
    """Root sum of squares over the coil ``axis``: ``(..., coil, H, W)`` -> ``(..., H, W)`` real.

    complex64 / float32 in gives float32 out.
    """
    if not -images.ndim <= axis < images.ndim:
        raise InvalidInputError(f"coil axis {axis} is out of range for images of shape {images.shape}")
    magnitude_squared = np.abs(images) ** 2
    combined: RealArray = np.sqrt(np.sum(magnitude_squared, axis=axis))
    return combined


def _soft_window(length: int) -> NDArray[np.float64]:
    # A Hann window two samples longer than the block, trimmed at both ends, so no acquired ACS line
    # gets zero weight while the taper still suppresses the truncation ringing of the low-res images.
    return np.hanning(length + 2)[1:-1]


def acs_sensitivities(kspace: ComplexArray, num_acs: int, relative_threshold: float = 0.05) -> ComplexArray:
    """Coil maps from the centred ACS block: k-space ``(coil, H, W)`` -> maps ``(coil, H, W)`` complex64.

    The ACS columns (``W // 2 - num_acs // 2 ...``, as ``kadapt.masks.acs_lines``) are tapered with a
    Hann window along ky, zero-filled to the full matrix and transformed into low-resolution coil
    images, which are divided by their RSS (the ACS-based initial estimate that seed 004's SMP refines).
    The readout is fully sampled in the block, so it keeps full resolution and needs no taper. Pixels
    whose RSS is below ``relative_threshold * max(RSS)`` are background: their maps are zero.
    """
    require_coil_kspace(kspace, "acs_sensitivities")
    if not 0.0 <= relative_threshold < 1.0:
        raise InvalidInputError(f"relative_threshold must lie in [0, 1), got {relative_threshold}")
    width = kspace.shape[-1]
    start = acs_start(width, num_acs)
    calibration = np.zeros(kspace.shape, dtype=np.complex64)
    calibration[..., start : start + num_acs] = kspace[..., start : start + num_acs] * _soft_window(num_acs)
    coil_images = ifft2c(calibration)
    combined = rss(coil_images, axis=0)
    peak = float(combined.max())
    if peak <= 0.0:
        raise InvalidInputError(f"ACS block (num_acs={num_acs}) of k-space {kspace.shape} has no signal")
    support = combined > relative_threshold * peak
    maps = np.zeros_like(coil_images, dtype=np.complex64)
    maps[:, support] = coil_images[:, support] / combined[support]
    return maps


def sense_combine(images: ComplexArray, maps: ComplexArray) -> ComplexArray:
    """SENSE coil combination ``sum_c conj(S_c) x_c / max(sum_c |S_c|^2, eps)``.

    ``images`` ``(..., coil, H, W)``, ``maps`` ``(coil, H, W)`` or broadcastable ``(..., coil, H, W)``
    -> ``(..., H, W)`` complex64.
    """
    if images.ndim < 3:
        raise InvalidInputError(f"sense_combine needs images (..., coil, H, W), got shape {images.shape}")
    if maps.ndim < 3 or maps.shape[-3:] != images.shape[-3:]:
        raise InvalidInputError(
            f"maps of shape {maps.shape} do not match coil images of shape {images.shape} in (coil, H, W)"
        )
    try:
        np.broadcast_shapes(maps.shape, images.shape)
    except ValueError as error:
        raise InvalidInputError(
            f"maps of shape {maps.shape} do not broadcast against coil images of shape {images.shape}"
        ) from error
    numerator = np.sum(np.conj(maps) * images, axis=-3)
    denominator = np.maximum(np.sum(np.abs(maps) ** 2, axis=-3), SENSE_EPS)
    combined: ComplexArray = (numerator / denominator).astype(np.complex64, copy=False)
    return combined


def coil_compress(kspace: ComplexArray, num_virtual: int) -> tuple[ComplexArray, ComplexArray]:
    """SVD coil compression: k-space ``(..., coil, H, W)`` -> ``((..., num_virtual, H, W), matrix)``.

    One compression matrix ``(num_virtual, coil)`` from all the data (Buehrer et al. 2007; Huang et al.
    2008): the dominant left singular vectors of the ``coil x samples`` data matrix, computed from the
    ``coil x coil`` Gram matrix so memory does not grow with the data. ``compressed = matrix @ kspace``
    over the coil axis; ``matrix`` has orthonormal rows, so energy kept = energy of the top modes.
    """
    if kspace.ndim < 3:
        raise InvalidInputError(f"coil_compress needs k-space (..., coil, H, W), got shape {kspace.shape}")
    num_coils = kspace.shape[-3]
    if not 1 <= num_virtual <= num_coils:
        raise InvalidInputError(f"num_virtual={num_virtual} must lie in [1, {num_coils}] for {kspace.shape}")
    samples = np.moveaxis(kspace.astype(np.complex64, copy=False), -3, 0).reshape(num_coils, -1)
    gram = (samples @ samples.conj().T).astype(np.complex128)
    # eigh returns ascending eigenvalues; the Gram matrix's eigenvectors are the left singular vectors.
    _, vectors = np.linalg.eigh(gram)
    dominant = vectors[:, ::-1][:, :num_virtual]
    matrix = dominant.conj().T.astype(np.complex64)
    compressed: ComplexArray = np.einsum("vc,...chw->...vhw", matrix, kspace.astype(np.complex64, copy=False))
    return compressed, matrix
