"""ESPIRiT coil maps through sigpy (the classic reconstructions use them; the services that must not
depend on sigpy import :mod:`kadapt.kspace.coils` only).

Layout as :mod:`kadapt.kspace.coils`: k-space ``(coil, H, W)``, maps ``(coil, H, W)`` complex64.
"""

from __future__ import annotations

import numpy as np

from kadapt.errors import InvalidInputError
from kadapt.kspace.coils import ComplexArray, require_coil_kspace


def espirit_maps(
    kspace: ComplexArray,
    num_acs: int,
    kernel_width: int = 6,
    threshold: float = 0.02,
    crop: float = 0.95,
    power_iterations: int = 30,
) -> ComplexArray:
    """ESPIRiT coil maps (one set, sigpy's ``EspiritCalib``): k-space ``(coil, H, W)`` -> ``(coil, H, W)``.

    Calibrates on the centred ``num_acs x num_acs`` block (sigpy crops the same centre as
    ``acs_start``), keeps kernels whose singular value exceeds ``threshold * max`` and zeroes pixels
    whose eigenvalue is below ``crop`` (Uecker et al. 2014). Phase is relative to coil 0. complex64 out.
    ``power_iterations``: sigpy's default of 100 gives the same maps as 30 to 1e-6 on 128x128x8 coils
    at twice the cost.
    """
    require_coil_kspace(kspace, "espirit_maps")
    # sigpy's calibration block is square; it must fit along both H and W.
    if not 1 <= num_acs <= min(kspace.shape[-2:]):
        raise InvalidInputError(
            f"num_acs={num_acs} must lie in [1, {min(kspace.shape[-2:])}] for {kspace.shape}"
        )
    if not 1 <= kernel_width <= num_acs:
        raise InvalidInputError(f"kernel_width={kernel_width} must lie in [1, num_acs={num_acs}]")
    # Imported here: sigpy pulls in numba / its own FFT set-up, which only callers of ESPIRiT should pay.
    from sigpy.mri.app import EspiritCalib

    calibration = EspiritCalib(
        np.ascontiguousarray(kspace, dtype=np.complex64),
        calib_width=num_acs,
        thresh=threshold,
        kernel_width=kernel_width,
        crop=crop,
        max_iter=power_iterations,
        show_pbar=False,
    )
    # sigpy normalises the phase by coil 0 (x / |x|), which divides by zero where coil 0 is exactly zero;
    # those pixels are cropped anyway, so silence the warning and clear the NaNs.
    with np.errstate(divide="ignore", invalid="ignore"):
        maps = np.asarray(calibration.run(), dtype=np.complex64)
    return np.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
