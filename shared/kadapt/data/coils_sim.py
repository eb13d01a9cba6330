"""Simulated receive coils: birdcage sensitivities and coil-correlated thermal noise (numpy).

Sensitivities come from sigpy's birdcage model (``sigpy.mri.birdcage_maps``: coils on a ring, field
~ 1/distance, phase rotating with the coil angle), computed on a grid twice the FOV and cut out with a
random rotation, scale and shift so that every volume sees a differently placed array. Maps are
normalised to unit root-sum-of-squares, so the RSS of noiseless coil images equals the object magnitude.

Noise: the receiver chain mixes thermal noise between channels, so noise is complex Gaussian with a
Hermitian positive-definite coil covariance ``Psi`` (Pruessmann et al., SENSE, MRM 1999, eq. 13 uses the
same model), identical in image and k-space under the orthonormal FFT.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from kadapt.errors import GeometryMismatchError, InvalidInputError

ComplexArray = NDArray[np.complex64]


def birdcage_sensitivities(
    coils: int,
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    radius_range: tuple[float, float] = (1.2, 1.8),
    scale_range: tuple[float, float] = (0.85, 1.15),
    max_shift: float = 0.1,
    gain_spread: float = 0.2,
) -> ComplexArray:
    """Random birdcage coil sensitivities ``(coils, H, W)`` complex64 with unit RSS at every pixel.

    ``radius_range``: coil ring radius relative to half the FOV (sigpy's ``r``); the array is rotated
    uniformly, scaled by ``scale_range``, shifted by up to ``max_shift`` of the FOV, and each coil's gain
    varies by up to ``gain_spread`` (element-to-element differences of a real array).
    """
    if coils < 1 or height < 1 or width < 1:
        raise InvalidInputError(f"coils={coils}, height={height}, width={width} must all be >= 1")
    from sigpy.mri import birdcage_maps

    radius = rng.uniform(*radius_range)
    # The grid is twice the FOV (halving sigpy's normalised radius) so a rotated, shifted cut stays inside.
    pad_h, pad_w = 2 * height, 2 * width
    wide = birdcage_maps((coils, pad_h, pad_w), r=radius / 2.0, nzz=coils, dtype=np.complex128)
    angle = rng.uniform(-np.pi, np.pi)
    scale = rng.uniform(*scale_range)
    shift = rng.uniform(-max_shift, max_shift, size=2) * np.array([height, width])
    rows = (np.arange(height) - height / 2.0)[:, np.newaxis]
    cols = (np.arange(width) - width / 2.0)[np.newaxis, :]
    cos, sin = np.cos(angle), np.sin(angle)
    sample_rows = pad_h / 2.0 + scale * (cos * rows - sin * cols) + shift[0]
    sample_cols = pad_w / 2.0 + scale * (sin * rows + cos * cols) + shift[1]
    coordinates = np.stack(np.broadcast_arrays(sample_rows, sample_cols))
    maps = np.empty((coils, height, width), dtype=np.complex128)
    for coil in range(coils):
        real = ndimage.map_coordinates(wide[coil].real, coordinates, order=1, mode="nearest")
        imag = ndimage.map_coordinates(wide[coil].imag, coordinates, order=1, mode="nearest")
        maps[coil] = real + 1j * imag
    maps *= rng.uniform(1.0 - gain_spread, 1.0 + gain_spread, size=(coils, 1, 1))
    maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=0, keepdims=True))
    return maps.astype(np.complex64)


def random_noise_covariance(
    coils: int, rng: np.random.Generator, *, correlation: float = 0.3, gain_spread: float = 0.3
) -> NDArray[np.complex128]:
    """A random Hermitian positive-definite coil noise covariance ``(coils, coils)`` with trace ``coils``.

    ``Psi = D A A^H D`` with ``A = I + correlation * G`` (G complex Gaussian, unit variance entries scaled by
    ``1 / sqrt(coils)``) and D a diagonal of channel gains within ``1 +- gain_spread``; the trace is then
    normalised so that the mean channel variance is one.
    """
    if coils < 1:
        raise InvalidInputError(f"coils={coils} must be >= 1")
    if not 0.0 <= correlation < 1.0:
        raise InvalidInputError(f"correlation={correlation} must be in [0, 1)")
    mixing = (rng.standard_normal((coils, coils)) + 1j * rng.standard_normal((coils, coils))) / np.sqrt(
        2.0 * coils
    )
    a = np.eye(coils) + correlation * mixing
    gains = np.diag(rng.uniform(1.0 - gain_spread, 1.0 + gain_spread, size=coils))
    covariance = gains @ a @ a.conj().T @ gains
    covariance = (covariance + covariance.conj().T) / 2.0
    result: NDArray[np.complex128] = covariance * (coils / np.trace(covariance).real)
    return result


def coil_noise(
    shape: tuple[int, ...], covariance: NDArray[np.complexfloating], rng: np.random.Generator
) -> ComplexArray:
    """Complex Gaussian noise ``shape = (..., coils, H, W)`` complex64 with coil covariance ``covariance``
    ``(coils, coils)``: ``E[n n^H] = covariance`` over the coil axis, independent across samples.
    """
    if len(shape) < 3:
        raise GeometryMismatchError(f"noise shape must be (..., coils, H, W), got {shape}")
    coils = shape[-3]
    if covariance.shape != (coils, coils):
        raise GeometryMismatchError(f"covariance {covariance.shape} does not match {coils} coils")
    try:
        lower = np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError as error:
        raise InvalidInputError(f"noise covariance is not positive definite: {error}") from error
    samples = (*shape[:-3], shape[-2], shape[-1], coils)
    white = rng.standard_normal((*samples, 2), dtype=np.float32).view(np.complex64)[..., 0]
    # CN(0, 1): real and imaginary parts each carry half the variance.
    white *= np.float32(np.sqrt(0.5))
    coloured = white @ lower.T.astype(np.complex64)
    return np.ascontiguousarray(np.moveaxis(coloured, -1, -3))
