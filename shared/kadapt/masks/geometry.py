"""Mask geometry: the centred ACS block, line and point budgets, line-set <-> mask conversion (numpy).

fastMRI's layout (handbook architecture.md section 3): k-space ``(..., coil, H, W)``, readout (kx) along H,
phase encode (ky, the axis lines are chosen along) along W. A 1D line mask has shape ``(W,)``; a 2D point
mask ``(H, W)``. Acceleration R counts the ACS lines: a mask holds exactly ``round(W / R)`` lines
(``round(H * W / R)`` points for 2D masks), Python's ``round`` (half to even).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from kadapt.errors import EncodeOutOfRangeError, InvalidAccelerationError, InvalidInputError

BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]


def as_count(value: Any, name: str, *, minimum: int | None = 0) -> int:
    """``value`` as a Python int >= ``minimum`` (any int for ``None``); InvalidInputError naming ``name``
    otherwise."""
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be an integer, got the bool {value!r}", **{name: value})
    try:
        count = operator.index(value)
    except TypeError:
        raise InvalidInputError(f"{name} must be an integer, got {value!r}", **{name: repr(value)}) from None
    if minimum is not None and count < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {count}", **{name: count})
    return count


def acs_start(size: int, num_acs: int) -> int:
    """First index of the centred ACS block along an axis of ``size`` samples.

    ``size // 2 - num_acs // 2``: the block covers the k-space centre ``size // 2`` (the fftshift
    convention) and equals fastMRI's ``pad = (size - num_acs + 1) // 2`` for even ``size``.
    """
    return size // 2 - num_acs // 2


def acs_lines(width: int, num_acs: int) -> IntArray:
    """The centred ACS block, shape ``(num_acs,)``: ``start .. start + num_acs - 1``, ascending.

    ``start = width // 2 - num_acs // 2`` (:func:`acs_start`). Raises InvalidAccelerationError if
    ``num_acs`` is negative or larger than ``width``.
    """
    width = as_count(width, "width", minimum=1)
    num_acs = as_count(num_acs, "num_acs", minimum=None)
    if not 0 <= num_acs <= width:
        raise InvalidAccelerationError(
            f"num_acs={num_acs} ACS lines do not fit a width of W={width}", width=width, num_acs=num_acs
        )
    start = acs_start(width, num_acs)
    return np.arange(start, start + num_acs, dtype=np.intp)


def acs_mask(width: int, num_acs: int) -> BoolArray:
    """Boolean line mask ``(W,)`` holding only the centred ACS block."""
    mask = np.zeros(as_count(width, "width", minimum=1), dtype=np.bool_)
    mask[acs_lines(width, num_acs)] = True
    return mask


def acs_square(height: int, width: int, num_acs: int) -> BoolArray:
    """Boolean point mask ``(H, W)`` holding the centred ``num_acs x num_acs`` ACS square.

    The same centring rule as :func:`acs_lines` on both axes (rows ``acs_lines(H, num_acs)``,
    columns ``acs_lines(W, num_acs)``).
    """
    rows = acs_lines(height, num_acs)
    columns = acs_lines(width, num_acs)
    mask = np.zeros((height, width), dtype=np.bool_)
    mask[np.ix_(rows, columns)] = True
    return mask


def _check_acceleration(acceleration: Any, width: int, num_acs: int) -> float:
    try:
        value = float(acceleration)
    except (TypeError, ValueError):
        raise InvalidAccelerationError(
            f"acceleration R={acceleration!r} is not a number (W={width}, num_acs={num_acs})",
            acceleration=repr(acceleration),
        ) from None
    if not math.isfinite(value) or value <= 1.0:
        raise InvalidAccelerationError(
            f"acceleration R={value} must be a finite number > 1 (W={width}, num_acs={num_acs})",
            acceleration=repr(value),
            width=width,
            num_acs=num_acs,
        )
    return value


def line_budget(width: int, acceleration: float, num_acs: int) -> int:
    """Lines a 1D mask of acceleration R holds, ACS included: ``round(width / acceleration)``.

    Raises InvalidAccelerationError (detail naming R, W and num_acs) when R is not a finite number > 1,
    ``num_acs < 1``, ``num_acs > width``, or the budget is smaller than the ACS block.
    """
    width = as_count(width, "width", minimum=1)
    num_acs = as_count(num_acs, "num_acs", minimum=None)
    value = _check_acceleration(acceleration, width, num_acs)
    if num_acs < 1 or num_acs > width:
        raise InvalidAccelerationError(
            f"num_acs={num_acs} must be between 1 and W={width} (R={value})",
            acceleration=value,
            width=width,
            num_acs=num_acs,
        )
    budget = round(width / value)
    if budget < num_acs:
        raise InvalidAccelerationError(
            f"R={value} on W={width} leaves round(W/R)={budget} lines, "
            f"fewer than num_acs={num_acs} ACS lines",
            acceleration=value,
            width=width,
            num_acs=num_acs,
        )
    return budget


def point_budget(height: int, width: int, acceleration: float, num_acs: int) -> int:
    """Points a 2D mask ``(H, W)`` of acceleration R holds, ACS square included: ``round(H * W / R)``.

    Raises InvalidAccelerationError when R is not a finite number > 1, ``num_acs`` is < 1 or exceeds
    H or W, or the budget is smaller than the ``num_acs ** 2`` ACS points.
    """
    height = as_count(height, "height", minimum=1)
    width = as_count(width, "width", minimum=1)
    num_acs = as_count(num_acs, "num_acs", minimum=None)
    value = _check_acceleration(acceleration, width, num_acs)
    if num_acs < 1 or num_acs > min(height, width):
        raise InvalidAccelerationError(
            f"num_acs={num_acs} must be between 1 and min(H={height}, W={width}) (R={value})",
            acceleration=value,
            width=width,
            height=height,
            num_acs=num_acs,
        )
    budget = round(height * width / value)
    if budget < num_acs * num_acs:
        raise InvalidAccelerationError(
            f"R={value} on H={height} x W={width} leaves round(H*W/R)={budget} points, fewer than the "
            f"num_acs**2={num_acs * num_acs} ACS points",
            acceleration=value,
            width=width,
            height=height,
            num_acs=num_acs,
        )
    return budget


def mask_lines(mask: ArrayLike) -> tuple[int, ...]:
    """Sorted ky indices of the acquired lines of a 1D mask ``(W,)`` (bool or 0/1)."""
    array = np.asarray(mask)
    if array.ndim != 1:
        raise InvalidInputError(
            f"a line mask has shape (W,), got shape {array.shape}", shape=list(array.shape)
        )
    return tuple(int(index) for index in np.flatnonzero(array))


def lines_to_mask(lines: Iterable[int], width: int) -> BoolArray:
    """Boolean line mask ``(W,)`` with the given ky lines set (repeated lines collapse).

    Raises EncodeOutOfRangeError naming the first line outside ``0 .. width - 1``.
    """
    width = as_count(width, "width", minimum=1)
    indices = [as_count(line, "line", minimum=None) for line in lines]
    for line in indices:
        if not 0 <= line < width:
            raise EncodeOutOfRangeError(f"line {line} is outside 0..{width - 1} (W={width})", line=line)
    mask = np.zeros(width, dtype=np.bool_)
    mask[np.asarray(indices, dtype=np.intp)] = True
    return mask
