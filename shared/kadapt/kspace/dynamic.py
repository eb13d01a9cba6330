"""Dynamic (cine) k-space numerics (numpy): the data an ADS cascade step looks at.

Layout: k-space ``(frame, coil, H, W)``, readout kx along H, phase encode ky along W (architecture.md
section 3: dynamic data adds ``frame`` before ``coil``); line masks ``(frame, W)``.

Seed 004 (section 2.3, Alg. A1) feeds each cascade of the adaptive dynamic sampler the SENSE image of the
data acquired so far. kadapt computes that image the same way wherever it is needed -- the gateway when
it asks the sampler for a plan round, the trainer and the benchmark when they run the cascade
retrospectively -- so a served cascade sees what it was trained on:

- coil maps from the ACS block averaged over frames (the coils do not move; the ACS is fully sampled in
  every frame, so its frame average is a low-resolution image of the mean anatomy),
  :func:`kadapt.kspace.coils.acs_sensitivities` (the numpy twin of the SMP's
  ``kadapt.nn.smp.acs_sensitivity_estimate``), never the true maps, which a scanner does not have;
- per frame, the zero-filled k-space of the lines acquired in that frame, inverse FFT, SENSE-combined.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import InvalidInputError
from kadapt.kspace.coils import acs_sensitivities, sense_combine
from kadapt.kspace.fft import ifft1c
from kadapt.kspace.preprocess import acs_start

ComplexArray = NDArray[np.complexfloating[Any, Any]]


def _require_dynamic_kspace(kspace: ComplexArray, name: str) -> None:
    if kspace.ndim != 4:
        raise InvalidInputError(
            f"{name} needs k-space of shape (frame, coil, H, W), got shape {kspace.shape}"
        )
    if not np.iscomplexobj(kspace):
        raise InvalidInputError(f"{name} needs complex k-space, got dtype {kspace.dtype}")


def frame_averaged_acs(kspace: ComplexArray, num_acs: int) -> NDArray[np.complex64]:
    """``(coil, H, W)`` complex64: the centred ACS columns of ``kspace`` ``(frame, coil, H, W)`` averaged
    over frames, zero elsewhere (all :func:`acs_sensitivities` and ``acs_scale`` read)."""
    _require_dynamic_kspace(kspace, "frame_averaged_acs")
    start = acs_start(kspace.shape[-1], num_acs)
    averaged = np.zeros(kspace.shape[1:], dtype=np.complex64)
    averaged[..., start : start + num_acs] = kspace[..., start : start + num_acs].mean(axis=0)
    return averaged


def frame_averaged_acs_sensitivities(
    kspace: ComplexArray, num_acs: int, relative_threshold: float = 0.05
) -> NDArray[np.complex64]:
    """Coil maps ``(coil, H, W)`` complex64 from the frame-averaged ACS of ``kspace`` ``(frame, coil, H, W)``
    (``sum_c |S_c|^2 = 1`` on the support, zero off it)."""
    maps: NDArray[np.complex64] = acs_sensitivities(
        frame_averaged_acs(kspace, num_acs), num_acs, relative_threshold
    ).astype(np.complex64, copy=False)
    return maps


def sense_image_so_far(
    kspace: ComplexArray,
    mask: NDArray[np.bool_],
    num_acs: int,
    maps: ComplexArray | None = None,
) -> NDArray[np.complex64]:
    """The SENSE image of the data acquired so far: ``(frame, H, W)`` complex64.

    ``kspace`` ``(frame, coil, H, W)`` (values off ``mask`` are ignored, so a fully sampled array and a
    zero-filled one give the same image; a strided view is fine), ``mask`` ``(frame, W)`` bool, the
    lines acquired in each frame (the ACS block included). ``maps`` ``(coil, H, W)`` default to
    :func:`frame_averaged_acs_sensitivities`. Orthonormal centred FFT, so the image is on the k-space's
    scale.
    """
    _require_dynamic_kspace(kspace, "sense_image_so_far")
    frames, _coils, _height, width = kspace.shape
    if mask.shape != (frames, width):
        raise InvalidInputError(
            f"mask of shape {mask.shape} does not match k-space {kspace.shape}: want {(frames, width)}"
        )
    if maps is None:
        maps = frame_averaged_acs_sensitivities(kspace, num_acs)
    # The 2D inverse FFT is separable: the readout (H) transform only needs the columns some frame
    # acquired (12-24 of 96 at R 8-4), then the ky (W) transform runs on the zero-filled hybrid space.
    # Half the work of a dense ifft2c, and only those columns are read (``kspace`` may be a strided view
    # of the gateway's line-major scan file).
    columns = np.flatnonzero(mask.any(axis=0))
    hybrid = np.zeros(kspace.shape, dtype=np.complex64)
    hybrid[..., columns] = ifft1c(kspace[..., columns] * mask[:, None, None, columns], axis=-2)
    image: NDArray[np.complex64] = sense_combine(ifft1c(hybrid, axis=-1), maps).astype(
        np.complex64, copy=False
    )
    return image


__all__ = ["frame_averaged_acs", "frame_averaged_acs_sensitivities", "sense_image_so_far"]
