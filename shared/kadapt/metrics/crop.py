"""Evaluation crops (numpy): the centre ``(h, w)`` of the last two axes, fastMRI's ``center_crop``."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from kadapt.errors import InvalidInputError

ArrayT = TypeVar("ArrayT", bound=np.ndarray[Any, Any])


def center_crop(x: ArrayT, shape: tuple[int, int]) -> ArrayT:
    """The centre ``(h, w)`` of ``x`` ``(..., H, W)`` -> ``(..., h, w)`` (a view).

    Offsets are ``(H - h) // 2`` and ``(W - w) // 2``, as fastMRI's ``center_crop`` (and its
    ``reconstruction_rss`` 320 x 320 targets). Seed 004 evaluates on a crop of 2/3 per axis:
    ``center_crop(x, (2 * H // 3, 2 * W // 3))``.
    """
    if x.ndim < 2:
        raise InvalidInputError(f"center_crop needs an array (..., H, W), got shape {x.shape}")
    if len(shape) != 2:
        raise InvalidInputError(f"crop shape must be (h, w), got {shape}")
    height, width = x.shape[-2:]
    crop_height, crop_width = shape
    if not (0 < crop_height <= height and 0 < crop_width <= width):
        raise InvalidInputError(f"crop {tuple(shape)} does not fit inside (H, W) = {(height, width)}")
    top = (height - crop_height) // 2
    left = (width - crop_width) // 2
    return x[..., top : top + crop_height, left : left + crop_width]  # type: ignore[return-value]
