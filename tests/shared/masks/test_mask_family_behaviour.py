"""What makes each family what its name says, beyond the shared contract."""

from __future__ import annotations

import numpy as np

from kadapt.masks import acs_lines, acs_square, make_mask


def non_acs_lines(mask: np.ndarray, width: int, num_acs: int) -> np.ndarray:
    free = np.ones(width, dtype=bool)
    free[acs_lines(width, num_acs)] = False
    return np.flatnonzero(mask & free)


def test_equispaced_lines_are_evenly_spaced_over_the_non_acs_region() -> None:
    width, num_acs = 128, 16
    mask = make_mask("equispaced", width=width, acceleration=4, num_acs=num_acs, rng=np.random.default_rng(2))
    free = np.setdiff1d(np.arange(width), acs_lines(width, num_acs))
    positions = np.searchsorted(free, non_acs_lines(mask, width, num_acs))  # index among free lines
    gaps = np.diff(positions)
    # 16 lines over 112 free lines: spacing exactly 7.
    assert set(gaps) == {7}


def test_centre_only_is_one_contiguous_centred_block() -> None:
    mask = make_mask("centre-only", width=97, acceleration=4, num_acs=8, rng=np.random.default_rng(0))
    lines = np.flatnonzero(mask)
    assert lines.size == 24
    assert np.all(np.diff(lines) == 1)
    np.testing.assert_array_equal(lines, acs_lines(97, 24))


def test_variable_density_families_favour_the_centre() -> None:
    width, num_acs = 128, 8
    for name in ("vd-random", "gaussian-1d"):
        masks = make_mask(
            name, width=width, acceleration=4, num_acs=num_acs, rng=np.random.default_rng(5), batch=200
        )
        frequency = masks.mean(axis=0)
        near = frequency[width // 2 + 5 : width // 2 + 15].mean()
        far = frequency[-10:].mean()
        assert near > 2 * far, name
    uniform = make_mask(
        "vd-random",
        width=width,
        acceleration=4,
        num_acs=num_acs,
        rng=np.random.default_rng(5),
        batch=400,
        decay=0.0,
    ).mean(axis=0)
    free = np.setdiff1d(np.arange(width), acs_lines(width, num_acs))
    assert abs(uniform[free[:20]].mean() - uniform[free[-20:]].mean()) < 0.08


def test_kt_equispaced_shifts_by_one_free_line_per_frame() -> None:
    width, num_acs = 64, 8
    masks = make_mask(
        "kt-equispaced", width=width, acceleration=4, num_acs=num_acs, frames=6, rng=np.random.default_rng(4)
    )
    free = np.setdiff1d(np.arange(width), acs_lines(width, num_acs))
    first = set(np.searchsorted(free, non_acs_lines(masks[0], width, num_acs)))
    for frame in range(1, 6):
        shifted = {(position + frame) % free.size for position in first}
        assert set(np.searchsorted(free, non_acs_lines(masks[frame], width, num_acs))) == shifted


def test_kt_families_interleave_adjacent_frames() -> None:
    for name in ("kt-equispaced", "kt-radial", "kt-gaussian-1d"):
        masks = make_mask(name, width=128, acceleration=4, num_acs=16, frames=8, rng=np.random.default_rng(0))
        for frame in range(7):
            assert not np.array_equal(masks[frame], masks[frame + 1]), name


def test_radial_spoke_sets_are_nested_across_accelerations() -> None:
    # Golden-angle spoke order from the same first angle: a lower R adds spokes, never moves them.
    dense = make_mask(
        "radial-2d", width=64, height=64, acceleration=4, num_acs=8, rng=np.random.default_rng(9)
    )
    sparse = make_mask(
        "radial-2d", width=64, height=64, acceleration=8, num_acs=8, rng=np.random.default_rng(9)
    )
    assert (dense | sparse).sum() == dense.sum()
    # Spokes pass through the centre: the row and column through the centre are hit far out.
    assert dense[32].sum() > 8 or dense[:, 32].sum() > 8


def test_poisson_disc_spreads_points_more_evenly_than_random() -> None:
    height = width = 96
    rng = np.random.default_rng(0)
    poisson = make_mask(
        "poisson-2d", width=width, height=height, acceleration=6, num_acs=8, rng=rng, decay=0.0
    )
    budget = int(poisson.sum())
    free = np.flatnonzero(~acs_square(height, width, 8))
    uniform = acs_square(height, width, 8).reshape(-1)
    uniform[rng.choice(free, size=budget - 64, replace=False)] = True
    uniform = uniform.reshape(height, width)

    def touching_pairs(mask: np.ndarray) -> int:
        outer = mask.copy()
        outer[acs_square(height, width, 12)] = False  # ignore the fully sampled centre
        return int((outer[1:] & outer[:-1]).sum() + (outer[:, 1:] & outer[:, :-1]).sum())

    assert touching_pairs(poisson) < 0.5 * touching_pairs(uniform)
