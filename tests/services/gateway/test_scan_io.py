"""``ScanIO``: the scanner path's file work runs in worker threads of its own and, once asked for, always
finishes --
a request cancelled meanwhile (a client gone, the MRD server's teardown) must not leave lines claimed in
the session store whose samples were never written. Scan creation and ``DELETE`` keep the same promise
for their files: a cancelled creation leaves no directory, a cancelled ``DELETE`` no files."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.services.gateway.conftest import Gateway, Scanner

from kadapt.gateway.domain.scan_io import BACKGROUND_NICE, ScanIO
from kadapt.gateway.domain.scans import ScanService
from kadapt.schemas import ScanCreate, ScanPolicy


async def _until(condition: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def _blocked(function: Any, started: threading.Event, release: threading.Event) -> Any:
    """``function`` that first signals ``started`` and waits for ``release`` (in its worker thread)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(5.0)
        return function(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("cancel_after_start", [True, False])
async def test_a_write_finishes_when_its_request_is_cancelled(cancel_after_start: bool) -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    callers: list[int] = []

    def write(value: int) -> int:
        callers.append(threading.get_ident())
        started.set()
        release.wait(5.0)
        finished.set()
        return value

    request = asyncio.create_task(ScanIO().run(write, 7))
    if cancel_after_start:
        assert await asyncio.to_thread(started.wait, 5.0)
    else:
        await asyncio.sleep(0)  # the request is suspended; the write may not have started yet
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    release.set()
    assert await asyncio.to_thread(finished.wait, 5.0)
    assert len(callers) == 1
    assert callers[0] != threading.get_ident()  # in a worker thread, not on the loop


async def test_the_result_and_errors_reach_the_caller() -> None:
    assert await ScanIO().run(lambda a, b: a + b, 2, 3) == 5

    def full() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        await ScanIO().run(full)


async def test_a_cancelled_delete_still_removes_the_files(
    gateway: Gateway, scanner: Scanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_id = await gateway.create_scan(scanner)
    service: ScanService = gateway.app.state.service
    directory: Path = gateway.settings.scans_dir / scan_id
    assert directory.is_dir()
    started, release = threading.Event(), threading.Event()
    monkeypatch.setattr(service.trash, "discard", _blocked(service.trash.discard, started, release))
    request = asyncio.create_task(service.delete(scan_id))
    assert await asyncio.to_thread(started.wait, 5.0)  # the renames are running in a worker thread
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert (await gateway.client.get(f"/v1/scans/{scan_id}")).status_code == 404  # the session is gone
    release.set()
    trash = service.trash.folder_for(gateway.settings.scans_dir)
    await _until(lambda: not directory.exists() and not any(trash.iterdir()))


async def test_a_cancelled_creation_leaves_no_directory(
    gateway: Gateway, scanner: Scanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    service: ScanService = gateway.app.state.service
    started, release = threading.Event(), threading.Event()
    monkeypatch.setattr(
        service.kspace_files, "create", _blocked(service.kspace_files.create, started, release)
    )
    body = ScanCreate(header_xml=scanner.header(), policy=ScanPolicy(num_acs=4))
    request = asyncio.create_task(service.create_scan(body))
    assert await asyncio.to_thread(started.wait, 5.0)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    release.set()  # the creation finishes in its thread, then its files are removed
    await _until(lambda: not any(gateway.settings.scans_dir.iterdir()))


async def test_line_writes_do_not_wait_for_the_default_executor(gateway: Gateway, scanner: Scanner) -> None:
    """Bulk file work (job blobs with fsync, images, the trash) runs in asyncio's default executor; with
    every one of its threads busy, an ingest request's line write still goes through at once."""
    scan_id = await gateway.create_scan(scanner)
    release = threading.Event()
    loop = asyncio.get_running_loop()
    busy = [loop.run_in_executor(None, release.wait, 30.0) for _ in range(64)]  # more than it has threads
    try:
        async with asyncio.timeout(10.0):
            response = await gateway.send(scan_id, scanner.readouts(scanner.lines_for([0, 1])))
        assert response.status_code == 200, response.text
        assert not any(future.done() for future in busy)  # the default executor was full all along
    finally:
        release.set()
        await asyncio.gather(*busy)
    stored = gateway.stored_kspace(scan_id)
    assert np.all(np.abs(stored[..., [0, 1]]).sum(axis=(0, 1, 2, 3)) > 0)  # both lines were written
    assert not stored[..., 2:].any()


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice values are Linux's")
async def test_bulk_work_runs_niced_and_the_scanner_path_does_not(gateway: Gateway) -> None:
    """The gateway's bulk work (asyncio's default executor once the app runs) yields the core to the plan
    path; the scanner path's own threads keep the loop's priority."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    service: ScanService = gateway.app.state.service
    background = await asyncio.to_thread(os.getpriority, os.PRIO_PROCESS, 0)
    scanner_path = await service.io.compute(os.getpriority, os.PRIO_PROCESS, 0)
    assert background == min(19, own + BACKGROUND_NICE)
    assert scanner_path == own
