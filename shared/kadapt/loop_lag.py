"""Event-loop lag: how late an asyncio loop wakes up, the first sign that a service misses deadlines.

A plan deadline is kept only if the loop that answers it runs on time. Blocking work on the loop (a slow
file system call, a long computation), a process waiting for a core, or a worker thread holding the GIL
all show up the same way: a sleep that should take ``period_s`` takes longer. :func:`watch_loop_lag`
measures exactly that and hands each lateness to ``observe`` (a Prometheus histogram's ``observe`` in the
gateway and the sampler: ``kadapt_<service>_event_loop_lag_seconds``). Framework-free: a coroutine to run
as a background task for the life of the app. Cost: one timer wake-up per period.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: The default period: 20 wake-ups a second, resolution enough for 50 ms deadlines.
LOOP_LAG_PERIOD_S = 0.05
#: Histogram buckets (seconds) from 1 ms to 1 s.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


#: A lag from which a service logs the stall (``event_loop_stall``): half a 50 ms plan deadline.
STALL_S = 0.025


async def watch_loop_lag(
    observe: Callable[[float], None],
    period_s: float = LOOP_LAG_PERIOD_S,
    *,
    on_stall: Callable[[float], None] | None = None,
    stall_s: float = STALL_S,
) -> None:
    """Sleep ``period_s`` again and again and ``observe`` how much later than asked each wake-up came
    (seconds, >= 0); a lag of ``stall_s`` or more also goes to ``on_stall`` (a log line, so that a
    stall can be put next to what else happened then). Runs until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + period_s
        await asyncio.sleep(period_s)
        lag = max(0.0, loop.time() - asked)
        observe(lag)
        if on_stall is not None and lag >= stall_s:
            on_stall(lag)
