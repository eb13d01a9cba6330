"""Cardiac-like periodic motion for cine data: a contracting "ventricle", breathing, a blood pool (numpy).

The handbook (science.md, "Data (offline)") asks for cine data with "cardiac-like motion ... periodic
deformations"; seed 004 (E2E-ADS-Recon) trains on 2D+t cardiac cine. No cardiac anatomy ships in the
installed packages, so the real anatomy slices of :mod:`kadapt.data.simulator` are deformed instead:

- a smooth radial contraction around a random centre (the "ventricle"): the pull-back map
  ``p(x, t) = x + a * w(t) * g(|x - c|) * (x - c)`` with the Gaussian envelope
  ``g(r) = exp(-r^2 / (2 sigma^2))``. Near ``c`` the content shrinks by ``1 / (1 + a w)``; the radial map
  ``r (1 + a w g(r))`` stays monotone (invertible) for ``a w < 2.2``, and ``a <= 0.5`` here;
- ``w(t)`` a cardiac waveform over one R-R interval (:func:`cardiac_waveform`): 0 at end-diastole
  (frame 0, as an ECG-triggered cine starts at the R wave), a fast systolic contraction to 1, a slower
  diastolic relaxation back to 0 — periodic, not a pure sine;
- a small respiratory translation along a random direction (0.3-1.2 % of the image side), one smooth
  periodic cycle over the frames starting near its rest position (phase within +-pi/4): a cine is binned
  over many heartbeats, so whatever residual motion it shows must be periodic over the cycle;
- a blood pool: inside a soft disk of the ventricle (in its diastolic position, so it contracts with the
  deformation) the magnitude is blended towards a bright level (bSSFP-like bright blood) that dips a
  little in systole (flow dephasing).

The motion acts on the complex image (magnitude and phase) before coil sensitivities and the FFT, so coil
maps stay static over frames (:mod:`kadapt.data.cine_sim`). Randomness comes from an explicit Generator.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from kadapt.errors import GeometryMismatchError, InvalidInputError

MOTION_MODEL = "radial-contraction+respiratory-translation+blood-pool"


@dataclass(frozen=True)
class MotionSettings:
    """Ranges the per-volume motion is drawn from (uniform unless stated).

    Lengths are fractions of the image side (``size``); ``contraction`` is the peak
    ``a`` of the pull-back map (radial shortening ``a / (1 + a)`` at the centre: 20-31%, the range of a
    healthy left ventricle's fractional shortening).
    """

    contraction: tuple[float, float] = (0.25, 0.45)
    slice_jitter: float = 0.1
    radius_fraction: tuple[float, float] = (0.08, 0.13)
    centre_region: float = 0.25
    systole_fraction: tuple[float, float] = (0.3, 0.4)
    respiratory_fraction: tuple[float, float] = (0.003, 0.012)
    respiratory_phase_spread: float = np.pi / 4
    pool_fraction: float = 0.8
    blood_level: tuple[float, float] = (0.8, 1.0)
    blood_blend: tuple[float, float] = (0.5, 0.8)
    systolic_dip: tuple[float, float] = (0.05, 0.2)

    def __post_init__(self) -> None:
        low, high = self.contraction
        # The radial pull-back r (1 + a g(r)) is monotone (invertible) for a < 2.2; stay well below.
        if not 0 < low <= high or high * (1 + self.slice_jitter) > 1.0:
            raise InvalidInputError(
                f"contraction={self.contraction} must satisfy 0 < low <= high <= 1 / (1 + slice_jitter)"
            )
        if not 0 < self.systole_fraction[0] <= self.systole_fraction[1] < 1:
            raise InvalidInputError(f"systole_fraction={self.systole_fraction} must lie in (0, 1)")


@dataclass(frozen=True)
class CardiacMotion:
    """One volume's motion, in final pixels of the ``size x size`` grid.

    ``centre`` (row, col) of the ventricle; ``radius_px`` sigma of the Gaussian envelope; ``contraction``
    peak ``a`` per slice ``(slices,)``; ``systole_fraction`` of the cycle spent contracting;
    ``respiratory_px`` (row, col) peak-to-peak translation and ``respiratory_phase`` (radians);
    ``pool_radius_px``, ``blood_level`` (image scale, object p99 = 1), ``blood_blend`` (0-1) and
    ``systolic_dip`` of the blood pool.
    """

    centre: tuple[float, float]
    radius_px: float
    contraction: tuple[float, ...]
    systole_fraction: float
    respiratory_px: tuple[float, float]
    respiratory_phase: float
    pool_radius_px: float
    blood_level: float
    blood_blend: float
    systolic_dip: float

    def describe(self) -> str:
        """The motion as a compact JSON string (stored as the ``motion`` attribute of a cine file)."""
        values = {key: _rounded(value) for key, value in asdict(self).items()}
        return json.dumps({"model": MOTION_MODEL, **values}, separators=(",", ":"))


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, tuple):
        return [_rounded(item) for item in value]
    return value


def cardiac_waveform(frames: int, systole_fraction: float) -> NDArray[np.float64]:
    """Contraction state ``w`` ``(frames,)`` in ``[0, 1]`` at phases ``t / frames`` of one R-R interval.

    Systole (phase < ``systole_fraction``): ``(1 - cos(pi phase / s)) / 2`` rises from 0 to 1; diastole:
    ``(1 + cos(pi (phase - s) / (1 - s))) / 2`` falls back to 0. Periodic and continuous, with a faster
    contraction than relaxation as in a ventricular volume curve.
    """
    if frames < 1:
        raise InvalidInputError(f"frames={frames} must be >= 1")
    if not 0 < systole_fraction < 1:
        raise InvalidInputError(f"systole_fraction={systole_fraction} must lie in (0, 1)")
    phase = np.arange(frames) / frames
    systole = 0.5 * (1 - np.cos(np.pi * phase / systole_fraction))
    diastole = 0.5 * (1 + np.cos(np.pi * (phase - systole_fraction) / (1 - systole_fraction)))
    waveform: NDArray[np.float64] = np.where(phase < systole_fraction, systole, diastole)
    return waveform


def respiratory_shift(motion: CardiacMotion, frames: int) -> NDArray[np.float64]:
    """Translation ``(frames, 2)`` in pixels (row, col): ``d (1 - cos(2 pi t / T + phi)) / 2``."""
    phase = 2 * np.pi * np.arange(frames) / frames + motion.respiratory_phase
    shift: NDArray[np.float64] = 0.5 * (1 - np.cos(phase))[:, None] * np.asarray(motion.respiratory_px)
    return shift


def draw_motion(
    foreground: NDArray[np.bool_], rng: np.random.Generator, settings: MotionSettings | None = None
) -> CardiacMotion:
    """Random motion for a volume whose slices have ``foreground`` ``(slices, H, W)`` (object pixels).

    The centre is a random foreground pixel of the central ``centre_region`` of the image (any central
    pixel when the slices hold no foreground there), so that the ventricle sits on anatomy.
    """
    settings = settings or MotionSettings()
    if foreground.ndim != 3:
        raise GeometryMismatchError(f"foreground must be (slices, H, W), got {foreground.shape}")
    slices, height, width = foreground.shape
    size = min(height, width)
    rows, cols = np.mgrid[0:height, 0:width]
    central = (np.abs(rows - (height - 1) / 2) <= settings.centre_region * height) & (
        np.abs(cols - (width - 1) / 2) <= settings.centre_region * width
    )
    candidates = np.flatnonzero(central & foreground.all(axis=0))
    if candidates.size == 0:
        candidates = np.flatnonzero(central)
    pick = int(candidates[rng.integers(candidates.size)])
    centre = (float(pick // width) + rng.uniform(-0.5, 0.5), float(pick % width) + rng.uniform(-0.5, 0.5))
    radius = float(rng.uniform(*settings.radius_fraction) * size)
    peak = float(rng.uniform(*settings.contraction))
    jitter = rng.uniform(-settings.slice_jitter, settings.slice_jitter, size=slices)
    contraction = peak * (1 + np.asarray(jitter, dtype=np.float64))
    angle = rng.uniform(0.0, 2 * np.pi)
    amplitude = rng.uniform(*settings.respiratory_fraction) * size
    return CardiacMotion(
        centre=centre,
        radius_px=radius,
        contraction=tuple(float(c) for c in contraction),
        systole_fraction=float(rng.uniform(*settings.systole_fraction)),
        respiratory_px=(float(amplitude * np.cos(angle)), float(amplitude * np.sin(angle))),
        respiratory_phase=float(
            rng.uniform(-settings.respiratory_phase_spread, settings.respiratory_phase_spread)
        ),
        pool_radius_px=settings.pool_fraction * radius,
        blood_level=float(rng.uniform(*settings.blood_level)),
        blood_blend=float(rng.uniform(*settings.blood_blend)),
        systolic_dip=float(rng.uniform(*settings.systolic_dip)),
    )


def _grid(size: tuple[int, int], supersampling: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Pixel-centre coordinates ``(H*s, W*s)`` of a supersampled grid, in final-pixel units."""
    height, width = size
    rows = (np.arange(height * supersampling) + 0.5) / supersampling - 0.5
    cols = (np.arange(width * supersampling) + 0.5) / supersampling - 0.5
    return rows[:, None], cols[None, :]


def blood_pool_weight(
    motion: CardiacMotion, size: tuple[int, int], supersampling: int = 1
) -> NDArray[np.float64]:
    """Soft disk ``(H*s, W*s)`` in [0, 1] of the blood pool in its diastolic position (edge ~1 pixel)."""
    rows, cols = _grid(size, supersampling)
    distance = np.hypot(rows - motion.centre[0], cols - motion.centre[1])
    weight: NDArray[np.float64] = 1.0 / (1.0 + np.exp((distance - motion.pool_radius_px) / 0.5))
    return weight


def apply_motion(
    magnitude: NDArray[np.float32],
    phase: NDArray[np.float32],
    motion: CardiacMotion,
    frames: int,
    supersampling: int = 1,
) -> NDArray[np.complex64]:
    """The cine ``(slices, frames, H*s, W*s)`` complex64 of a static slice stack.

    ``magnitude`` and ``phase`` ``(slices, H*s, W*s)`` on a grid ``supersampling`` times finer than the
    final ``H x W`` (motion parameters are in final pixels). Per frame: blend the blood pool in, form the
    complex image, pull it back through the contraction + translation map (linear interpolation of the
    real and imaginary parts, zero outside). All slices and frames in one ``map_coordinates`` call.
    """
    if magnitude.shape != phase.shape or magnitude.ndim != 3:
        raise GeometryMismatchError(
            f"magnitude {magnitude.shape} and phase {phase.shape} must be (slices, H, W)"
        )
    slices, sub_h, sub_w = magnitude.shape
    if len(motion.contraction) != slices:
        raise GeometryMismatchError(f"motion has {len(motion.contraction)} slices, the stack {slices}")
    if frames < 1:
        raise InvalidInputError(f"frames={frames} must be >= 1")
    size = (sub_h // supersampling, sub_w // supersampling)
    waveform = cardiac_waveform(frames, motion.systole_fraction)
    pool = blood_pool_weight(motion, size, supersampling) * motion.blood_blend
    blood = motion.blood_level * (1 - motion.systolic_dip * waveform)
    blended = magnitude[:, None] * (1 - pool) + (pool * blood[:, None, None])[None]
    image = blended * np.exp(1j * phase[:, None])
    rows, cols = _grid(size, supersampling)
    d_rows, d_cols = rows - motion.centre[0], cols - motion.centre[1]
    envelope = np.exp(-(d_rows**2 + d_cols**2) / (2 * motion.radius_px**2))
    strength = np.asarray(motion.contraction)[:, None] * waveform[None, :]
    shift = respiratory_shift(motion, frames)
    pull_rows = rows + strength[..., None, None] * envelope * d_rows + shift[None, :, 0, None, None]
    pull_cols = cols + strength[..., None, None] * envelope * d_cols + shift[None, :, 1, None, None]
    # Back to supersampled pixel indices; the slice and frame axes are sampled at integers (exact).
    scale, offset = supersampling, (supersampling - 1) / 2
    shape = (slices, frames, sub_h, sub_w)
    coordinates = np.stack(
        [
            np.broadcast_to(np.arange(slices)[:, None, None, None], shape),
            np.broadcast_to(np.arange(frames)[None, :, None, None], shape),
            np.broadcast_to(pull_rows * scale + offset, shape),
            np.broadcast_to(pull_cols * scale + offset, shape),
        ]
    )
    parts = [
        ndimage.map_coordinates(part, coordinates, order=1, mode="constant", prefilter=False)
        for part in (image.real, image.imag)
    ]
    cine: NDArray[np.complex64] = (parts[0] + 1j * parts[1]).astype(np.complex64)
    return cine
