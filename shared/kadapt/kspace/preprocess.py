"""K-space preprocessing (numpy): ACS block, readout-oversampling removal, ACS-based normalisation.

Layout: k-space ``(..., coil, H, W)``, readout kx along H, phase encode ky along W (fastMRI's). The ACS
block is the ``num_acs`` central columns ``W // 2 - num_acs // 2 ... + num_acs`` -- the same lines as
``kadapt.masks.acs_lines`` (computed here so the numerics do not depend on the mask package).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import InvalidAccelerationError, InvalidInputError, NonFiniteDataError
from kadapt.kspace.fft import fft1c, ifft1c

ComplexArray = NDArray[np.complexfloating[Any, Any]]

#: Percentile of |ACS k-space| used as the per-case scale (seed 004, appendix B, eq. B1).
ACS_SCALE_PERCENTILE = 99.5


def acs_start(width: int, num_acs: int) -> int:
    """First ACS column of a phase-encode axis of ``width`` lines: ``width // 2 - num_acs // 2``.

    Raises :class:`InvalidAccelerationError` unless ``1 <= num_acs <= width``.
    """
    if not 1 <= num_acs <= width:
        raise InvalidAccelerationError(f"num_acs={num_acs} must lie in [1, {width}] for width {width}")
    return width // 2 - num_acs // 2


def acs_block(kspace: ComplexArray, num_acs: int) -> ComplexArray:
    """The centred ACS columns of k-space ``(..., H, W)`` -> ``(..., H, num_acs)`` (a view, not a copy)."""
    if kspace.ndim < 2:
        raise InvalidInputError(f"k-space needs shape (..., H, W), got shape {kspace.shape}")
    start = acs_start(kspace.shape[-1], num_acs)
    return kspace[..., start : start + num_acs]


def remove_readout_oversampling(kspace: ComplexArray, axis: int = -2, factor: int = 2) -> ComplexArray:
    """Drop readout oversampling: k-space ``(..., n, ...)`` -> ``(..., n // factor, ...)`` along ``axis``.

    As Gadgetron's RemoveROOversampling gadget and the FIRE examples do: inverse FFT along the readout,
    keep the central ``n // factor`` image samples (the field of view the user prescribed), FFT back.
    Both transforms are centered and orthonormal, so image values inside the kept FOV are unchanged.
    The default ``axis=-2`` is H, the readout of a ``(..., coil, H, W)`` array; MRD acquisitions
    ``(coil, samples)`` use ``axis=-1``.
    """
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
        raise InvalidInputError(f"oversampling factor must be a positive integer, got {factor!r}")
    if not -kspace.ndim <= axis < kspace.ndim:
        raise InvalidInputError(f"readout axis {axis} is out of range for k-space of shape {kspace.shape}")
    samples = kspace.shape[axis]
    kept = samples // factor
    if kept < 1 or samples % factor != 0:
        raise InvalidInputError(
            f"readout of {samples} samples (axis {axis} of {kspace.shape}) not divisible by factor {factor}"
        )
    if factor == 1:
        return kspace
    image = ifft1c(kspace, axis=axis)
    # Centre of a centered FFT is index n // 2; keep it at kept // 2 in the cropped FOV.
    start = samples // 2 - kept // 2
    cropped = np.take(image, np.arange(start, start + kept), axis=axis)
    return fft1c(cropped, axis=axis)


def acs_scale(kspace: ComplexArray, num_acs: int) -> float:
    """The 99.5th percentile of ``|ACS k-space|`` over all coils / slices / frames (seed 004, eq. B1).

    ``kspace`` is ``(..., coil, H, W)`` with the ACS block in the centred ``num_acs`` columns of W.
    Raises :class:`InvalidInputError` if the scale is zero (no signal in the ACS block) and
    :class:`NonFiniteDataError` if the ACS block holds NaN / Inf.
    """
    magnitude = np.abs(acs_block(kspace, num_acs))
    if not np.all(np.isfinite(magnitude)):
        raise NonFiniteDataError(f"ACS block (num_acs={num_acs}) of k-space {kspace.shape} holds NaN or Inf")
    scale = float(np.percentile(magnitude, ACS_SCALE_PERCENTILE))
    if scale <= 0.0:
        raise InvalidInputError(
            f"ACS scale is {scale} for k-space {kspace.shape}, num_acs={num_acs}: the ACS block has no signal"
        )
    return scale


def normalise_by_acs(kspace: ComplexArray, num_acs: int) -> tuple[ComplexArray, float]:
    """Divide k-space ``(..., coil, H, W)`` by :func:`acs_scale`; returns ``(kspace / scale, scale)``.

    Keeps complex64 (a float64 scale would otherwise promote the array).
    """
    scale = acs_scale(kspace, num_acs)
    normalised = (kspace / np.asarray(scale, dtype=kspace.real.dtype)).astype(kspace.dtype, copy=False)
    return normalised, scale
