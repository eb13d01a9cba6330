"""MemoryJobQueue specifics (the shared semantics are in test_queue_contract.py)."""

from __future__ import annotations

from typing import Any

import pytest

from kadapt.errors import InvalidInputError, ServiceUnavailableError
from kadapt.jobs.queue import MemoryJobQueue


async def test_closed_queue_refuses_work_and_fails_ping(make_job: Any) -> None:
    queue = MemoryJobQueue()
    await queue.close()
    assert await queue.ping() is False
    with pytest.raises(ServiceUnavailableError, match="closed"):
        await queue.enqueue(make_job())
    with pytest.raises(ServiceUnavailableError, match="closed"):
        await queue.claim("w", count=1, block_ms=0)


async def test_close_wakes_a_blocked_claim() -> None:
    import asyncio

    queue = MemoryJobQueue()
    waiter = asyncio.create_task(queue.claim("w", count=1, block_ms=5000))
    await asyncio.sleep(0.05)
    await queue.close()
    with pytest.raises(ServiceUnavailableError):
        await asyncio.wait_for(waiter, timeout=1.0)


async def test_dead_letters_are_inspectable(make_job: Any) -> None:
    queue = MemoryJobQueue()
    await queue.enqueue(make_job("j"))
    (delivery,) = await queue.claim("w", count=1, block_ms=0)
    await queue.dead_letter(delivery, "bad data")
    (dead,) = queue.dead_letters
    assert (dead.job.job_id, dead.deliveries, dead.reason) == ("j", 1, "bad data")
    result = await queue.get_result("j")
    assert result is not None
    assert result.error == "dead-lettered after 1 deliveries: bad data"


@pytest.mark.parametrize(
    ("options", "word"), [({"max_deliveries": 0}, "max_deliveries"), ({"claim_idle_ms": -1}, "claim_idle_ms")]
)
def test_bad_options(options: dict[str, int], word: str) -> None:
    with pytest.raises(InvalidInputError, match=word):
        MemoryJobQueue(**options)
