"""The dead-letter operator tools against a real redis-server: listing, requeueing (fresh delivery count,
idempotent), refusing jobs that have a real result or no valid job JSON."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kadapt.jobs.dead_letters import RequeueOutcome, list_dead_letters, requeue, requeue_all
from kadapt.jobs.redis_queue import RedisJobQueue
from kadapt.schemas.jobs import ReconResult, ReconStatus

pytestmark = pytest.mark.integration


@pytest.fixture
async def queue(redis_server: Any) -> AsyncIterator[RedisJobQueue]:
    queue = RedisJobQueue.from_url(redis_server.url, claim_idle_ms=0, max_deliveries=1)
    yield queue
    await queue.close()


async def give_up(queue: RedisJobQueue, make_job: Any, job_id: str) -> None:
    """Enqueue ``job_id`` and let it be delivered past ``max_deliveries`` (1): it is dead-lettered."""
    await queue.enqueue(make_job(job_id, scan_id=f"scan-of-{job_id}"))
    assert [d.job.job_id for d in await queue.claim("crashing", 1, 0)] == [job_id]
    await asyncio.sleep(0.002)  # XAUTOCLAIM's idle time is in whole milliseconds
    assert await queue.claim("crashing", 1, 0) == []


async def test_dead_letters_are_listed_with_job_scan_deliveries_reason_and_time(
    queue: RedisJobQueue, make_job: Any
) -> None:
    assert await list_dead_letters(queue) == []
    started_ms = time.time() * 1000.0
    await give_up(queue, make_job, "a")
    await queue.client.xadd(queue.stream, {"job_id": "b", "job": '{"job_id": "b", "scan_id": "s"}'})
    await queue.claim("w", 1, 0)  # the invalid entry is dead-lettered on sight
    first, second = await list_dead_letters(queue, page=1)  # paging reads both
    assert (first.job_id, first.scan_id, first.deliveries) == ("a", "scan-of-a", 2)
    assert first.reason == "delivered more than 1 times"
    assert first.job is not None
    assert first.dead_unix_ms is not None
    assert started_ms - 1000 <= first.dead_unix_ms <= time.time() * 1000.0 + 1000
    assert (second.job_id, second.scan_id, second.job) == ("b", "s", None)
    assert "invalid job JSON" in second.reason
    public = json.loads(json.dumps(first.public()))
    assert public["job_id"] == "a"
    assert public["valid_job"] is True


async def test_requeue_puts_the_job_back_with_a_fresh_delivery_count_once(
    queue: RedisJobQueue, make_job: Any
) -> None:
    await give_up(queue, make_job, "a")
    result = await queue.get_result("a")
    assert result is not None
    assert result.status == ReconStatus.failed

    report = await requeue(queue, "a")
    assert report.outcome == RequeueOutcome.requeued
    assert report.message_id is not None
    assert await queue.get_result("a") is None  # the dead-letter result is gone: the scan may wait again
    assert await list_dead_letters(queue) == []
    again = await requeue(queue, "a")  # idempotent
    assert again.outcome == RequeueOutcome.absent
    (delivery,) = await queue.claim("healthy", 5, 0)
    assert (delivery.job.job_id, delivery.deliveries, delivery.message_id) == ("a", 1, report.message_id)


async def test_requeue_refuses_a_job_that_has_a_real_result(queue: RedisJobQueue, make_job: Any) -> None:
    await queue.enqueue(make_job("won"))
    (delivery,) = await queue.claim("slow", 1, 0)
    done = ReconResult(job_id="won", scan_id="scan-1", status=ReconStatus.done, method_requested="sense")
    assert await queue.put_result(done)  # the slow worker finished after all...
    await queue.dead_letter(delivery, "hung")  # ...as the job was given up on (its result is kept)
    report = await requeue(queue, "won")
    assert report.outcome == RequeueOutcome.refused
    assert "done result" in report.detail
    assert await queue.get_result("won") == done
    assert [entry.job_id for entry in await list_dead_letters(queue)] == ["won"]  # left for inspection
    assert await queue.claim("healthy", 5, 0) == []


async def test_requeue_all_requeues_each_valid_job_once_and_refuses_invalid_ones(
    queue: RedisJobQueue, make_job: Any
) -> None:
    await give_up(queue, make_job, "a")
    await give_up(queue, make_job, "b")
    await queue.client.xadd(queue.stream, {"job_id": "?", "job": "not json"})
    await queue.claim("w", 1, 0)
    reports = await requeue_all(queue)
    assert [(r.job_id, r.outcome) for r in reports[:2]] == [
        ("a", RequeueOutcome.requeued),
        ("b", RequeueOutcome.requeued),
    ]
    assert reports[2].outcome == RequeueOutcome.refused
    assert sorted(d.job.job_id for d in await queue.claim("healthy", 5, 0)) == ["a", "b"]
    assert [entry.job_id for entry in await list_dead_letters(queue)] == [None]
