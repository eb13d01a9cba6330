"""The scan service: sessions through their states — create, ingest, plan, complete, images, delete.

A stream of small stages (house style): :mod:`ingest` validates a request, the store claims its lines
atomically, the k-space file takes the samples, the session records the transition; once the ACS block
of every (slice, frame) is in, planning starts at once as a background task so the plan is ready when
the scanner asks; completion hands the data to the recon queue. Ingest of one scan is serialised by a
per-scan lock in this process; across replicas the store's atomic claims and WATCH/MULTI updates keep the
session consistent. Blocking numpy / file work on large bodies runs in a worker thread so that plan
deadlines of other scans are kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import numpy as np
import structlog
from numpy.typing import NDArray

from kadapt.errors import DuplicateLineError, InvalidStateError, KadaptError, ServiceUnavailableError
from kadapt.gateway.domain import completion, creation
from kadapt.gateway.domain.fallbacks import FallbackBundles
from kadapt.gateway.domain.images import DicomOptions, describe_series, encode_images, encode_npy
from kadapt.gateway.domain.ingest import ParsedRequest, parse_request, prepare_lines, route_lines
from kadapt.gateway.domain.kspace_files import KspaceFiles
from kadapt.gateway.domain.planning import Planner
from kadapt.gateway.domain.rounds import PlanRounds, log_task_failure
from kadapt.gateway.domain.scan_io import ScanIO
from kadapt.gateway.domain.session import (
    INGEST_STATES,
    ScanSession,
    describe_key,
    keys_to_mask,
    now_unix_ms,
)
from kadapt.gateway.domain.store import SessionStore
from kadapt.gateway.domain.trash import Trash
from kadapt.jobs import BlobStore, JobQueue
from kadapt.jobs.blobs import volume_full
from kadapt.schemas import IngestReport, PlanResponse, ScanCreate, ScanPublic, ScanState

T = TypeVar("T")
log = structlog.get_logger("kadapt.gateway")


class ScanService:
    """Everything the REST API does with scans, framework-free (``api/routes.py`` is a thin layer)."""

    def __init__(
        self,
        *,
        store: SessionStore,
        queue: JobQueue,
        planner: Planner,
        kspace_files: KspaceFiles,
        blobs: BlobStore,
        offload_bytes: int = 256 * 1024,
        fallback_bundles: FallbackBundles | None = None,
    ) -> None:
        self.store = store
        # The fixed-mask bundles a scan's fallback may name (None: mask families only).
        self.fallback_bundles = fallback_bundles
        self.queue = queue
        self.planner = planner
        self.kspace_files = kspace_files
        self.blobs = blobs
        self.offload_bytes = offload_bytes
        self._locks: dict[str, asyncio.Lock] = {}
        self.io = ScanIO()  # the scanner path's file work, in threads of its own (scan_io.py)
        self._background: set[asyncio.Task[Any]] = set()
        # Deleted scans' directories are renamed away at once and removed off the event loop (trash.py).
        self.trash = Trash(kspace_files.root, blobs.root / "scans")
        self.rounds = PlanRounds(
            store=store,
            planner=planner,
            kspace_files=kspace_files,
            io=self.io,
            on_recorded=self._plan_recorded,
        )

    # --- helpers -------------------------------------------------------------------------------------

    def _lock(self, scan_id: str) -> asyncio.Lock:
        return self._locks.setdefault(scan_id, asyncio.Lock())

    async def _run(self, big: bool, function: Callable[..., T], *args: Any) -> T:
        """Run CPU work inline when small, in a worker thread when ``big``."""
        return await self.io.compute(function, *args) if big else function(*args)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(log_task_failure)

    async def close(self) -> None:
        """Cancel plan and background tasks (on shutdown); let file writes in progress finish."""
        await self.rounds.close()
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self.io.close)

    def _plan_recorded(self, session: ScanSession) -> None:
        if session.policy.retrospective:
            self._spawn(self.promote_staged(session.scan_id))

    async def get_plan(self, scan_id: str) -> PlanResponse:
        """The current plan; while planning, waits at most until the deadline, then serves the fallback."""
        return await self.rounds.current(scan_id)

    # --- create / read -------------------------------------------------------------------------------

    async def create_scan(self, body: ScanCreate) -> ScanPublic:
        """Parse the header, check the policy against it, create the session and its k-space file."""
        session = creation.new_session(body, self.fallback_bundles)
        self.kspace_files.check_size(session.geometry)
        # mkdir + file creation wait for the volume's journal like any write (scan_io.py): a worker
        # thread, shielded; if the session is not stored (an error, a cancelled request), the files are
        # removed once their creation is over.
        work = self.io.submit(self.kspace_files.create, session.scan_id, session.geometry)
        try:
            await asyncio.shield(work)
            await self.store.create(session)
        except BaseException:
            work.add_done_callback(
                lambda _: self._spawn(self.io.run(self.kspace_files.delete, session.scan_id))
            )
            raise
        log.info("scan_created", scan_id=session.scan_id, geometry=session.geometry.model_dump())
        return session.public(0)

    async def refresh(self, scan_id: str) -> ScanSession:
        """The session, moved to done / failed first if its recon result has appeared (and from failed
        back to reconstructing if that result has vanished: its dead-lettered job was requeued)."""
        session = await self.store.get(scan_id)
        if session.recon_job is None or session.state not in (ScanState.reconstructing, ScanState.failed):
            return session
        job_id = session.recon_job.job_id
        result = await self.queue.get_result(job_id)
        if session.state == ScanState.failed:
            if result is None:
                session, changed = await self.store.update(scan_id, completion.reopen_requeued)
                if changed:
                    log.info("scan_reopened", scan_id=scan_id, job_id=job_id)
            return session
        if result is not None:
            session, changed = await self.store.update(scan_id, lambda s: completion.apply_result(s, result))
            if changed:
                log.info("scan_finished", scan_id=scan_id, state=session.state.value, error=session.error)
        return session

    async def get_scan(self, scan_id: str) -> ScanPublic:
        session = await self.refresh(scan_id)
        return session.public(await self.store.count_lines(scan_id))

    # --- ingest --------------------------------------------------------------------------------------

    async def ingest(
        self,
        scan_id: str,
        payload: bytes,
        *,
        wait_plan: bool = False,
        received_unix_ms: float | None = None,
    ) -> IngestReport:
        """Validate and store one request of MRD messages (all or nothing); see ``docs/api.md``.

        ``wait_plan``: when the scan is planning after this request (it completed the ACS block or a
        round's lines), wait for the plan through :meth:`PlanRounds.current` (the deadline and fallback of
        ``GET .../plan``) and return it in the report, saving the scanner that round trip.
        ``received_unix_ms``: when the request arrived (default: now). The plan deadline of a request
        that completes the ACS block counts from its arrival, not from when its lines were stored, so
        the time spent ingesting it is inside the scanner's wait budget rather than added to it.
        """
        received = received_unix_ms if received_unix_ms is not None else now_unix_ms()
        big = len(payload) > self.offload_bytes
        async with self._lock(scan_id):
            # Read under the lock, so the session is current for this process's requests of the scan
            # (other replicas: the claim is atomic and every session write a compare-and-set).
            session = await self.store.get(scan_id)
            session.require_state(INGEST_STATES, "ingesting acquisitions")
            parsed = await self._run(big, parse_request, payload, session)
            session, counts, staged_keys = await self._store_request(session, parsed, big, received)
        if session.policy.retrospective and staged_keys.size:
            if session.state == ScanState.planning:
                await self.rounds.current(scan_id)  # bounded by the plan deadline
            await self.promote_staged(scan_id)
        if parsed.close:
            await self.complete(scan_id, force=True)
        if parsed.close or staged_keys.size or (session.plan is not None and not session.plan.final):
            # Completion, promotion or a next plan round changed the session; otherwise the one stored
            # above is current (one Redis round trip less on the scanner's path).
            session = await self.store.get(scan_id)
        if wait_plan and session.state == ScanState.planning:
            # Bounded by the plan deadline; records the plan once. The session comes back with it.
            session, _ = await self.rounds.settle(scan_id, session)
        # Held lines of this request end up in the scan (planned), dropped (unplanned) or still held.
        kept = await self.store.count_present(scan_id, staged_keys.tolist()) if staged_keys.size else 0
        resolved = (
            session.plan is not None and session.plan.final and session.plan_round == session.plan.round
        )
        dropped = int(staged_keys.size) - kept if resolved else 0
        return IngestReport(
            accepted=counts["acquired"] + kept,
            skipped_unplanned=counts["skipped"] + dropped,
            skipped_noise=parsed.skipped,
            state=session.state,
            plan_ready=session.plan_is_current,
            outside_plan=counts["outside"],
            staged=int(staged_keys.size) - kept - dropped,
            plan=session.plan if wait_plan and session.plan_is_current else None,
        )

    async def _store_request(
        self, session: ScanSession, parsed: ParsedRequest, big: bool, received_unix_ms: float
    ) -> tuple[ScanSession, dict[str, int], NDArray[np.int64]]:
        scan_id = session.scan_id
        if parsed.close and parsed.lines == 0 and session.state == ScanState.created:
            raise InvalidStateError(f"scan {scan_id}: CLOSE before any line was acquired", state="created")
        acquire, stage = route_lines(session, parsed, creation.acs_columns(session))
        # Before planning, the claim also counts the ACS block's lines in (one round trip for both).
        calibrating = session.state in (ScanState.created, ScanState.calibrating)
        acs_keys = creation.acs_keys(session).tolist() if calibrating else []
        duplicates, acs_present = await self.store.claim_and_count(
            scan_id, parsed.keys[acquire].tolist(), parsed.keys[stage].tolist(), acs_keys
        )
        repeats = np.zeros(parsed.lines, dtype=bool)
        if duplicates:
            # Readouts of a later repetition re-deliver lines already in the scan: skip them (see
            # ``ingest``); any other clash is a duplicate. The claim added nothing, so claim the rest again.
            repeats = np.isin(parsed.keys, duplicates) & (parsed.repetitions > 0)
            acquire, stage = acquire & ~repeats, stage & ~repeats
            genuine = sorted(set(duplicates) - set(parsed.keys[repeats].tolist()))
            if not genuine:
                genuine, acs_present = await self.store.claim_and_count(
                    scan_id, parsed.keys[acquire].tolist(), parsed.keys[stage].tolist(), acs_keys
                )
            if genuine:
                where = describe_key(genuine[0], session.geometry, session.encoding)
                raise DuplicateLineError(
                    f"line {where} was already received ({len(genuine)} duplicate(s) in this request)"
                )
        keep = acquire | stage
        try:
            if keep.any():
                lines = await self._run(
                    big, prepare_lines, parsed.data[keep], parsed.reverse[keep], session.geometry.height
                )
                await self.io.run(
                    self.kspace_files.write_lines,
                    scan_id,
                    parsed.slices[keep],
                    parsed.frames[keep],
                    parsed.columns[keep],
                    lines,
                )
            for block in parsed.noise:
                await self.io.run(self.kspace_files.save_noise, scan_id, block)
        except OSError as error:
            # The samples did not reach the volume: undo the claim so the scanner can send them again.
            await self.store.release_lines(scan_id, parsed.keys[keep].tolist())
            full = volume_full(error, f"scan {scan_id}: storing k-space")
            if full is not None:
                raise full from error
            raise ServiceUnavailableError(f"scan {scan_id}: storing k-space failed: {error}") from error
        noise = parsed.noise
        planned = session.planned_mask()
        outside = 0
        if not session.policy.retrospective and planned is not None:
            outside = int((~planned[parsed.frames, parsed.columns] & ~repeats).sum())
        counts = {
            "acquired": int(acquire.sum()),
            "skipped": int((~keep & ~repeats).sum()),
            "outside": outside,
        }
        acs_done = calibrating and bool(keep.any()) and acs_present == len(acs_keys)

        def record(current: ScanSession) -> bool:
            current.skipped_noise += parsed.skipped
            current.noise_readouts += sum(block.shape[0] for block in noise)
            current.skipped_unplanned += counts["skipped"]
            current.outside_plan += outside
            if current.state == ScanState.created and keep.any():
                current.transition(ScanState.calibrating)
            if acs_done and current.state == ScanState.calibrating:
                current.transition(ScanState.planning)
                current.plan_deadline_unix_ms = received_unix_ms + current.policy.plan_deadline_ms
                return True
            return False

        changed = (
            parsed.skipped or counts["skipped"] or outside or acs_done or session.state == ScanState.created
        )
        if changed:
            session, started = await self.store.update(scan_id, record, read=session)
            if started:
                self.rounds.start(session)
        if session.plan_is_current and not session.policy.retrospective:
            await self.rounds.next_round_if_due(session)
        return session, counts, parsed.keys[stage]

    async def promote_staged(self, scan_id: str) -> list[int]:
        """Retrospective mode: move held lines the plan chose into the scan, drop the rest once the plan is
        final (zeroing their samples). Returns the dropped line keys."""
        async with self._lock(scan_id):
            return await self._promote_locked(scan_id)

    async def _promote_locked(self, scan_id: str) -> list[int]:
        session = await self.store.get(scan_id)
        planned = session.planned_mask()
        if not session.policy.retrospective or not session.plan_is_current or planned is None:
            return []
        keep = creation.planned_keys(session, planned)
        final = session.plan is not None and session.plan.final
        _, dropped = await self.store.promote_staged(scan_id, keep.tolist(), drop_rest=final)
        if dropped:
            geometry = session.geometry
            keys = np.array(dropped, dtype=np.int64)
            slices, rest = np.divmod(keys, geometry.frames * geometry.width)
            frames, columns = np.divmod(rest, geometry.width)
            await self.io.run(self.kspace_files.zero_lines, scan_id, slices, frames, columns)

            def count(current: ScanSession) -> None:
                current.skipped_unplanned += len(dropped)

            await self.store.update(scan_id, count)
        await self.rounds.next_round_if_due(session)
        return dropped

    # --- completion, images, mask, delete ------------------------------------------------------------

    async def complete(self, scan_id: str, *, force: bool) -> ScanPublic:
        """Check completion, write k-space + mask blobs, enqueue the recon job -> ``reconstructing``."""
        async with self._lock(scan_id):
            await self._promote_locked(scan_id)
            session = await self.store.get(scan_id)
            acquired = keys_to_mask(await self.store.line_keys(scan_id), session.geometry)
            completion.check_completion(session, acquired, force=force)
            # The blobs first: if they cannot be written (a full volume: 507) the scan stays as it was and
            # completing can be repeated once space is freed.
            try:
                job = await asyncio.to_thread(
                    completion.write_recon_job, session, self.kspace_files, self.blobs, acquired
                )
            except OSError as error:
                reason = f"writing the recon blobs failed: {error}"
                raise ServiceUnavailableError(f"scan {scan_id}: {reason}") from error

            def mark_complete(current: ScanSession) -> None:
                completion.check_completion(current, acquired, force=force)
                current.transition(ScanState.complete)

            try:
                session, _ = await self.store.update(scan_id, mark_complete)
            except BaseException:
                completion.delete_job_blobs(self.blobs, job)
                raise
            try:
                await self.queue.enqueue(job)
            except (KadaptError, OSError) as error:
                reason = f"enqueueing the recon job failed: {error}"
                await self.store.update(scan_id, lambda current: current.fail(reason))
                raise ServiceUnavailableError(f"scan {scan_id}: {reason}") from error

            def mark_reconstructing(current: ScanSession) -> None:
                current.recon_job = job
                current.transition(ScanState.reconstructing)

            session, _ = await self.store.update(scan_id, mark_reconstructing)
            self.kspace_files.forget(scan_id)
        log.info("scan_completed", scan_id=scan_id, job_id=job.job_id, force=force, lines=int(acquired.sum()))
        return session.public(int(acquired.sum()))

    async def images(
        self,
        scan_id: str,
        image_format: str,
        *,
        slice_index: int | None = None,
        frame: int | None = None,
        deidentify: bool = False,
    ) -> tuple[bytes, str]:
        """The reconstructed magnitude images encoded as ``image_format``: ``(body, media type)``
        (``deidentify``: DICOM only, see ``kadapt.dicom.deidentify``)."""
        session = await self.refresh(scan_id)
        if session.state != ScanState.done or not session.images_path or not session.images_sha256:
            why = f": {session.error}" if session.error else ""
            raise InvalidStateError(
                f"scan {scan_id} is {session.state.value}; images exist once it is done{why}",
                state=session.state.value,
            )
        volume = await asyncio.to_thread(self.blobs.get_array, session.images_path, session.images_sha256)
        return await asyncio.to_thread(
            encode_images,
            volume,
            image_format,
            slice_index=slice_index,
            frame=frame,
            field_of_view_mm=session.encoding.field_of_view_mm,
            dicom=DicomOptions(
                header_xml=session.header_xml,
                series_description=describe_series(session.policy, session.recon_method_used),
                deidentify=deidentify,
                uid_entropy=(scan_id,),
            ),
        )

    async def mask(self, scan_id: str) -> bytes:
        """The acquired-line mask, bool ``(slice, frame, W)``, as ``.npy`` bytes."""
        session = await self.store.get(scan_id)
        return encode_npy(keys_to_mask(await self.store.line_keys(scan_id), session.geometry))

    async def delete(self, scan_id: str) -> None:
        """Forget the scan: its session, k-space file, noise and blobs."""
        session = await self.store.get(scan_id)
        self.rounds.cancel(scan_id)
        try:
            async with self._lock(scan_id):
                await self.store.delete(scan_id)
                self.kspace_files.forget(scan_id)
                # Renames (one metadata operation each) still wait for the volume's journal: 38 ms on the
                # loop was measured under ``kadapt bench load``. A worker thread, shielded, so that a
                # cancelled DELETE never leaves a session gone but its files in place; the trash is
                # emptied once they are renamed.
                work = asyncio.ensure_future(asyncio.to_thread(self._discard_files, session))
                work.add_done_callback(lambda _: self._spawn(asyncio.to_thread(self.trash.empty)))
                work.add_done_callback(log_task_failure)
                await asyncio.shield(work)
        finally:
            self._locks.pop(scan_id, None)
        log.info("scan_deleted", scan_id=scan_id)

    def _discard_files(self, session: ScanSession) -> None:
        """Move the scan's k-space directory and blobs into the trash (blocking: a worker thread)."""
        self.trash.discard(self.kspace_files.directory(session.scan_id))
        creation.delete_blobs(self.blobs, session, self.trash.discard)
