"""Scan sessions as the gateway's REST API shows them (architecture.md section 4)."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from kadapt.schemas._base import IntTuple, ModelName, StrTuple, WireModel
from kadapt.schemas.plans import PlanResponse


class ScanState(str, Enum):
    """created -> calibrating -> planning -> acquiring -> (planning -> acquiring)* -> complete ->
    reconstructing -> done | failed."""

    created = "created"
    calibrating = "calibrating"
    planning = "planning"
    acquiring = "acquiring"
    complete = "complete"
    reconstructing = "reconstructing"
    done = "done"
    failed = "failed"


class ScanPolicy(WireModel):
    """How a scan is sampled and reconstructed.

    ``acceleration`` is R = total_lines / acquired_lines including the ``num_acs`` ACS block; the plan has
    exactly ``round(W / R)`` lines. ``plan_deadline_ms`` is the time the sequence can wait for a plan,
    counted from the arrival of the request that completes the ACS block (docs/api.md, "Planning,
    deadline and fallback"). ``fallback`` is the fixed policy served (marked degraded) when the sampler
    is late, missing or failing: a 1d / kt mask family, or a ``fixed-mask`` bundle of the gateway's model
    repository (``name`` = latest version, or ``name/version``), resolved when the scan is created and
    kept with it.
    """

    sampler: ModelName = Field(default="vd-random", description="sampler policy (mask family or bundle name)")
    acceleration: float = Field(default=4.0, gt=1.0, le=64.0)
    num_acs: int = Field(default=16, ge=1, le=1024)
    plan_deadline_ms: float = Field(default=200.0, gt=0.0, le=60_000.0)
    fallback: ModelName = Field(
        default="vd-random",
        description="fixed policy served (degraded) when the sampler is late, down or failing: a 1d or kt "
        "mask family (e.g. vd-random), or a fixed-mask bundle of the gateway's model repository, `name` "
        "(latest version) or `name/version` (e.g. loupe/1), whose served plan at R is used; the bundle is "
        "resolved and checked (kind, W, R) when the scan is created and kept with the session",
    )
    recon: ModelName = Field(default="cg-sense", description="reconstruction method or bundle name")
    outputs: StrTuple = Field(default=("npy", "png", "mrd"))
    retrospective: bool = Field(
        default=False, description="fully sampled upload; the gateway keeps only the planned lines"
    )
    seed: int = Field(default=0, ge=0, description="seed of the policy's random generator (deterministic)")


class ScanGeometry(WireModel):
    """Encoded matrix after readout-oversampling removal, fastMRI layout ``(slice, frame, coil, H, W)``.

    ``height`` is the readout (kx) length, ``width`` the number of phase-encode lines (ky).
    """

    slices: int
    frames: int
    coils: int
    height: int
    width: int
    readout_samples: int = Field(description="samples per readout as sent (before oversampling removal)")


class ScanCreate(WireModel):
    """Body of ``POST /v1/scans``: the MRD XML header and the policy."""

    header_xml: str = Field(min_length=1)
    policy: ScanPolicy = ScanPolicy()


class ScanPublic(WireModel):
    scan_id: str
    state: ScanState
    policy: ScanPolicy
    geometry: ScanGeometry
    acquired_lines: int = Field(description="distinct (slice, frame, ky) lines stored")
    planned_lines: IntTuple = Field(default=(), description="ky lines of the current plan")
    plan: PlanResponse | None = None
    recon_job_id: str | None = None
    recon_method_used: str | None = Field(
        default=None, description="reconstruction that produced the images (differs when recon fell back)"
    )
    recon_fallback_reason: str | None = None
    error: str | None = None


class IngestReport(WireModel):
    """Answer to ``POST /v1/scans/{id}/acquisitions``."""

    accepted: int
    skipped_unplanned: int = Field(description="retrospective mode: lines not in the plan, dropped")
    skipped_noise: int = Field(description="noise / navigator readouts set aside")
    state: ScanState
    plan_ready: bool = Field(description="a plan is available at GET .../plan")
    outside_plan: int = Field(
        default=0, description="prospective mode: stored lines the current plan did not ask for"
    )
    staged: int = Field(default=0, description="retrospective mode: lines held until the plan is known")
    plan: PlanResponse | None = Field(
        default=None,
        description="with ?wait_plan=true: the current plan (the request that completes the ACS block "
        "waits for it, at most until the deadline, as GET .../plan does); None when no plan is due",
    )
