"""Greedy forward line selection: the population mask over training slices and the per-object oracle.

Seed 000 section 1.4 (the greedy approach [GML+18] to its problem (4)): start from the ACS block and add,
one at a time, the free ky line that, together with the lines chosen so far, gives the best
reconstruction; stop at the budget. The objective here is the **mean slice PSNR** of the magnitude
reconstruction against the RSS of the fully sampled coil images (``10 log10(peak^2 / MSE)``, ``peak``
the slice reference's maximum), over the slices searched: a set of training slices for the population
mask (population-adaptive, the strongest fixed baseline in handbook science.md, "What adaptivity can
gain"), or one test slice with its own ground truth for the oracle (object-adaptive; the ceiling of any
adaptive sampler under that reconstruction). The reconstruction inside the search is a
:class:`kadapt.trainer.search_recon.SliceSearch`. Ties go to the lower ky index.

One run to the largest budget gives every R: the mask of ``budget_R`` lines is the ACS block plus the
first ``budget_R - num_acs`` lines of the order, so the masks of different R are nested.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import InvalidAccelerationError, InvalidInputError
from kadapt.masks import acs_mask
from kadapt.trainer.search_recon import SliceSearch

__all__ = ["GreedyResult", "forward_selection", "mask_from_order", "select_slices", "slice_psnr"]

#: Floor of the MSE in the PSNR, so a perfect reconstruction ranks first instead of dividing by zero.
_MIN_MSE = 1e-30


@dataclass(frozen=True)
class GreedyResult:
    """The chosen lines in order and the objective (mean slice PSNR, dB) after each pick."""

    order: tuple[int, ...]
    objective: tuple[float, ...]


def slice_psnr(errors: NDArray[np.float64], peak: float) -> NDArray[np.float64]:
    """PSNR ``(K,)`` in dB of candidate MSEs ``errors (K,)`` with data range ``peak``."""
    psnr: NDArray[np.float64] = 10.0 * np.log10(peak**2 / np.maximum(errors, _MIN_MSE))
    return psnr


def forward_selection(
    searches: Sequence[SliceSearch],
    picks: int,
    progress: Callable[[str], None] | None = None,
    label: str = "greedy",
) -> GreedyResult:
    """Pick ``picks`` lines greedily, maximising the mean slice PSNR over ``searches`` (all starting from
    the same mask); every search accepts each pick. :class:`InvalidInputError` without searches or when
    fewer than ``picks`` lines are free."""
    if not searches:
        raise InvalidInputError("forward selection needs at least one slice")
    mask = searches[0].mask.copy()
    if any(not np.array_equal(search.mask, mask) for search in searches):
        raise InvalidInputError("forward selection needs every slice to start from the same mask")
    if picks < 0 or picks > int((~mask).sum()):
        raise InvalidInputError(f"cannot pick {picks} lines: {int((~mask).sum())} are free")
    order: list[int] = []
    objective: list[float] = []
    for step in range(picks):
        candidates = np.flatnonzero(~mask)
        total = np.zeros(candidates.shape[0], dtype=np.float64)
        for search in searches:
            total += slice_psnr(search.candidate_errors(candidates), search.peak)
        mean = total / len(searches)
        best = int(np.argmax(mean))  # first maximum: the lower ky on exact ties
        line = int(candidates[best])
        for search in searches:
            search.accept(line)
        mask[line] = True
        order.append(line)
        objective.append(float(mean[best]))
        if progress is not None:
            progress(f"{label}: line {step + 1}/{picks}")
    return GreedyResult(tuple(order), tuple(objective))


def mask_from_order(order: Sequence[int], width: int, num_acs: int, budget: int) -> NDArray[np.bool_]:
    """The line mask ``(W,)``: the centred ACS block plus the first ``budget - num_acs`` lines of
    ``order``. :class:`InvalidAccelerationError` when ``order`` is too short for ``budget``."""
    extra = budget - num_acs
    if extra < 0 or extra > len(order):
        raise InvalidAccelerationError(
            f"a greedy order of {len(order)} lines cannot fill a budget of {budget} lines "
            f"with {num_acs} ACS lines"
        )
    mask = acs_mask(width, num_acs)
    mask[list(order[:extra])] = True
    return mask


def select_slices(
    slices_per_volume: Sequence[int], count: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """``count`` distinct ``(volume index, slice index)`` pairs spread over the volumes: the volumes in
    a random order take turns, each giving a random slice it has not given yet (so every volume
    contributes before any gives a second). All slices when ``count`` is at least their number."""
    remaining = [list(rng.permutation(slices)) for slices in slices_per_volume]
    order = list(rng.permutation(len(slices_per_volume)))
    chosen: list[tuple[int, int]] = []
    while len(chosen) < count and any(remaining):
        for volume in order:
            if remaining[volume] and len(chosen) < count:
                chosen.append((int(volume), int(remaining[volume].pop())))
    return sorted(chosen)
