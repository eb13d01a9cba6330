"""Hypothesis properties of line_budget / make_mask over random widths, accelerations and ACS sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kadapt.errors import InvalidAccelerationError
from kadapt.masks import acs_lines, line_budget, make_mask, mask_families, point_budget

LINE_FAMILIES = sorted(name for name, family in mask_families().items() if family.dims != "2d")
POINT_FAMILIES = sorted(name for name, family in mask_families().items() if family.dims == "2d")
SETTINGS = settings(max_examples=80, deadline=None, database=None)

widths = st.integers(min_value=1, max_value=512)
accelerations = st.one_of(
    st.floats(min_value=1.0, max_value=40.0, allow_nan=False),
    st.sampled_from([0.0, -2.0, 1.0, math.inf, math.nan, 2, 4, 8]),
)


@SETTINGS
@given(width=widths, acceleration=accelerations, num_acs=st.integers(min_value=-2, max_value=64))
def test_line_budget_is_round_w_over_r_or_a_named_error(
    width: int, acceleration: float, num_acs: int
) -> None:
    possible = (
        math.isfinite(acceleration)
        and acceleration > 1
        and 1 <= num_acs <= width
        and round(width / acceleration) >= num_acs
    )
    if not possible:
        with pytest.raises(InvalidAccelerationError):
            line_budget(width, acceleration, num_acs)
        return
    assert line_budget(width, acceleration, num_acs) == round(width / acceleration)


@SETTINGS
@given(
    family=st.sampled_from(LINE_FAMILIES),
    width=st.integers(min_value=2, max_value=400),
    acceleration=st.floats(min_value=1.01, max_value=12.0),
    acs_fraction=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_line_masks_hold_exactly_the_budget_with_acs(
    family: str, width: int, acceleration: float, acs_fraction: float, seed: int
) -> None:
    budget = round(width / acceleration)
    if budget < 1:
        with pytest.raises(InvalidAccelerationError):
            make_mask(
                family, width=width, acceleration=acceleration, num_acs=1, rng=np.random.default_rng(seed)
            )
        return
    num_acs = max(1, round(acs_fraction * budget))
    kwargs = {"frames": 3} if mask_families()[family].dims == "kt" else {}
    if mask_families()[family].population:
        kwargs["profile"] = np.random.default_rng(seed).random(width)
    mask = make_mask(
        family,
        width=width,
        acceleration=acceleration,
        num_acs=num_acs,
        rng=np.random.default_rng(seed),
        **kwargs,
    )
    assert (mask.sum(axis=-1) == budget).all()
    assert mask[..., acs_lines(width, num_acs)].all()


@settings(max_examples=25, deadline=None, database=None)
@given(
    family=st.sampled_from(POINT_FAMILIES),
    height=st.integers(min_value=8, max_value=40),
    width=st.integers(min_value=8, max_value=40),
    acceleration=st.floats(min_value=1.01, max_value=10.0),
    num_acs=st.integers(min_value=1, max_value=8),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_point_masks_hold_exactly_the_budget_with_acs(
    family: str, height: int, width: int, acceleration: float, num_acs: int, seed: int
) -> None:
    def draw() -> np.ndarray:
        return make_mask(
            family,
            width=width,
            height=height,
            acceleration=acceleration,
            num_acs=num_acs,
            rng=np.random.default_rng(seed),
        )

    if round(height * width / acceleration) < num_acs * num_acs:
        with pytest.raises(InvalidAccelerationError):
            draw()
        return
    mask = draw()
    assert mask.sum() == point_budget(height, width, acceleration, num_acs)
    assert mask[np.ix_(acs_lines(height, num_acs), acs_lines(width, num_acs))].all()
