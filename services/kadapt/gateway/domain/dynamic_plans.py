"""Plan inputs of multi-round ``ads`` policies (seed 004's adaptive dynamic sampler, issue 5).

An ``ads`` policy plans a cine scan in rounds, one per cascade: round r looks at the SENSE image of the
data acquired so far and picks each frame's next lines; the last round completes the mask. The sampler
is stateless, so each round's request carries what it needs (docs/sampler.md, "Plan transport"):

- ``acquired_per_frame``: per frame, the lines the earlier rounds planned (ACS included), from the
  previous round's ``frame_lines``; ``acquired`` stays the ACS block (the lines of every frame);
- the payload ``sense-image``: the centre slice's SENSE image so far, complex64 ``(frames, H, W)``, made
  here in numpy by :func:`kadapt.kspace.dynamic.sense_image_so_far` from the scan's k-space file (maps
  from the frame-averaged ACS, the input the cascade was trained on), in a worker thread so other scans'
  deadlines are kept.

The gateway learns that a policy is an ``ads`` one from the bundle's manifest in its model repository
(:func:`sampler_payload`, read once when the scan is created and kept in the session as
``plan_payload``); any other policy keeps the ACS payload. Without a repository, or when the image cannot
be made (an ACS block without signal), the request goes without an image and the sampler answers with
its fallback (``image-missing``, degraded): the scanner always gets a plan.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import structlog
from numpy.typing import NDArray

from kadapt.bundles import read_manifest
from kadapt.errors import KadaptError
from kadapt.gateway.domain.fallbacks import latest_version
from kadapt.gateway.domain.images import encode_npy
from kadapt.gateway.domain.kspace_files import KspaceFiles
from kadapt.gateway.domain.planning import PlanContext
from kadapt.gateway.domain.session import ScanSession
from kadapt.kspace.dynamic import sense_image_so_far
from kadapt.masks import mask_families
from kadapt.schemas import ScanPolicy
from kadapt.schemas.plans import PlanPayload

log = structlog.get_logger("kadapt.gateway")

ADS_KIND = "ads"
SENSE_IMAGE: PlanPayload = "sense-image"


def sampler_payload(policy: ScanPolicy, repository: Path | None) -> PlanPayload:
    """``sense-image`` when ``policy.sampler`` names an ``ads`` bundle (``name`` = latest version, or
    ``name/version``) of the gateway's model repository, else ``acs``. Only the manifest is read (no
    checksums, no model files); an unreadable one counts as not ``ads``."""
    if repository is None or policy.sampler in mask_families():
        return "acs"
    name, _, version = policy.sampler.partition("/")
    try:
        manifest = read_manifest(repository / name / (version or latest_version(repository, name)))
    except KadaptError:
        return "acs"
    return SENSE_IMAGE if manifest.kind == ADS_KIND else "acs"


def earlier_lines(
    session: ScanSession, acs: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...] | None]:
    """``(acquired, acquired_per_frame)`` a round must keep: the ACS block, plus the previous round's
    plan -- per frame when it planned per frame (``frame_lines``), else its ``lines`` in every frame."""
    plan = session.plan
    if plan is None or plan.round >= session.plan_round:
        return acs, None
    if plan.frame_lines is not None:
        return acs, tuple(tuple(sorted(lines)) for lines in plan.frame_lines)
    return tuple(sorted({*acs, *plan.lines})), None


def sense_image_npy(kspace_files: KspaceFiles, session: ScanSession, context: PlanContext) -> bytes | None:
    """The centre slice's SENSE image of the lines ``context`` says are acquired, ``(frames, H, W)``
    complex64 as ``.npy`` bytes; ``None`` (logged) when it cannot be made. Blocking: call in a thread."""
    geometry = session.geometry
    mask = np.zeros((geometry.frames, geometry.width), dtype=np.bool_)
    for frame in range(geometry.frames):
        mask[frame, list(context.frame_acquired(frame))] = True
    stored = kspace_files.open(session.scan_id)[geometry.slices // 2]  # (frame, W, coil, H), line-major
    # A (frame, coil, H, W) view: sense_image_so_far reads only the acquired columns of it.
    kspace: NDArray[np.complex64] = np.moveaxis(stored, 1, -1)
    try:
        image = sense_image_so_far(kspace, mask, session.policy.num_acs)
    except KadaptError as error:
        log.warning("sense_image_failed", scan_id=session.scan_id, round=context.round, error=error.detail)
        return None
    return encode_npy(image)


def with_sense_image_payload(
    context: PlanContext, session: ScanSession, kspace_files: KspaceFiles
) -> PlanContext:
    """``context`` carrying the SENSE image so far as its ``sense-image`` payload; without a payload
    when the image cannot be made (blocking: ``PlanRounds`` runs it in a worker thread)."""
    npy = sense_image_npy(kspace_files, session, context)
    return dataclasses.replace(context, acs_npy=npy, payload=SENSE_IMAGE)
