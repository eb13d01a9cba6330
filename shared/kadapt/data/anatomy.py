"""Anatomy for the simulator: real volumes that ship in installed packages, as soft tissue maps.

Every source is one subject (MNI152's T1 / GM / WM maps are one template "subject"). Sources that share a
person, or whose provenance cannot rule it out, share a ``subject`` id so that :mod:`kadapt.data.build`
never puts them in different splits. The individual loaders live in :mod:`kadapt.data.sources`.

Tissue maps: ``(TISSUE_CLASSES, X, Y, Z)`` soft memberships in ``[0, 1]`` ordered by T1-weighted
brightness (fluid-like, grey-like, white-like, fat-like); background is ``1 - sum``. Where a source ships
probabilistic GM / WM maps they are used; elsewhere pseudo-classes come from intensity quantiles as tent
functions, so that any weighting of the classes is a piecewise-linear remap of the source intensity and
keeps its texture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import GeometryMismatchError, InvalidInputError

TISSUE_CLASSES = 4
QUANTILE_TISSUES = ("dark", "mid-dark", "mid-bright", "bright")
FloatVolume = NDArray[np.float32]


@dataclass(frozen=True)
class Anatomy:
    """One subject's anatomy, ready for slicing.

    ``tissue_maps`` float32 ``(TISSUE_CLASSES, X, Y, Z)``; ``voxel_mm`` the voxel size along X, Y, Z;
    ``slab_axis``: for thin sources (a few slices or one image) the axis the slices are stacked along —
    the simulator then cuts only planes perpendicular to it; None for whole 3D volumes.
    """

    source: str
    subject: str
    tissue_maps: FloatVolume
    tissue_names: tuple[str, ...]
    voxel_mm: tuple[float, float, float]
    slab_axis: int | None

    def __post_init__(self) -> None:
        if self.tissue_maps.ndim != 4 or self.tissue_maps.shape[0] != TISSUE_CLASSES:
            raise GeometryMismatchError(
                f"tissue_maps must be ({TISSUE_CLASSES}, X, Y, Z), got {self.tissue_maps.shape}"
            )
        if self.slab_axis not in (None, 0, 1, 2):
            raise InvalidInputError(f"slab_axis={self.slab_axis} must be None, 0, 1 or 2")
        if min(self.voxel_mm) <= 0:
            raise InvalidInputError(f"voxel_mm={self.voxel_mm} must be positive")

    @property
    def shape(self) -> tuple[int, int, int]:
        _, x, y, z = self.tissue_maps.shape
        return (x, y, z)

    @property
    def in_plane_matrix(self) -> int:
        """The smallest matrix size a simulated slice can cut from this anatomy (pixels)."""
        axes = [a for a in range(3) if a != self.slab_axis]
        return min(self.shape[a] for a in axes)

    def foreground_box_mm(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(low, high)`` corners ``(3,)`` in mm of the voxels with tissue (membership sum > 0.5)."""
        foreground = self.tissue_maps.sum(axis=0) > 0.5
        if not foreground.any():
            raise InvalidInputError(f"anatomy {self.source} has no foreground voxel")
        low = np.empty(3)
        high = np.empty(3)
        for axis in range(3):
            others = tuple(a for a in range(3) if a != axis)
            present = np.flatnonzero(foreground.any(axis=others))
            low[axis], high[axis] = present[0], present[-1] + 1
        voxel = np.asarray(self.voxel_mm)
        return low * voxel, high * voxel


@dataclass(frozen=True)
class AnatomySource:
    """A package-shipped anatomy: where it lives, how to load it, and its licence note.

    ``matrix``: the loaded anatomy's :attr:`Anatomy.in_plane_matrix`, declared so that sources too coarse
    for a matrix size can be skipped before loading (a test checks the declaration against the load);
    ``locate()`` returns the files (``None`` with the reason in ``missing_reason()`` when absent);
    ``load(files)`` returns the :class:`Anatomy`.
    """

    name: str
    subject: str
    package: str
    description: str
    licence: str
    matrix: int
    locate: Callable[[], list[Path] | None]
    load: Callable[[list[Path]], Anatomy]

    def missing_reason(self) -> str | None:
        """None when every file is present, else a sentence naming what is missing."""
        files = self.locate()
        if files is None:
            return f"{self.package} is not installed"
        absent = [str(path) for path in files if not path.is_file()]
        return f"missing files: {absent}" if absent else None


def _tents(intensity: FloatVolume, nodes: NDArray[np.float64]) -> FloatVolume:
    """Tent memberships ``(len(nodes) - 1, ...)`` of ``intensity`` over ``nodes`` (node 0 = background).

    Piecewise-linear partition of unity: intensity at node k belongs fully to class k; beyond the last
    node it stays in the last class.
    """
    classes = nodes.size - 1
    maps = np.empty((classes, *intensity.shape), dtype=np.float32)
    for k in range(classes):
        one_hot = np.zeros(nodes.size)
        one_hot[k + 1] = 1.0
        maps[k] = np.interp(intensity, nodes, one_hot).astype(np.float32)
    return maps


def foreground_threshold(intensity: NDArray[np.floating]) -> float:
    """Intensity separating tissue from background (half Otsu's threshold, at least 5% of the p99).

    Half of Otsu keeps dark tissue (muscle, CSF) that Otsu alone assigns to the background.
    """
    values = np.asarray(intensity, dtype=np.float64).ravel()
    sample = values[:: max(1, values.size // 200_000)]
    high = float(np.percentile(sample, 99))
    if high <= 0:
        raise InvalidInputError("intensity volume is empty (99th percentile <= 0)")
    histogram, edges = np.histogram(sample, bins=256, range=(float(sample.min()), high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(histogram)
    weight_high = weight_low[-1] - weight_low
    mass_low = np.cumsum(histogram * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = mass_low / weight_low
        mean_high = (mass_low[-1] - mass_low) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    otsu = float(centres[int(np.nanargmax(np.nan_to_num(between)))])
    return max(0.5 * otsu, 0.05 * high)


def quantile_tissue_maps(intensity: NDArray[np.floating]) -> FloatVolume:
    """Pseudo-tissue maps ``(TISSUE_CLASSES, X, Y, Z)`` from an intensity volume ``(X, Y, Z)``.

    Nodes: the foreground threshold (background below it), then the 5 / 35 / 65 / 95% quantiles of the
    foreground intensities as the centres of the four classes.
    """
    volume = np.asarray(intensity, dtype=np.float32)
    if volume.ndim != 3:
        raise GeometryMismatchError(f"intensity must be (X, Y, Z), got shape {volume.shape}")
    threshold = foreground_threshold(volume)
    tissue = volume[volume > threshold]
    if tissue.size < 16:
        raise InvalidInputError(f"only {tissue.size} voxels above the foreground threshold {threshold:.3g}")
    centres = np.quantile(tissue[:: max(1, tissue.size // 500_000)], (0.05, 0.35, 0.65, 0.95))
    nodes = np.concatenate([[threshold], centres])
    # Strictly increasing nodes, or np.interp silently merges classes.
    nodes = np.maximum.accumulate(nodes + np.arange(nodes.size) * 1e-6 * float(nodes[-1]))
    return _tents(volume, nodes)


def probabilistic_tissue_maps(
    t1: NDArray[np.floating], grey: NDArray[np.floating], white: NDArray[np.floating]
) -> FloatVolume:
    """Tissue maps ``(TISSUE_CLASSES, X, Y, Z)`` from a brain-extracted T1 ``(X, Y, Z)`` and grey / white
    matter probabilities ``(X, Y, Z)`` in ``[0, 1]``: fluid = brain minus GM minus WM, no fat class.
    """
    t1 = np.asarray(t1, dtype=np.float32)
    if not t1.shape == np.shape(grey) == np.shape(white) or t1.ndim != 3:
        raise GeometryMismatchError(
            f"t1 {t1.shape}, grey {np.shape(grey)} and white {np.shape(white)} must be equal (X, Y, Z)"
        )
    threshold = foreground_threshold(t1)
    brain = np.clip(t1 / threshold, 0.0, 1.0)
    gm = np.clip(np.asarray(grey, dtype=np.float32), 0.0, 1.0) * brain
    wm = np.clip(np.asarray(white, dtype=np.float32), 0.0, 1.0) * brain
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    return np.stack([csf, gm, wm, np.zeros_like(csf)]).astype(np.float32)


def resample_plane(image: NDArray[np.floating], max_matrix: int) -> tuple[FloatVolume, float]:
    """Shrink a 2D image ``(X, Y)`` so its larger side is at most ``max_matrix`` (Gaussian anti-aliasing).

    Returns the image ``(X', Y')`` and the zoom factor (``< 1`` when shrunk). Large single images (a
    1024^2 shoulder) would otherwise cost memory and alias when cut at 128^2.
    """
    from scipy import ndimage

    plane = np.asarray(image, dtype=np.float32)
    factor = min(1.0, max_matrix / max(plane.shape))
    if factor >= 1.0:
        return plane, 1.0
    smoothed = ndimage.gaussian_filter(plane, sigma=0.5 / factor)
    return ndimage.zoom(smoothed, factor, order=1).astype(np.float32), factor
