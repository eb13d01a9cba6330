"""The mask family registry and :func:`make_mask`, the one entry point to every family.

Each family registers once (``@register_family``) a generator that makes ONE item: a line mask ``(W,)``
(dims ``"1d"``), a point mask ``(H, W)`` (``"2d"``) or a per-frame line mask ``(frames, W)`` (``"kt"``).
:func:`make_mask` validates the geometry, computes the budget, calls the generator once per batch item
with the same ``numpy.random.Generator`` (so a seed fixes the whole batch) and stacks the items.

The contract every family keeps (tested over the whole registry): 1D masks hold exactly
``line_budget(W, R, num_acs)`` lines including the centred ACS block; kt masks that many in every frame,
ACS in every frame; 2D masks exactly ``point_budget(H, W, R, num_acs)`` points including the centred
``num_acs x num_acs`` ACS square; equal generator states give equal masks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import numpy as np

from kadapt.errors import InvalidInputError, InvalidStateError, UnknownMaskFamilyError
from kadapt.masks.geometry import BoolArray, as_count, line_budget, point_budget

MaskDims = Literal["1d", "2d", "kt"]
MaskGenerator = Callable[..., BoolArray]
GeneratorT = TypeVar("GeneratorT", bound=MaskGenerator)


@dataclass(frozen=True)
class MaskGeometry:
    """What one mask item is made for; ``budget`` counts lines (1d, per frame for kt) or points (2d).

    ``height`` is set for 2d families, ``frames`` for kt families, otherwise they are ``None``.
    """

    width: int
    acceleration: float
    num_acs: int
    budget: int
    height: int | None = None
    frames: int | None = None


@dataclass(frozen=True)
class MaskFamily:
    """A registered mask family.

    ``generator(geometry, rng, **params)`` returns one boolean item (``(W,)``, ``(H, W)`` or
    ``(frames, W)`` by ``dims``); ``params`` names the keyword parameters it accepts; ``population`` marks
    families built from training-data statistics; ``stochastic`` is False for families whose mask does
    not depend on the generator.
    """

    name: str
    dims: MaskDims
    population: bool
    description: str
    generator: MaskGenerator
    stochastic: bool = True
    params: tuple[str, ...] = ()


_FAMILIES: dict[str, MaskFamily] = {}


def register_family(
    name: str,
    *,
    dims: MaskDims,
    description: str,
    population: bool = False,
    stochastic: bool = True,
) -> Callable[[GeneratorT], GeneratorT]:
    """Decorator registering ``generator(geometry, rng, *, **params)`` as mask family ``name`` (once)."""

    def decorate(generator: GeneratorT) -> GeneratorT:
        if name in _FAMILIES:
            raise InvalidStateError(f"mask family {name!r} is already registered", family=name)
        keyword_only = tuple(
            parameter.name
            for parameter in inspect.signature(generator).parameters.values()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        )
        _FAMILIES[name] = MaskFamily(
            name=name,
            dims=dims,
            population=population,
            description=description,
            generator=generator,
            stochastic=stochastic,
            params=keyword_only,
        )
        return generator

    return decorate


def mask_families() -> Mapping[str, MaskFamily]:
    """Every registered family by name (read-only view)."""
    return MappingProxyType(_FAMILIES)


def get_family(name: str) -> MaskFamily:
    """The family registered as ``name``; UnknownMaskFamilyError (listing the known ones) otherwise."""
    family = _FAMILIES.get(name)
    if family is None:
        raise UnknownMaskFamilyError(
            f"unknown mask family {name!r}; known: {', '.join(sorted(_FAMILIES))}", family=name
        )
    return family


def _geometry_for(
    family: MaskFamily,
    width: int,
    acceleration: float,
    num_acs: int,
    height: int | None,
    frames: int | None,
) -> MaskGeometry:
    width = as_count(width, "width", minimum=1)
    num_acs = as_count(num_acs, "num_acs", minimum=None)  # range checked by the budget
    if family.dims != "kt" and frames is not None:
        raise InvalidInputError(
            f"frames={frames!r} given to the {family.dims} family {family.name!r}; only kt families "
            "make per-frame masks",
            family=family.name,
        )
    if family.dims == "2d":
        if height is None:
            raise InvalidInputError(
                f"the 2d family {family.name!r} needs height (the kx extent H), got height=None",
                family=family.name,
            )
        rows = as_count(height, "height", minimum=1)
        budget = point_budget(rows, width, acceleration, num_acs)
        return MaskGeometry(width, float(acceleration), num_acs, budget, height=rows)
    # A line mask broadcasts over H, so 1d and kt families ignore height.
    budget = line_budget(width, acceleration, num_acs)
    if family.dims == "kt":
        if frames is None:
            raise InvalidInputError(
                f"the kt family {family.name!r} needs frames, got frames=None", family=family.name
            )
        count = as_count(frames, "frames", minimum=1)
        return MaskGeometry(width, float(acceleration), num_acs, budget, frames=count)
    return MaskGeometry(width, float(acceleration), num_acs, budget)


def make_mask(
    family: str,
    *,
    width: int,
    acceleration: float,
    num_acs: int,
    rng: np.random.Generator,
    height: int | None = None,
    frames: int | None = None,
    batch: int | None = None,
    **params: Any,
) -> BoolArray:
    """A boolean sampling mask of the registered ``family``.

    Shapes: 1d families ``(W,)``, 2d families ``(H, W)`` (``height`` required), kt families
    ``(frames, W)`` (``frames`` required); with ``batch`` a leading ``(batch, ...)`` axis of
    independently drawn items. ``params`` are the family's keyword parameters (``MaskFamily.params``).

    Raises UnknownMaskFamilyError for an unknown family, InvalidAccelerationError for an impossible
    R / ACS for the matrix, InvalidInputError for a missing or unexpected geometry argument, a
    non-Generator ``rng`` or a parameter the family does not take.
    """
    spec = get_family(family)
    if not isinstance(rng, np.random.Generator):
        raise InvalidInputError(
            f"rng must be a numpy.random.Generator (explicit randomness), got {type(rng).__name__}",
            family=family,
        )
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise InvalidInputError(
            f"mask family {family!r} takes no parameter(s) {', '.join(unknown)}; it accepts: "
            f"{', '.join(spec.params) or 'none'}",
            family=family,
        )
    geometry = _geometry_for(spec, width, acceleration, num_acs, height, frames)
    if batch is None:
        return spec.generator(geometry, rng, **params)
    items = as_count(batch, "batch", minimum=1)
    return np.stack([spec.generator(geometry, rng, **params) for _ in range(items)])
