"""1D line-mask families: one ``(W,)`` boolean item each, exactly ``geometry.budget`` lines with ACS.

Every family keeps the centred ACS block and draws the remaining ``budget - num_acs`` lines among the
non-ACS ("free") lines with an exact-count primitive from :mod:`kadapt.masks.sampling`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kadapt.errors import InvalidInputError
from kadapt.masks.geometry import BoolArray, IntArray, acs_mask, acs_start
from kadapt.masks.registry import MaskGeometry, register_family
from kadapt.masks.sampling import FloatArray, equispaced_picks, safe_log, weighted_choice


def free_lines(width: int, num_acs: int) -> IntArray:
    """The non-ACS lines ``(W - num_acs,)`` in ascending ky order."""
    return np.flatnonzero(~acs_mask(width, num_acs)).astype(np.intp)


def line_offsets(width: int, lines: IntArray) -> FloatArray:
    """Signed distance ``(n,)`` of ``lines`` from the k-space centre line ``width // 2``."""
    return (lines - width // 2).astype(np.float64)


def with_lines(geometry: MaskGeometry, lines: IntArray) -> BoolArray:
    """The ACS block plus ``lines``: a boolean ``(W,)`` item."""
    mask = acs_mask(geometry.width, geometry.num_acs)
    mask[lines] = True
    return mask


def positive_float(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``); InvalidInputError naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number, got {value!r}", **{name: repr(value)}) from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidInputError(
            f"{name} must be a finite number {bound}, got {number}", **{name: repr(number)}
        )
    return number


def equispaced_free_lines(geometry: MaskGeometry, offset: int) -> IntArray:
    """``budget - num_acs`` evenly spaced free lines ``(k,)`` for an integer offset in ``0 .. F - 1``."""
    free = free_lines(geometry.width, geometry.num_acs)
    count = geometry.budget - geometry.num_acs
    return free[equispaced_picks(count, free.shape[0], offset)]


@register_family(
    "equispaced",
    dims="1d",
    description="ACS plus evenly spaced lines over the non-ACS region with a random offset, spacing "
    "chosen so the total is exactly round(W/R) (unlike fastMRI's, which ignores the ACS lines).",
)
def equispaced_mask(geometry: MaskGeometry, rng: np.random.Generator) -> BoolArray:
    """Equispaced line mask ``(W,)``: spacing ``F / k`` over the ``F`` free lines, random offset."""
    free_count = geometry.width - geometry.num_acs
    offset = int(rng.integers(0, max(free_count, 1)))
    return with_lines(geometry, equispaced_free_lines(geometry, offset))


@register_family("random", dims="1d", description="ACS plus uniformly random non-ACS lines.")
def random_mask(geometry: MaskGeometry, rng: np.random.Generator) -> BoolArray:
    """Uniform random line mask ``(W,)``."""
    free = free_lines(geometry.width, geometry.num_acs)
    chosen = rng.choice(free.shape[0], size=geometry.budget - geometry.num_acs, replace=False)
    return with_lines(geometry, free[chosen])


def polynomial_weights(offsets: FloatArray, decay: float) -> FloatArray:
    """``(1 - |k| / kmax) ** decay`` ``(n,)``, kmax just past the farthest offset so no weight is zero."""
    distance = np.abs(offsets)
    kmax = float(distance.max(initial=0.0)) + 1.0
    weights: FloatArray = (1.0 - distance / kmax) ** decay
    return weights


@register_family(
    "vd-random",
    dims="1d",
    description="ACS plus variable-density random lines, weights (1 - |k|/kmax)^decay decaying from "
    "the centre (decay=0 is uniform).",
)
def vd_random_mask(geometry: MaskGeometry, rng: np.random.Generator, *, decay: float = 2.0) -> BoolArray:
    """Variable-density random line mask ``(W,)``; ``decay >= 0`` sets the polynomial falloff."""
    power = positive_float(decay, "decay", allow_zero=True)
    free = free_lines(geometry.width, geometry.num_acs)
    weights = polynomial_weights(line_offsets(geometry.width, free), power)
    chosen = weighted_choice(safe_log(weights), geometry.budget - geometry.num_acs, rng)
    return with_lines(geometry, free[chosen])


def gaussian_line_choice(geometry: MaskGeometry, rng: np.random.Generator, std: float | None) -> IntArray:
    """Free lines ``(k,)`` drawn with a centred Gaussian density (default std ``4 * sqrt(W / 2)``)."""
    # Seed 004 appendix B.2 "Sampling Schemes": mean n/2, standard deviation 4 * sqrt(mean).
    sigma = 4.0 * math.sqrt(geometry.width / 2) if std is None else positive_float(std, "std")
    free = free_lines(geometry.width, geometry.num_acs)
    # Log-weights directly: exp() would underflow to 0 in the tails of narrow Gaussians.
    log_weights = -(line_offsets(geometry.width, free) ** 2) / (2.0 * sigma**2)
    return free[weighted_choice(log_weights, geometry.budget - geometry.num_acs, rng)]


@register_family(
    "gaussian-1d",
    dims="1d",
    description="ACS plus lines drawn from a centred Gaussian (std param, default 4*sqrt(W/2), seed 004).",
)
def gaussian_1d_mask(
    geometry: MaskGeometry, rng: np.random.Generator, *, std: float | None = None
) -> BoolArray:
    """Gaussian line mask ``(W,)``; ``std`` in lines."""
    return with_lines(geometry, gaussian_line_choice(geometry, rng, std))


@register_family(
    "centre-only",
    dims="1d",
    description="Low resolution: the centred contiguous block of exactly round(W/R) lines.",
    stochastic=False,
)
def centre_only_mask(geometry: MaskGeometry, rng: np.random.Generator) -> BoolArray:
    """Centred block line mask ``(W,)``; the same centring rule as the ACS block contains it."""
    mask = np.zeros(geometry.width, dtype=np.bool_)
    start = acs_start(geometry.width, geometry.budget)
    mask[start : start + geometry.budget] = True
    return mask


@register_family(
    "energy-density",
    dims="1d",
    description="Population pattern: non-ACS lines drawn with probability proportional to profile, "
    "the (W,) k-space energy of training data (required param).",
    population=True,
)
def energy_density_mask(
    geometry: MaskGeometry, rng: np.random.Generator, *, profile: Any = None
) -> BoolArray:
    """Energy-density line mask ``(W,)``; ``profile`` ``(W,)`` finite, >= 0 (lines of zero energy
    are taken, at random, only once every line with energy is)."""
    if profile is None:
        raise InvalidInputError(
            "the energy-density family needs profile, a (W,) array of k-space energy per line",
            family="energy-density",
        )
    energy = np.asarray(profile, dtype=np.float64)
    if energy.shape != (geometry.width,):
        raise InvalidInputError(
            f"profile must have shape (W,)=({geometry.width},), got {energy.shape}", shape=list(energy.shape)
        )
    if not np.all(np.isfinite(energy)) or np.any(energy < 0):
        raise InvalidInputError("profile must be finite and >= 0", family="energy-density")
    free = free_lines(geometry.width, geometry.num_acs)
    chosen = weighted_choice(safe_log(energy[free]), geometry.budget - geometry.num_acs, rng)
    return with_lines(geometry, free[chosen])
