"""Plan rounds: ask for a scan's plan once its ACS block is in, and answer the scanner by the deadline.

One background task per (scan, round) runs the :class:`~kadapt.gateway.domain.planning.Planner` the
moment planning starts, so the plan is usually ready before the scanner asks. ``GET .../plan`` waits for
that task at most until the round's absolute deadline; a replica without the task (another gateway
asked, or it restarted) watches the store until the deadline. After the deadline the fallback mask is
recorded. The first plan recorded for a round wins, so the scanner and every replica see the same lines.
Multi-round policies (ADS) get the next round when every line of a non-final plan is in; each round has
its own deadline (``plan_deadline_ms`` from the moment its predecessor's last line is in) and its own
fallback, which keeps every line the earlier rounds planned in each frame and completes the mask
(:mod:`~kadapt.gateway.domain.dynamic_plans` makes the rounds' inputs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from kadapt.errors import InvalidStateError
from kadapt.gateway.domain import completion, creation, dynamic_plans
from kadapt.gateway.domain.images import encode_npy
from kadapt.gateway.domain.kspace_files import KspaceFiles
from kadapt.gateway.domain.planning import PlanContext, Planner, fallback_plan
from kadapt.gateway.domain.scan_io import ScanIO
from kadapt.gateway.domain.session import ScanSession, keys_to_mask, now_unix_ms
from kadapt.gateway.domain.store import SessionStore
from kadapt.masks import mask_families
from kadapt.schemas import PlanResponse, ScanState

log = structlog.get_logger("kadapt.gateway")

# The session as last known after a round's plan was settled, and the plan to answer with.
Settled = tuple[ScanSession, PlanResponse]


def log_task_failure(task: asyncio.Task[Any]) -> None:
    """Log the error of a background task nobody awaits (instead of "exception never retrieved")."""
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        log.error("background_task_failed", task=task.get_name(), error=f"{type(error).__name__}: {error}")


class PlanRounds:
    """The plan rounds of every scan this process serves. ``on_recorded(session)`` runs when a plan is
    recorded (the scan service promotes retrospective lines then)."""

    def __init__(
        self,
        *,
        store: SessionStore,
        planner: Planner,
        kspace_files: KspaceFiles,
        io: ScanIO,
        on_recorded: Callable[[ScanSession], None] | None = None,
    ) -> None:
        self.store = store
        self.io = io  # the scan service's: an ADS round's SENSE image is computed in its threads
        self.planner = planner
        self.kspace_files = kspace_files
        self.on_recorded = on_recorded
        self._tasks: dict[tuple[str, int], asyncio.Task[Settled]] = {}

    async def close(self) -> None:
        """Cancel every plan task (on shutdown)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def cancel(self, scan_id: str) -> None:
        """Cancel the scan's plan tasks (it is being deleted)."""
        for (task_scan, _), task in list(self._tasks.items()):
            if task_scan == scan_id:
                task.cancel()

    def context(self, session: ScanSession, *, with_acs: bool) -> PlanContext:
        # Earlier rounds' lines stay in every later plan (per frame after a per-frame round, ADS).
        acquired, acquired_per_frame = dynamic_plans.earlier_lines(
            session, tuple(int(c) for c in creation.acs_columns(session))
        )
        acs_npy = None
        if with_acs and session.plan_payload == "acs":
            acs = self.kspace_files.read_acs(
                session.scan_id, creation.acs_columns(session), slice_index=session.geometry.slices // 2
            )
            acs_npy = encode_npy(acs)
        return PlanContext(
            scan_id=session.scan_id,
            policy=session.policy,
            geometry=session.geometry,
            acquired=acquired,
            acquired_per_frame=acquired_per_frame,
            round=session.plan_round,
            deadline_unix_ms=session.plan_deadline_unix_ms or now_unix_ms(),
            acs_npy=acs_npy,
            fallback_pattern=session.fallback_pattern,
        )

    def start(self, session: ScanSession) -> None:
        """Start the round's plan task; ``session`` is the one just stored (its compare-and-set base)."""
        key = (session.scan_id, session.plan_round)
        if key in self._tasks:
            return
        task = asyncio.create_task(self._run(session))
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))
        task.add_done_callback(log_task_failure)

    async def _run(self, session: ScanSession) -> Settled:
        # Fixed mask families never look at the scan: skip reading and encoding its ACS block
        # (about 350 kB of JSON at 256 x 8 coils x 16 lines), which dominated a fixed policy's plan time.
        needs_scan_data = session.policy.sampler not in mask_families()
        context = self.context(session, with_acs=needs_scan_data)
        if needs_scan_data and session.plan_payload == dynamic_plans.SENSE_IMAGE:
            # ADS rounds look at the SENSE image so far instead of the ACS (made in a worker thread).
            context = await self.io.compute(
                dynamic_plans.with_sense_image_payload, context, session, self.kspace_files
            )
        plan = await self.planner.plan(context)
        return await self.record(session.scan_id, plan, read=session)

    async def record(self, scan_id: str, plan: PlanResponse, *, read: ScanSession | None = None) -> Settled:
        """Record ``plan`` unless its round already has one (the first answer wins, so the scanner and
        the gateway agree); returns the session after it and the recorded plan. ``read``: the session as
        last known (one Redis round trip less when nobody wrote since, ``SessionStore.update``)."""

        def record(session: ScanSession) -> bool:
            if (
                session.state != ScanState.planning
                or session.plan_round != plan.round
                or session.plan_is_current
            ):
                return False
            session.plan = plan
            session.transition(ScanState.acquiring)
            return True

        session, applied = await self.store.update(scan_id, record, read=read)
        if applied:
            # The recorded plan is the scanner's answer from now on: later than the deadline is a miss.
            # The latency observed is the round's, from its start (deadline - plan_deadline_ms) to now.
            deadline = session.plan_deadline_unix_ms
            late_ms = now_unix_ms() - deadline if deadline is not None else -session.policy.plan_deadline_ms
            if self.planner.metrics is not None:
                round_ms = max(0.0, session.policy.plan_deadline_ms + late_ms)
                self.planner.metrics.observe(plan, round_ms / 1000.0)
                if late_ms > 0:
                    self.planner.metrics.deadline_missed()
            log.info(
                "plan_recorded",
                scan_id=scan_id,
                round=plan.round,
                degraded=plan.degraded,
                reason=plan.reason,
                served_by=plan.served_by,
                elapsed_ms=round(plan.elapsed_ms, 3),
                late_ms=round(late_ms, 3) if late_ms > 0 else 0.0,
            )
            if self.on_recorded is not None:
                self.on_recorded(session)
        return session, session.plan if session.plan_is_current and session.plan is not None else plan

    async def current(self, scan_id: str) -> PlanResponse:
        """The current plan; while planning, waits at most until the deadline, then serves the fallback."""
        return (await self.settle(scan_id))[1]

    async def settle(self, scan_id: str, session: ScanSession | None = None) -> Settled:
        """:meth:`current`, with the session as known after it. ``session``: the scan's session as the
        caller just stored it (saves reading it; the ingest request that completed the ACS block)."""
        if session is None:
            session = await self.store.get(scan_id)
        if session.plan_is_current and session.plan is not None:
            return session, session.plan
        if session.state != ScanState.planning:
            if session.plan is not None:
                return session, session.plan
            acs_keys = creation.acs_keys(session)
            present = await self.store.count_present(scan_id, acs_keys.tolist())
            raise InvalidStateError(
                f"scan {scan_id} is {session.state.value}: no plan before the ACS block is in "
                f"({present} of {acs_keys.size} ACS lines)",
                state=session.state.value,
            )
        deadline = session.plan_deadline_unix_ms or now_unix_ms()
        task = self._tasks.get((scan_id, session.plan_round))
        remaining_s = (deadline - now_unix_ms()) / 1000.0
        if task is not None and remaining_s > 0:
            try:
                return await asyncio.wait_for(asyncio.shield(task), remaining_s)
            except asyncio.TimeoutError:
                pass
        while task is None and now_unix_ms() < deadline:
            # Another replica is planning this scan: watch the store until the deadline.
            await asyncio.sleep(min(0.005, max(0.0, (deadline - now_unix_ms()) / 1000.0)))
            current = await self.store.get(scan_id)
            if current.plan_is_current and current.plan is not None:
                return current, current.plan
        plan = fallback_plan(self.context(session, with_acs=False), "sampler-timeout")
        return await self.record(scan_id, plan, read=session)

    async def next_round_if_due(self, session: ScanSession) -> None:
        """Multi-round policies (ADS): when every line of a non-final plan is in, ask for the next round."""
        plan = session.plan
        if plan is None or plan.final or session.state != ScanState.acquiring:
            return
        acquired = keys_to_mask(await self.store.line_keys(session.scan_id), session.geometry)
        if completion.missing_planned_lines(session, acquired).size:
            return

        def next_round(current: ScanSession) -> bool:
            if current.state != ScanState.acquiring or current.plan_round != plan.round:
                return False
            current.transition(ScanState.planning)
            current.plan_round += 1
            current.plan_deadline_unix_ms = now_unix_ms() + current.policy.plan_deadline_ms
            return True

        updated, started = await self.store.update(session.scan_id, next_round, read=session)
        if started:
            self.start(updated)
