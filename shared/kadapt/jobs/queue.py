"""The recon job queue: its protocol and the in-memory implementation (embedded default, unit tests).

Semantics (shared with :class:`kadapt.jobs.redis_queue.RedisJobQueue`, architecture section 5):

- at-least-once: a claimed job stays *pending* for its consumer until acked; a pending job idle for
  longer than ``claim_idle_ms`` (its worker died or hangs) is delivered again, to whichever consumer
  claims next, and its delivery count rises;
- a job delivered more than ``max_deliveries`` times is dead-lettered instead: a ``failed`` result is
  stored (unless one exists), the job is kept in the dead letters and acked;
- results are write-once (:meth:`JobQueue.put_result` returns False if one exists), which makes workers
  idempotent: a redelivered job whose result exists is acked and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kadapt.errors import InvalidInputError, ServiceUnavailableError
from kadapt.schemas.jobs import ReconJob, ReconResult, ReconStatus


@dataclass(frozen=True)
class Delivery:
    """One delivery of a job: the queue's message id, the job, and how often it has been delivered."""

    message_id: str
    job: ReconJob
    deliveries: int


@dataclass(frozen=True)
class DeadLetter:
    """A job given up on: delivered ``deliveries`` times (or failed for ``reason``)."""

    message_id: str
    job: ReconJob
    deliveries: int
    reason: str


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of a queue for monitoring (the recon service exports it as gauges; an autoscaler reads
    ``depth``).

    ``depth``: jobs not yet acked, i.e. waiting for their first delivery plus ``pending``;
    ``pending``: delivered and not yet acked (running, or held by a dead worker until reclaimed);
    ``dead_letters``: jobs given up on so far; ``oldest_age_s``: age of the oldest job not yet acked,
    measured from its enqueue time (0 when ``depth`` is 0).
    """

    depth: int
    pending: int
    dead_letters: int
    oldest_age_s: float


def enqueued_unix_ms(message_id: str) -> float | None:
    """When the message was enqueued (unix ms), read from its id: both queues use Redis stream ids,
    ``<milliseconds>-<sequence>``; None for an id of another form."""
    head, _, _ = message_id.partition("-")
    return float(head) if head.isdigit() else None


@runtime_checkable
class JobQueue(Protocol):
    """What the gateway (producer) and the recon workers (consumers) need from a queue."""

    async def enqueue(self, job: ReconJob) -> None:
        """Append ``job``; it is delivered at least once."""
        ...

    async def claim(self, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        """Up to ``count`` deliveries for ``consumer``: stale pending jobs first, then new ones; waits up to
        ``block_ms`` (0: not at all) when there is nothing to deliver."""
        ...

    async def ack(self, delivery: Delivery) -> None:
        """Mark the delivery done (call only after its result is stored)."""
        ...

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Give up on the job: store a failed result (unless one exists), keep it as a dead letter, ack."""
        ...

    async def put_result(self, result: ReconResult) -> bool:
        """Store ``result`` unless one exists for its job (first write wins); True if stored."""
        ...

    async def get_result(self, job_id: str) -> ReconResult | None:
        """The stored result of ``job_id``, or None."""
        ...

    async def ping(self) -> bool:
        """True if the queue's backend answers."""
        ...

    async def stats(self) -> QueueStats:
        """Depth, pending, dead letters and the oldest unacked job's age (see :class:`QueueStats`)."""
        ...

    async def close(self) -> None:
        """Release the backend's resources."""
        ...


def dead_letter_result(job: ReconJob, deliveries: int, reason: str) -> ReconResult:
    """The ``failed`` result stored for a dead-lettered job."""
    return ReconResult(
        job_id=job.job_id,
        scan_id=job.scan_id,
        status=ReconStatus.failed,
        method_requested=job.method,
        deliveries=max(1, deliveries),
        error=f"dead-lettered after {deliveries} deliveries: {reason}",
    )


def check_claim_arguments(count: int, block_ms: int) -> None:
    """Raise :class:`InvalidInputError` for a non-positive ``count`` or negative ``block_ms``."""
    if count < 1:
        raise InvalidInputError(f"claim count must be at least 1, got {count}")
    if block_ms < 0:
        raise InvalidInputError(f"claim block_ms must be >= 0, got {block_ms}")


@dataclass
class _Pending:
    consumer: str
    delivered_at: float
    deliveries: int


class MemoryJobQueue:
    """In-process queue with the Redis queue's semantics (one asyncio event loop; no persistence)."""

    def __init__(self, *, max_deliveries: int = 3, claim_idle_ms: int = 30_000) -> None:
        if max_deliveries < 1:
            raise InvalidInputError(f"max_deliveries must be at least 1, got {max_deliveries}")
        if claim_idle_ms < 0:
            raise InvalidInputError(f"claim_idle_ms must be >= 0, got {claim_idle_ms}")
        self.max_deliveries = max_deliveries
        self.claim_idle_ms = claim_idle_ms
        self.dead_letters: list[DeadLetter] = []
        self._ids = itertools.count(1)
        self._jobs: dict[str, ReconJob] = {}  # every not-yet-acked message
        self._new: deque[str] = deque()
        self._pending: dict[str, _Pending] = {}  # insertion order = first delivery order
        self._results: dict[str, ReconResult] = {}
        self._arrived = asyncio.Event()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceUnavailableError("the in-memory job queue is closed")

    async def enqueue(self, job: ReconJob) -> None:
        self._check_open()
        message_id = f"{int(time.time() * 1000)}-{next(self._ids)}"
        self._jobs[message_id] = job
        self._new.append(message_id)
        self._arrived.set()

    def _take(self, consumer: str, count: int) -> list[Delivery]:
        now = time.monotonic()
        taken: list[Delivery] = []
        idle_s = self.claim_idle_ms / 1000.0
        for message_id, pending in list(self._pending.items()):
            if len(taken) >= count:
                break
            if now - pending.delivered_at < idle_s:
                continue
            deliveries = pending.deliveries + 1
            job = self._jobs[message_id]
            if deliveries > self.max_deliveries:
                self._give_up(message_id, deliveries, f"delivered more than {self.max_deliveries} times")
                continue
            self._pending[message_id] = _Pending(consumer, now, deliveries)
            taken.append(Delivery(message_id, job, deliveries))
        while self._new and len(taken) < count:
            message_id = self._new.popleft()
            self._pending[message_id] = _Pending(consumer, now, 1)
            taken.append(Delivery(message_id, self._jobs[message_id], 1))
        return taken

    def _next_idle_expiry_s(self) -> float | None:
        if not self._pending:
            return None
        oldest = min(pending.delivered_at for pending in self._pending.values())
        return max(0.0, oldest + self.claim_idle_ms / 1000.0 - time.monotonic())

    async def claim(self, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        check_claim_arguments(count, block_ms)
        self._check_open()
        deadline = time.monotonic() + block_ms / 1000.0
        while True:
            taken = self._take(consumer, count)
            remaining = deadline - time.monotonic()
            if taken or remaining <= 0:
                return taken
            expiry = self._next_idle_expiry_s()
            timeout = remaining if expiry is None else min(remaining, expiry + 0.001)
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=timeout)
            self._check_open()

    def _remove(self, message_id: str) -> None:
        self._pending.pop(message_id, None)
        self._jobs.pop(message_id, None)

    def _give_up(self, message_id: str, deliveries: int, reason: str) -> None:
        job = self._jobs[message_id]
        self._results.setdefault(job.job_id, dead_letter_result(job, deliveries, reason))
        self.dead_letters.append(DeadLetter(message_id, job, deliveries, reason))
        self._remove(message_id)

    async def ack(self, delivery: Delivery) -> None:
        self._remove(delivery.message_id)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if delivery.message_id in self._jobs:
            self._give_up(delivery.message_id, delivery.deliveries, reason)

    async def put_result(self, result: ReconResult) -> bool:
        if result.job_id in self._results:
            return False
        self._results[result.job_id] = result
        return True

    async def get_result(self, job_id: str) -> ReconResult | None:
        return self._results.get(job_id)

    async def ping(self) -> bool:
        return not self._closed

    async def close(self) -> None:
        self._closed = True
        self._arrived.set()

    async def pending_count(self) -> int:
        """Jobs delivered and not yet acked."""
        return len(self._pending)

    async def dead_letter_count(self) -> int:
        """Jobs given up on so far."""
        return len(self.dead_letters)

    async def stats(self) -> QueueStats:
        """Every message not yet acked is in ``_jobs`` (new or pending); ages come from the ids."""
        self._check_open()
        now_ms = time.time() * 1000.0
        enqueued = [ms for ms in map(enqueued_unix_ms, self._jobs) if ms is not None]
        return QueueStats(
            depth=len(self._jobs),
            pending=len(self._pending),
            dead_letters=len(self.dead_letters),
            oldest_age_s=max(0.0, (now_ms - min(enqueued)) / 1000.0) if enqueued else 0.0,
        )
