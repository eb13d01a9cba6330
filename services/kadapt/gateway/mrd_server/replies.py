"""What the MRD server sends back: JSON TEXT messages and the IMAGE messages of a finished scan.

Every TEXT kadapt sends is one JSON object whose ``kind`` says what it is:

- ``kadapt_session``: the scan session was created (``scan_id`` for the REST API, policy, geometry, mode);
- ``kadapt_plan``: a plan round — the fields of the REST ``PlanResponse`` (``GET /v1/scans/{id}/plan``)
  plus ``ky`` (scanner encode steps of ``lines``), ``frame_ky`` (kt plans), ``width``, ``ky_offset``,
  ``mode``, ``acceleration`` and ``num_acs``;
- ``kadapt_images``: the reconstruction is done, images follow (count, recon method used, degraded, the
  DICOM series written on request);
- ``kadapt_error``: the session failed; the problem details of the error (``type``, ``title``,
  ``status``, ``detail``) plus its ``slug``. A CLOSE follows and the connection ends.

Text is sent without a NUL terminator, as the ``ismrmrd`` package's ProtocolSerializer writes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import PROBLEM_BASE, KadaptError
from kadapt.gateway.domain.session import ScanSession
from kadapt.gateway.mrd_server.feedback import encode_steps
from kadapt.mrd.messages import Image, MetaValue
from kadapt.mrd.stream import make_image_messages
from kadapt.problems import INTERNAL_ERROR_SLUG
from kadapt.schemas import PlanResponse, ScanPublic

# Acquisition-header fields copied into the images of their slice (patient coordinates, mm).
GEOMETRY_FIELDS = ("position", "read_dir", "phase_dir", "slice_dir", "patient_table_position")


def _dumps(document: Mapping[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"))


def session_text(scan: ScanPublic, *, mode: str, feedback: bool) -> str:
    """The ``kadapt_session`` TEXT sent when the session's scan is created."""
    return _dumps(
        {
            "kind": "kadapt_session",
            "scan_id": scan.scan_id,
            "state": scan.state.value,
            "mode": mode,
            "feedback": feedback,
            "policy": scan.policy.model_dump(mode="json"),
            "geometry": scan.geometry.model_dump(mode="json"),
        }
    )


def plan_text(plan: PlanResponse, session: ScanSession) -> str:
    """The ``kadapt_plan`` TEXT: the REST plan's fields plus scanner encode steps (see module docstring)."""
    offset = session.encoding.ky_offset
    policy = session.policy
    document: dict[str, Any] = {"kind": "kadapt_plan", **plan.model_dump(mode="json")}
    document.update(
        ky=list(encode_steps(plan.lines, offset)),
        frame_ky=None
        if plan.frame_lines is None
        else [list(encode_steps(lines, offset)) for lines in plan.frame_lines],
        width=session.geometry.width,
        ky_offset=offset,
        mode="retrospective" if policy.retrospective else "prospective",
        acceleration=policy.acceleration,
        num_acs=policy.num_acs,
    )
    return _dumps(document)


def error_text(error: KadaptError) -> str:
    """The ``kadapt_error`` TEXT: problem details of ``error`` and its slug."""
    return _dumps({"kind": "kadapt_error", "slug": error.slug, **error.to_problem()})


def internal_error_text() -> str:
    """The ``kadapt_error`` TEXT for an unexpected fault (a bug): no internals, the log has the rest."""
    return _dumps(
        {
            "kind": "kadapt_error",
            "slug": INTERNAL_ERROR_SLUG,
            "type": PROBLEM_BASE + INTERNAL_ERROR_SLUG,
            "title": "Internal error",
            "status": 500,
            "detail": "unexpected server error; the gateway's log has the details",
        }
    )


def images_text(session: ScanSession, *, images: int, acquired_lines: int, dicom: Sequence[Path] = ()) -> str:
    """The ``kadapt_images`` TEXT sent before the IMAGE messages of a done scan (``dicom``: the files of
    the DICOM series written on request)."""
    return _dumps(
        {
            "kind": "kadapt_images",
            "scan_id": session.scan_id,
            "state": session.state.value,
            "images": images,
            "acquired_lines": acquired_lines,
            "recon_requested": session.policy.recon,
            "recon_method_used": session.recon_method_used,
            "recon_fallback_reason": session.recon_fallback_reason,
            "degraded": bool(session.plan is not None and session.plan.degraded),
            "dicom": {"directory": str(dicom[0].parent), "files": len(dicom)} if dicom else None,
        }
    )


def image_meta(session: ScanSession) -> dict[str, MetaValue]:
    """ISMRMRD meta attributes naming how the images were made (policy, R, ACS, recon, degraded)."""
    policy, plan = session.policy, session.plan
    recon = session.recon_method_used or policy.recon
    degraded = plan is not None and plan.degraded
    meta: dict[str, MetaValue] = {
        "KadaptScanId": session.scan_id,
        "KadaptPolicy": policy.sampler,
        "KadaptServedBy": plan.served_by if plan is not None else "none (completed before a plan)",
        "KadaptAcceleration": f"{policy.acceleration:g}",
        "KadaptAcsLines": policy.num_acs,
        "KadaptMode": "retrospective" if policy.retrospective else "prospective",
        "KadaptRecon": recon,
        "KadaptDegraded": "true" if degraded else "false",
        "SequenceDescriptionAdditional": f"kadapt_{policy.sampler}_R{policy.acceleration:g}_{recon}",
    }
    if degraded and plan is not None and plan.reason:
        meta["KadaptDegradedReason"] = plan.reason
    if session.recon_fallback_reason:
        meta["KadaptReconFallbackReason"] = session.recon_fallback_reason
    return meta


def image_messages(
    magnitude: NDArray[np.floating],
    session: ScanSession,
    *,
    series_index: int,
    slice_heads: Mapping[int, NDArray[np.void]],
    measurement_uid: int = 0,
) -> list[Image]:
    """IMAGE messages for the magnitude volume ``(slice, frame, H, W)``: float pixels ``(1, 1, W, H)``,
    running image indices from 1, the header's recon field of view, and per slice the position and
    directions of that slice's first imaging readout (``slice_heads``: slice -> acquisition header)."""
    images = make_image_messages(
        np.asarray(magnitude, dtype=np.float32),
        field_of_view=session.encoding.field_of_view_mm,
        image_series_index=series_index,
        measurement_uid=measurement_uid,
        meta=image_meta(session),
    )
    for image in images:
        head = slice_heads.get(image.slice)
        if head is None:
            continue
        for name in GEOMETRY_FIELDS:
            image.head[name] = head[name]
        image.head["acquisition_time_stamp"] = head["acquisition_time_stamp"]
    return images
