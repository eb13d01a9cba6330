"""kadapt.loop_lag: the lateness of an event loop's wake-ups."""

from __future__ import annotations

import asyncio
import time

from kadapt.loop_lag import watch_loop_lag


async def test_a_blocked_loop_is_seen_as_lag() -> None:
    lags: list[float] = []
    watcher = asyncio.create_task(watch_loop_lag(lags.append, period_s=0.01))
    await asyncio.sleep(0.05)  # a few on-time wake-ups
    time.sleep(0.2)  # blocking work on the loop: the watcher cannot wake
    await asyncio.sleep(0.03)
    watcher.cancel()
    assert lags
    assert all(lag >= 0.0 for lag in lags)
    assert max(lags) >= 0.15  # the blocked stretch, less at most one period already slept
    assert sorted(lags)[len(lags) // 2] < 0.1  # the other wake-ups were not late by a blocked stretch


async def test_only_a_stall_reaches_on_stall() -> None:
    lags: list[float] = []
    stalls: list[float] = []
    watcher = asyncio.create_task(
        watch_loop_lag(lags.append, period_s=0.01, on_stall=stalls.append, stall_s=0.1)
    )
    await asyncio.sleep(0.05)
    time.sleep(0.2)
    await asyncio.sleep(0.03)
    watcher.cancel()
    assert len(stalls) == 1  # the one blocked stretch, not the on-time wake-ups
    assert stalls[0] == max(lags) >= 0.1
