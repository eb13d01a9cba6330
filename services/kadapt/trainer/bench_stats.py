"""Statistics of ``kadapt bench recon``: means with Student-t intervals over volumes, paired differences,
and the one mask per (family, R, volume, slice) that every method sees.

Volumes are the unit of replication (fastMRI reports volume-level metrics), so intervals are over
volumes: ``mean ± t_{(1+level)/2, n-1} * sd / sqrt(n)`` with the sample standard deviation (ddof 1).
Comparisons with BART are *paired* (the same volumes, the same masks): the interval of the per-volume
differences is much tighter than the two rows' intervals suggest, because between-volume variation cancels.
:func:`aso_epsilon` is the almost-stochastic-order test seed 004 reports significance with (``kadapt bench
dynamic``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from kadapt.errors import InvalidInputError
from kadapt.masks import make_mask

CONFIDENCE = 0.95
#: Split codes in the mask seed, so validation (tuning) and test masks never coincide.
SPLIT_CODES = {"test": 0, "val": 1}


def t_interval(values: Sequence[float], level: float = CONFIDENCE) -> tuple[float, list[float] | None]:
    """Mean of ``values`` and its two-sided Student-t interval ``[lo, hi]`` at ``level``; the interval is
    None for fewer than two values (no spread to estimate)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return math.nan, None
    mean = float(array.mean())
    if array.size < 2:
        return mean, None
    half = (
        float(stats.t.ppf(0.5 + level / 2.0, array.size - 1))
        * float(array.std(ddof=1))
        / math.sqrt(array.size)
    )
    return mean, [mean - half, mean + half]


def paired_difference(
    values: Sequence[float], baseline: Sequence[float], level: float = CONFIDENCE
) -> tuple[float, list[float] | None]:
    """Mean of ``values[i] - baseline[i]`` (paired by volume) and its Student-t interval."""
    if len(values) != len(baseline):
        raise InvalidInputError(f"paired samples differ in length: {len(values)} vs {len(baseline)}")
    return t_interval([a - b for a, b in zip(values, baseline, strict=True)], level)


def mask_seed(
    seed: int, split: str, family: str, acceleration: float, volume: int, slice_index: int
) -> list[int]:
    """The entropy of one mask: the run's ``seed`` and the cell's coordinates as integers (CRC-32 of the
    family name, R in thousandths), so a mask depends on nothing but where it is used."""
    return [
        seed,
        SPLIT_CODES[split],
        zlib.crc32(family.encode()),
        round(acceleration * 1000),
        volume,
        slice_index,
    ]


def bench_mask(
    family: str,
    *,
    width: int,
    acceleration: float,
    num_acs: int,
    seed: int,
    split: str,
    volume: int,
    slice_index: int,
    **params: Any,
) -> NDArray[np.bool_]:
    """The line mask ``(W,)`` bool of one (family, R, volume index, slice) of a split, drawn from a
    ``numpy`` Generator seeded by :func:`mask_seed`: every method of a run sees the same mask (a paired
    comparison), and a rerun draws it again. ``params``: the family's keyword parameters (e.g. the
    ``energy-density`` profile)."""
    rng = np.random.default_rng(mask_seed(seed, split, family, acceleration, volume, slice_index))
    mask = make_mask(family, width=width, acceleration=acceleration, num_acs=num_acs, rng=rng, **params)
    return np.asarray(mask, dtype=bool).reshape(width)


def _violation_ratio(a: NDArray[np.float64], b: NDArray[np.float64], dt: float) -> float:
    """epsilon_W2 of del Barrio et al. (2018): the share of the squared quantile distance between ``a`` and
    ``b`` where ``a``'s quantile function lies below ``b``'s (0: ``a`` stochastically dominates ``b``)."""
    levels = np.arange(dt, 1.0, dt)
    difference = np.quantile(a, levels) - np.quantile(b, levels)
    total = float(np.sum(difference**2))
    if total == 0.0:
        return 0.5  # identical distributions: neither dominates
    return float(np.sum(np.where(difference < 0.0, difference**2, 0.0)) / total)


def aso_epsilon(
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    rng: np.random.Generator,
    *,
    resamples: int = 1000,
    confidence: float = CONFIDENCE,
    dt: float = 0.005,
) -> float | None:
    """Almost stochastic order (Dror et al. 2019, the test seed 004 uses for significance): ``eps_min``,
    the smallest violation ratio at which "``a`` is almost stochastically larger than ``b``" is accepted at
    ``confidence``. ``eps_min`` < 0.5 says ``a`` tends to be larger, near 0 that it dominates; 1 that ``b``
    dominates. Upper bound of the bootstrap interval of the violation ratio:
    ``eps_hat + sigma / sqrt(nm / (n + m)) * z_confidence``, clipped to [0, 1] (deepsig's formula). None
    with fewer than two scores on either side."""
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.size < 2 or b.size < 2 or resamples < 2:
        return None
    ratio = _violation_ratio(a, b, dt)
    const = math.sqrt(a.size * b.size / (a.size + b.size))
    samples = np.array(
        [
            _violation_ratio(rng.choice(a, a.size, replace=True), rng.choice(b, b.size, replace=True), dt)
            for _ in range(resamples)
        ]
    )
    sigma = float(np.std(const * (samples - ratio)))
    return float(np.clip(ratio + sigma / const * float(stats.norm.ppf(confidence)), 0.0, 1.0))
