"""Operator tools for the recon queue's dead-letter stream: list the jobs given up on, put them back.

A job lands in the dead letters (``RedisJobQueue.dead_stream``) when it was delivered more than
``max_deliveries`` times (its workers kept crashing or hanging) or its stream entry was not a valid job;
the queue stores a ``failed`` result for it (so the scan shows ``failed``) and acks it. Once the cause is
fixed -- a full blob volume emptied, a bad deployment rolled back -- an operator requeues it
(``kadapt jobs requeue JOB_ID|--all``):

- in one ``WATCH`` / ``MULTI`` on the job's result key: the dead-letter ``failed`` result is deleted,
  the job is appended to the job stream again (``XADD``: a new entry, so a fresh delivery count) and
  its dead-letter entries are removed (``XDEL``). A worker storing a result meanwhile aborts the
  transaction, which is then re-evaluated;
- a job with any other result (``done``, or ``failed`` for a data error) is refused: requeueing never
  reconstructs a job twice;
- requeueing is idempotent: a job no longer in the dead letters is reported ``absent`` and nothing
  changes;
- an entry whose job JSON is invalid cannot be requeued (``refused``); it stays for inspection.

The gateway follows: a ``failed`` scan whose recon result has vanished goes back to ``reconstructing``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

import pydantic
from redis.exceptions import RedisError, WatchError

from kadapt.errors import ServiceUnavailableError
from kadapt.jobs.queue import enqueued_unix_ms
from kadapt.jobs.redis_queue import RedisJobQueue
from kadapt.schemas.jobs import ReconJob, ReconResult, ReconStatus

#: The prefix of the ``error`` of the ``failed`` result a dead-lettered job gets
#: (:func:`kadapt.jobs.queue.dead_letter_result`); any other result is the job's real outcome.
DEAD_LETTER_ERROR_PREFIX = "dead-lettered after "
_WATCH_RETRIES = 5


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class DeadLetterEntry:
    """One entry of the dead-letter stream.

    ``entry_id``: its id in the dead-letter stream (its time is when the job was given up on);
    ``message_id``: the job's entry in the job stream; ``job`` None when the job JSON was invalid
    (``job_id`` / ``scan_id`` are then read from the JSON where possible).
    """

    entry_id: str
    message_id: str
    job_id: str | None
    scan_id: str | None
    deliveries: int
    reason: str
    job: ReconJob | None
    raw_job: str

    @property
    def dead_unix_ms(self) -> float | None:
        """When the job was dead-lettered (unix ms), from the entry id."""
        return enqueued_unix_ms(self.entry_id)

    def public(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``kadapt jobs dead-letters --json`` prints)."""
        return {
            "entry_id": self.entry_id,
            "job_id": self.job_id,
            "scan_id": self.scan_id,
            "method": self.job.method if self.job is not None else None,
            "deliveries": self.deliveries,
            "reason": self.reason,
            "dead_unix_ms": self.dead_unix_ms,
            "message_id": self.message_id,
            "valid_job": self.job is not None,
        }


def _entry(entry_id: Any, fields: dict[Any, Any]) -> DeadLetterEntry:
    values = {_text(key): _text(value) for key, value in fields.items()}
    raw_job = values.get("job", "")
    job: ReconJob | None
    job_id: str | None
    scan_id: str | None
    try:
        job = ReconJob.model_validate_json(raw_job)
        job_id, scan_id = job.job_id, job.scan_id
    except pydantic.ValidationError:
        job = None
        try:
            loose = json.loads(raw_job)
        except ValueError:
            loose = None
        ids = loose if isinstance(loose, dict) else {}
        job_id = ids.get("job_id") if isinstance(ids.get("job_id"), str) else None
        scan_id = ids.get("scan_id") if isinstance(ids.get("scan_id"), str) else None
    deliveries = values.get("deliveries", "0")
    return DeadLetterEntry(
        entry_id=_text(entry_id),
        message_id=values.get("message_id", ""),
        job_id=job_id,
        scan_id=scan_id,
        deliveries=int(deliveries) if deliveries.isdigit() else 0,
        reason=values.get("reason", ""),
        job=job,
        raw_job=raw_job,
    )


async def list_dead_letters(queue: RedisJobQueue, *, page: int = 500) -> list[DeadLetterEntry]:
    """Every dead-letter entry, oldest first (read ``page`` entries per ``XRANGE``)."""
    entries: list[DeadLetterEntry] = []
    start = "-"
    while True:
        try:
            batch = await queue.client.xrange(queue.dead_stream, min=start, count=page) or []
        except (RedisError, OSError) as err:
            raise ServiceUnavailableError(f"redis XRANGE on {queue.dead_stream!r} failed: {err}") from err
        entries.extend(_entry(entry_id, fields) for entry_id, fields in batch if fields is not None)
        if len(batch) < page:
            return entries
        start = f"({_text(batch[-1][0])}"


class RequeueOutcome(str, Enum):
    requeued = "requeued"
    absent = "absent"  # not in the dead letters (already requeued, or never dead-lettered)
    refused = "refused"  # it has a real result, or its job JSON is invalid


@dataclass(frozen=True)
class RequeueReport:
    """What :func:`requeue` did for one job: ``message_id`` is the new job-stream entry when requeued."""

    job_id: str
    outcome: RequeueOutcome
    detail: str
    message_id: str | None = None


def is_dead_letter_result(result: ReconResult) -> bool:
    """True for the ``failed`` result the queue stores when it gives a job up (not the job's outcome)."""
    return result.status == ReconStatus.failed and (result.error or "").startswith(DEAD_LETTER_ERROR_PREFIX)


async def requeue(queue: RedisJobQueue, job_id: str) -> RequeueReport:
    """Put dead-lettered ``job_id`` back on the job stream (see the module docstring for the rules)."""
    for _ in range(_WATCH_RETRIES):
        entries = [entry for entry in await list_dead_letters(queue) if entry.job_id == job_id]
        if not entries:
            return RequeueReport(job_id, RequeueOutcome.absent, "not in the dead letters; nothing to do")
        job = next((entry.job for entry in entries if entry.job is not None), None)
        if job is None:
            return RequeueReport(
                job_id,
                RequeueOutcome.refused,
                "its job JSON is not a valid recon job; left in the dead letters",
            )
        try:
            return await _requeue_watched(queue, job, [entry.entry_id for entry in entries])
        except WatchError:
            continue  # a result was stored (or deleted) meanwhile: look again
        except (RedisError, OSError) as err:
            raise ServiceUnavailableError(f"redis requeue of job {job_id!r} failed: {err}") from err
    raise ServiceUnavailableError(f"job {job_id!r}: its result kept changing; requeue again")


async def _requeue_watched(queue: RedisJobQueue, job: ReconJob, entry_ids: list[str]) -> RequeueReport:
    result_key = queue.result_key(job.job_id)
    async with queue.client.pipeline(transaction=True) as pipe:
        await pipe.watch(result_key)
        raw = await pipe.get(result_key)
        if raw is not None:
            result = ReconResult.model_validate_json(raw)
            if not is_dead_letter_result(result):
                await pipe.unwatch()  # type: ignore[no-untyped-call]
                why = f": {result.error}" if result.error else ""
                return RequeueReport(
                    job.job_id,
                    RequeueOutcome.refused,
                    f"it already has a {result.status.value} result{why}; not reconstructed twice",
                )
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.delete(result_key)
        pipe.xadd(queue.stream, {"job_id": job.job_id, "job": job.model_dump_json()})
        pipe.xdel(queue.dead_stream, *entry_ids)
        _, message_id, _ = await pipe.execute()
    return RequeueReport(
        job.job_id, RequeueOutcome.requeued, f"back on {queue.stream!r}", message_id=_text(message_id)
    )


async def requeue_all(queue: RedisJobQueue) -> list[RequeueReport]:
    """:func:`requeue` every job in the dead letters (each once, oldest first); entries without a
    job id are reported refused."""
    reports: list[RequeueReport] = []
    seen: set[str] = set()
    for entry in await list_dead_letters(queue):
        if entry.job_id is None:
            reports.append(
                RequeueReport(f"?{entry.entry_id}", RequeueOutcome.refused, "its job JSON has no job id")
            )
        elif entry.job_id not in seen:
            seen.add(entry.job_id)
            reports.append(await requeue(queue, entry.job_id))
    return reports
