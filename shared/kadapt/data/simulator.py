"""Multi-coil k-space from package-shipped anatomy (numpy; randomness from an explicit Generator).

One call of :func:`simulate_volume` turns an :class:`~kadapt.data.anatomy.Anatomy` into a fastMRI-style
volume: oblique slices (random orientation, in-plane rotation, mirror, tilt) from the central region,
resampled to ``size x size`` with anti-aliasing (supersampled, then box-averaged), a random tissue contrast
(T1w / T2w / PD-like weights per tissue class), a multiplicative smooth bias field, a smooth random phase
(B0 / receive phase as a low-order polynomial), birdcage coil sensitivities, the orthonormal centred FFT and
coil-correlated complex Gaussian noise at a random SNR.

Axes follow fastMRI: k-space ``(slices, coils, H, W)``, readout (kx) along H, phase encode (ky) along W.
The target is the RSS of the noiseless coil images (which equals the object magnitude, the maps having
unit RSS): a clean ground truth, unlike fastMRI's RSS of noisy data.

:func:`simulate_volume` is :func:`plan_slices` then :func:`render_volume`; the task data
(:mod:`kadapt.data.task_sim`) cuts labels and draws lesions between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from kadapt.data.anatomy import TISSUE_CLASSES, Anatomy
from kadapt.data.coils_sim import birdcage_sensitivities, coil_noise, random_noise_covariance
from kadapt.errors import GeometryMismatchError, InvalidInputError
from kadapt.kspace.fft import fft2c

# Relative signal per tissue class (fluid-like, grey-like, white-like, fat-like) for each contrast; each
# weight is jittered by +-15% per volume. Ratios follow textbook brain contrast at 1.5-3 T.
CONTRASTS: dict[str, tuple[float, float, float, float]] = {
    "T1W": (0.12, 0.50, 0.80, 1.00),
    "T2W": (1.00, 0.50, 0.35, 0.55),
    "PDW": (0.85, 0.90, 0.75, 0.90),
}


@dataclass(frozen=True)
class SimulationSettings:
    """Knobs of :func:`simulate_volume`. ``size``: H = W; ``snr_range``: log-uniform draw of the mean
    foreground magnitude over the per-coil noise standard deviation."""

    size: int = 128
    coils: int = 8
    slices: int = 8
    # Per-coil SNR 12-60 left the fully sampled reference of the noisiest volumes only 18 dB from the
    # noise-free object, so every comparison was noise-limited; 25-100 keeps the noisiest near 25 dB.
    snr_range: tuple[float, float] = (25.0, 100.0)
    max_in_plane_deg: float = 15.0
    max_tilt_deg: float = 20.0
    fov_margin_range: tuple[float, float] = (1.05, 1.3)
    slice_spacing_fraction: tuple[float, float] = (0.012, 0.025)
    bias_strength: float = 0.25
    noise_correlation: float = 0.3
    supersampling: int = 2

    def __post_init__(self) -> None:
        for name in ("size", "coils", "slices", "supersampling"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name}={getattr(self, name)} must be >= 1")
        low, high = self.snr_range
        if not 0 < low <= high:
            raise InvalidInputError(f"snr_range={self.snr_range} must satisfy 0 < low <= high")


@dataclass(frozen=True)
class SimulatedVolume:
    """A simulated multi-coil volume.

    ``kspace`` complex64 ``(slices, coils, H, W)``; ``target`` float32 ``(slices, H, W)`` (RSS of the
    noiseless coil images); ``image`` complex64 ``(slices, H, W)`` (object with bias and phase);
    ``sensitivities`` complex64 ``(coils, H, W)``; ``noise_covariance`` complex64 ``(coils, coils)`` of the
    k-space noise (per sample, already scaled by ``noise_std ** 2``).
    """

    kspace: NDArray[np.complex64]
    target: NDArray[np.float32]
    image: NDArray[np.complex64]
    sensitivities: NDArray[np.complex64]
    noise_covariance: NDArray[np.complex64]
    noise_std: float
    snr: float
    contrast: str
    fov_mm: float
    slice_spacing_mm: float
    orientation: str


@dataclass(frozen=True)
class SliceGeometry:
    """Where the slices are cut: ``coordinates`` ``(3, slices, H*s, W*s)`` in voxel indices (s = the
    supersampling), the square FOV in mm, the slice spacing in mm and a short orientation label."""

    coordinates: NDArray[np.float64]
    fov_mm: float
    slice_spacing_mm: float
    orientation: str


def _rotate(vector: NDArray[np.float64], axis: NDArray[np.float64], angle: float) -> NDArray[np.float64]:
    """Rodrigues' rotation of ``vector`` (3,) about the unit ``axis`` (3,) by ``angle`` radians."""
    cos, sin = np.cos(angle), np.sin(angle)
    rotated: NDArray[np.float64] = (
        vector * cos + np.cross(axis, vector) * sin + axis * np.dot(axis, vector) * (1 - cos)
    )
    return rotated


def plan_slices(anatomy: Anatomy, settings: SimulationSettings, rng: np.random.Generator) -> SliceGeometry:
    """Random oblique slice planes through the central region of ``anatomy``.

    3D volumes: the slice normal is one of the three volume axes, tilted by up to ``max_tilt_deg``; thin
    sources (``slab_axis``) are cut along their slab only. In-plane: readout / phase axes swapped at random,
    mirrored at random, rotated by up to ``max_in_plane_deg``. Single images get a sub-degree, sub-pixel
    jitter per slice so that neighbouring slices differ a little, as real ones do.
    """
    low, high = anatomy.foreground_box_mm()
    centre, extent = (low + high) / 2.0, high - low
    voxel = np.asarray(anatomy.voxel_mm)
    normal = int(rng.integers(3)) if anatomy.slab_axis is None else anatomy.slab_axis
    in_plane = [axis for axis in range(3) if axis != normal]
    if rng.random() < 0.5:
        in_plane.reverse()
    basis = np.eye(3)
    e_u, e_v, e_w = basis[in_plane[0]], basis[in_plane[1]], basis[normal]
    if rng.random() < 0.5:
        e_v = -e_v
    theta = np.deg2rad(rng.uniform(-settings.max_in_plane_deg, settings.max_in_plane_deg))
    e_u, e_v = np.cos(theta) * e_u + np.sin(theta) * e_v, -np.sin(theta) * e_u + np.cos(theta) * e_v
    tilt = 0.0
    if anatomy.slab_axis is None:
        tilt = float(rng.uniform(0.0, settings.max_tilt_deg))
        psi = rng.uniform(0.0, 2.0 * np.pi)
        tilt_axis = np.cos(psi) * e_u + np.sin(psi) * e_v
        e_u, e_v, e_w = (_rotate(e, tilt_axis, np.deg2rad(tilt)) for e in (e_u, e_v, e_w))
    fov = float(max(extent[in_plane]) * rng.uniform(*settings.fov_margin_range))
    count = settings.slices
    depth = anatomy.shape[normal]
    if anatomy.slab_axis is None:
        spacing = float(rng.uniform(*settings.slice_spacing_fraction) * extent[normal])
        middle = centre + e_w * rng.uniform(-0.1, 0.1) * extent[normal]
        offsets = (np.arange(count) - (count - 1) / 2.0) * spacing
    else:
        # Whole voxels along the slab where it has enough of them, interpolated planes where it has not.
        step = 1.0 if depth >= count or count == 1 else (depth - 1) / (count - 1)
        start = rng.uniform(0.0, max(0.0, depth - 1 - step * (count - 1)))
        spacing = step * voxel[normal]
        middle = centre.copy()
        middle[normal] = (start + step * (count - 1) / 2.0) * voxel[normal]
        offsets = (np.arange(count) - (count - 1) / 2.0) * spacing
    sub = settings.size * settings.supersampling
    pixel = fov / settings.size
    grid = ((np.arange(sub) + 0.5) / settings.supersampling - settings.size / 2.0) * pixel
    coordinates = np.empty((3, count, sub, sub))
    for index, offset in enumerate(offsets):
        u, v, origin = e_u, e_v, middle + offset * e_w
        if depth == 1:
            jitter = np.deg2rad(rng.uniform(-1.0, 1.0))
            u, v = np.cos(jitter) * e_u + np.sin(jitter) * e_v, -np.sin(jitter) * e_u + np.cos(jitter) * e_v
            origin = origin + (rng.uniform(-1.0, 1.0) * e_u + rng.uniform(-1.0, 1.0) * e_v) * pixel
        points = (
            origin[:, None, None]
            + u[:, None, None] * grid[None, :, None]
            + v[:, None, None] * grid[None, None, :]
        )
        coordinates[:, index] = points / voxel[:, None, None]
    orientation = f"normal-axis{normal}" + (f"+tilt{tilt:.0f}deg" if tilt else "")
    return SliceGeometry(coordinates, fov, float(spacing), orientation)


def tissue_slices(anatomy: Anatomy, geometry: SliceGeometry, supersampling: int) -> NDArray[np.float32]:
    """Tissue memberships ``(TISSUE_CLASSES, slices, H, W)`` sampled at ``geometry`` (linear interpolation,
    then a ``supersampling``-fold box average: the anti-aliasing filter of the resampling)."""
    _, slices, sub_h, sub_w = geometry.coordinates.shape
    height, width = sub_h // supersampling, sub_w // supersampling
    out = np.empty((TISSUE_CLASSES, slices, height, width), dtype=np.float32)
    single_image = anatomy.shape[2] == 1
    for k in range(TISSUE_CLASSES):
        volume = anatomy.tissue_maps[k]
        if single_image:
            sampled = ndimage.map_coordinates(
                volume[:, :, 0], geometry.coordinates[:2], order=1, mode="constant", prefilter=False
            )
        else:
            sampled = ndimage.map_coordinates(
                volume, geometry.coordinates, order=1, mode="constant", prefilter=False
            )
        blocks = sampled.reshape(slices, height, supersampling, width, supersampling)
        out[k] = blocks.mean(axis=(2, 4))
    return out


def bias_field(height: int, width: int, rng: np.random.Generator, strength: float) -> NDArray[np.float32]:
    """A smooth multiplicative bias ``(H, W)``: ``exp(strength * f)``, f a unit-variance random field from
    a 4 x 4 Gaussian grid upsampled with cubic splines (receive / transmit inhomogeneity is smooth)."""
    coarse = rng.standard_normal((4, 4))
    smooth = ndimage.zoom(coarse, (height / 4.0, width / 4.0), order=3, mode="nearest")[:height, :width]
    smooth = (smooth - smooth.mean()) / max(float(smooth.std()), 1e-6)
    field: NDArray[np.float32] = np.exp(strength * smooth).astype(np.float32)
    return field


def smooth_phase(slices: int, height: int, width: int, rng: np.random.Generator) -> NDArray[np.float32]:
    """Smooth random phase ``(slices, H, W)`` in radians: a second-order polynomial in the normalised
    coordinates, shared by the volume and drifting slightly from slice to slice (B0 phase is smooth)."""
    x = np.linspace(-1.0, 1.0, height)[:, None]
    y = np.linspace(-1.0, 1.0, width)[None, :]
    terms = np.stack(np.broadcast_arrays(np.ones_like(x * y), x, y, x * x, x * y, y * y))
    base = np.concatenate([[rng.uniform(-np.pi, np.pi)], rng.normal(0.0, 0.6, size=5)])
    drift = rng.normal(0.0, 0.1, size=(slices, 6))
    coefficients = base[None, :] + drift
    phase: NDArray[np.float32] = np.tensordot(coefficients, terms, axes=1).astype(np.float32)
    return phase


def simulate_volume(
    anatomy: Anatomy, settings: SimulationSettings, rng: np.random.Generator
) -> SimulatedVolume:
    """Simulate one multi-coil volume from ``anatomy``: k-space ``(slices, coils, H, W)`` and its targets.

    Every random choice comes from ``rng`` in a fixed order, so one seed gives identical arrays.
    """
    return render_volume(anatomy, plan_slices(anatomy, settings, rng), settings, rng)


def render_volume(
    anatomy: Anatomy,
    geometry: SliceGeometry,
    settings: SimulationSettings,
    rng: np.random.Generator,
    modulation: NDArray[np.float32] | None = None,
) -> SimulatedVolume:
    """The rest of :func:`simulate_volume` once the slices are planned: contrast, bias, phase, coils, noise.

    ``modulation`` ``(slices, H, W)``: an optional multiplicative change of the object magnitude (the
    synthetic lesions of :mod:`kadapt.data.lesions`), applied after the intensity scale is fixed so that
    pixels it leaves at 1 are identical to the unmodulated volume's. It draws nothing from ``rng``.
    """
    tissues = tissue_slices(anatomy, geometry, settings.supersampling)
    contrast = str(rng.choice(sorted(CONTRASTS)))
    weights = np.asarray(CONTRASTS[contrast]) * rng.uniform(0.85, 1.15, size=TISSUE_CLASSES)
    magnitude = np.tensordot(weights.astype(np.float32), tissues, axes=1)
    size = settings.size
    magnitude *= bias_field(size, size, rng, settings.bias_strength)[None]
    scale = float(np.percentile(magnitude, 99))
    if scale <= 0:
        raise InvalidInputError(f"slices of {anatomy.source} hold no tissue ({geometry.orientation})")
    if modulation is not None:
        if modulation.shape != magnitude.shape:
            raise GeometryMismatchError(f"modulation {modulation.shape} must be {magnitude.shape}")
        magnitude = magnitude * modulation
    phase = smooth_phase(settings.slices, size, size, rng)
    image = ((magnitude / scale) * np.exp(1j * phase)).astype(np.complex64)
    sensitivities = birdcage_sensitivities(settings.coils, size, size, rng)
    coil_images = sensitivities[None] * image[:, None]
    target = np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=1)).astype(np.float32)
    foreground = tissues.sum(axis=0) > 0.5
    # The noise level follows the unmodulated object, so a lesion does not change a volume's SNR.
    unmodulated = target if modulation is None else target / modulation
    signal = float(unmodulated[foreground].mean()) if foreground.any() else float(unmodulated.mean())
    snr = float(np.exp(rng.uniform(*np.log(settings.snr_range))))
    noise_std = signal / snr
    covariance = random_noise_covariance(settings.coils, rng, correlation=settings.noise_correlation)
    covariance = covariance * noise_std**2
    kspace = fft2c(coil_images) + coil_noise(coil_images.shape, covariance, rng)
    return SimulatedVolume(
        kspace=kspace.astype(np.complex64),
        target=target,
        image=image,
        sensitivities=sensitivities,
        noise_covariance=covariance.astype(np.complex64),
        noise_std=noise_std,
        snr=snr,
        contrast=contrast,
        fov_mm=geometry.fov_mm,
        slice_spacing_mm=geometry.slice_spacing_mm,
        orientation=geometry.orientation,
    )
