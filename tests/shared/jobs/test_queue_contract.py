"""One contract, both queues: MemoryJobQueue and RedisJobQueue (against a real redis-server).

At-least-once delivery, redelivery of idle pending jobs to another consumer, dead-lettering after
``max_deliveries``, write-once results.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kadapt.errors import InvalidInputError
from kadapt.jobs.queue import JobQueue, MemoryJobQueue
from kadapt.jobs.redis_queue import RedisJobQueue
from kadapt.schemas.jobs import ReconResult, ReconStatus

QueueFactory = Callable[..., Any]

IDLE_MS = 150


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def queue_factory(request: pytest.FixtureRequest) -> AsyncIterator[QueueFactory]:
    """``factory(**options)`` -> a queue; for Redis every call is a new client (another process) on one
    server, for memory the first queue is shared (one process)."""
    created: list[Any] = []
    shared: list[MemoryJobQueue] = []
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None

    def factory(**options: Any) -> Any:
        if url is not None:
            queue: Any = RedisJobQueue.from_url(url, **options)
        else:
            if not shared:
                shared.append(MemoryJobQueue(**options))
            queue = shared[0]
        created.append(queue)
        return queue

    yield factory
    for queue in created:
        await queue.close()


async def test_both_satisfy_the_protocol(queue_factory: QueueFactory) -> None:
    assert isinstance(queue_factory(), JobQueue)


async def test_enqueue_claim_ack(queue_factory: QueueFactory, make_job: Any) -> None:
    queue = queue_factory()
    job = make_job("job-a")
    await queue.enqueue(job)
    deliveries = await queue.claim("worker-1", count=5, block_ms=0)
    assert [(d.job, d.deliveries) for d in deliveries] == [(job, 1)]
    assert await queue.pending_count() == 1
    assert await queue.claim("worker-2", count=5, block_ms=0) == []
    await queue.ack(deliveries[0])
    assert await queue.pending_count() == 0
    assert await queue.claim("worker-1", count=5, block_ms=0) == []


async def test_claim_respects_count_and_order(queue_factory: QueueFactory, make_job: Any) -> None:
    queue = queue_factory()
    for index in range(3):
        await queue.enqueue(make_job(f"job-{index}"))
    first = await queue.claim("w", count=2, block_ms=0)
    second = await queue.claim("w", count=2, block_ms=0)
    assert [d.job.job_id for d in first + second] == ["job-0", "job-1", "job-2"]


async def test_claim_blocks_until_a_job_arrives(queue_factory: QueueFactory, make_job: Any) -> None:
    consumer_side, producer_side = queue_factory(), queue_factory()
    await consumer_side.claim("w", count=1, block_ms=0)  # creates the group before the wait

    async def enqueue_later() -> None:
        await asyncio.sleep(0.1)
        await producer_side.enqueue(make_job("late"))

    producer = asyncio.create_task(enqueue_later())
    started = asyncio.get_running_loop().time()
    deliveries = await consumer_side.claim("w", count=1, block_ms=3000)
    waited = asyncio.get_running_loop().time() - started
    await producer
    assert [d.job.job_id for d in deliveries] == ["late"]
    assert 0.05 < waited < 2.0
    started = asyncio.get_running_loop().time()
    assert await consumer_side.claim("w", count=1, block_ms=100) == []
    assert asyncio.get_running_loop().time() - started >= 0.09


async def test_dead_consumer_job_is_taken_over_after_idle(queue_factory: QueueFactory, make_job: Any) -> None:
    dying = queue_factory(claim_idle_ms=IDLE_MS)
    survivor = queue_factory(claim_idle_ms=IDLE_MS)
    await dying.enqueue(make_job("orphan"))
    (first,) = await dying.claim("dying-worker", count=1, block_ms=0)
    # The dying worker never acks. Before the idle time nobody else gets the job ...
    assert await survivor.claim("survivor", count=1, block_ms=0) == []
    await asyncio.sleep(IDLE_MS / 1000 + 0.05)
    # ... after it, the survivor takes it over, with the delivery counted.
    (taken,) = await survivor.claim("survivor", count=1, block_ms=0)
    assert taken.message_id == first.message_id
    assert taken.job == first.job
    assert taken.deliveries == 2
    await survivor.ack(taken)
    assert await survivor.pending_count() == 0


async def test_dead_letter_after_max_deliveries(queue_factory: QueueFactory, make_job: Any) -> None:
    queue = queue_factory(max_deliveries=2, claim_idle_ms=50)
    await queue.enqueue(make_job("poison", method="cg-sense"))
    seen = []
    for _ in range(4):
        seen.extend(d.deliveries for d in await queue.claim("crashy", count=1, block_ms=0))
        await asyncio.sleep(0.08)
    assert seen == [1, 2]
    assert await queue.pending_count() == 0
    assert await queue.dead_letter_count() == 1
    result = await queue.get_result("poison")
    assert result is not None
    assert result.status == ReconStatus.failed
    assert result.method_requested == "cg-sense"
    assert result.deliveries == 3
    assert "dead-lettered after 3 deliveries" in (result.error or "")


async def test_explicit_dead_letter_keeps_an_existing_result(
    queue_factory: QueueFactory, make_job: Any
) -> None:
    queue = queue_factory()
    await queue.enqueue(make_job("done-then-dead"))
    (delivery,) = await queue.claim("w", count=1, block_ms=0)
    done = ReconResult(
        job_id="done-then-dead", scan_id="scan-1", status=ReconStatus.done, method_requested="zero-filled"
    )
    assert await queue.put_result(done) is True
    await queue.dead_letter(delivery, "operator gave up")
    assert await queue.get_result("done-then-dead") == done
    assert await queue.pending_count() == 0
    assert await queue.dead_letter_count() == 1


async def test_results_are_write_once(queue_factory: QueueFactory) -> None:
    queue = queue_factory()
    assert await queue.get_result("nope") is None
    first = ReconResult(
        job_id="j", scan_id="s", status=ReconStatus.done, method_requested="sense", elapsed_ms=3.5
    )
    second = first.model_copy(update={"status": ReconStatus.failed, "error": "late duplicate"})
    assert await queue.put_result(first) is True
    assert await queue.put_result(second) is False
    assert await queue.get_result("j") == first


async def test_ping_and_argument_checks(queue_factory: QueueFactory) -> None:
    queue = queue_factory()
    assert await queue.ping() is True
    with pytest.raises(InvalidInputError, match="count"):
        await queue.claim("w", count=0, block_ms=0)
    with pytest.raises(InvalidInputError, match="block_ms"):
        await queue.claim("w", count=1, block_ms=-1)
