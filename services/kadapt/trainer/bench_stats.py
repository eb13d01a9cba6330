"""Statistics of ``kadapt bench recon``: means with Student-t intervals over volumes, paired differences,
and the one mask per (family, R, volume, slice) that every method sees.

Volumes are the unit of replication (fastMRI reports volume-level metrics), so intervals are over
volumes: ``mean ± t_{(1+level)/2, n-1} * sd / sqrt(n)`` with the sample standard deviation (ddof 1).
Comparisons with BART are *paired* (the same volumes, the same masks): the interval of the per-volume
differences is much tighter than the two rows' intervals suggest, because between-volume variation cancels.
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
