"""Small synthetic anatomies so simulator and build tests need no package data and stay fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kadapt.data.anatomy import QUANTILE_TISSUES, Anatomy, AnatomySource, quantile_tissue_maps


def ellipsoid_intensity(shape: tuple[int, int, int]) -> np.ndarray:
    """Nested ellipsoids (fluid core, grey shell, white shell, bright rim) with a little texture."""
    axes = [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape]
    grids = np.meshgrid(*axes, indexing="ij")
    radius = np.sqrt(sum((g / s) ** 2 for g, s in zip(grids, (0.8, 0.9, 0.7), strict=True)))
    intensity = np.select(
        [radius < 0.3, radius < 0.6, radius < 0.85, radius < 1.0], [0.2, 0.5, 0.8, 1.0], 0.0
    )
    texture = 0.05 * np.sin(7 * grids[0]) * np.cos(5 * grids[1])
    return (intensity * (1.0 + texture)).astype(np.float32)


def synthetic_anatomy(name: str, subject: str, shape: tuple[int, int, int], slab_axis: int | None) -> Anatomy:
    maps = quantile_tissue_maps(ellipsoid_intensity(shape))
    return Anatomy(name, subject, maps, QUANTILE_TISSUES, (2.0, 2.0, 2.0), slab_axis)


def synthetic_source(
    name: str, subject: str, shape: tuple[int, int, int], slab_axis: int | None
) -> AnatomySource:
    anatomy = synthetic_anatomy(name, subject, shape, slab_axis)

    def locate() -> list[Path]:
        return []

    def load(files: list[Path]) -> Anatomy:
        return anatomy

    return AnatomySource(
        name, subject, "tests", "synthetic ellipsoids", "public domain", anatomy.in_plane_matrix, locate, load
    )


@pytest.fixture(scope="session")
def volume_anatomy() -> Anatomy:
    return synthetic_anatomy("synthetic-volume", "synthetic-a", (64, 72, 60), None)


@pytest.fixture(scope="session")
def synthetic_sources() -> list[AnatomySource]:
    return [
        synthetic_source("synthetic-volume", "synthetic-a", (64, 72, 60), None),
        synthetic_source("synthetic-slab", "synthetic-b", (64, 64, 6), 2),
        synthetic_source("synthetic-image", "synthetic-c", (80, 64, 1), 2),
    ]
