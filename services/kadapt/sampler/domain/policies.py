"""Sampler policies: who decides which ky lines a scan acquires next.

A policy turns a :class:`~kadapt.schemas.PlanRequest` into the complete ky line set of the scan's mask
(ACS and earlier rounds included), for every frame of a dynamic (``kt``) policy. Policies here are
deterministic: the same request gives the same lines (architecture.md section 3, serving never draws
a stochastic binarisation), so replanning after a timeout or on another replica agrees with itself.

- :class:`FixedFamilyPolicy` serves one 1d or kt mask family of :mod:`kadapt.masks`.
- :class:`FixedMaskBundlePolicy` serves a ``fixed-mask`` bundle: a population-adaptive pattern learned
  offline (LOUPE-style, seed 000 section 1.4) stored as ``mask.npy`` line scores of shape ``(W,)``.
- :class:`DegradablePolicy` is a model policy with a fallback (``mnet`` bundles, ``domain/mnet.py``;
  ``ads`` bundles planned in rounds, ``domain/ads.py``):
  when its model cannot answer in time its plan is the fallback's, marked degraded with a reason.
- :class:`PolicyRegistry` holds them, built at startup from the family registry and the model repository.

Multi-round planning (seed 004, Algorithm A1: already sampled indices are zeroed out before the next
selection) is the same rule for every policy: ``plan = fixed ∪ top-(budget - |fixed|)(scores)`` over the
free lines, where ``fixed`` is the acquired lines plus the ACS block. It runs through
:func:`kadapt.masks.mechanics.topk_plan`, which selects by score, so equal scores (a boolean mask has
only two values) are separated by :func:`centre_tiebreak`, a tiny deterministic bias toward the
k-space centre where the signal energy is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from kadapt.bundles import Bundle
from kadapt.errors import (
    BundleError,
    DeadlineExceededError,
    EncodeOutOfRangeError,
    GeometryMismatchError,
    InvalidAccelerationError,
    InvalidInputError,
    PlanContractError,
)
from kadapt.masks import acs_lines, line_budget, make_mask
from kadapt.masks.mechanics import topk_plan
from kadapt.schemas import PlanRequest

PolicyDims = Literal["1d", "kt"]
BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class PlannedLines:
    """A policy's answer: ``lines`` the sorted ky lines (for ``kt`` policies, frame 0's) and, for
    ``kt`` policies, ``frame_lines`` one sorted tuple per frame (``frames`` x ``budget`` lines).

    A model policy that could not answer returns its fallback's lines with ``degraded`` set, ``reason``
    (human text), ``fallback`` (the reason's slug, a metric label) and ``served_by`` (the fallback).
    ``final`` is False for an intermediate round of a multi-round (``ads``) policy: its lines are that
    round's budget, the gateway asks for the next round once they are in.
    """

    lines: tuple[int, ...]
    frame_lines: tuple[tuple[int, ...], ...] | None = None
    final: bool = True
    degraded: bool = False
    reason: str | None = None
    fallback: str | None = None
    served_by: str | None = None


@dataclass(frozen=True)
class PolicyInfo:
    """What ``GET /v1/policies`` shows. ``width`` is the only W the policy accepts (``None``: any),
    ``accelerations`` the R values it accepts (empty: any R the matrix allows); ``served_by`` names the
    family or ``bundle/version`` in plan responses; ``cascades`` the plan rounds of a multi-round
    (``ads``) policy (``None``: one complete plan per request)."""

    name: str
    kind: str
    dims: PolicyDims
    population: bool
    description: str
    served_by: str
    width: int | None = None
    accelerations: tuple[float, ...] = ()
    cascades: int | None = None


class Policy(Protocol):
    """A plannable sampler. ``plan`` runs in a worker thread and may block (model inference); it gets
    ``now_ms`` (unix ms) so that a model policy can call :func:`check_deadline` right before inference."""

    @property
    def name(self) -> str: ...

    @property
    def info(self) -> PolicyInfo: ...

    def plan(self, request: PlanRequest, now_ms: float) -> PlannedLines: ...


@runtime_checkable
class DegradablePolicy(Policy, Protocol):
    """A model policy with a fallback (``mnet`` bundles): the planner waits for its ``plan`` only until
    ``fallback_margin_ms`` before the deadline and then serves ``fallback_plan`` (degraded) instead;
    warm-up plans ``warmup_request`` (which must not come back degraded)."""

    @property
    def fallback_margin_ms(self) -> float: ...

    def fallback_plan(self, request: PlanRequest, reason: str, detail: str) -> PlannedLines: ...

    def warmup_request(self, now_ms: float) -> PlanRequest: ...


class MaskFamilyLike(Protocol):
    """The part of :class:`kadapt.masks.MaskFamily` a policy needs."""

    @property
    def name(self) -> str: ...

    @property
    def dims(self) -> str: ...

    @property
    def population(self) -> bool: ...

    @property
    def description(self) -> str: ...


def check_deadline(request: PlanRequest, stage: str, now_ms: float) -> None:
    """Raise ``DeadlineExceededError`` (``stage`` in its extras, for the miss counters) when ``now_ms``
    (unix ms) is at or past the request's absolute ``deadline_unix_ms``."""
    if now_ms >= request.deadline_unix_ms:
        late_ms = now_ms - request.deadline_unix_ms
        raise DeadlineExceededError(
            f"plan for scan {request.scan_id!r} dropped at {stage}: deadline {request.deadline_unix_ms:.1f} "
            f"passed {late_ms:.1f} ms ago",
            stage=stage,
        )


def scan_rng(seed: int) -> np.random.Generator:
    """The generator of a scan's fixed policy: ``default_rng(seed)`` with the policy's explicit seed.

    The seed alone, not the scan id: a fixed pattern is a property of the protocol, so the same seed gives
    the same mask on every replica, restart and scan, and replays compare reconstructions on identical
    masks. Clients that want a different pattern per scan choose a different seed.
    """
    return np.random.default_rng(seed)


def centre_tiebreak(width: int, ceiling: float = 1.0) -> FloatArray:
    """Distinct small scores ``(W,)`` in ``(0, ceiling / 2]`` that rank lines by distance to the centre
    ``W // 2`` (lower ky first on equal distance)."""
    ky = np.arange(width)
    order = np.lexsort((ky, np.abs(ky - width // 2)))  # nearest the centre first
    rank = np.empty(width, dtype=np.float64)
    rank[order] = np.arange(width, 0, -1)
    return rank / width * (ceiling / 2.0)


def smallest_gap(scores: FloatArray) -> float:
    """The smallest difference between two distinct values of ``scores`` (any shape); 1 if all equal."""
    distinct = np.unique(scores)
    return float(np.min(np.diff(distinct))) if distinct.size > 1 else 1.0


def fixed_lines(request: PlanRequest, budget: int, *, per_frame: bool) -> BoolArray:
    """The lines every plan must keep, ``(frames, W)`` bool: ``acquired`` and the ACS block in every
    frame, plus ``acquired_per_frame[f]`` in frame f. With ``per_frame=False`` (1d policies: one line set
    for every frame) the frames are merged into one row, ``(1, W)``.

    Raises ``EncodeOutOfRangeError`` naming lines outside ``[0, W)``, ``InvalidInputError`` when
    ``acquired_per_frame`` does not have one entry per frame and ``InvalidAccelerationError`` when a frame
    already holds more than ``budget`` lines.
    """
    width, frames = request.width, request.frames
    acquired_per_frame = request.acquired_per_frame
    if acquired_per_frame is not None and len(acquired_per_frame) != frames:
        raise InvalidInputError(
            f"acquired_per_frame has {len(acquired_per_frame)} entries for a scan of {frames} frames"
        )
    everything = [*request.acquired, *(ky for lines in acquired_per_frame or () for ky in lines)]
    outside = sorted({ky for ky in everything if not 0 <= ky < width})
    if outside:
        raise EncodeOutOfRangeError(f"acquired ky lines {outside} lie outside [0, {width})")
    fixed: BoolArray = np.zeros((frames, width), dtype=np.bool_)
    fixed[:, np.asarray(acs_lines(width, request.num_acs), dtype=np.intp)] = True
    fixed[:, list(request.acquired)] = True
    for frame, lines in enumerate(acquired_per_frame or ()):
        fixed[frame, list(lines)] = True
    if not per_frame:
        fixed = np.asarray(fixed.any(axis=0, keepdims=True), dtype=np.bool_)
    most = int(fixed.sum(axis=-1).max())
    if most > budget:
        raise InvalidAccelerationError(
            f"{most} lines already acquired (ACS included) exceed the {budget} lines of R="
            f"{request.acceleration} at W={width}"
        )
    return fixed


def complete_plan(scores: FloatArray, fixed: BoolArray, budget: int) -> PlannedLines:
    """Keep ``fixed`` ``(frames, W)`` and add the best-scored free lines up to ``budget`` per frame.

    ``scores`` is ``(W,)`` (one pattern for every frame) or ``(frames, W)``; ties are broken by
    :func:`centre_tiebreak` kept below half the smallest gap between distinct scores, so it never
    reorders different scores. Returns frame 0 as ``lines`` and every frame as ``frame_lines`` (the
    caller drops ``frame_lines`` for 1d policies).
    """
    width = fixed.shape[-1]
    ranked = np.broadcast_to(scores + centre_tiebreak(width, smallest_gap(scores)), fixed.shape)
    mask = np.asarray(topk_plan(ranked, fixed, budget), dtype=np.bool_)
    if mask.shape != fixed.shape:
        raise PlanContractError(f"topk_plan returned shape {mask.shape}, expected {fixed.shape}")
    frame_lines = tuple(tuple(int(ky) for ky in np.flatnonzero(row)) for row in mask)
    return PlannedLines(lines=frame_lines[0], frame_lines=frame_lines)


class FixedFamilyPolicy:
    """One 1d or kt family of :mod:`kadapt.masks`, drawn with :func:`scan_rng` so every scan gets its
    own but reproducible mask. Refused (``InvalidInputError`` naming the policy): 2d point families (a
    Cartesian scan acquires whole lines) and population families (their required training statistics,
    e.g. an energy profile, arrive as ``fixed-mask`` bundles, not as a bare family name)."""

    def __init__(self, family: MaskFamilyLike) -> None:
        if family.dims not in ("1d", "kt"):
            raise InvalidInputError(
                f"policy {family.name!r} is a {family.dims} point-mask family; a Cartesian scan acquires "
                "whole ky lines, so only 1d and kt families can plan"
            )
        if family.population:
            raise InvalidInputError(
                f"policy {family.name!r} is a population family built from training-data statistics; "
                "serve it as a fixed-mask bundle made by the trainer"
            )
        dims: PolicyDims = "1d" if family.dims == "1d" else "kt"
        self._info = PolicyInfo(
            name=family.name,
            kind="mask-family",
            dims=dims,
            population=False,
            description=family.description,
            served_by=family.name,
        )

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def info(self) -> PolicyInfo:
        return self._info

    def plan(self, request: PlanRequest, now_ms: float) -> PlannedLines:
        """Lines for ``request``: the family's mask ``(W,)`` (kt: ``(frames, W)``) drawn with
        ``scan_rng(seed)``, completed around the fixed lines to exactly ``round(W / R)``."""
        budget = line_budget(request.width, request.acceleration, request.num_acs)
        kt = self._info.dims == "kt"
        fixed = fixed_lines(request, budget, per_frame=kt)
        mask = make_mask(
            self.name,
            width=request.width,
            acceleration=request.acceleration,
            num_acs=request.num_acs,
            rng=scan_rng(request.seed),
            frames=request.frames if kt else None,
        )
        expected = (request.frames, request.width) if kt else (request.width,)
        if mask.shape != expected:
            raise PlanContractError(f"family {self.name!r} made a mask of shape {mask.shape}, not {expected}")
        planned = complete_plan(np.asarray(mask, dtype=np.float64), fixed, budget)
        return planned if kt else PlannedLines(lines=planned.lines)


class FixedMaskBundlePolicy:
    """A ``fixed-mask`` bundle: ``mask.npy`` holds ``(W,)`` line scores (float) or a boolean mask, one
    population pattern learned offline; a plan is the top-k free lines at the requested R."""

    MASK_FILE = "mask.npy"

    def __init__(self, bundle: Bundle) -> None:
        manifest = bundle.manifest
        if manifest.kind != "fixed-mask":
            raise BundleError(f"bundle {manifest.ref} is of kind {manifest.kind!r}, not 'fixed-mask'")
        try:
            mask = np.load(bundle.file(self.MASK_FILE), allow_pickle=False)
        except (OSError, ValueError) as err:
            raise BundleError(f"bundle {manifest.ref}: cannot read {self.MASK_FILE}: {err}") from err
        width = manifest.geometry.ky
        if mask.shape != (width,):
            raise BundleError(
                f"bundle {manifest.ref}: {self.MASK_FILE} is {mask.shape}, the geometry says ({width},)"
            )
        if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.floating):
            raise BundleError(
                f"bundle {manifest.ref}: {self.MASK_FILE} has dtype {mask.dtype}, not bool/float"
            )
        scores = mask.astype(np.float64)
        if not np.all(np.isfinite(scores)):
            raise BundleError(f"bundle {manifest.ref}: {self.MASK_FILE} holds NaN or Inf scores")
        self._scores: FloatArray = scores
        self._geometry = manifest.geometry
        self._info = PolicyInfo(
            name=manifest.name,
            kind=manifest.kind,
            dims="1d",
            population=True,
            description=str(manifest.training.get("description", f"fixed mask bundle {manifest.ref}")),
            served_by=manifest.ref,
            width=width,
            accelerations=manifest.accelerations,
        )

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def info(self) -> PolicyInfo:
        return self._info

    def plan(self, request: PlanRequest, now_ms: float) -> PlannedLines:
        """Top-``round(W / R)`` lines of the bundle's scores ``(W,)``, the fixed lines kept; refuses a
        geometry or R the manifest does not accept."""
        geometry = self._geometry
        wanted = {"W": geometry.ky, "H": geometry.kx, "coils": geometry.coils, "frames": geometry.frames}
        given = {"W": request.width, "H": request.height, "coils": request.coils, "frames": request.frames}
        for axis, accepted in wanted.items():
            if accepted is not None and given[axis] != accepted:
                raise GeometryMismatchError(
                    f"policy {self.name!r} accepts {axis}={accepted}, the scan has {axis}={given[axis]}"
                )
        if not any(np.isclose(request.acceleration, r, rtol=1e-6) for r in self._info.accelerations):
            raise InvalidAccelerationError(
                f"policy {self.name!r} accepts R in {list(self._info.accelerations)}, "
                f"not R={request.acceleration}"
            )
        budget = line_budget(request.width, request.acceleration, request.num_acs)
        planned = complete_plan(self._scores, fixed_lines(request, budget, per_frame=False), budget)
        return PlannedLines(lines=planned.lines)


def policy_infos(policies: Mapping[str, Policy]) -> list[PolicyInfo]:
    """The infos of ``policies``, sorted by name."""
    return [policies[name].info for name in sorted(policies)]
