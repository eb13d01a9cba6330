"""The scan session: its record and the state machine (architecture.md section 4).

::

    created -> calibrating -> planning -> acquiring -> (planning -> acquiring)* -> complete
            -> reconstructing -> done | failed

``calibrating`` starts with the first stored line; ``planning`` when every ACS line of every
(slice, frame) is in; ``acquiring`` when the plan of the round is known; ``complete`` when all planned
lines are in or the scanner says so (``force`` / a CLOSE message). Any live state may go to ``failed``.
A scan failed by its recon job's result goes back to ``reconstructing`` when that result vanishes: an
operator requeued the dead-lettered job (``kadapt jobs requeue``, docs/faults.md).
The record is framework-free and JSON-serialisable (one JSON document per scan in the store); the
acquired line set lives beside it in the store as integer line keys (:func:`line_keys`).
"""

from __future__ import annotations

import time
import uuid

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from kadapt.errors import InvalidStateError
from kadapt.gateway.domain.fallbacks import FallbackPattern
from kadapt.schemas import PlanResponse, ReconJob, ScanGeometry, ScanPolicy, ScanPublic, ScanState
from kadapt.schemas.plans import PlanPayload

S = ScanState

ALLOWED_TRANSITIONS: dict[ScanState, frozenset[ScanState]] = {
    S.created: frozenset({S.calibrating, S.failed}),
    S.calibrating: frozenset({S.planning, S.complete, S.failed}),
    S.planning: frozenset({S.acquiring, S.complete, S.failed}),
    S.acquiring: frozenset({S.planning, S.complete, S.failed}),
    S.complete: frozenset({S.reconstructing, S.failed}),
    S.reconstructing: frozenset({S.done, S.failed}),
    S.done: frozenset(),
    S.failed: frozenset({S.reconstructing}),  # only when its dead-lettered recon job is requeued
}

# States in which the scanner may still send acquisitions.
INGEST_STATES = frozenset({S.created, S.calibrating, S.planning, S.acquiring})


def new_scan_id() -> str:
    """A fresh scan id (uuid4 hex, 32 characters)."""
    return uuid.uuid4().hex


def now_unix_ms() -> float:
    return time.time() * 1000.0


class Encoding(BaseModel):
    """What ingest needs from the MRD header, parsed once at creation.

    A readout at ``kspace_encode_step_1 = ky`` lands in column ``ky + ky_offset`` of the ``W`` axis;
    ``ky_min``/``ky_max`` are the header's encoding limits (inclusive); ``field_of_view_mm`` the recon
    space's (readout, phase, slice thickness) for the images sent back.
    """

    model_config = ConfigDict(extra="forbid")

    ky_min: int
    ky_max: int
    ky_offset: int
    repetitions: int = 1
    field_of_view_mm: tuple[float, float, float] = (256.0, 256.0, 5.0)


class ScanSession(BaseModel):
    """One scan's metadata as stored (the k-space itself is a memmap file, the lines a set)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    scan_id: str
    state: ScanState = S.created
    header_xml: str
    geometry: ScanGeometry
    policy: ScanPolicy
    encoding: Encoding
    # ``policy.fallback`` resolved at creation when it names a fixed-mask bundle (None: a mask family):
    # kept here so every replica serves it without the model repository, even after the bundle is gone.
    fallback_pattern: FallbackPattern | None = None
    # What model plans look at: the ACS block, or (``ads`` policies, planned in rounds) the SENSE image so
    # far; resolved at creation from the sampler bundle's manifest (``domain/dynamic_plans.py``).
    plan_payload: PlanPayload = "acs"
    plan: PlanResponse | None = None
    plan_round: int = 0
    plan_deadline_unix_ms: float | None = None
    recon_job: ReconJob | None = None
    images_path: str | None = None
    images_sha256: str | None = None
    recon_method_used: str | None = None
    recon_fallback_reason: str | None = None
    error: str | None = None
    skipped_noise: int = 0
    skipped_unplanned: int = 0
    outside_plan: int = 0
    noise_readouts: int = 0
    created_unix_ms: float = 0.0
    updated_unix_ms: float = 0.0

    def transition(self, target: ScanState) -> None:
        """Move to ``target`` or raise :class:`InvalidStateError` naming both states."""
        if target not in ALLOWED_TRANSITIONS[self.state]:
            raise InvalidStateError(
                f"scan {self.scan_id}: transition {self.state.value} -> {target.value} is not allowed",
                state=self.state.value,
            )
        self.state = target

    def require_state(self, allowed: frozenset[ScanState], action: str) -> None:
        """Raise :class:`InvalidStateError` unless the scan is in one of ``allowed``."""
        if self.state not in allowed:
            wanted = ", ".join(sorted(s.value for s in allowed))
            raise InvalidStateError(
                f"scan {self.scan_id} is {self.state.value}; {action} needs one of: {wanted}",
                state=self.state.value,
            )

    def fail(self, reason: str) -> None:
        if S.failed in ALLOWED_TRANSITIONS[self.state]:
            self.state = S.failed
            self.error = reason

    @property
    def plan_is_current(self) -> bool:
        """True when the plan of the current round is known."""
        return self.plan is not None and self.plan.round == self.plan_round

    def planned_mask(self) -> NDArray[np.bool_] | None:
        """The current plan as a line mask ``(frame, W)`` (a 1D plan broadcast over frames)."""
        if self.plan is None:
            return None
        return plan_mask(self.plan, frames=self.geometry.frames, width=self.geometry.width)

    def public(self, acquired_lines: int) -> ScanPublic:
        """The wire view of the session."""
        return ScanPublic(
            scan_id=self.scan_id,
            state=self.state,
            policy=self.policy,
            geometry=self.geometry,
            acquired_lines=acquired_lines,
            planned_lines=self.plan.lines if self.plan is not None else (),
            plan=self.plan,
            recon_job_id=self.recon_job.job_id if self.recon_job is not None else None,
            recon_method_used=self.recon_method_used,
            recon_fallback_reason=self.recon_fallback_reason,
            error=self.error,
        )


def plan_mask(plan: PlanResponse, *, frames: int, width: int) -> NDArray[np.bool_]:
    """Line mask ``(frame, W)`` of a plan: ``frame_lines`` per frame when given, else ``lines``."""
    mask = np.zeros((frames, width), dtype=bool)
    if plan.frame_lines is not None:
        for frame, lines in enumerate(plan.frame_lines[:frames]):
            mask[frame, list(lines)] = True
    else:
        mask[:, list(plan.lines)] = True
    return mask


def line_keys(
    slices: NDArray[np.integer],
    frames: NDArray[np.integer],
    columns: NDArray[np.integer],
    geometry: ScanGeometry,
) -> NDArray[np.int64]:
    """Flat integer key of each line ``(slice, frame, column)``: ``(slice * frames + frame) * W + column``.

    All three inputs have shape ``(n,)``; the result too. Keys index a ``(slice, frame, W)`` mask raveled.
    """
    return (
        slices.astype(np.int64) * geometry.frames + frames.astype(np.int64)
    ) * geometry.width + columns.astype(np.int64)


def keys_to_mask(keys: NDArray[np.int64], geometry: ScanGeometry) -> NDArray[np.bool_]:
    """Line keys ``(n,)`` -> bool mask ``(slice, frame, W)``."""
    mask = np.zeros(geometry.slices * geometry.frames * geometry.width, dtype=bool)
    mask[keys] = True
    return mask.reshape(geometry.slices, geometry.frames, geometry.width)


def mask_to_keys(mask: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Bool mask ``(slice, frame, W)`` -> sorted line keys ``(n,)``."""
    return np.flatnonzero(mask.ravel()).astype(np.int64)


def describe_key(key: int, geometry: ScanGeometry, encoding: Encoding) -> str:
    """``slice=s frame=f ky=k`` of a line key (for error details)."""
    per_slice = geometry.frames * geometry.width
    slice_index, rest = divmod(int(key), per_slice)
    frame, column = divmod(rest, geometry.width)
    return f"slice={slice_index} frame={frame} ky={column - encoding.ky_offset}"
