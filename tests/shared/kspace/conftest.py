"""Simulated multi-coil phantoms for the k-space tests (sigpy Shepp-Logan x birdcage maps)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import sigpy
import sigpy.mri
from numpy.typing import NDArray

from kadapt.kspace.fft import fft2c


@dataclass(frozen=True)
class CoilPhantom:
    """Image ``(H, W)``, true maps ``(coil, H, W)``, fully sampled k-space ``(coil, H, W)``."""

    image: NDArray[np.complex64]
    maps: NDArray[np.complex64]
    kspace: NDArray[np.complex64]

    @property
    def support(self) -> NDArray[np.bool_]:
        return np.abs(self.image) > 0.05 * np.abs(self.image).max()


def make_coil_phantom(height: int = 96, width: int = 80, coils: int = 8) -> CoilPhantom:
    image = sigpy.shepp_logan((height, width)).astype(np.complex64)
    maps = sigpy.mri.birdcage_maps((coils, height, width)).astype(np.complex64)
    return CoilPhantom(image=image, maps=maps, kspace=fft2c(maps * image))


@pytest.fixture(scope="module")
def coil_phantom() -> CoilPhantom:
    return make_coil_phantom()
