"""``ScanService._io``: file-system work runs in a worker thread and, once asked for, always finishes --
a request cancelled meanwhile (a client gone, the MRD server's teardown) must not leave lines claimed in
the session store whose samples were never written."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kadapt.gateway.domain.scans import ScanService


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

    request = asyncio.create_task(ScanService._io(write, 7))
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
    assert await ScanService._io(lambda a, b: a + b, 2, 3) == 5

    def full() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        await ScanService._io(full)
