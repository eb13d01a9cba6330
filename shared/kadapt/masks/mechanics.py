"""Learned-sampler mechanics shared by every policy (numpy; the torch twins are in ``torch_ops``).

Handbook science.md, "Sampling-mask mechanics": probabilities live over the not-yet-acquired lines,
LOUPE rescaling sets their mean to the budget's sparsity, serving binarises by a deterministic top-k
that gives every item of a batch exactly its budget (DIRECT's adaptive branch rescales only the first
item of a batch -- its ``return`` sits inside the loop; here every item is treated alike), and cascades
split the budget evenly with the remainder on the last step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from kadapt.errors import InvalidAccelerationError, InvalidInputError
from kadapt.masks.geometry import BoolArray, as_count

FloatArray = NDArray[np.floating[Any]]


def check_sparsity(sparsity: Any) -> NDArray[np.float64]:
    """``sparsity`` as a float64 array with every value finite and in ``[0, 1]`` (InvalidInputError)."""
    values = np.asarray(sparsity, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values > 1):
        raise InvalidInputError(f"sparsity must lie in [0, 1], got {sparsity!r}", sparsity=repr(sparsity))
    return values


def loupe_rescale(
    probabilities: ArrayLike, sparsity: ArrayLike, *, free: ArrayLike | None = None
) -> FloatArray:
    """Rescale probabilities ``(..., W)`` so each item's mean over the last axis equals ``sparsity``.

    Seed 000 eq. 7, seed 003 eq. 16, seed 004 Alg. A1 (``p_mean`` the item's mean, ``s`` its sparsity)::

        p * s / p_mean                         if p_mean >= s   (scale down, keeps zeros at zero)
        1 - (1 - p) * (1 - s) / (1 - p_mean)   otherwise        (scale the complement, stays <= 1)

    Both branches keep values in ``[0, 1]``. ``sparsity`` is a scalar or an array broadcasting against
    the item axes ``(...)``. With ``free`` ``(..., W)`` bool, the mean runs over the free lines only and
    the other lines come out 0 (acquired lines get probability 0, science.md), so the expected number of
    new lines is ``sparsity * free.sum(-1)``.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim < 1 or not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise InvalidInputError("probabilities must be a finite (..., W) array with values in [0, 1]")
    s = check_sparsity(sparsity)[..., None]
    if free is None:
        weight = np.ones_like(p)
    else:
        free_mask = np.asarray(free, dtype=np.bool_)
        if free_mask.shape != p.shape:
            raise InvalidInputError(f"free has shape {free_mask.shape}, probabilities {p.shape}")
        weight = free_mask.astype(np.float64)
    p = p * weight
    count = np.maximum(weight.sum(axis=-1, keepdims=True), 1.0)
    p_mean = p.sum(axis=-1, keepdims=True) / count
    # Guarded denominators: each branch divides by a quantity that is zero only where it is not used.
    down = p * (s / np.maximum(p_mean, np.finfo(np.float64).tiny))
    up = 1.0 - (1.0 - p) * ((1.0 - s) / np.maximum(1.0 - p_mean, np.finfo(np.float64).tiny))
    rescaled: FloatArray = np.clip(np.where(p_mean >= s, down, up), 0.0, 1.0) * weight
    return rescaled


def topk_plan(scores: ArrayLike, acquired: ArrayLike, budget: int) -> BoolArray:
    """Serving binarisation: ``acquired`` plus the top ``budget - |acquired|`` scores among free lines.

    ``scores`` ``(..., W)`` float, ``acquired`` ``(..., W)`` bool, ``budget`` the total number of lines
    each item ``(...)`` ends with. Returns a bool mask ``(..., W)`` with exactly ``budget`` lines per item.
    Deterministic: equal scores go to the lower line index; NaN scores rank below every number. Raises
    InvalidAccelerationError if an item already holds more than ``budget`` lines or ``budget > W``.
    """
    values = np.asarray(scores, dtype=np.float64)
    taken = np.asarray(acquired, dtype=np.bool_)
    if values.ndim < 1 or values.shape != taken.shape:
        raise InvalidInputError(
            f"scores {values.shape} and acquired {taken.shape} must share one (..., W) shape"
        )
    width = values.shape[-1]
    lines = as_count(budget, "budget")
    if lines > width:
        raise InvalidAccelerationError(f"budget={lines} lines exceeds W={width}", budget=lines, width=width)
    already = taken.sum(axis=-1)
    if np.any(already > lines):
        worst = int(already.max())
        raise InvalidAccelerationError(
            f"an item already holds {worst} lines, more than budget={lines} (W={width})",
            budget=lines,
            acquired=worst,
        )
    ranked = np.where(np.isnan(values) | taken, -np.inf, values)
    # Primary key: free lines first; then descending score; lexsort is stable, so ties keep index order.
    order = np.lexsort((-ranked, taken), axis=-1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(width), order.shape), axis=-1)
    chosen: BoolArray = taken | (rank < (lines - already)[..., None])
    return chosen


def budget_split(total_budget: int, steps: int) -> list[int]:
    """Split ``total_budget`` new lines over ``steps`` cascade steps: equal shares, the remainder on the
    last step (seed 004 section 2.3, ``n_b / N`` per cascade). Returns ``steps`` ints summing to the total.
    """
    total = as_count(total_budget, "total_budget")
    count = as_count(steps, "steps", minimum=1)
    share = total // count
    return [share] * (count - 1) + [total - share * (count - 1)]


def sparsity_for(budget: int, acquired: int, width: int) -> float:
    """Mean probability over the free lines that yields ``budget - acquired`` new lines in expectation."""
    free = width - acquired
    return 0.0 if free <= 0 else min(1.0, max(0.0, (budget - acquired) / free))


__all__ = ["budget_split", "check_sparsity", "loupe_rescale", "sparsity_for", "topk_plan"]
