"""What a ``fixed-mask`` bundle serves, with numpy alone (no ONNX Runtime, no torch).

A ``fixed-mask`` bundle's ``mask.npy`` holds line scores ``(W,)`` (float, or a bool mask); the sampler's
``FixedMaskBundlePolicy`` serves the acquired lines plus the top-scored free lines up to ``round(W / R)``,
equal scores separated by a centre tie-break. These helpers reproduce that for the trainer and benches
(:mod:`kadapt.bundles.sampler_masks` re-exports them) and for the gateway, which keeps a learned pattern
as a scan's fallback without loading any model runtime.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from kadapt.bundles.repository import Bundle
from kadapt.errors import BundleError, InvalidInputError
from kadapt.masks import acs_mask, line_budget
from kadapt.masks.mechanics import topk_plan

__all__ = [
    "ACCELERATION_RTOL",
    "MASK_FILE",
    "centre_tiebreak",
    "fixed_mask_scores",
    "mismatched_axes",
    "served_fixed_order",
    "served_fixed_plan",
]

MASK_FILE = "mask.npy"
#: R matches a manifest acceleration within this relative tolerance (the sampler's ``np.isclose``).
ACCELERATION_RTOL = 1e-6

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


def centre_tiebreak(width: int, ceiling: float = 1.0) -> FloatArray:
    """Distinct small scores ``(W,)`` in ``(0, ceiling / 2]`` ranking lines by distance to the centre
    ``W // 2``, lower ky first on equal distance: the sampler's tie-break for fixed scores (a bool mask
    has only two values), docs/sampler.md "Plans"."""
    ky = np.arange(width)
    order = np.lexsort((ky, np.abs(ky - width // 2)))  # nearest the centre first
    rank = np.empty(width, dtype=np.float64)
    rank[order] = np.arange(width, 0, -1)
    tiebreak: FloatArray = rank / width * (ceiling / 2.0)
    return tiebreak


def served_fixed_plan(scores: NDArray[np.generic], num_acs: int, acceleration: float) -> BoolArray:
    """The mask ``(W,)`` bool the sampler serves from ``fixed-mask`` scores ``(W,)`` (float or bool) at R
    with nothing acquired beyond the ACS: the ACS block plus the top ``round(W / R) - num_acs`` free
    lines, equal scores separated by :func:`centre_tiebreak` kept below half the smallest gap between
    distinct scores (so it never reorders distinct scores)."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise InvalidInputError(f"fixed-mask scores must be a finite (W,) array, got shape {values.shape}")
    width = values.shape[0]
    budget = line_budget(width, acceleration, num_acs)
    distinct = np.unique(values)
    gap = float(np.min(np.diff(distinct))) if distinct.size > 1 else 1.0
    ranked = values + centre_tiebreak(width, gap)
    plan: BoolArray = np.asarray(topk_plan(ranked, acs_mask(width, num_acs), budget), dtype=np.bool_)
    return plan


def served_fixed_order(scores: NDArray[np.generic]) -> NDArray[np.int64]:
    """Every ky line ``(W,)``, best first, in the order the sampler fills a ``fixed-mask`` plan: the scores
    ``(W,)`` with :func:`centre_tiebreak` below half their smallest gap, descending, exact ties to the lower
    ky (:func:`~kadapt.masks.mechanics.topk_plan`'s rule). Whatever is acquired, the served plan at R is
    the acquired lines plus the first free lines of this order up to ``round(W / R)``; with the ACS block
    acquired it is :func:`served_fixed_plan`. Lets a caller keep the pattern without the bundle."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise InvalidInputError(f"fixed-mask scores must be a finite (W,) array, got shape {values.shape}")
    distinct = np.unique(values)
    gap = float(np.min(np.diff(distinct))) if distinct.size > 1 else 1.0
    ranked = values + centre_tiebreak(values.shape[0], gap)
    order: NDArray[np.int64] = np.lexsort((-ranked,)).astype(np.int64)  # stable: ties keep ky order
    return order


def fixed_mask_scores(bundle: Bundle) -> FloatArray:
    """A ``fixed-mask`` bundle's line scores ``(W,)`` float64 from its verified ``mask.npy`` (float
    scores or a bool mask; W = the manifest's ``ky``). :class:`BundleError` naming the bundle when the
    file is unreadable, of another shape or dtype, or holds NaN / Inf."""
    manifest = bundle.manifest
    try:
        mask = np.load(bundle.file(MASK_FILE), allow_pickle=False)
    except (OSError, ValueError) as err:
        raise BundleError(f"bundle {manifest.ref}: cannot read {MASK_FILE}: {err}") from err
    width = manifest.geometry.ky
    if mask.shape != (width,):
        raise BundleError(f"bundle {manifest.ref}: {MASK_FILE} is {mask.shape}, the geometry says ({width},)")
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.floating):
        raise BundleError(f"bundle {manifest.ref}: {MASK_FILE} has dtype {mask.dtype}, not bool/float")
    scores: FloatArray = mask.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise BundleError(f"bundle {manifest.ref}: {MASK_FILE} holds NaN or Inf scores")
    return scores


def mismatched_axes(wanted: dict[str, int | None], given: dict[str, int]) -> list[str]:
    """``"W=64 (bundle: 128)"`` for every axis whose bundle value is fixed (not None) and differs from the
    scan's: the detail of a bundle's :class:`~kadapt.errors.GeometryMismatchError`."""
    return [
        f"{axis}={given[axis]} (bundle: {wanted[axis]})"
        for axis in wanted
        if wanted[axis] is not None and given[axis] != wanted[axis]
    ]
