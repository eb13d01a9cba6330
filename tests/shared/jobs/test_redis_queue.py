"""RedisJobQueue specifics against a real redis-server: persistence across a restart, poison entries,
a lost consumer group, the server going away, and no trimming of the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kadapt.errors import ServiceUnavailableError
from kadapt.jobs.redis_queue import RedisJobQueue
from kadapt.schemas.jobs import ReconResult, ReconStatus

pytestmark = pytest.mark.integration


@pytest.fixture
async def queue(redis_server: Any) -> AsyncIterator[RedisJobQueue]:
    queue = RedisJobQueue.from_url(redis_server.url, claim_idle_ms=100)
    yield queue
    await queue.close()


async def test_queued_and_pending_work_survives_a_restart(
    redis_server: Any, queue: RedisJobQueue, make_job: Any
) -> None:
    await queue.enqueue(make_job("in-flight"))
    await queue.enqueue(make_job("waiting"))
    (in_flight,) = await queue.claim("worker-before-restart", count=1, block_ms=0)
    done = ReconResult(job_id="earlier", scan_id="s", status=ReconStatus.done, method_requested="sense")
    assert await queue.put_result(done)

    redis_server.restart()  # AOF with appendfsync always: every acknowledged write is on disk

    after = RedisJobQueue.from_url(redis_server.url, claim_idle_ms=60_000)
    try:
        (waiting,) = await after.claim("worker-after-restart", count=1, block_ms=0)
        assert waiting.job.job_id == "waiting"
        assert waiting.deliveries == 1
        assert await after.pending_count() == 2
        after.claim_idle_ms = 0  # the worker before the restart is gone: take its job over now
        (reclaimed,) = await after.claim("worker-after-restart", count=1, block_ms=0)
        assert reclaimed.message_id == in_flight.message_id
        assert reclaimed.deliveries == 2
        assert await after.get_result("earlier") == done
    finally:
        await after.close()


async def test_the_old_client_reconnects_after_a_restart(
    redis_server: Any, queue: RedisJobQueue, make_job: Any
) -> None:
    await queue.enqueue(make_job("a"))
    redis_server.restart()
    await queue.enqueue(make_job("b"))
    deliveries = await queue.claim("w", count=5, block_ms=0)
    assert [d.job.job_id for d in deliveries] == ["a", "b"]


async def test_unparseable_entries_go_to_the_dead_letter_stream(queue: RedisJobQueue, make_job: Any) -> None:
    await queue.enqueue(make_job("good"))
    await queue.client.xadd(queue.stream, {"job_id": "bad", "job": '{"job_id": "bad"}'})
    deliveries = await queue.claim("w", count=5, block_ms=0)
    assert [d.job.job_id for d in deliveries] == ["good"]
    (dead,) = await queue.read_dead_letters()
    assert dead["job"] == '{"job_id": "bad"}'
    assert "invalid job JSON" in dead["reason"]
    assert await queue.pending_count() == 1  # only the good one


async def test_dead_letter_entry_records_job_and_deliveries(queue: RedisJobQueue, make_job: Any) -> None:
    queue.max_deliveries = 1
    await queue.enqueue(make_job("x"))
    assert len(await queue.claim("w", count=1, block_ms=0)) == 1
    await asyncio.sleep(0.15)
    assert await queue.claim("w", count=1, block_ms=0) == []
    (dead,) = await queue.read_dead_letters()
    assert dead["deliveries"] == "2"
    assert '"job_id":"x"' in dead["job"]


async def test_group_is_recreated_after_the_data_is_flushed(queue: RedisJobQueue, make_job: Any) -> None:
    await queue.enqueue(make_job("before"))
    await queue.client.flushall()
    with pytest.raises(ServiceUnavailableError, match="NOGROUP"):
        await queue.claim("w", count=1, block_ms=0)
    await queue.enqueue(make_job("after"))
    (delivery,) = await queue.claim("w", count=1, block_ms=0)
    assert delivery.job.job_id == "after"


async def test_server_gone_is_service_unavailable(
    redis_server: Any, queue: RedisJobQueue, make_job: Any
) -> None:
    assert await queue.ping() is True
    await queue.enqueue(make_job("first"))
    redis_server.stop()
    assert await queue.ping() is False
    with pytest.raises(ServiceUnavailableError, match="XADD"):
        await queue.enqueue(make_job("lost"))


async def test_acked_entries_stay_in_the_stream_untrimmed(queue: RedisJobQueue, make_job: Any) -> None:
    for index in range(5):
        await queue.enqueue(make_job(f"j{index}"))
    for delivery in await queue.claim("w", count=2, block_ms=0):
        await queue.ack(delivery)
    assert await queue.client.xlen(queue.stream) == 5
    assert await queue.pending_count() == 0
    assert len(await queue.claim("w", count=10, block_ms=0)) == 3
