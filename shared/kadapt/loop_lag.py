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
import math
from collections.abc import Callable

#: The default period: 20 wake-ups a second, resolution enough for 50 ms deadlines.
LOOP_LAG_PERIOD_S = 0.05
#: Histogram buckets (seconds) from 1 ms to 1 s.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


#: A lag from which a service logs the stall (``event_loop_stall``): half a 50 ms plan deadline.
STALL_S = 0.025
#: At most one stall report per this many seconds (an embedded demo's recon holds the GIL for 0.2 s at a
#: time: one line per stall would bury everything else).
STALL_REPORT_EVERY_S = 60.0


async def watch_loop_lag(
    observe: Callable[[float], None],
    period_s: float = LOOP_LAG_PERIOD_S,
    *,
    on_stall: Callable[[float, int], None] | None = None,
    stall_s: float = STALL_S,
    report_every_s: float = STALL_REPORT_EVERY_S,
) -> None:
    """Sleep ``period_s`` again and again and ``observe`` how much later than asked each wake-up came
    (seconds, >= 0). A lag of ``stall_s`` or more is a stall: ``on_stall(worst_lag_s, stalls)`` reports
    the first at once, then at most one report per ``report_every_s`` with the worst lag and the number
    of stalls since the last report (a log line, to put a stall next to what else happened then). Runs
    until cancelled."""
    loop = asyncio.get_running_loop()
    last_report = -math.inf
    stalls, worst = 0, 0.0
    while True:
        asked = loop.time() + period_s
        await asyncio.sleep(period_s)
        now = loop.time()
        lag = max(0.0, now - asked)
        observe(lag)
        if on_stall is None or lag < stall_s:
            continue
        stalls, worst = stalls + 1, max(worst, lag)
        if now - last_report >= report_every_s:
            on_stall(worst, stalls)
            last_report, stalls, worst = now, 0, 0.0
