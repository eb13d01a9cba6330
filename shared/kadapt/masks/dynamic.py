"""kt (dynamic) line-mask families: one ``(frames, W)`` boolean item each, exactly ``geometry.budget``
lines in every frame, the centred ACS block in every frame.

Seed 004 (appendix B.2) compares against kt schemes that interleave lines over time so adjacent frames
do not repeat each other: kt-equispaced, kt-Gaussian 1D and kt-radial.
"""

from __future__ import annotations

import math

import numpy as np

from kadapt.masks.families_1d import (
    equispaced_free_lines,
    free_lines,
    gaussian_line_choice,
    line_offsets,
    with_lines,
)
from kadapt.masks.geometry import BoolArray, IntArray
from kadapt.masks.registry import MaskGeometry, register_family
from kadapt.masks.sampling import FloatArray

GOLDEN_RATIO = (1.0 + math.sqrt(5.0)) / 2.0


def _frames(geometry: MaskGeometry) -> int:
    # make_mask always sets frames for kt families.
    return geometry.frames if geometry.frames is not None else 1


@register_family(
    "kt-equispaced",
    dims="kt",
    description="Per frame: ACS plus equispaced non-ACS lines, the offset advanced by one line per frame "
    "so consecutive frames interleave (DIRECT's kt schemes, seed 004).",
)
def kt_equispaced_mask(geometry: MaskGeometry, rng: np.random.Generator) -> BoolArray:
    """kt-equispaced mask ``(frames, W)``."""
    free_count = geometry.width - geometry.num_acs
    count = geometry.budget - geometry.num_acs
    offset = int(rng.integers(0, max(free_count, 1)))
    # equispaced_picks places pick j at floor((offset + j F) / k): adding k to the offset moves every
    # pick by one free line, so frame t is the first frame's pattern shifted t lines (cyclically).
    return np.stack(
        [
            with_lines(
                geometry, equispaced_free_lines(geometry, (offset + frame * count) % max(free_count, 1))
            )
            for frame in range(_frames(geometry))
        ]
    )


@register_family(
    "kt-gaussian-1d",
    dims="kt",
    description="Per frame: an independent gaussian-1d draw (std param, default 4*sqrt(W/2)).",
)
def kt_gaussian_1d_mask(
    geometry: MaskGeometry, rng: np.random.Generator, *, std: float | None = None
) -> BoolArray:
    """kt-Gaussian-1D mask ``(frames, W)``."""
    return np.stack(
        [with_lines(geometry, gaussian_line_choice(geometry, rng, std)) for _ in range(_frames(geometry))]
    )


def radial_line_density(width: int, lines: IntArray) -> FloatArray:
    """How densely radial spokes hit each line ``(n,)``: ``asinh((W/2) / |ky|)``.

    Radial sampling has density ~ 1/r; summed along the readout over ``|kx| <= W/2`` at phase encode
    ``ky`` that is ``2 asinh((W/2) / |ky|)``. ``lines`` must exclude the centre line (ACS holds it).
    """
    distance = np.maximum(np.abs(line_offsets(width, lines)), 0.5)
    density: FloatArray = np.arcsinh((width / 2) / distance)
    return density


def _nearest_free(targets: IntArray, size: int) -> IntArray:
    """Distinct indices ``(k,)`` in ``0 .. size - 1``: each target in turn, or the nearest one not yet
    taken (the lower on a tie). Needs ``k <= size``."""
    taken = np.zeros(size, dtype=np.bool_)
    positions = np.arange(size)
    result = np.empty(targets.shape[0], dtype=np.intp)
    for slot, target in enumerate(targets):
        if taken[target]:
            distance = np.where(taken, size + 1, np.abs(positions - target))
            target = int(np.argmin(distance))  # argmin returns the lowest index on ties
        taken[target] = True
        result[slot] = target
    return result


@register_family(
    "kt-radial",
    dims="kt",
    description="Per frame: ACS plus the lines of the frame's window of golden-angle radial spokes, each "
    "spoke mapped to a line through the radial line density asinh((W/2)/|ky|); collisions move to the "
    "nearest free line so every frame has exactly round(W/R) lines.",
)
def kt_radial_mask(geometry: MaskGeometry, rng: np.random.Generator) -> BoolArray:
    """kt-radial mask ``(frames, W)``.

    Golden-angle radial dynamic imaging (Winkelmann et al. 2007) acquires spoke ``n`` at angle
    ``theta_0 + n pi / phi`` and gives frame ``t`` the window of spokes ``n = t k .. (t + 1) k - 1``:
    any window is near-uniform in angle and consecutive windows interleave. Projected on ky, every spoke
    covers a whole band of lines, so the spoke's angle (as a fraction ``frac(s_0 + n / phi)`` of the half
    turn) is mapped to the line at that quantile of :func:`radial_line_density` -- the density radial
    spokes hit the lines with. ``s_0`` is random.
    """
    free = free_lines(geometry.width, geometry.num_acs)
    count = geometry.budget - geometry.num_acs
    cumulative = np.cumsum(radial_line_density(geometry.width, free))
    cumulative /= cumulative[-1] if cumulative.shape[0] else 1.0
    start = float(rng.uniform(0.0, 1.0))
    frames = []
    for frame in range(_frames(geometry)):
        spokes = np.arange(frame * count, (frame + 1) * count, dtype=np.float64)
        # Sorted so collisions resolve from low to high ky, independent of the spoke order.
        quantiles = np.sort((start + spokes / GOLDEN_RATIO) % 1.0)
        targets = np.minimum(np.searchsorted(cumulative, quantiles, side="right"), free.shape[0] - 1)
        frames.append(with_lines(geometry, free[_nearest_free(targets.astype(np.intp), free.shape[0])]))
    return np.stack(frames)
