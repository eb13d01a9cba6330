"""Classic (model-free) reconstructions of undersampled multi-coil Cartesian k-space (numpy + sigpy, CPU).

Every method maps k-space ``(slice, frame, coil, H, W)`` complex64 with zeros where unacquired and a line
mask ``(slice, frame, W)`` bool (ky along W, ACS block in the centred ``num_acs`` columns) to a float32
magnitude volume ``(slice, frame, H, W)`` on the scale of the RSS of the coil images:

- ``zero-filled``: RSS of the inverse FFT of the zero-filled data (fastMRI's baseline).
- ``sense``: SENSE coil combination (Pruessmann et al. 1999, cited by seed 003 as [36]) of the zero-filled
  coil images with ACS sensitivities -- aliased when undersampled; a fast preview.
- ``cg-sense``: least squares ``min_x ||M F S x - y||^2 + lamda ||x||^2`` by conjugate gradients
  (sigpy ``SenseRecon``) with ESPIRiT maps (Uecker et al. 2014, seed 003 [46], seed 001 section 3).
- ``l1-wavelet``: compressed sensing ``min_x ||M F S x - y||^2 + lamda ||W x||_1`` (sigpy
  ``L1WaveletRecon``, proximal gradient) with ESPIRiT maps.

Coil maps are estimated once per slice from the frame-averaged ACS (every frame acquires the ACS block,
and averaging raises its SNR while saving an ESPIRiT run per frame). The iterative methods work on data
divided by the per-slice ACS scale (99.5th percentile of |ACS|, seed 004 eq. B1) and multiply the result
back, so their regularisation weights do not depend on the scanner's arbitrary intensity scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import (
    GeometryMismatchError,
    InvalidInputError,
    NonFiniteDataError,
    UnknownReconMethodError,
)
from kadapt.kspace.coils import acs_sensitivities, rss, sense_combine
from kadapt.kspace.espirit import espirit_maps
from kadapt.kspace.fft import ifft2c
from kadapt.kspace.preprocess import acs_scale, acs_start

ComplexArray = NDArray[np.complexfloating[Any, Any]]
MagnitudeArray = NDArray[np.float32]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class ClassicParameters:
    """Fixed iteration counts (deterministic run time) and weights relative to ACS-normalised data."""

    cg_iterations: int = 15
    cg_lamda: float = 1e-4
    l1_iterations: int = 30
    l1_lamda: float = 1e-3
    iterative_maps: Literal["auto", "espirit", "acs"] = "auto"
    espirit_kernel_width: int = 6
    # sigpy's ESPIRiT calibrates on a square num_acs x num_acs block: with fewer than ~16 lines the
    # calibration matrix has fewer rows than kernel entries and the maps collapse (measured: CG-SENSE
    # at 10 ACS lines fell to 9.9 dB vs 26.6 dB zero-filled). The ACS maps use the full readout.
    espirit_min_acs: int = 16


DEFAULT_PARAMETERS = ClassicParameters()

ClassicMethod = Callable[[ComplexArray, BoolArray, int, ClassicParameters], MagnitudeArray]


def check_recon_inputs(
    kspace: NDArray[Any], mask: NDArray[Any], num_acs: int
) -> tuple[ComplexArray, BoolArray]:
    """Validate a recon's inputs and return ``(kspace complex64 zeroed off the mask, mask bool)``.

    ``kspace`` ``(slice, frame, coil, H, W)`` complex, ``mask`` ``(slice, frame, W)`` bool containing the
    centred ``num_acs`` ACS columns in every slice and frame. Raises :class:`GeometryMismatchError`
    (shapes), :class:`InvalidInputError` (dtypes, ACS missing), :class:`InvalidAccelerationError`
    (``num_acs`` outside ``[1, W]``), :class:`NonFiniteDataError` (NaN / Inf samples).
    """
    if kspace.ndim != 5:
        raise GeometryMismatchError(f"k-space must be (slice, frame, coil, H, W), got shape {kspace.shape}")
    if not np.iscomplexobj(kspace):
        raise InvalidInputError(f"k-space must be complex, got dtype {kspace.dtype}")
    slices, frames, _coils, _height, width = kspace.shape
    if mask.shape != (slices, frames, width):
        raise GeometryMismatchError(
            f"mask shape {mask.shape} does not match k-space {kspace.shape}: "
            f"expected {(slices, frames, width)}"
        )
    if mask.dtype != np.bool_:
        raise InvalidInputError(f"mask must be bool, got dtype {mask.dtype}")
    start = acs_start(width, num_acs)
    missing = ~mask[..., start : start + num_acs].all(axis=-1)
    if missing.any():
        first = tuple(int(index) for index in np.argwhere(missing)[0])
        raise InvalidInputError(
            f"mask lacks ACS columns {start}..{start + num_acs - 1} (num_acs={num_acs}) "
            f"at (slice, frame) {first}"
        )
    if not np.isfinite(kspace).all():
        raise NonFiniteDataError(f"k-space {kspace.shape} holds NaN or Inf samples")
    # np.where gives +0.0 off the mask: a negative zero would leak the sign of an unacquired sample.
    masked = np.where(mask[:, :, None, None, :], kspace, 0).astype(np.complex64, copy=False)
    return masked, mask


def zero_filled(
    kspace: ComplexArray, mask: BoolArray, num_acs: int, parameters: ClassicParameters = DEFAULT_PARAMETERS
) -> MagnitudeArray:
    """RSS of the zero-filled coil images: ``(slice, frame, coil, H, W)`` -> ``(slice, frame, H, W)``."""
    return rss(ifft2c(kspace), axis=-3).astype(np.float32, copy=False)


def _calibration_kspace(slice_kspace: ComplexArray) -> ComplexArray:
    """Frame-averaged k-space of one slice ``(frame, coil, H, W)`` -> ``(coil, H, W)`` for coil maps."""
    averaged: ComplexArray = slice_kspace.mean(axis=0).astype(np.complex64, copy=False)
    return averaged


def iterative_coil_maps(
    calibration: ComplexArray,
    num_acs: int,
    kind: Literal["auto", "espirit", "acs"],
    parameters: ClassicParameters,
) -> ComplexArray:
    """The coil maps ``(coil, H, W)`` the iterative methods use for ``calibration`` k-space ``(coil, H, W)``:
    ACS maps for ``kind="acs"`` or (``"auto"``) below ``parameters.espirit_min_acs`` ACS lines, else ESPIRiT
    (also used by the sampling benchmark's batched CG-SENSE search, so both solve the same problem)."""
    if kind == "acs" or (kind == "auto" and num_acs < parameters.espirit_min_acs):
        return acs_sensitivities(calibration, num_acs)
    # ESPIRiT's calibration block is square; its kernel must fit inside a small ACS.
    kernel_width = min(parameters.espirit_kernel_width, num_acs)
    return espirit_maps(calibration, num_acs, kernel_width=kernel_width)


def sense(
    kspace: ComplexArray, mask: BoolArray, num_acs: int, parameters: ClassicParameters = DEFAULT_PARAMETERS
) -> MagnitudeArray:
    """SENSE combination of the zero-filled coil images with ACS maps: -> ``(slice, frame, H, W)``."""
    out = np.empty(kspace.shape[:2] + kspace.shape[-2:], dtype=np.float32)
    for index, slice_kspace in enumerate(kspace):
        maps = acs_sensitivities(_calibration_kspace(slice_kspace), num_acs)
        out[index] = np.abs(sense_combine(ifft2c(slice_kspace), maps))
    return out


def _iterative(
    kspace: ComplexArray,
    mask: BoolArray,
    num_acs: int,
    parameters: ClassicParameters,
    solve: Callable[[ComplexArray, ComplexArray, NDArray[np.float32]], ComplexArray],
) -> MagnitudeArray:
    out = np.empty(kspace.shape[:2] + kspace.shape[-2:], dtype=np.float32)
    for index, slice_kspace in enumerate(kspace):
        scale = acs_scale(slice_kspace, num_acs)
        normalised = (slice_kspace / np.float32(scale)).astype(np.complex64, copy=False)
        maps = iterative_coil_maps(
            _calibration_kspace(normalised), num_acs, parameters.iterative_maps, parameters
        )
        for frame, frame_kspace in enumerate(normalised):
            weights = mask[index, frame].astype(np.float32)  # (W,), broadcasts over (coil, H, W)
            out[index, frame] = np.abs(solve(frame_kspace, maps, weights)) * np.float32(scale)
    return out


def cg_sense(
    kspace: ComplexArray, mask: BoolArray, num_acs: int, parameters: ClassicParameters = DEFAULT_PARAMETERS
) -> MagnitudeArray:
    """CG-SENSE with ESPIRiT (or ACS) maps, fixed iteration count: -> ``(slice, frame, H, W)``."""
    from sigpy.mri.app import SenseRecon  # sigpy is imported by the methods that use it, not at start-up

    def solve(frame_kspace: ComplexArray, maps: ComplexArray, weights: NDArray[np.float32]) -> ComplexArray:
        app = SenseRecon(
            frame_kspace,
            maps,
            lamda=parameters.cg_lamda,
            weights=weights,
            max_iter=parameters.cg_iterations,
            device=-1,
            show_pbar=False,
        )
        return np.asarray(app.run())

    return _iterative(kspace, mask, num_acs, parameters, solve)


def l1_wavelet(
    kspace: ComplexArray, mask: BoolArray, num_acs: int, parameters: ClassicParameters = DEFAULT_PARAMETERS
) -> MagnitudeArray:
    """L1-wavelet compressed sensing with ESPIRiT (or ACS) maps: -> ``(slice, frame, H, W)``."""
    from sigpy.mri.app import L1WaveletRecon

    def solve(frame_kspace: ComplexArray, maps: ComplexArray, weights: NDArray[np.float32]) -> ComplexArray:
        # Step 1/L with L = max_pixel sum_c |S_c|^2 >= ||M F S||^2 (F orthonormal, M a 0/1 mask). Passing
        # it spares sigpy's power iteration, which starts from the global numpy RNG (non-deterministic
        # serving, and a hidden use of global randomness).
        lipschitz = float(np.max(np.sum(np.abs(maps) ** 2, axis=0)))
        app = L1WaveletRecon(
            frame_kspace,
            maps,
            lamda=parameters.l1_lamda,
            weights=weights,
            max_iter=parameters.l1_iterations,
            alpha=1.0 / lipschitz if lipschitz > 0 else 1.0,
            device=-1,
            show_pbar=False,
        )
        return np.asarray(app.run())

    return _iterative(kspace, mask, num_acs, parameters, solve)


CLASSIC_METHODS: dict[str, ClassicMethod] = {
    "zero-filled": zero_filled,
    "sense": sense,
    "cg-sense": cg_sense,
    "l1-wavelet": l1_wavelet,
}


def reconstruct(
    method: str,
    kspace: NDArray[Any],
    mask: NDArray[Any],
    num_acs: int,
    parameters: ClassicParameters = DEFAULT_PARAMETERS,
) -> MagnitudeArray:
    """Run classic ``method`` on k-space ``(slice, frame, coil, H, W)`` with mask ``(slice, frame, W)``.

    Returns the float32 magnitude ``(slice, frame, H, W)``. Raises :class:`UnknownReconMethodError` for a
    name outside :data:`CLASSIC_METHODS` and the errors of :func:`check_recon_inputs`.
    """
    implementation = CLASSIC_METHODS.get(method)
    if implementation is None:
        raise UnknownReconMethodError(
            f"unknown classic method {method!r}; known: {', '.join(CLASSIC_METHODS)}", method=method
        )
    checked_kspace, checked_mask = check_recon_inputs(kspace, mask, num_acs)
    return implementation(checked_kspace, checked_mask, num_acs, parameters)
