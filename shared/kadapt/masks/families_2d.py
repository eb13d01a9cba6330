"""2D point-mask families: one ``(H, W)`` boolean item each, exactly ``geometry.budget`` points including
the centred ``num_acs x num_acs`` ACS square.

Each family ranks or draws the non-ACS points and keeps exactly the number the budget leaves; nothing
retries until a count happens to come out right.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from kadapt.masks.families_1d import polynomial_weights, positive_float
from kadapt.masks.geometry import BoolArray, IntArray, acs_square
from kadapt.masks.registry import MaskGeometry, register_family
from kadapt.masks.sampling import FloatArray, capped_density, safe_log, weighted_choice

# Poisson-disc spacing d for a target density rho: d = sqrt(C / rho). Random sequential adsorption of
# disks jams at coverage 0.547, i.e. 0.697 / d^2 points per pixel; on a pixel grid with a thinned
# candidate set the packing lands lower, so C starts below the continuum value and the spacing is
# re-scaled from the measured shortfall (see poisson_2d_mask).
_POISSON_SPACING_CONSTANT = 0.55
# Candidates offered to the packing, as a multiple of the target density: enough for the packing to
# reach the target, few enough that every candidate has a handful of neighbours at every density.
_POISSON_OVERSAMPLING = 3.0
_POISSON_PASSES = 3
_POISSON_CLOSE_ENOUGH = 0.97  # a packing this full needs no further pass; the fill adds the rest
# A full spoke (both halves) repeats every half turn; its golden angle is pi / phi = 111.25 deg
# (Winkelmann et al. 2007), the increment that keeps any run of consecutive spokes near-uniform.
GOLDEN_ANGLE = math.pi * (math.sqrt(5.0) - 1.0) / 2.0


def _rows(geometry: MaskGeometry) -> int:
    # make_mask always sets height for 2d families.
    return geometry.height if geometry.height is not None else geometry.width


def free_points(geometry: MaskGeometry) -> tuple[IntArray, IntArray]:
    """Row and column indices ``(n,)``, ``(n,)`` of the points outside the ACS square (row-major)."""
    free = ~acs_square(_rows(geometry), geometry.width, geometry.num_acs)
    rows, columns = np.nonzero(free)
    return rows.astype(np.intp), columns.astype(np.intp)


def with_points(geometry: MaskGeometry, rows: IntArray, columns: IntArray) -> BoolArray:
    """The ACS square plus the given points: a boolean ``(H, W)`` item."""
    mask = acs_square(_rows(geometry), geometry.width, geometry.num_acs)
    mask[rows, columns] = True
    return mask


@register_family(
    "gaussian-2d",
    dims="2d",
    description="ACS square plus points drawn from a centred 2D Gaussian (std param in pixels; default "
    "4*sqrt(H/2) along kx and 4*sqrt(W/2) along ky, seed 004).",
)
def gaussian_2d_mask(
    geometry: MaskGeometry, rng: np.random.Generator, *, std: float | None = None
) -> BoolArray:
    """Gaussian point mask ``(H, W)``."""
    height = _rows(geometry)
    # Seed 004 appendix B.2: mean (n1/2, n2/2), standard deviation 4 * sqrt(mean) per axis.
    if std is None:
        sigma_rows, sigma_columns = 4.0 * math.sqrt(height / 2), 4.0 * math.sqrt(geometry.width / 2)
    else:
        sigma_rows = sigma_columns = positive_float(std, "std")
    rows, columns = free_points(geometry)
    log_weights = -((rows - height // 2) ** 2) / (2.0 * sigma_rows**2) - (
        (columns - geometry.width // 2) ** 2
    ) / (2.0 * sigma_columns**2)
    chosen = weighted_choice(log_weights.astype(np.float64), geometry.budget - geometry.num_acs**2, rng)
    return with_points(geometry, rows[chosen], columns[chosen])


def _normalised_radius(rows: IntArray, columns: IntArray, height: int, width: int) -> FloatArray:
    # Elliptical radius, 1 at the middle of each edge: the density follows the matrix aspect.
    radius: FloatArray = np.hypot((rows - height // 2) / (height / 2), (columns - width // 2) / (width / 2))
    return radius


@dataclass(frozen=True)
class _Neighbours:
    """Candidate pairs ``(m,)``, ``(m,)`` closer than the larger of their two spacings, and their gaps."""

    first: IntArray
    second: IntArray
    gaps: FloatArray


def _neighbour_pairs(points: FloatArray, spacing: FloatArray) -> _Neighbours:
    """Pairs of ``points`` ``(n, 2)`` that could conflict for any spacing up to ``spacing`` ``(n,)``."""
    from scipy.spatial import cKDTree  # lazy: only the Poisson-disc family needs scipy.spatial

    count = points.shape[0]
    # A conflict (gap < mean spacing <= the larger spacing) is found by the ball query of the point
    # with the larger spacing; per-point radii keep the neighbour lists short at every density.
    found = cKDTree(points).query_ball_point(points, r=spacing, return_sorted=False)
    lengths = np.fromiter((len(indices) for indices in found), dtype=np.intp, count=count)
    first = np.repeat(np.arange(count, dtype=np.intp), lengths)
    second = np.fromiter(itertools.chain.from_iterable(found), dtype=np.intp, count=int(lengths.sum()))
    distinct = first != second
    first, second = first[distinct], second[distinct]
    return _Neighbours(first, second, np.linalg.norm(points[first] - points[second], axis=1))


def _greedy_disc_packing(
    neighbours: _Neighbours, spacing: FloatArray, priority: IntArray, accepted: BoolArray
) -> BoolArray:
    """Random sequential adsorption in ``priority`` order, computed in parallel rounds.

    ``spacing`` ``(n,)`` is the minimum distance each point asks for (at most the spacing the
    ``neighbours`` were found with), ``priority`` ``(n,)`` a permutation (lower goes first),
    ``accepted`` ``(n,)`` points fixed in advance. Two points conflict when closer than the mean of
    their spacings. The result equals the sequential greedy pass (a point is kept iff no earlier kept
    point conflicts with it); each round settles at least the earliest undecided point, so at most
    ``n`` rounds run (about log n in practice).
    """
    first, second = neighbours.first, neighbours.second
    conflict = neighbours.gaps < 0.5 * (spacing[first] + spacing[second])
    first, second = first[conflict], second[conflict]
    # Orient every conflict from the earlier point to the later one.
    earlier_first = priority[first] < priority[second]
    source = np.where(earlier_first, first, second)
    target = np.where(earlier_first, second, first)
    count = spacing.shape[0]
    state = np.where(accepted, 1, 0).astype(np.int8)  # 1 kept, 0 undecided, -1 dropped
    for _ in range(count + 1):
        undecided = state == 0
        if not undecided.any():
            break
        blocked_by_kept = np.bincount(target[state[source] == 1], minlength=count) > 0
        waiting = np.bincount(target[state[source] == 0], minlength=count) > 0
        state[undecided & blocked_by_kept] = -1
        state[undecided & ~blocked_by_kept & ~waiting] = 1
    kept: BoolArray = state == 1
    return kept


@register_family(
    "poisson-2d",
    dims="2d",
    description="ACS square plus a variable-density Poisson-disc point set (density (1 - r/rmax)^decay, "
    "minimum distance from the local density), count fixed exactly by density-weighted additions or "
    "removals.",
)
def poisson_2d_mask(geometry: MaskGeometry, rng: np.random.Generator, *, decay: float = 2.0) -> BoolArray:
    """Variable-density Poisson-disc point mask ``(H, W)``; ``decay >= 0`` sets the radial falloff.

    Dart throwing with a variable radius (Bridson; as sigpy.mri.poisson) over a fixed random candidate
    set: candidates are offered at ``3x`` the target density, packed greedily in random order with the
    spacing that reaches the target density, the spacing shrunk (at most twice) if the packing falls
    short on this grid, then the count made exact -- surplus points dropped, missing ones drawn, both
    by density (Gumbel-top-k).
    """
    power = positive_float(decay, "decay", allow_zero=True)
    height, width = _rows(geometry), geometry.width
    count = geometry.budget - geometry.num_acs**2
    rows, columns = free_points(geometry)
    if count == 0:
        return with_points(geometry, rows[:0], columns[:0])
    radius = _normalised_radius(rows, columns, height, width)
    density = capped_density(polynomial_weights(radius * max(height, width), power), float(count))
    offered = np.flatnonzero(rng.random(rows.shape[0]) < np.minimum(1.0, _POISSON_OVERSAMPLING * density))
    acs_rows, acs_columns = np.nonzero(acs_square(height, width, geometry.num_acs))
    num_fixed = acs_rows.shape[0]
    points = np.stack(
        [np.concatenate([acs_rows, rows[offered]]), np.concatenate([acs_columns, columns[offered]])], axis=1
    ).astype(np.float64)
    # ACS points ask for unit spacing: they are fixed and must not push the sampled ring away.
    spacing = np.concatenate(
        [np.ones(num_fixed), np.sqrt(_POISSON_SPACING_CONSTANT / np.maximum(density[offered], 1e-12))]
    )
    priority = np.concatenate([np.arange(num_fixed), num_fixed + rng.permutation(offered.shape[0])])
    fixed = np.arange(points.shape[0]) < num_fixed
    neighbours = _neighbour_pairs(points, spacing)
    scale, packed = 1.0, np.zeros(offered.shape[0], dtype=np.bool_)
    for _ in range(_POISSON_PASSES):
        scaled = np.where(fixed, spacing, spacing * scale)
        attempt = _greedy_disc_packing(neighbours, scaled, priority.astype(np.intp), fixed)[num_fixed:]
        if attempt.sum() > packed.sum():
            packed = attempt
        if packed.sum() >= _POISSON_CLOSE_ENOUGH * count:
            break
        # Packed density ~ 1 / spacing^2: shrink the spacing towards the missing points, a little beyond.
        scale *= 0.95 * math.sqrt(max(int(attempt.sum()), 1) / count)
    in_packing = np.zeros(rows.shape[0], dtype=np.bool_)
    in_packing[offered[packed]] = True
    bonus = np.where(in_packing, 1e6, 0.0)  # packed points first; the rest only to fill the count
    chosen = weighted_choice(safe_log(density) + bonus, count, rng)
    return with_points(geometry, rows[chosen], columns[chosen])


def radial_point_order(
    height: int, width: int, first_angle: float, taken: BoolArray, needed: int
) -> IntArray:
    """The first ``needed`` flat indices ``(needed,)`` of points not in ``taken`` ``(H, W)``, in the order
    golden-angle spokes reach them.

    Spokes through the centre ``(H // 2, W // 2)`` at angles ``first_angle + j * golden angle`` are
    rasterised (nearest grid point every half pixel, centre outwards); points no spoke reaches come
    last, by radius. Taking the first ``k`` therefore gives whole spokes plus one partial spoke, filled
    from the centre out: nested, near-uniform spoke sets for every ``k``.
    """
    centre = np.array([height // 2, width // 2], dtype=np.float64)
    reach = math.hypot(height, width) / 2 + 1
    steps = np.arange(0.0, reach, 0.5)
    # Samples ordered centre outwards, alternating both halves of the spoke.
    radii = np.stack([steps, -steps], axis=1).reshape(-1)[1:]
    order: list[IntArray] = []
    collected = 0
    seen = taken.reshape(-1).copy()
    max_spokes = 2 * max(height, width) + 8  # beyond this, uncovered points are corners: fill by radius
    chunk = 16
    for first in range(0, max_spokes, chunk):
        angles = first_angle + GOLDEN_ANGLE * np.arange(first, first + chunk)
        direction = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (chunk, 2) as (row, column)
        coords = np.rint(centre + radii[None, :, None] * direction[:, None, :]).astype(np.intp)
        row, column = coords[..., 0], coords[..., 1]
        inside = (row >= 0) & (row < height) & (column >= 0) & (column < width)
        flat = (row * width + column)[inside]  # spoke-major, centre outwards
        _, first_seen = np.unique(flat, return_index=True)
        fresh = flat[np.sort(first_seen)]
        fresh = fresh[~seen[fresh]]
        seen[fresh] = True
        order.append(fresh)
        collected += fresh.shape[0]
        if collected >= needed:
            break
    rest = np.flatnonzero(~seen)
    if collected < needed and rest.shape[0]:
        rest_rows, rest_columns = np.divmod(rest, width)
        rest_radius = np.hypot(rest_rows - centre[0], rest_columns - centre[1])
        order.append(rest[np.argsort(rest_radius, kind="stable")])
    return np.concatenate(order)[:needed].astype(np.intp)


@register_family(
    "radial-2d",
    dims="2d",
    description="ACS square plus rasterised radial spokes through the centre in golden-angle order from a "
    "random first angle; the last spoke is filled centre-out so the count is exact.",
)
def radial_2d_mask(geometry: MaskGeometry, rng: np.random.Generator) -> BoolArray:
    """Radial point mask ``(H, W)``."""
    height, width = _rows(geometry), geometry.width
    mask = acs_square(height, width, geometry.num_acs)
    needed = geometry.budget - geometry.num_acs**2
    order = radial_point_order(height, width, float(rng.uniform(0.0, math.pi)), mask, needed)
    mask.reshape(-1)[order] = True
    return mask
