"""Completion: check the scan is done, hand k-space and mask to the recon queue, follow the result.

K-space goes to the blob store (``.npy`` on the shared volume, by path + sha256), never into the queue:
the job carries the complex64 ``(slice, frame, coil, H, W)`` k-space with zeros where nothing was
acquired and the bool mask ``(slice, frame, W)`` of the acquired lines.
"""

from __future__ import annotations

import contextlib
import uuid

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import InvalidStateError, KadaptError
from kadapt.gateway.domain.kspace_files import KspaceFiles
from kadapt.gateway.domain.session import ScanSession, describe_key, mask_to_keys, now_unix_ms
from kadapt.jobs import BlobStore
from kadapt.schemas import ReconJob, ReconResult, ReconStatus, ScanState

COMPLETABLE_STATES = frozenset({ScanState.calibrating, ScanState.planning, ScanState.acquiring})


def missing_planned_lines(session: ScanSession, acquired: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Line keys ``(n,)`` the current plan asks for but ``acquired`` ``(slice, frame, W)`` lacks."""
    planned = session.planned_mask()
    if planned is None:
        return np.zeros(0, dtype=np.int64)
    wanted = np.broadcast_to(planned[None], acquired.shape)
    return mask_to_keys(wanted & ~acquired)


def check_completion(session: ScanSession, acquired: NDArray[np.bool_], *, force: bool) -> None:
    """Raise :class:`InvalidStateError` unless the scan may complete.

    Without ``force`` the plan of the current round must be known and final and every planned line of
    every (slice, frame) acquired; with ``force`` (the scanner says so) any scan with at least one line may
    complete. ``acquired``: bool ``(slice, frame, W)``.
    """
    session.require_state(COMPLETABLE_STATES, "completion")
    if not acquired.any():
        raise InvalidStateError(
            f"scan {session.scan_id} has no acquired line to reconstruct", state=session.state
        )
    if force:
        return
    if not session.plan_is_current or session.plan is None:
        raise InvalidStateError(
            f"scan {session.scan_id} is {session.state.value}: no plan yet (complete with force=true to "
            "reconstruct what was acquired)",
            state=session.state.value,
        )
    if not session.plan.final:
        raise InvalidStateError(
            f"scan {session.scan_id}: plan round {session.plan.round} is not final", state=session.state.value
        )
    missing = missing_planned_lines(session, acquired)
    if missing.size:
        raise InvalidStateError(
            f"scan {session.scan_id}: {missing.size} planned lines are missing, first "
            f"{describe_key(int(missing[0]), session.geometry, session.encoding)} "
            "(force=true completes anyway)",
            state=session.state.value,
            missing=int(missing.size),
        )


def write_recon_job(
    session: ScanSession, kspace_files: KspaceFiles, blobs: BlobStore, acquired: NDArray[np.bool_]
) -> ReconJob:
    """Write k-space and mask blobs and describe the job (blocking I/O: run it in a worker thread).

    ``acquired``: bool ``(slice, frame, W)``; the k-space blob is ``(slice, frame, coil, H, W)`` complex64
    zero where ``acquired`` is False. All or nothing: if the mask cannot be written (a full volume raises
    :class:`~kadapt.errors.InsufficientStorageError`) the k-space blob is removed again.
    """
    job_id = uuid.uuid4().hex
    kspace = kspace_files.read_masked(session.scan_id, acquired)
    kspace_path, kspace_sha256 = blobs.put_array(f"scans/{session.scan_id}/{job_id}-kspace", kspace)
    try:
        mask_path, mask_sha256 = blobs.put_array(f"scans/{session.scan_id}/{job_id}-mask", acquired)
    except BaseException:
        blobs.delete(kspace_path)
        raise
    return ReconJob(
        job_id=job_id,
        scan_id=session.scan_id,
        method=session.policy.recon,
        num_acs=session.policy.num_acs,
        acceleration=session.policy.acceleration,
        kspace_path=kspace_path,
        kspace_sha256=kspace_sha256,
        mask_path=mask_path,
        mask_sha256=mask_sha256,
        outputs=session.policy.outputs,
        header_xml=session.header_xml,
        created_unix_ms=now_unix_ms(),
    )


def reopen_requeued(session: ScanSession) -> bool:
    """A scan failed by its recon job's result whose result has since been deleted -- an operator
    requeued the dead-lettered job (``kadapt jobs requeue``) -- waits for the job again: back to
    ``reconstructing``. The caller has checked that the result is gone; True if the session changed."""
    if session.state != ScanState.failed or session.recon_job is None:
        return False
    session.transition(ScanState.reconstructing)
    session.error = None
    session.recon_method_used = None
    session.recon_fallback_reason = None
    return True


def delete_job_blobs(blobs: BlobStore, job: ReconJob) -> None:
    """Remove a job's k-space and mask blobs (a job that was written but never enqueued)."""
    for path in (job.kspace_path, job.mask_path):
        with contextlib.suppress(KadaptError, OSError):
            blobs.delete(path)


def apply_result(session: ScanSession, result: ReconResult) -> bool:
    """Move a reconstructing session to done / failed from its job's result; True if it changed."""
    if session.state != ScanState.reconstructing:
        return False
    session.recon_method_used = result.method_used
    session.recon_fallback_reason = result.fallback_reason
    if result.status == ReconStatus.done and result.images_path and result.images_sha256:
        session.transition(ScanState.done)
        session.images_path = result.images_path
        session.images_sha256 = result.images_sha256
        return True
    if result.status in (ReconStatus.done, ReconStatus.failed):
        session.transition(ScanState.failed)
        session.error = result.error or f"recon job {result.job_id} finished without images"
        return True
    return False
