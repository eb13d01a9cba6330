"""Sampling masks: the centred ACS block, exact line/point budgets and the registry of mask families.

``make_mask(family, width=, acceleration=, num_acs=, rng=, height=None, frames=None, batch=None,
**params)`` makes any registered family (``mask_families()`` lists them); the shared learned-sampler
mechanics are in :mod:`kadapt.masks.mechanics` (numpy) and :mod:`kadapt.masks.torch_ops` (torch).

This package file imports numpy-only modules (the family modules register themselves on import);
it never imports :mod:`kadapt.masks.torch_ops`, so the gateway can use masks without torch.
"""

from kadapt.masks import dynamic, families_1d, families_2d  # noqa: F401  (registration)
from kadapt.masks.geometry import (
    acs_lines,
    acs_mask,
    acs_square,
    line_budget,
    lines_to_mask,
    mask_lines,
    point_budget,
)
from kadapt.masks.registry import MaskFamily, MaskGeometry, get_family, make_mask, mask_families

__all__ = [
    "MaskFamily",
    "MaskGeometry",
    "acs_lines",
    "acs_mask",
    "acs_square",
    "get_family",
    "line_budget",
    "lines_to_mask",
    "make_mask",
    "mask_families",
    "mask_lines",
    "point_budget",
]
