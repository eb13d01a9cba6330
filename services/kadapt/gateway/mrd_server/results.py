"""After an MRD session's CLOSE: wait for the scan's reconstruction, load its images, and write them as a
DICOM series when the session asked for one (``dicom=on``).

The images are the recon's magnitude volume float32 ``(slice, frame, H, W)`` from the blob store, the same
the REST API serves. The DICOM series goes to ``<mrd_dicom_dir>/<scan_id>/`` through
:func:`kadapt.dicom.write_dicom_series` with each slice's position and directions taken from its first
imaging readout (the default axial stack when the headers carry none).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from kadapt.dicom import slice_geometry_from_acquisitions, write_dicom_series
from kadapt.errors import DeadlineExceededError, JobFailedError
from kadapt.gateway.domain.images import describe_series
from kadapt.gateway.domain.scans import ScanService
from kadapt.gateway.domain.session import ScanSession
from kadapt.schemas import ScanState


async def await_reconstruction(service: ScanService, scan_id: str, timeout_s: float) -> ScanSession:
    """Poll the scan until its recon result is in: the ``done`` session, :class:`JobFailedError` when the
    recon failed, :class:`DeadlineExceededError` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        session = await service.refresh(scan_id)
        if session.state == ScanState.done:
            return session
        if session.state == ScanState.failed:
            raise JobFailedError(f"scan {scan_id}: reconstruction failed: {session.error}")
        if time.monotonic() > deadline:
            raise DeadlineExceededError(
                f"scan {scan_id}: no images {timeout_s:g} s after CLOSE (state {session.state.value}); "
                f"GET /v1/scans/{scan_id}/images fetches them later"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.25)


async def load_magnitude(service: ScanService, session: ScanSession) -> NDArray[np.float32]:
    """The done scan's magnitude images, float32 ``(slice, frame, H, W)`` (checksum verified)."""
    volume = await asyncio.to_thread(
        service.blobs.get_array, str(session.images_path), str(session.images_sha256)
    )
    return np.asarray(volume, dtype=np.float32)


def write_dicom(
    magnitude: NDArray[np.float32],
    session: ScanSession,
    *,
    root: Path,
    deidentify: bool,
    slice_heads: Mapping[int, NDArray[np.void]],
) -> list[Path]:
    """Write ``magnitude`` ``(slice, frame, H, W)`` as one DICOM file per (slice, frame) under
    ``root / scan_id`` (blocking: run it in a worker thread); ``slice_heads`` maps each slice to an
    acquisition header ``()`` of ``ACQ_HEADER_DTYPE`` giving its position and directions."""
    geometry = None
    if slice_heads:
        heads = np.stack([slice_heads[s] for s in sorted(slice_heads)])
        geometry = slice_geometry_from_acquisitions(heads)
    return write_dicom_series(
        magnitude,
        session.header_xml,
        root / session.scan_id,
        series_description=describe_series(session.policy, session.recon_method_used),
        deidentify=deidentify,
        slice_geometry=geometry,
        uid_entropy=(session.scan_id,),
    )
