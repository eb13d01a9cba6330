"""ACS geometry, budgets, line-set conversion and the registry's argument checking."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kadapt.errors import (
    EncodeOutOfRangeError,
    InvalidAccelerationError,
    InvalidInputError,
    UnknownMaskFamilyError,
)
from kadapt.masks import (
    MaskFamily,
    acs_lines,
    acs_square,
    line_budget,
    lines_to_mask,
    make_mask,
    mask_families,
    mask_lines,
    point_budget,
)

REGISTERED = {
    "equispaced": "1d",
    "random": "1d",
    "vd-random": "1d",
    "gaussian-1d": "1d",
    "gaussian-2d": "2d",
    "poisson-2d": "2d",
    "radial-2d": "2d",
    "centre-only": "1d",
    "energy-density": "1d",
    "kt-equispaced": "kt",
    "kt-gaussian-1d": "kt",
    "kt-radial": "kt",
}


def test_registry_holds_exactly_the_named_families() -> None:
    families = mask_families()
    assert {name: family.dims for name, family in families.items()} == REGISTERED
    assert all(isinstance(family, MaskFamily) and family.name == name for name, family in families.items())
    assert [name for name, family in families.items() if family.population] == ["energy-density"]
    assert [name for name, family in families.items() if not family.stochastic] == ["centre-only"]
    assert families["vd-random"].params == ("decay",)
    with pytest.raises(TypeError):
        families["x"] = families["random"]  # type: ignore[index]


@pytest.mark.parametrize("width", [64, 320, 97, 1, 2])
@pytest.mark.parametrize("num_acs", [1, 2, 8, 15, 16, 24])
def test_acs_block_is_centred_like_fastmri(width: int, num_acs: int) -> None:
    if num_acs > width:
        with pytest.raises(InvalidAccelerationError):
            acs_lines(width, num_acs)
        return
    lines = acs_lines(width, num_acs)
    start = width // 2 - num_acs // 2
    np.testing.assert_array_equal(lines, np.arange(start, start + num_acs))
    assert width // 2 in lines  # the k-space centre (fftshift convention) is always calibrated
    if width % 2 == 0:
        assert start == (width - num_acs + 1) // 2  # fastMRI's pad


def test_acs_square_uses_the_same_rule_on_both_axes() -> None:
    square = acs_square(48, 97, 16)
    rows, columns = np.nonzero(square)
    assert square.shape == (48, 97)
    assert square.sum() == 256
    assert set(rows) == set(acs_lines(48, 16))
    assert set(columns) == set(acs_lines(97, 16))


def test_line_budget_rounds_width_over_r() -> None:
    assert line_budget(320, 4, 24) == 80
    assert line_budget(320, 8, 24) == 40
    assert line_budget(97, 6.5, 8) == round(97 / 6.5) == 15
    assert line_budget(97, 2, 8) == 48  # 48.5, half to even
    assert point_budget(32, 64, 4, 16) == 512


@pytest.mark.parametrize(
    ("width", "acceleration", "num_acs"),
    [
        (64, 1.0, 8),
        (64, 0.5, 8),
        (64, math.inf, 8),
        (64, math.nan, 8),
        (64, 4, 0),
        (64, 4, -1),
        (64, 4, 65),
        (64, 8, 16),  # 8 lines cannot hold 16 ACS lines
        (320, 16, 24),
    ],
)
def test_impossible_acceleration_or_acs_is_rejected_by_name(
    width: int, acceleration: float, num_acs: int
) -> None:
    with pytest.raises(InvalidAccelerationError) as caught:
        line_budget(width, acceleration, num_acs)
    assert caught.value.slug == "invalid-acceleration"
    assert f"W={width}" in caught.value.detail
    assert "R=" in caught.value.detail or "num_acs" in caught.value.detail
    with pytest.raises(InvalidAccelerationError):
        make_mask(
            "random", width=width, acceleration=acceleration, num_acs=num_acs, rng=np.random.default_rng(0)
        )


def test_point_budget_rejects_acs_square_that_does_not_fit() -> None:
    with pytest.raises(InvalidAccelerationError, match="num_acs"):
        point_budget(16, 64, 2, 24)
    with pytest.raises(InvalidAccelerationError, match="ACS points"):
        point_budget(32, 64, 8, 24)


def test_mask_lines_and_lines_to_mask_round_trip() -> None:
    mask = make_mask("random", width=97, acceleration=4, num_acs=8, rng=np.random.default_rng(3))
    lines = mask_lines(mask)
    assert lines == tuple(sorted(lines))
    assert len(lines) == 24
    assert all(isinstance(line, int) for line in lines)
    np.testing.assert_array_equal(lines_to_mask(lines, 97), mask)
    np.testing.assert_array_equal(lines_to_mask([3, 3, 5], 8), [0, 0, 0, 1, 0, 1, 0, 0])
    with pytest.raises(EncodeOutOfRangeError, match="line 8"):
        lines_to_mask([1, 8], 8)
    with pytest.raises(InvalidInputError):
        mask_lines(np.zeros((2, 8), dtype=bool))


def test_unknown_family_raises_with_the_known_ones() -> None:
    with pytest.raises(UnknownMaskFamilyError, match=r"'spiral'.*equispaced"):
        make_mask("spiral", width=64, acceleration=4, num_acs=8, rng=np.random.default_rng(0))


def test_energy_density_needs_a_valid_profile() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidInputError, match="profile"):
        make_mask("energy-density", width=64, acceleration=4, num_acs=8, rng=rng)
    with pytest.raises(InvalidInputError, match=r"shape \(W,\)"):
        make_mask("energy-density", width=64, acceleration=4, num_acs=8, rng=rng, profile=np.ones(32))
    with pytest.raises(InvalidInputError, match="finite"):
        make_mask("energy-density", width=64, acceleration=4, num_acs=8, rng=rng, profile=-np.ones(64))


def test_energy_density_follows_the_profile() -> None:
    profile = np.zeros(64)
    profile[40:] = 1.0  # energy only in the upper lines
    masks = make_mask(
        "energy-density",
        width=64,
        acceleration=4,
        num_acs=8,
        rng=np.random.default_rng(1),
        batch=20,
        profile=profile,
    )
    outside_acs = np.ones(64, dtype=bool)
    outside_acs[acs_lines(64, 8)] = False
    assert not masks[:, outside_acs & (profile == 0)].any()


def test_geometry_arguments_are_checked() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidInputError, match="height"):
        make_mask("poisson-2d", width=64, acceleration=4, num_acs=8, rng=rng)
    with pytest.raises(InvalidInputError, match="frames"):
        make_mask("kt-radial", width=64, acceleration=4, num_acs=8, rng=rng)
    with pytest.raises(InvalidInputError, match="frames"):
        make_mask("random", width=64, acceleration=4, num_acs=8, rng=rng, frames=3)
    with pytest.raises(InvalidInputError, match="batch"):
        make_mask("random", width=64, acceleration=4, num_acs=8, rng=rng, batch=0)
    with pytest.raises(InvalidInputError, match="Generator"):
        make_mask("random", width=64, acceleration=4, num_acs=8, rng=np.random.RandomState(0))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="decay"):
        make_mask("random", width=64, acceleration=4, num_acs=8, rng=rng, decay=2.0)
    with pytest.raises(InvalidInputError, match="decay"):
        make_mask("vd-random", width=64, acceleration=4, num_acs=8, rng=rng, decay=-1.0)
    with pytest.raises(InvalidInputError, match="std"):
        make_mask("gaussian-1d", width=64, acceleration=4, num_acs=8, rng=rng, std=0.0)
    # Line families ignore height: a line mask broadcasts over kx.
    assert make_mask("random", width=64, acceleration=4, num_acs=8, rng=rng, height=32).shape == (64,)
