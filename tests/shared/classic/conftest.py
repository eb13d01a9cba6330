"""Classic-recon fixtures: a simulated multi-coil phantom and a variable-density line mask.

The phantom is sigpy's Shepp-Logan times birdcage coil maps, transformed with kadapt's centred
orthonormal FFT; the reference is the RSS of the fully sampled coil images (fastMRI's convention).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from numpy.typing import NDArray

from kadapt.kspace.fft import fft2c, ifft2c

SIZE = 64
COILS = 4


@dataclass(frozen=True)
class Phantom:
    kspace: NDArray[np.complex64]  # (slice, frame, coil, H, W), fully sampled
    reference: NDArray[np.float32]  # (slice, frame, H, W) RSS


def make_phantom(slices: int = 1, frames: int = 1, size: int = SIZE, coils: int = COILS) -> Phantom:
    import sigpy
    import sigpy.mri

    image = sigpy.shepp_logan((size, size)).astype(np.complex64)
    maps = sigpy.mri.birdcage_maps((coils, size, size)).astype(np.complex64)
    volume = np.empty((slices, frames, coils, size, size), dtype=np.complex64)
    for s in range(slices):
        for f in range(frames):
            # Frames move the object by a pixel each; slices differ in scale by 1000x (scale-free recon).
            moved = np.roll(image, f, axis=-1) * np.float32(1000.0**s)
            volume[s, f] = fft2c(maps * moved)
    reference = np.sqrt((np.abs(ifft2c(volume)) ** 2).sum(axis=2)).astype(np.float32)
    return Phantom(volume, reference)


def variable_density_mask(
    width: int, acceleration: float, num_acs: int, rng: np.random.Generator, leading: tuple[int, ...] = ()
) -> NDArray[np.bool_]:
    """ACS + lines drawn without replacement with density ~ (1 - |ky|/max)^2 + 0.05; exactly
    ``round(width / acceleration)`` lines per ``(slice, frame)``: shape ``leading + (width,)``."""
    budget = round(width / acceleration)
    start = width // 2 - num_acs // 2
    out = np.zeros((*leading, width), dtype=bool)
    for index in np.ndindex(*leading):
        line_mask = np.zeros(width, dtype=bool)
        line_mask[start : start + num_acs] = True
        free = np.flatnonzero(~line_mask)
        distance = np.abs(free - width // 2)
        density = (1.0 - distance / distance.max()) ** 2 + 0.05
        line_mask[rng.choice(free, budget - num_acs, replace=False, p=density / density.sum())] = True
        out[index] = line_mask
    return out


def psnr(reference: NDArray[np.floating], estimate: NDArray[np.floating]) -> float:
    """fastMRI's PSNR: data range = the reference volume's max."""
    mse = float(np.mean((reference.astype(np.float64) - estimate) ** 2))
    return float(10 * np.log10(float(reference.max()) ** 2 / max(mse, 1e-30)))


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    return make_phantom()


@pytest.fixture
def phantom_factory() -> Callable[..., Phantom]:
    return make_phantom


@pytest.fixture
def vd_mask() -> Callable[..., NDArray[np.bool_]]:
    return variable_density_mask


@pytest.fixture
def psnr_of() -> Callable[[NDArray[np.floating], NDArray[np.floating]], float]:
    return psnr
