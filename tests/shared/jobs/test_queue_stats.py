"""``JobQueue.stats()`` on both queues: depth = undelivered + pending, dead letters, oldest job's age.

Redis keeps acked entries in the stream, so depth must not be ``XLEN``; on Redis >= 7.0 the group's
``lag`` is used, and where it is unknown (an entry deleted) the undelivered entries are counted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kadapt.jobs.queue import MemoryJobQueue, QueueStats, enqueued_unix_ms
from kadapt.jobs.redis_queue import RedisJobQueue


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def job_queue(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "redis":
        queue: Any = RedisJobQueue.from_url(request.getfixturevalue("redis_server").url, max_deliveries=1)
    else:
        queue = MemoryJobQueue(max_deliveries=1)
    yield queue
    await queue.close()


def test_enqueue_time_comes_from_the_stream_id() -> None:
    assert enqueued_unix_ms("1700000000123-4") == 1700000000123.0
    assert enqueued_unix_ms("not-an-id") is None


async def test_depth_pending_and_dead_letters_follow_the_jobs(job_queue: Any, make_job: Any) -> None:
    assert await job_queue.stats() == QueueStats(depth=0, pending=0, dead_letters=0, oldest_age_s=0.0)
    for index in range(3):
        await job_queue.enqueue(make_job(f"job-{index}"))
    stats = await job_queue.stats()
    assert (stats.depth, stats.pending, stats.dead_letters) == (3, 0, 0)
    assert 0.0 <= stats.oldest_age_s < 60.0  # enqueued during this test

    (first,) = await job_queue.claim("worker-1", count=1, block_ms=0)
    assert (await job_queue.stats()).depth == 3  # a running job still counts
    assert (await job_queue.stats()).pending == 1
    await job_queue.ack(first)
    (second,) = await job_queue.claim("worker-1", count=1, block_ms=0)
    await job_queue.dead_letter(second, "given up")
    stats = await job_queue.stats()
    assert (stats.depth, stats.pending, stats.dead_letters) == (1, 0, 1)

    (third,) = await job_queue.claim("worker-1", count=1, block_ms=0)
    await job_queue.ack(third)
    stats = await job_queue.stats()
    assert (stats.depth, stats.pending, stats.dead_letters, stats.oldest_age_s) == (0, 0, 1, 0.0)


async def test_the_oldest_age_is_the_oldest_unacked_job(
    make_job: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1_000.0]
    monkeypatch.setattr("kadapt.jobs.queue.time.time", lambda: clock[0])
    queue = MemoryJobQueue()
    await queue.enqueue(make_job("old"))
    clock[0] = 1_010.0
    await queue.enqueue(make_job("new"))
    clock[0] = 1_012.5
    assert (await queue.stats()).oldest_age_s == pytest.approx(12.5)
    (old,) = await queue.claim("worker-1", count=1, block_ms=0)
    assert (await queue.stats()).oldest_age_s == pytest.approx(12.5)  # pending: still unacked
    await queue.ack(old)
    assert (await queue.stats()).oldest_age_s == pytest.approx(2.5)


@pytest.mark.integration
async def test_redis_depth_without_lag_counts_the_undelivered_entries(
    redis_server: Any, make_job: Any
) -> None:
    queue = RedisJobQueue.from_url(redis_server.url)
    try:
        for index in range(5):
            await queue.enqueue(make_job(f"job-{index}"))
        (delivery,) = await queue.claim("worker-1", count=1, block_ms=0)
        entries: Any = await queue.client.xrange(queue.stream)
        await queue.client.xdel(queue.stream, entries[2][0])  # a deletion makes the group's lag unknown
        (group,) = await queue.client.xinfo_groups(queue.stream)
        assert group.get("lag") is None
        stats = await queue.stats()
        assert (stats.depth, stats.pending) == (4, 1)  # 3 undelivered (one deleted) + 1 pending
        assert await queue._count_after(delivery.message_id, page=2) == 3
    finally:
        await queue.close()
