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


async def test_stalls_are_reported_first_at_once_then_at_most_once_per_interval() -> None:
    lags: list[float] = []
    reports: list[tuple[float, int]] = []
    watcher = asyncio.create_task(
        watch_loop_lag(
            lags.append,
            period_s=0.01,
            on_stall=lambda lag, stalls: reports.append((lag, stalls)),
            stall_s=0.1,
            report_every_s=0.5,
        )
    )
    await asyncio.sleep(0.05)
    time.sleep(0.2)  # a stall: reported at once
    await asyncio.sleep(0.03)
    assert len(reports) == 1
    assert reports[0][1] == 1
    assert reports[0][0] == max(lags) >= 0.1
    for _ in range(2):  # two more within the interval: held back
        time.sleep(0.15)
        await asyncio.sleep(0.03)
    assert len(reports) == 1
    await asyncio.sleep(0.5)
    time.sleep(0.12)  # after the interval: one report for the three held stalls
    await asyncio.sleep(0.03)
    watcher.cancel()
    assert len(reports) == 2
    assert reports[1][1] >= 3  # the three held back (a loaded machine may add its own)
    assert reports[1][0] >= 0.14  # the worst of them, not the last
