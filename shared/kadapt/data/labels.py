"""Per-pixel tissue labels for the task data (issue 8): a tissue model, labelled anatomy, label slicing.

Labels are one uint8 class per voxel / pixel, ``LABEL_NAMES`` = background, CSF, grey matter, white
matter. For every labelled anatomy the voxel label is the arg-max of ``(1 - sum, csf, gm, wm)`` over the
*same* soft tissue maps the simulator renders the image from, so a label never disagrees with the tissue
that produced a pixel's contrast (up to partial volume at a class boundary).

Where a source ships probability maps (MNI152's GM / WM) they are the tissue maps. Where it ships only a
skull-stripped T1 (Colin27's ``ch2bet``, INIA19), :func:`tissue_model_maps` is a three-class intensity
model: 1D k-means on the brain voxels (in 1D the k-means optimum is multi-level Otsu's threshold) gives
CSF / GM / WM class means, and partial-volume tents between neighbouring means (the linear mixing model
of FSL FAST's partial-volume estimate) give soft memberships that keep the T1's texture.

Slicing: :func:`label_slices` samples the voxel labels with nearest-neighbour interpolation at the centre
of each reconstruction pixel of the image's own :class:`~kadapt.data.simulator.SliceGeometry`, so labels
follow the image's oblique cut and are stored at the reconstruction grid ``(H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from kadapt.data.anatomy import TISSUE_CLASSES, Anatomy, FloatVolume
from kadapt.data.simulator import SliceGeometry
from kadapt.errors import GeometryMismatchError, InvalidInputError

LABEL_NAMES = ("background", "csf", "gm", "wm")
BACKGROUND, CSF, GM, WM = range(len(LABEL_NAMES))
LabelVolume = NDArray[np.uint8]


@dataclass(frozen=True)
class LabelledAnatomy(Anatomy):
    """An :class:`Anatomy` with a voxel label volume ``labels`` uint8 ``(X, Y, Z)`` on the same grid
    (values index ``LABEL_NAMES``) and a one-line note on how the labels were made (for the data card)."""

    labels: LabelVolume
    label_method: str

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.labels.shape != self.shape or self.labels.dtype != np.uint8:
            raise GeometryMismatchError(
                f"labels must be uint8 {self.shape}, got {self.labels.dtype} {self.labels.shape}"
            )


def labels_from_maps(tissue_maps: FloatVolume) -> LabelVolume:
    """Voxel labels ``(X, Y, Z)`` uint8: arg-max of ``(1 - sum, csf, gm, wm)`` of tissue maps
    ``(TISSUE_CLASSES, X, Y, Z)`` whose first three classes are CSF, GM, WM (the fourth, fat, is unused by
    the labelled sources and counts as background)."""
    if tissue_maps.ndim != 4 or tissue_maps.shape[0] != TISSUE_CLASSES:
        raise GeometryMismatchError(
            f"tissue_maps must be ({TISSUE_CLASSES}, X, Y, Z), got {tissue_maps.shape}"
        )
    background = 1.0 - tissue_maps[:3].sum(axis=0)
    stacked = np.concatenate([background[np.newaxis], tissue_maps[:3]])
    labels: LabelVolume = np.argmax(stacked, axis=0).astype(np.uint8)
    return labels


def kmeans_1d(values: NDArray[np.floating], classes: int = 3, iterations: int = 100) -> NDArray[np.float64]:
    """Class means ``(classes,)``, increasing, of 1D k-means (Lloyd) on ``values``, started at evenly spaced
    quantiles (deterministic: no random restarts are needed in 1D with this start)."""
    data = np.asarray(values, dtype=np.float64).ravel()
    if data.size < classes:
        raise InvalidInputError(f"k-means needs at least {classes} values, got {data.size}")
    means = np.quantile(data, np.linspace(0.1, 0.9, classes))
    for _ in range(iterations):
        # Nearest mean = interval between midpoints (means stay sorted in 1D).
        assignment = np.searchsorted((means[:-1] + means[1:]) / 2.0, data)
        counts = np.bincount(assignment, minlength=classes)
        sums = np.bincount(assignment, weights=data, minlength=classes)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), means)
        if np.allclose(updated, means, rtol=0.0, atol=1e-9 * max(1.0, float(np.abs(means).max()))):
            break
        means = updated
    return np.sort(means)


def tissue_model_maps(brain: NDArray[np.floating]) -> tuple[FloatVolume, NDArray[np.float64]]:
    """Soft CSF / GM / WM maps ``(TISSUE_CLASSES, X, Y, Z)`` (fat class zero) of a skull-stripped T1
    ``(X, Y, Z)`` (background exactly 0), and the three class means.

    Inside the brain (intensity > 0) a voxel is fully CSF below the CSF mean, fully WM above the WM mean,
    and a linear mix of the two neighbouring classes in between; outside it all maps are 0.
    """
    volume = np.asarray(brain, dtype=np.float32)
    if volume.ndim != 3:
        raise GeometryMismatchError(f"brain must be (X, Y, Z), got shape {volume.shape}")
    inside = volume > 0
    if inside.sum() < 16:
        raise InvalidInputError(f"only {int(inside.sum())} brain voxels (intensity > 0)")
    values = volume[inside]
    means = kmeans_1d(values[:: max(1, values.size // 500_000)])
    maps = np.zeros((TISSUE_CLASSES, *volume.shape), dtype=np.float32)
    for k in range(3):
        one_hot = np.zeros(3)
        one_hot[k] = 1.0
        maps[k][inside] = np.interp(values, means, one_hot).astype(np.float32)
    return maps, means


def pixel_centres(geometry: SliceGeometry, supersampling: int) -> NDArray[np.float64]:
    """Voxel coordinates ``(3, slices, H, W)`` of the reconstruction pixels' centres: the mean of each
    pixel's ``supersampling x supersampling`` sub-samples (the plane is affine, so that is its centre)."""
    _, slices, sub_h, sub_w = geometry.coordinates.shape
    height, width = sub_h // supersampling, sub_w // supersampling
    blocks = geometry.coordinates.reshape(3, slices, height, supersampling, width, supersampling)
    centres: NDArray[np.float64] = blocks.mean(axis=(3, 5))
    return centres


def label_slices(labels: LabelVolume, geometry: SliceGeometry, supersampling: int) -> LabelVolume:
    """Labels ``(slices, H, W)`` uint8 of the voxel labels ``(X, Y, Z)`` at ``geometry``'s pixel centres
    (nearest neighbour; outside the volume: background). Single images (``Z == 1``) use the in-plane axes."""
    centres = pixel_centres(geometry, supersampling)
    if labels.shape[2] == 1:
        sampled = ndimage.map_coordinates(labels[:, :, 0], centres[:2], order=0, mode="constant", cval=0)
    else:
        sampled = ndimage.map_coordinates(labels, centres, order=0, mode="constant", cval=0)
    return np.asarray(sampled, dtype=np.uint8)
