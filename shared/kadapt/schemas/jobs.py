"""Gateway -> recon jobs (Redis Streams or the in-memory queue) and their results."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from kadapt.schemas._base import ModelName, StrTuple, WireModel


class ReconStatus(str, Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


class ReconJob(WireModel):
    """One reconstruction. K-space stays out of the queue: ``kspace_path`` is an ``.npy`` blob on the
    shared volume (complex64 ``(slice, frame, coil, H, W)``, unacquired samples zero) checked by
    ``kspace_sha256``; ``mask_path`` the ``.npy`` bool sampling mask ``(slice, frame, W)``."""

    job_id: str
    scan_id: str
    method: ModelName
    num_acs: int
    acceleration: float
    kspace_path: str
    kspace_sha256: str
    mask_path: str
    mask_sha256: str
    outputs: StrTuple = ("npy",)
    header_xml: str | None = None
    created_unix_ms: float = 0.0


class ReconResult(WireModel):
    """Stored once per job (idempotent). ``images_path`` is a float32 magnitude ``.npy``
    ``(slice, frame, H, W)``; ``method_used`` differs from the request when the worker fell back."""

    job_id: str
    scan_id: str
    status: ReconStatus
    method_requested: str
    method_used: str | None = None
    fallback_reason: str | None = None
    images_path: str | None = None
    images_sha256: str | None = None
    elapsed_ms: float = 0.0
    deliveries: int = Field(default=1, ge=1)
    error: str | None = None
