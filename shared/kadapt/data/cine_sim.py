"""Multi-coil cine k-space: the simulator of :mod:`kadapt.data.simulator` with cardiac-like motion (numpy).

One call of :func:`simulate_cine_volume` cuts oblique slices from real anatomy exactly as the static
simulator does (:func:`~kadapt.data.simulator.plan_slices`, the same tissue contrast, bias field and smooth
phase), then makes a cine of every slice with :func:`~kadapt.data.cine_motion.apply_motion` on the
supersampled complex image (before the anti-aliasing box average, so the warp adds no blur of its own),
multiplies by static birdcage coil maps and adds coil-correlated noise to every frame independently.

Axes: k-space ``(slices, frames, coils, H, W)`` — fastMRI's layout with ``frame`` before ``coil``
(architecture.md sec. 3), readout (kx) along H, phase encode (ky) along W. The target is the RSS of the
fully sampled, noisy k-space, as a user with scanner data would have it (docs/dynamic.md C1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from kadapt.data.anatomy import TISSUE_CLASSES, Anatomy
from kadapt.data.cine_motion import CardiacMotion, MotionSettings, apply_motion, draw_motion
from kadapt.data.coils_sim import birdcage_sensitivities, coil_noise, random_noise_covariance
from kadapt.data.simulator import (
    CONTRASTS,
    SimulationSettings,
    bias_field,
    plan_slices,
    smooth_phase,
    tissue_slices,
)
from kadapt.errors import InvalidInputError
from kadapt.kspace.fft import fft2c, ifft2c


@dataclass(frozen=True)
class CineSettings:
    """``simulation``: the static simulator's knobs (size, coils, slices, SNR, ...); ``frames`` per cine;
    ``motion``: the ranges of :func:`~kadapt.data.cine_motion.draw_motion`."""

    simulation: SimulationSettings
    frames: int = 8
    motion: MotionSettings = field(default_factory=MotionSettings)

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise InvalidInputError(f"frames={self.frames} must be >= 2 for a cine")


@dataclass(frozen=True)
class SimulatedCine:
    """A simulated multi-coil cine volume.

    ``kspace`` complex64 ``(slices, frames, coils, H, W)``; ``rss`` float32 ``(slices, frames, H, W)`` (RSS
    of the noisy coil images); ``image`` complex64 ``(slices, frames, H, W)`` (the noiseless object);
    ``sensitivities`` complex64 ``(coils, H, W)`` (static, unit RSS); ``noise_covariance`` complex64
    ``(coils, coils)`` already scaled by ``noise_std ** 2``; ``motion`` the drawn motion.
    """

    kspace: NDArray[np.complex64]
    rss: NDArray[np.float32]
    image: NDArray[np.complex64]
    sensitivities: NDArray[np.complex64]
    noise_covariance: NDArray[np.complex64]
    noise_std: float
    snr: float
    contrast: str
    fov_mm: float
    slice_spacing_mm: float
    orientation: str
    motion: CardiacMotion


def _box_average(array: NDArray[np.complex64], factor: int) -> NDArray[np.complex64]:
    """Average ``factor x factor`` blocks of the last two axes (the resampling's anti-aliasing filter)."""
    *lead, sub_h, sub_w = array.shape
    blocks = array.reshape(*lead, sub_h // factor, factor, sub_w // factor, factor)
    averaged: NDArray[np.complex64] = blocks.mean(axis=(-3, -1)).astype(np.complex64)
    return averaged


def simulate_cine_volume(
    anatomy: Anatomy,
    settings: CineSettings,
    rng: np.random.Generator,
    motion_rng: np.random.Generator,
) -> SimulatedCine:
    """Simulate one cine volume: k-space ``(slices, frames, coils, H, W)`` and its targets.

    ``rng`` drives what the static simulator draws (slices, contrast, bias, phase, coils, noise) in its
    own order; ``motion_rng`` only the motion, so the motion can change without moving anything else.
    """
    sim = settings.simulation
    factor = sim.supersampling
    geometry = plan_slices(anatomy, sim, rng)
    # Tissue at the supersampled grid (no averaging yet): the motion warps it before the box average.
    tissues = tissue_slices(anatomy, geometry, 1)
    contrast = str(rng.choice(sorted(CONTRASTS)))
    weights = np.asarray(CONTRASTS[contrast]) * rng.uniform(0.85, 1.15, size=TISSUE_CLASSES)
    magnitude = np.tensordot(weights.astype(np.float32), tissues, axes=1)
    sub = sim.size * factor
    magnitude *= bias_field(sub, sub, rng, sim.bias_strength)[None]
    scale = float(np.percentile(magnitude, 99))
    if scale <= 0:
        raise InvalidInputError(f"slices of {anatomy.source} hold no tissue ({geometry.orientation})")
    phase = smooth_phase(sim.slices, sub, sub, rng)
    foreground = _box_average(tissues.sum(axis=0).astype(np.complex64), factor).real > 0.5
    motion = draw_motion(foreground, motion_rng, settings.motion)
    cine = apply_motion(magnitude / scale, phase, motion, settings.frames, factor)
    image = _box_average(cine, factor)
    sensitivities = birdcage_sensitivities(sim.coils, sim.size, sim.size, rng)
    coil_images = sensitivities[None, None] * image[:, :, None]
    # The noise level follows frame 0 (end-diastole), so it does not depend on the frame count.
    clean = np.abs(image[:, 0])
    signal = float(clean[foreground].mean()) if foreground.any() else float(clean.mean())
    snr = float(np.exp(rng.uniform(*np.log(sim.snr_range))))
    noise_std = signal / snr
    covariance = random_noise_covariance(sim.coils, rng, correlation=sim.noise_correlation) * noise_std**2
    kspace = (fft2c(coil_images) + coil_noise(coil_images.shape, covariance, rng)).astype(np.complex64)
    rss = np.sqrt(np.sum(np.abs(ifft2c(kspace)) ** 2, axis=2)).astype(np.float32)
    return SimulatedCine(
        kspace=kspace,
        rss=rss,
        image=image,
        sensitivities=sensitivities,
        noise_covariance=covariance.astype(np.complex64),
        noise_std=noise_std,
        snr=snr,
        contrast=contrast,
        fov_mm=geometry.fov_mm,
        slice_spacing_mm=geometry.slice_spacing_mm,
        orientation=geometry.orientation,
        motion=motion,
    )
