"""Greedy line selection and its search reconstructions: the batched CG-SENSE / SENSE scores equal the
classic reconstructions, greedy equals exhaustive search where that is provable, the oracle is the
ceiling on its own slice, orders give nested exact-budget masks, training slices spread over volumes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from kadapt.classic import reconstruct
from kadapt.errors import InvalidAccelerationError, InvalidInputError
from kadapt.masks import acs_lines, acs_mask, line_budget
from kadapt.trainer.bench_methods import classic_method
from kadapt.trainer.bench_recon import Volume, load_split, masked_slice
from kadapt.trainer.greedy import forward_selection, mask_from_order, select_slices, slice_psnr
from kadapt.trainer.search_recon import CgSenseSearch, ReconSearch, SenseSearch

NUM_ACS = 4  # the trainer's default at W = 32


@pytest.fixture(scope="module")
def test_volume(tiny_dataset: Path) -> Volume:
    return load_split(tiny_dataset, "test", None)[0]


@pytest.fixture(scope="module")
def train_volume(tiny_dataset: Path) -> Volume:
    return load_split(tiny_dataset, "train", None)[0]


def classic_error(method: str, volume: Volume, slice_index: int, mask: NDArray[np.bool_]) -> float:
    kspace = volume.kspace[slice_index]
    image = reconstruct(method, masked_slice(kspace, mask)[None, None], mask[None, None], NUM_ACS)[0, 0]
    return float(np.mean((image.astype(np.float64) - volume.reference[slice_index]) ** 2))


def with_line(mask: NDArray[np.bool_], line: int) -> NDArray[np.bool_]:
    out = mask.copy()
    out[line] = True
    return out


def test_batched_cg_sense_equals_classic_cg_sense(test_volume: Volume) -> None:
    search = CgSenseSearch(test_volume.kspace[0], test_volume.reference[0], NUM_ACS)
    search.accept(3)  # the Gram update path as well as the initial ACS Gram matrices
    candidates = np.flatnonzero(~search.mask)
    images = (
        search.candidate_images(candidates).numpy().reshape(len(candidates), *test_volume.reference.shape[1:])
    )
    for index in (0, len(candidates) // 2, len(candidates) - 1):
        mask = with_line(search.mask, int(candidates[index]))
        kspace = test_volume.kspace[0]
        classic = reconstruct("cg-sense", masked_slice(kspace, mask)[None, None], mask[None, None], NUM_ACS)[
            0, 0
        ]
        assert np.linalg.norm(images[index] - classic) <= 1e-4 * np.linalg.norm(classic)


def test_candidate_chunks_do_not_change_scores(test_volume: Volume) -> None:
    whole = CgSenseSearch(test_volume.kspace[1], test_volume.reference[1], NUM_ACS)
    chunked = CgSenseSearch(test_volume.kspace[1], test_volume.reference[1], NUM_ACS, chunk_elements=1)
    candidates = np.flatnonzero(~whole.mask)
    np.testing.assert_allclose(
        whole.candidate_errors(candidates), chunked.candidate_errors(candidates), rtol=1e-4
    )


def test_sense_search_equals_classic_sense(test_volume: Volume) -> None:
    search = SenseSearch(test_volume.kspace[0], test_volume.reference[0], NUM_ACS)
    search.accept(1)
    candidates = np.flatnonzero(~search.mask)
    errors = search.candidate_errors(candidates)
    for index in (0, len(candidates) - 1):
        expected = classic_error("sense", test_volume, 0, with_line(search.mask, int(candidates[index])))
        assert errors[index] == pytest.approx(expected, rel=1e-4)


def test_recon_search_runs_the_given_reconstruction(test_volume: Volume) -> None:
    method = classic_method("cg-sense", NUM_ACS)
    same = ReconSearch(
        test_volume.kspace[0],
        test_volume.reference[0],
        NUM_ACS,
        lambda k, m, r: method.reconstruct(k, m, r)[0],
        4.0,
    )
    batched = CgSenseSearch(test_volume.kspace[0], test_volume.reference[0], NUM_ACS)
    candidates = np.flatnonzero(~same.mask)[:5]
    np.testing.assert_allclose(
        same.candidate_errors(candidates), batched.candidate_errors(candidates), rtol=1e-3
    )


def test_first_greedy_pick_is_the_exhaustive_best_line(test_volume: Volume) -> None:
    """One greedy step is an exhaustive search over single lines: the pick is the line whose classic
    CG-SENSE reconstruction has the smallest error (up to the batched solver's float tolerance)."""
    result = forward_selection([CgSenseSearch(test_volume.kspace[0], test_volume.reference[0], NUM_ACS)], 1)
    base = acs_mask(32, NUM_ACS)
    errors = {
        int(line): classic_error("cg-sense", test_volume, 0, with_line(base, int(line)))
        for line in np.flatnonzero(~base)
    }
    assert errors[result.order[0]] <= min(errors.values()) * (1 + 1e-4)


class AdditiveSearch:
    """A toy slice where each line lowers the error by its own gain: greedy is provably optimal."""

    def __init__(self, gains: NDArray[np.float64], num_acs: int) -> None:
        self.gains = gains
        self.acs = acs_mask(gains.shape[0], num_acs)
        self.mask = self.acs.copy()
        self.peak = 1.0

    def error_of(self, mask: NDArray[np.bool_]) -> float:
        return float(1.0 - self.gains[mask & ~self.acs].sum())

    def candidate_errors(self, candidates: NDArray[np.intp]) -> NDArray[np.float64]:
        return np.array([self.error_of(with_line(self.mask, int(k))) for k in candidates])

    def accept(self, line: int) -> None:
        self.mask[line] = True


def test_greedy_equals_exhaustive_search_on_an_additive_toy_problem() -> None:
    rng = np.random.default_rng(7)
    gains = rng.uniform(0.0, 0.05, size=12)
    result = forward_selection([AdditiveSearch(gains, 2)], 3)
    toy = AdditiveSearch(gains, 2)
    free = np.flatnonzero(~toy.mask)
    best = min(
        itertools.combinations(free, 3),
        key=lambda lines: toy.error_of(toy.mask | np.isin(np.arange(12), lines)),
    )
    assert sorted(result.order) == sorted(int(line) for line in best)
    assert list(result.objective) == sorted(result.objective)  # every pick raises the PSNR here


def test_population_objective_is_the_mean_slice_psnr() -> None:
    rng = np.random.default_rng(3)
    first, second = AdditiveSearch(rng.uniform(0, 0.05, 10), 2), AdditiveSearch(rng.uniform(0, 0.05, 10), 2)
    candidates = np.flatnonzero(~first.mask)
    mean = (
        slice_psnr(first.candidate_errors(candidates), 1.0)
        + slice_psnr(second.candidate_errors(candidates), 1.0)
    ) / 2
    result = forward_selection([first, second], 1)
    assert result.order[0] == int(candidates[np.argmax(mean)])
    assert result.objective[0] == pytest.approx(float(mean.max()))


def test_oracle_is_the_ceiling_on_its_own_slice(test_volume: Volume, train_volume: Volume) -> None:
    """Under the search reconstruction the per-slice oracle beats the population mask on that slice at
    every budget of the nested run."""
    picks = line_budget(32, 4.0, NUM_ACS) - NUM_ACS
    population = forward_selection(
        [CgSenseSearch(train_volume.kspace[s], train_volume.reference[s], NUM_ACS) for s in range(2)], picks
    )
    for slice_index in range(2):
        oracle = forward_selection(
            [CgSenseSearch(test_volume.kspace[slice_index], test_volume.reference[slice_index], NUM_ACS)],
            picks,
        )
        for budget in range(NUM_ACS + 1, NUM_ACS + picks + 1):
            own = classic_error(
                "cg-sense", test_volume, slice_index, mask_from_order(oracle.order, 32, NUM_ACS, budget)
            )
            pop = classic_error(
                "cg-sense", test_volume, slice_index, mask_from_order(population.order, 32, NUM_ACS, budget)
            )
            assert own <= pop * (1 + 1e-4), (slice_index, budget)


def test_orders_give_nested_exact_budget_masks() -> None:
    order = (1, 30, 5, 26, 9)
    masks = {r: mask_from_order(order, 32, NUM_ACS, line_budget(32, r, NUM_ACS)) for r in (8.0, 4.0)}
    for acceleration, mask in masks.items():
        assert int(mask.sum()) == line_budget(32, acceleration, NUM_ACS)
        assert mask[acs_lines(32, NUM_ACS)].all()
    assert not (masks[8.0] & ~masks[4.0]).any()  # R 8 is a prefix of R 4
    with pytest.raises(InvalidAccelerationError, match="cannot fill a budget of 16"):
        mask_from_order(order, 32, NUM_ACS, 16)


def test_forward_selection_refuses_bad_requests() -> None:
    with pytest.raises(InvalidInputError, match="at least one slice"):
        forward_selection([], 1)
    with pytest.raises(InvalidInputError, match="cannot pick 11 lines: 10 are free"):
        forward_selection([AdditiveSearch(np.ones(12), 2)], 11)


def test_training_slices_spread_over_volumes_and_are_seeded() -> None:
    chosen = select_slices([8, 8, 8, 8], 6, np.random.default_rng(0))
    assert len(set(chosen)) == 6
    counts = np.bincount([volume for volume, _ in chosen], minlength=4)
    assert counts.max() - counts.min() <= 1
    assert chosen == select_slices([8, 8, 8, 8], 6, np.random.default_rng(0))
    assert len(select_slices([2, 1], 16, np.random.default_rng(1))) == 3  # all there are
