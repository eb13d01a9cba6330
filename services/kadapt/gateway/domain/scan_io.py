"""File work on the scanner's path, in worker threads of its own.

Every ingest request writes its lines to the scan's k-space file, and a write can wait behind the
volume's journal commit that another process's ``fsync`` started (recon results, job blobs, Redis's
AOF): tens of ms measured under ``kadapt bench load``. On the event loop that wait would hold up every
other scan's plan, so the writes run in worker threads. They get threads of their own, not asyncio's
default executor: that one also runs the gateway's bulk file work (a completed scan's k-space and mask
blobs, each ``fsync``-ed; images read for viewers; the trash), and in one load run six ``complete``
requests held all six of its threads for 175-476 ms while two ingest requests waited 77 and 104 ms
for a thread and a plan went out late. Here a line write only ever waits for other line writes.

The bulk work gets a pool of its own too (:func:`background_executor`, installed as the gateway loop's
default executor): its threads run at a lower CPU priority (nice +10), so that hashing and copying a
completed scan's blobs does not take the core from the plan path (in one load run a learned plan fell
back as ``model-late`` while six ``complete`` requests copied, hashed and wrote theirs). CPU work on the
scanner's path that leaves the loop (parsing a large request, an ADS round's SENSE image) uses
:meth:`ScanIO.compute`, at normal priority.

A :meth:`ScanIO.run` call is shielded: a request cancelled meanwhile (a client gone, the MRD server's
teardown) still finishes the write its lines were claimed for (an error is then logged), so the session
store never holds lines whose samples were not written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("kadapt.gateway")

T = TypeVar("T")

#: Worker threads for scanner-path file work (writes of different scans proceed side by side).
SCAN_IO_THREADS = 4
#: Worker threads and the nice increment of the gateway's bulk work (asyncio's default executor).
BACKGROUND_THREADS = 8
BACKGROUND_NICE = 10


def _lower_priority() -> None:
    """Raise the calling thread's nice value by :data:`BACKGROUND_NICE` (Linux: per thread; a no-op
    where not supported)."""
    if hasattr(os, "nice") and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            # PRIO_PROCESS with who=0 is the calling thread on Linux (threads are tasks).
            os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICE)


def background_executor(threads: int = BACKGROUND_THREADS) -> ThreadPoolExecutor:
    """A pool for the gateway's bulk file and CPU work whose threads run at nice +10."""
    return ThreadPoolExecutor(
        max_workers=threads, thread_name_prefix="kadapt-background", initializer=_lower_priority
    )


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        error = future.exception()
        log.error("scan_io_failed", error=f"{type(error).__name__}: {error}")


class ScanIO:
    """The scanner path's file work: :meth:`run` in this pool's threads, shielded from cancellation."""

    def __init__(self, threads: int = SCAN_IO_THREADS) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kadapt-scan-io")

    def submit(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``function(*args)`` started in a worker thread: its future (await it shielded)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(function, *args))

    async def compute(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker thread at normal priority (CPU work on the scanner's path)."""
        return await self.submit(function, *args)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker thread; finishes even if the caller is cancelled."""
        work = self.submit(function, *args)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(_log_failure)
            raise

    def close(self) -> None:
        """Let queued and running work finish, then stop the threads (blocking: on shutdown)."""
        self._executor.shutdown(wait=True)
