"""numpy learned-sampler mechanics: LOUPE rescaling, exact top-k planning, cascade budget split."""

from __future__ import annotations

import numpy as np
import pytest

from kadapt.errors import InvalidAccelerationError, InvalidInputError
from kadapt.masks import acs_mask, line_budget
from kadapt.masks.mechanics import budget_split, loupe_rescale, sparsity_for, topk_plan


@pytest.mark.parametrize("sparsity", [0.0, 0.05, 0.25, 0.5, 0.9, 1.0])
def test_loupe_rescale_hits_the_sparsity_and_stays_in_unit_range(sparsity: float) -> None:
    rng = np.random.default_rng(0)
    # Items whose mean sits above and below every target, including all-zero and all-one items.
    probabilities = np.concatenate(
        [rng.random((4, 64)), rng.random((2, 64)) ** 6, np.zeros((1, 64)), np.ones((1, 64))]
    )
    rescaled = loupe_rescale(probabilities, sparsity)
    assert rescaled.shape == probabilities.shape
    np.testing.assert_allclose(rescaled.mean(axis=-1), sparsity, atol=1e-12)
    assert rescaled.min() >= 0.0
    assert rescaled.max() <= 1.0


def test_loupe_rescale_follows_both_branches_of_the_formula() -> None:
    p = np.array([[0.2, 0.4, 0.6, 0.8]])  # mean 0.5
    np.testing.assert_allclose(loupe_rescale(p, 0.25), p * 0.25 / 0.5)  # mean >= s: scale down
    np.testing.assert_allclose(loupe_rescale(p, 0.75), 1 - (1 - p) * 0.25 / 0.5)  # else: scale complement


def test_loupe_rescale_per_item_sparsity_and_free_lines() -> None:
    rng = np.random.default_rng(1)
    p = rng.random((3, 32))
    free = ~np.stack([acs_mask(32, n) for n in (4, 8, 12)])
    s = np.array([0.1, 0.3, 0.6])
    rescaled = loupe_rescale(p, s, free=free)
    assert not rescaled[~free].any()  # acquired lines get probability 0
    means = (rescaled * free).sum(-1) / free.sum(-1)
    np.testing.assert_allclose(means, s, atol=1e-12)


def test_loupe_rescale_rejects_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="sparsity"):
        loupe_rescale(np.full((2, 4), 0.5), 1.5)
    with pytest.raises(InvalidInputError, match="probabilities"):
        loupe_rescale(np.array([[0.5, 1.2]]), 0.5)


def test_topk_plan_takes_the_best_free_lines_and_keeps_acquired() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.95, 0.2])
    acquired = np.array([False, False, False, False, True, False])
    plan = topk_plan(scores, acquired, 3)
    np.testing.assert_array_equal(plan, [True, False, True, False, True, False])


def test_topk_plan_breaks_ties_towards_the_lower_index_and_ranks_nan_last() -> None:
    scores = np.array([0.5, 0.5, 0.5, np.nan, 0.5])
    plan = topk_plan(scores, np.zeros(5, dtype=bool), 2)
    np.testing.assert_array_equal(plan, [True, True, False, False, False])
    plan = topk_plan(np.array([np.nan, np.nan, 0.1]), np.zeros(3, dtype=bool), 2)
    np.testing.assert_array_equal(plan, [True, False, True])


def test_topk_plan_gives_every_item_of_a_batch_its_budget() -> None:
    # The DIRECT bug: its adaptive branch rescaled only the first batch item (return inside the loop).
    # Four different items, different acquired sets: each must end with exactly the budget.
    rng = np.random.default_rng(7)
    width, budget = 64, line_budget(64, 4, 8)
    scores = rng.normal(size=(4, width))
    acquired = np.stack([acs_mask(width, 8)] * 4)
    acquired[1, :3] = True
    acquired[2, [10, 20, 30, 40, 50]] = True
    acquired[3, 24:40] = True  # ACS 28..35 plus neighbours: exactly at the budget already
    plans = topk_plan(scores, acquired, budget)
    np.testing.assert_array_equal(plans.sum(-1), [budget] * 4)
    assert (plans >= acquired).all()
    for item in range(4):
        new = plans[item] & ~acquired[item]
        free_scores = np.where(acquired[item], -np.inf, scores[item])
        expected = np.argsort(-free_scores, kind="stable")[: budget - acquired[item].sum()]
        np.testing.assert_array_equal(np.flatnonzero(new), np.sort(expected))
    # Nested batch axes (item, frame, W) work the same way.
    frames = topk_plan(
        rng.normal(size=(2, 3, width)), np.broadcast_to(acs_mask(width, 8), (2, 3, width)), budget
    )
    assert (frames.sum(-1) == budget).all()


def test_topk_plan_rejects_over_budget_items() -> None:
    acquired = np.zeros((2, 16), dtype=bool)
    acquired[1, :6] = True
    with pytest.raises(InvalidAccelerationError, match="budget=5"):
        topk_plan(np.zeros((2, 16)), acquired, 5)
    with pytest.raises(InvalidAccelerationError, match="exceeds"):
        topk_plan(np.zeros(16), np.zeros(16, dtype=bool), 17)
    with pytest.raises(InvalidInputError):
        topk_plan(np.zeros(16), np.zeros(8, dtype=bool), 4)


@pytest.mark.parametrize(
    ("total", "steps", "expected"),
    [
        (40, 4, [10, 10, 10, 10]),
        (41, 4, [10, 10, 10, 11]),
        (3, 5, [0, 0, 0, 0, 3]),
        (7, 1, [7]),
        (0, 2, [0, 0]),
    ],
)
def test_budget_split_puts_the_remainder_on_the_last_step(
    total: int, steps: int, expected: list[int]
) -> None:
    assert budget_split(total, steps) == expected


def test_budget_split_rejects_nonsense() -> None:
    with pytest.raises(InvalidInputError, match="steps"):
        budget_split(10, 0)
    with pytest.raises(InvalidInputError, match="total_budget"):
        budget_split(-1, 2)


def test_sparsity_for_spreads_the_missing_lines_over_free_lines() -> None:
    assert sparsity_for(80, 24, 320) == pytest.approx(56 / 296)
    assert sparsity_for(10, 10, 10) == 0.0
