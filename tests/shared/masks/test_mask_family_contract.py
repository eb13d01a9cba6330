"""The one contract every registered mask family keeps, parametrised over the whole registry.

Exact budget per item (per frame for kt, in points for 2d), the centred ACS block/square always present,
boolean dtype and shape, determinism for equal seeds, variety across seeds for random families, and
InvalidAccelerationError for an impossible R / ACS on the matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kadapt.errors import InvalidAccelerationError
from kadapt.masks import acs_lines, acs_square, make_mask, mask_families

WIDTHS = (64, 128, 320, 97)
ACCELERATIONS = (2, 4, 8, 6.5)
NUM_ACS = (8, 16, 24)
HEIGHT = 32  # 2d families: small kx extent keeps the suite fast; 32 x 64 at R=8 cannot hold 24 x 24 ACS
FRAMES = 4
BATCH = 3
FAMILIES = sorted(mask_families())


def energy_profile(width: int) -> np.ndarray:
    """A training-like energy profile ``(W,)``, peaked at the centre, with some zero-energy lines."""
    profile = np.exp(-np.abs(np.arange(width) - width // 2) / 6.0)
    profile[::7] = 0.0
    return profile


def family_kwargs(name: str, width: int) -> dict[str, Any]:
    family = mask_families()[name]
    kwargs: dict[str, Any] = {}
    if family.dims == "2d":
        kwargs["height"] = HEIGHT
    if family.dims == "kt":
        kwargs["frames"] = FRAMES
    if family.population:
        kwargs["profile"] = energy_profile(width)
    return kwargs


def expected_budget(dims: str, width: int, acceleration: float, num_acs: int) -> int | None:
    """The budget computed independently of the library, None where the request is impossible."""
    if dims == "2d":
        budget = round(HEIGHT * width / acceleration)
        possible = num_acs <= min(HEIGHT, width) and budget >= num_acs * num_acs
    else:
        budget = round(width / acceleration)
        possible = num_acs <= width and budget >= num_acs
    return budget if possible else None


def item_shape(dims: str, width: int) -> tuple[int, ...]:
    return {"1d": (width,), "2d": (HEIGHT, width), "kt": (FRAMES, width)}[dims]


@pytest.mark.parametrize("num_acs", NUM_ACS)
@pytest.mark.parametrize("acceleration", ACCELERATIONS)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", FAMILIES)
def test_family_contract(name: str, width: int, acceleration: float, num_acs: int) -> None:
    family = mask_families()[name]
    kwargs = family_kwargs(name, width)
    budget = expected_budget(family.dims, width, acceleration, num_acs)

    def draw(seed: int, batch: int | None = BATCH) -> np.ndarray:
        return make_mask(
            name,
            width=width,
            acceleration=acceleration,
            num_acs=num_acs,
            rng=np.random.default_rng(seed),
            batch=batch,
            **kwargs,
        )

    if budget is None:
        with pytest.raises(InvalidAccelerationError):
            draw(0)
        return

    masks = draw(0)
    assert masks.dtype == np.bool_
    assert masks.shape == (BATCH, *item_shape(family.dims, width))

    if family.dims == "2d":
        assert (masks.sum(axis=(-2, -1)) == budget).all()
        assert masks[:, acs_square(HEIGHT, width, num_acs)].all()
    else:
        # Per item (1d) and per frame of every item (kt).
        assert (masks.sum(axis=-1) == budget).all()
        assert masks[..., acs_lines(width, num_acs)].all()

    # Determinism: equal seeds, equal masks; the unbatched call is exactly the batch's first item
    # (items are drawn in order from the one generator).
    np.testing.assert_array_equal(draw(0), masks)
    np.testing.assert_array_equal(draw(0, batch=None), masks[0])

    acs_size = num_acs * num_acs if family.dims == "2d" else num_acs
    total = HEIGHT * width if family.dims == "2d" else width
    if family.stochastic and 0 < budget - acs_size < total - acs_size:
        others = draw(1)
        distinct = {item.tobytes() for item in np.concatenate([masks, others])}
        assert len(distinct) > 1, f"{name} gave one mask for every seed and item"
