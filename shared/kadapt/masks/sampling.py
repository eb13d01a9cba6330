"""Exact-count selection primitives every mask family builds on (numpy, explicit Generator).

No family loops until a random draw happens to hit its budget: each one scores its candidates and
keeps exactly the number it needs (weighted sampling without replacement by the Gumbel-top-k trick,
evenly spaced picks by integer arithmetic, capped densities by water-filling).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from kadapt.masks.geometry import IntArray

FloatArray = NDArray[np.float64]


def weighted_choice(log_weights: FloatArray, count: int, rng: np.random.Generator) -> IntArray:
    """Indices ``(count,)`` (ascending) drawn without replacement with probability ~ ``exp(log_weights)``.

    ``log_weights`` has shape ``(n,)``; ``-inf`` marks weight zero. The Gumbel-top-k trick: the ``count``
    largest ``log_weights + Gumbel`` keys are a weighted sample without replacement (successive sampling,
    Efraimidis-Spirakis), in one pass, so the count is exact by construction. Zero-weight entries are
    taken only once every positive-weight entry is, in uniformly random order.
    """
    gumbel = np.asarray(rng.gumbel(size=log_weights.shape[0]), dtype=np.float64)
    keys = log_weights + gumbel
    # lexsort: last key is primary. Descending keys; ties (only the -inf ones) broken by the noise.
    order = np.lexsort((-gumbel, -keys))
    return np.sort(order[:count]).astype(np.intp)


def equispaced_picks(count: int, span: int, offset: int) -> IntArray:
    """``count`` distinct, evenly spaced indices ``(count,)`` in ``0 .. span - 1`` (``count <= span``).

    Index ``j`` is ``floor((offset + j * span) / count)`` with an integer ``offset`` in ``0 .. span - 1``:
    the spacing ``span / count >= 1`` keeps them distinct and the last one below ``span`` -- exact
    integer arithmetic, so no float rounding can merge two picks.
    """
    steps = np.arange(count, dtype=np.int64)
    return ((offset + steps * span) // max(count, 1)).astype(np.intp)


def capped_density(weights: FloatArray, total: float) -> FloatArray:
    """Per-candidate sampling density ``(n,)`` proportional to ``weights``, capped at 1, summing to ``total``.

    Water-filling: entries whose scaled weight would exceed 1 are pinned to 1 and the rest rescaled,
    until no new entry is pinned (at most ``n`` rounds). ``weights`` must be >= 0 with
    ``total <= count of positive weights``.
    """
    density = np.zeros_like(weights)
    pinned = np.zeros(weights.shape, dtype=np.bool_)
    for _ in range(weights.shape[0] + 1):
        free_mass = float(weights[~pinned].sum())
        remaining = total - float(pinned.sum())
        if free_mass <= 0.0 or remaining <= 0.0:
            break
        scaled = weights * (remaining / free_mass)
        newly_pinned = ~pinned & (scaled >= 1.0)
        if not newly_pinned.any():
            density = np.where(pinned, 1.0, scaled)
            break
        pinned |= newly_pinned
    return np.where(pinned, 1.0, density)


def safe_log(weights: FloatArray) -> FloatArray:
    """``log(weights)`` ``(n,)`` with ``-inf`` (no warning) where a weight is zero."""
    out = np.full(weights.shape, -np.inf)
    positive = weights > 0
    out[positive] = np.log(weights[positive])
    return out
