"""Synthetic lesions for the classification task (issue 8): a small bright or dark ellipse in brain tissue.

Seed 002 (``/work/shared/seeds/002_*.txt``, eq. 3) classifies slices with a binary cross-entropy; BraTS
gives it pathology, which nothing installable here has. So the simulator inserts its own: in about half of
the slices (independent Bernoulli draws) one ellipse, centred on a random grey- or white-matter pixel of
the slice's labels, with semi-axes of 3-7% of the field of view (relative, so a macaque brain gets the same
share of its image as a human one), a random orientation, and a contrast factor multiplying the object's
magnitude: dark 0.3-0.6 (a T1 "black hole", a cyst) or bright 1.6-2.4 (an enhancing or T2-bright lesion).

The ellipse has a one-pixel linear edge (anti-aliased, so its k-space has no ringing the classifier could
key on), and multiplies the magnitude: it vanishes in air by construction. The slice label is 1 when an
ellipse was inserted; the pixel mask is where its weight is at least 0.5 inside the head. The lesion is
2D (per slice) so that presence is balanced per slice, not per volume. Every draw comes from the
Generator passed in, in a fixed order per slice, whether or not the slice gets a lesion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from kadapt.data.labels import GM, WM
from kadapt.errors import GeometryMismatchError, InvalidInputError


@dataclass(frozen=True)
class LesionSettings:
    """``probability``: per-slice chance of a lesion; ``semi_axis_fraction``: semi-axes as a fraction of the
    image side; ``dark_factor`` / ``bright_factor``: magnitude factor ranges, each chosen with odds 1:1."""

    probability: float = 0.5
    semi_axis_fraction: tuple[float, float] = (0.03, 0.07)
    dark_factor: tuple[float, float] = (0.3, 0.6)
    bright_factor: tuple[float, float] = (1.6, 2.4)

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise InvalidInputError(f"probability={self.probability} must be within [0, 1]")
        low, high = self.semi_axis_fraction
        if not 0.0 < low <= high < 0.5:
            raise InvalidInputError(
                f"semi_axis_fraction={self.semi_axis_fraction} must satisfy 0 < low <= high < 0.5"
            )
        if not 0.0 < self.dark_factor[0] <= self.dark_factor[1] < 1.0:
            raise InvalidInputError(f"dark_factor={self.dark_factor} must lie within (0, 1)")
        if not 1.0 < self.bright_factor[0] <= self.bright_factor[1]:
            raise InvalidInputError(f"bright_factor={self.bright_factor} must lie above 1")


@dataclass(frozen=True)
class Lesions:
    """``modulation`` float32 ``(slices, H, W)`` (1 outside lesions), ``present`` uint8 ``(slices,)``,
    ``mask`` uint8 ``(slices, H, W)``, ``factor`` float32 ``(slices,)`` (1 where absent)."""

    modulation: NDArray[np.float32]
    present: NDArray[np.uint8]
    mask: NDArray[np.uint8]
    factor: NDArray[np.float32]


def ellipse_weight(
    height: int, width: int, centre: tuple[float, float], semi_axes: tuple[float, float], angle: float
) -> NDArray[np.float32]:
    """Weight ``(H, W)`` in [0, 1] of an ellipse (pixel units): 1 inside, 0 outside, a linear ramp one pixel
    wide across its edge (0.5 on the ellipse itself)."""
    rows = np.arange(height, dtype=np.float64)[:, np.newaxis] - centre[0]
    cols = np.arange(width, dtype=np.float64)[np.newaxis, :] - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    along = (cos * rows + sin * cols) / semi_axes[0]
    across = (-sin * rows + cos * cols) / semi_axes[1]
    radius = np.sqrt(along**2 + across**2)
    # (1 - radius) * min(semi_axes) ~ signed distance to the edge in pixels near the edge.
    weight: NDArray[np.float32] = np.clip((1.0 - radius) * min(semi_axes) + 0.5, 0.0, 1.0).astype(np.float32)
    return weight


def draw_lesions(
    segmentation: NDArray[np.uint8], settings: LesionSettings, rng: np.random.Generator
) -> Lesions:
    """Lesions for slices with labels ``segmentation`` ``(slices, H, W)`` (``kadapt.data.labels`` classes).

    A slice without grey or white matter gets none (its draws are still consumed, keeping later slices'
    draws fixed).
    """
    if segmentation.ndim != 3:
        raise GeometryMismatchError(f"segmentation must be (slices, H, W), got {segmentation.shape}")
    slices, height, width = segmentation.shape
    modulation = np.ones((slices, height, width), dtype=np.float32)
    present = np.zeros(slices, dtype=np.uint8)
    mask = np.zeros((slices, height, width), dtype=np.uint8)
    factor = np.ones(slices, dtype=np.float32)
    side = float(min(height, width))
    for index in range(slices):
        wanted = rng.random() < settings.probability
        pick = rng.random()
        semi_axes = tuple(float(a) * side for a in rng.uniform(*settings.semi_axis_fraction, size=2))
        angle = float(rng.uniform(0.0, np.pi))
        bright = rng.random() < 0.5
        strength = float(rng.uniform(*(settings.bright_factor if bright else settings.dark_factor)))
        tissue = np.flatnonzero(np.isin(segmentation[index], (GM, WM)))
        if not wanted or tissue.size == 0:
            continue
        row, col = divmod(int(tissue[min(int(pick * tissue.size), tissue.size - 1)]), width)
        weight = ellipse_weight(height, width, (float(row), float(col)), (semi_axes[0], semi_axes[1]), angle)
        modulation[index] = 1.0 + (strength - 1.0) * weight
        mask[index] = (weight >= 0.5) & (segmentation[index] > 0)
        present[index] = 1
        factor[index] = strength
    return Lesions(modulation, present, mask, factor)
