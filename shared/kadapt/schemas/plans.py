"""Gateway -> sampler plan protocol (architecture.md section 5)."""

from __future__ import annotations

from pydantic import Field

from kadapt.schemas._base import IntTuple, IntTupleTuple, WireModel


class PlanRequest(WireModel):
    """Ask for the next lines of one scan.

    ``deadline_unix_ms`` is absolute (milliseconds since the epoch); the sampler drops work whose
    deadline has passed at admission, dequeue and before inference. ``acquired`` lists the ky lines
    already acquired (always including the centred ACS block of ``num_acs`` lines). ``acs_npy_b64``
    optionally carries the ACS k-space (complex64 ``(coil, H, num_acs)``, ``.npy`` bytes, base64) for
    samplers that look at the scan. ``acquired_per_frame`` (dynamic policies, one tuple per frame) adds
    lines acquired in single frames only; ``acquired`` holds the lines acquired in every frame.
    """

    scan_id: str
    policy: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    coils: int = Field(gt=0)
    frames: int = Field(default=1, gt=0)
    acceleration: float = Field(gt=1.0)
    num_acs: int = Field(ge=1)
    acquired: IntTuple = ()
    acquired_per_frame: IntTupleTuple | None = None
    round: int = Field(default=0, ge=0)
    seed: int = Field(default=0, ge=0)
    deadline_unix_ms: float
    acs_npy_b64: str | None = None


class PlanResponse(WireModel):
    """The lines to acquire, as the complete ky line set of the mask (ACS and earlier rounds included).

    ``lines`` has exactly ``round(W / R)`` sorted entries (per frame for dynamic policies:
    ``frame_lines``). ``degraded`` is true when the answer is the policy's fallback; ``reason`` says why.
    """

    scan_id: str
    policy: str
    lines: IntTuple
    frame_lines: IntTupleTuple | None = None
    round: int = 0
    final: bool = True
    degraded: bool = False
    reason: str | None = None
    served_by: str = Field(description="policy or fallback family that produced the lines")
    elapsed_ms: float = 0.0
