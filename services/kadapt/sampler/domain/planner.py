"""Deadline-aware planning: the policy registry and the planner that serves plan requests.

Every plan request carries an absolute deadline (``deadline_unix_ms``); the gateway answers the scanner
with a fallback mask when the sampler is late, so late work is worth nothing here. The planner therefore
drops a request at every point where it could notice it is late (the stages of the miss counter):

``admission``  on arrival;
``queue``      while waiting for one of ``max_inflight`` compute slots (the wait is cut at the deadline;
               with ``max_queued`` already waiting, a request is refused at once: 503 ``overloaded``);
``dequeue``    on getting a slot;
``compute``    in the worker thread, right before the policy runs (model policies check again before
               inference with their own stage);
``result``     the policy is still running at the deadline: the caller gets the 504 at once, the worker
               thread finishes in the background and only then frees its slot.

Model policies with a fallback (:class:`DegradablePolicy`, ``mnet`` and ``ads`` bundles) are not left to
miss the deadline: the planner waits for their model only until ``fallback_margin_ms`` before it and then
answers with the fallback, marked degraded (``model-late``, counted under the stage ``inference``); the
policy itself falls back when inference ends that late or cannot run (``domain/mnet.py``, ``ads.py``).

Plans are computed in a worker thread (``asyncio.to_thread``) so a slow model never blocks the event
loop, and every plan is checked against the contract (architecture.md section 3) before it leaves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from kadapt.bundles import BundleRef, list_bundle_refs, load_bundle, read_manifest
from kadapt.bundles.ads_runtime import round_budget
from kadapt.errors import (
    BundleError,
    DeadlineExceededError,
    InvalidInputError,
    InvalidStateError,
    KadaptError,
    OverloadedError,
    PlanContractError,
    UnknownPolicyError,
)
from kadapt.masks import line_budget, mask_families
from kadapt.sampler.domain.ads import AdsServing, load_ads_policy
from kadapt.sampler.domain.mnet import MNetServing, load_mnet_policy
from kadapt.sampler.domain.policies import (
    DegradablePolicy,
    FixedFamilyPolicy,
    FixedMaskBundlePolicy,
    MaskFamilyLike,
    PlannedLines,
    Policy,
    PolicyInfo,
    check_deadline,
    fixed_lines,
)
from kadapt.schemas import PlanRequest, PlanResponse

# Bundle kinds that are sampler models; recon bundles (modl, vsharp, unet, smp) are not ours to load.
SAMPLER_BUNDLE_KINDS = frozenset({"fixed-mask", "mnet", "ads"})
WARMUP_SCAN_ID = "warmup"
WARMUP_RUNS = 3
MODEL_LATE = "model-late"


def wall_clock_ms() -> float:
    """Unix time in milliseconds, the clock of ``deadline_unix_ms``."""
    return time.time() * 1000.0


class PolicyRegistry:
    """The plannable policies by name, and why the others are not served.

    ``failures`` (``name`` or ``name/version`` -> reason) make the service unready; ``skipped`` lists
    sampler bundles of a kind this service cannot run yet (informational); 2d point families are
    ``refused``: asking for one is an ``InvalidInputError`` naming the policy, not a 404.
    """

    def __init__(self, policies: Iterable[Policy] = (), *, refused: Mapping[str, str] | None = None) -> None:
        self._policies: dict[str, Policy] = {}
        self._refused = dict(refused or {})
        self.failures: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        for policy in policies:
            self.add(policy)

    @classmethod
    def from_sources(
        cls,
        model_repository: Path,
        families: Mapping[str, MaskFamilyLike] | None = None,
        *,
        mnet: MNetServing | None = None,
        ads: AdsServing | None = None,
    ) -> PolicyRegistry:
        """One :class:`FixedFamilyPolicy` per 1d/kt family of ``families`` (default: the
        :mod:`kadapt.masks` registry), one :class:`FixedMaskBundlePolicy` per ``fixed-mask`` bundle and
        one :class:`~kadapt.sampler.domain.mnet.MNetBundlePolicy` per ``mnet`` bundle of
        ``model_repository`` (latest versions, checksums verified; ``mnet`` sets how models run and
        their default fallback), and one :class:`~kadapt.sampler.domain.ads.AdsBundlePolicy` per ``ads``
        bundle (``ads``; default: ``mnet``'s threads and margin). A bad bundle is recorded in
        ``failures`` with the reason; it never raises."""
        registry = cls()
        mnet = mnet or MNetServing()
        ads = ads or AdsServing(threads=mnet.threads, margin_ms=mnet.margin_ms)
        model_refs: list[BundleRef] = []
        for name, family in sorted((families if families is not None else mask_families()).items()):
            try:
                registry.add(FixedFamilyPolicy(family))
            except InvalidInputError as err:
                registry._refused[name] = err.detail
        latest = {ref.name: ref for ref in list_bundle_refs(model_repository)}  # refs sort versions up
        for name, ref in sorted(latest.items()):
            try:
                manifest = read_manifest(ref.path)
                if manifest.kind not in SAMPLER_BUNDLE_KINDS:
                    continue
                if manifest.kind in ("mnet", "ads"):
                    model_refs.append(ref)  # after the fixed policies: they are the fallbacks
                    continue
                if manifest.kind != "fixed-mask":
                    registry.skipped[ref.ref] = f"kind {manifest.kind!r} has no runtime in this sampler yet"
                    continue
                if name in registry._policies or name in registry._refused:
                    raise InvalidStateError(f"bundle {ref.ref} has the name of a mask family")
                registry.add(FixedMaskBundlePolicy(load_bundle(model_repository, name, ref.version)))
            except KadaptError as err:
                registry.failures[ref.ref] = f"{err.slug}: {err.detail}"
        for ref in model_refs:
            try:
                if ref.name in registry._policies or ref.name in registry._refused:
                    raise InvalidStateError(f"bundle {ref.ref} has the name of another policy")
                bundle = load_bundle(model_repository, ref.name, ref.version)
                if bundle.manifest.kind == "ads":
                    registry.add(load_ads_policy(bundle, registry.get, ads))
                else:
                    registry.add(load_mnet_policy(bundle, registry.get, mnet))
            except KadaptError as err:
                registry.failures[ref.ref] = f"{err.slug}: {err.detail}"
        return registry

    def add(self, policy: Policy) -> None:
        """Register ``policy`` under its name (test doubles come in this way too)."""
        if policy.name in self._policies:
            raise InvalidStateError(f"policy {policy.name!r} is registered twice")
        self._policies[policy.name] = policy

    def get(self, name: str) -> Policy:
        """The policy called ``name``; ``UnknownPolicyError`` (404) naming it, or ``InvalidInputError``
        for a refused (2d point) family."""
        if name in self._policies:
            return self._policies[name]
        if name in self._refused:
            raise InvalidInputError(self._refused[name])
        raise UnknownPolicyError(f"no sampler policy {name!r}; known: {sorted(self._policies)}")

    def disable(self, name: str, reason: str) -> None:
        """Stop serving ``name`` (e.g. its warm-up failed) and record ``reason`` as a failure."""
        self._policies.pop(name, None)
        self.failures[name] = reason

    def policies(self) -> list[Policy]:
        """The served policies, sorted by name."""
        return [self._policies[name] for name in sorted(self._policies)]

    def infos(self) -> list[PolicyInfo]:
        return [policy.info for policy in self.policies()]


def plan_budget(request: PlanRequest, planned: PlannedLines, info: PolicyInfo) -> int:
    """Lines per row ``planned`` must hold: ``round(W / R)`` for a final plan, the round's budget for an
    intermediate round of a multi-round policy (``info.cascades``, :func:`round_budget`)."""
    if planned.final or info.cascades is None:
        return line_budget(request.width, request.acceleration, request.num_acs)
    return round_budget(request.width, request.acceleration, request.num_acs, info.cascades, request.round)


def validate_plan(request: PlanRequest, planned: PlannedLines, info: PolicyInfo, budget: int) -> None:
    """Check ``planned`` against the contract: per row (each frame of a kt policy) sorted unique ky in
    ``[0, W)``, exactly ``budget`` lines, the ACS block and every acquired line kept. Raises
    ``PlanContractError`` naming the broken rule."""
    kt = info.dims == "kt"
    fixed = fixed_lines(request, budget, per_frame=kt)
    if kt:
        if planned.frame_lines is None or len(planned.frame_lines) != request.frames:
            count = None if planned.frame_lines is None else len(planned.frame_lines)
            raise PlanContractError(f"{info.name}: kt plan has {count} frame line sets for {request.frames}")
        if planned.lines != planned.frame_lines[0]:
            raise PlanContractError(f"{info.name}: kt plan's lines differ from frame 0's lines")
        rows = planned.frame_lines
    else:
        if planned.frame_lines is not None:
            raise PlanContractError(f"{info.name}: a 1d policy returned per-frame lines")
        rows = (planned.lines,)
    for frame, row in enumerate(rows):
        if list(row) != sorted(set(row)) or (row and not 0 <= row[0] <= row[-1] < request.width):
            raise PlanContractError(f"{info.name}: frame {frame} lines are not sorted unique ky in [0, W)")
        if len(row) != budget:
            raise PlanContractError(f"{info.name}: frame {frame} has {len(row)} lines, R needs {budget}")
        missing = sorted(set(map(int, fixed[frame].nonzero()[0])) - set(row))
        if missing:
            raise PlanContractError(f"{info.name}: frame {frame} drops acquired/ACS lines {missing}")


def warmup_request(info: PolicyInfo, now_ms: float) -> PlanRequest:
    """A small valid request for ``info``'s policy (its width or 128, its first R or 4, 4 frames for kt)."""
    width = info.width or 128
    acceleration = info.accelerations[0] if info.accelerations else 4.0
    budget = max(1, round(width / acceleration))
    return PlanRequest(
        scan_id=WARMUP_SCAN_ID,
        policy=info.name,
        width=width,
        height=width,
        coils=1,
        frames=4 if info.dims == "kt" else 1,
        acceleration=acceleration,
        num_acs=max(1, min(8, budget // 2)),
        deadline_unix_ms=now_ms + 60_000.0,
    )


class PlanObserver(Protocol):
    """Where the planner reports its metrics (the API layer binds Prometheus)."""

    def plan_done(self, policy: str, outcome: str, seconds: float) -> None: ...

    def deadline_missed(self, stage: str) -> None: ...

    def fallback_served(self, policy: str, reason: str) -> None: ...

    def queue_waited(self, seconds: float) -> None: ...

    def slots_changed(self, inflight: int, queued: int) -> None: ...


class NullObserver:
    """Discards every report."""

    def plan_done(self, policy: str, outcome: str, seconds: float) -> None:
        return None

    def deadline_missed(self, stage: str) -> None:
        return None

    def fallback_served(self, policy: str, reason: str) -> None:
        return None

    def queue_waited(self, seconds: float) -> None:
        return None

    def slots_changed(self, inflight: int, queued: int) -> None:
        return None


class Planner:
    """Serves plan requests from ``registry`` with at most ``max_inflight`` plans computing at once."""

    def __init__(
        self,
        registry: PolicyRegistry,
        *,
        max_inflight: int = 8,
        max_queued: int = 64,
        observer: PlanObserver | None = None,
        clock_ms: Callable[[], float] = wall_clock_ms,
    ) -> None:
        if max_inflight < 1 or max_queued < 0:
            raise InvalidInputError(f"need max_inflight >= 1, max_queued >= 0: {max_inflight}, {max_queued}")
        self.registry = registry
        self.max_queued = max_queued
        self._slots = asyncio.Semaphore(max_inflight)
        self._observer: PlanObserver = observer or NullObserver()
        self._clock_ms = clock_ms
        self._inflight = 0
        self._queued = 0
        self._degradable_of: dict[int, tuple[Policy, DegradablePolicy | None]] = {}

    async def plan(self, request: PlanRequest) -> PlanResponse:
        """Plan ``request``: the complete line set (``round(W / R)`` lines, ACS and acquired kept).

        Raises ``DeadlineExceededError`` (504) when late at any stage, ``UnknownPolicyError`` (404),
        ``InvalidAccelerationError`` (422) for an impossible R, and ``PlanContractError`` (500) when a
        policy's answer breaks the contract.
        """
        started = time.perf_counter()
        label, outcome = "unknown", "internal-error"
        try:
            check_deadline(request, "admission", self._clock_ms())
            policy = self.registry.get(request.policy)
            label = policy.name
            line_budget(request.width, request.acceleration, request.num_acs)  # 422 before any work
            planned = await self._plan_in_slot(policy, request)
            validate_plan(request, planned, policy.info, plan_budget(request, planned, policy.info))
            outcome = "ok"
            if planned.fallback is not None:
                outcome = "fallback"
                self._observer.fallback_served(policy.name, planned.fallback)
                if planned.fallback == MODEL_LATE:
                    self._observer.deadline_missed("inference")
            return PlanResponse(
                scan_id=request.scan_id,
                policy=policy.name,
                lines=planned.lines,
                frame_lines=planned.frame_lines,
                round=request.round,
                final=planned.final,
                degraded=planned.degraded,
                reason=planned.reason,
                served_by=planned.served_by or policy.info.served_by,
                elapsed_ms=(time.perf_counter() - started) * 1000.0,
            )
        except DeadlineExceededError as err:
            outcome = err.slug
            self._observer.deadline_missed(str(err.extra.get("stage", "unknown")))
            raise
        except KadaptError as err:
            outcome = err.slug
            raise
        finally:
            self._observer.plan_done(label, outcome, time.perf_counter() - started)

    def warm_up(self, policy: Policy) -> None:
        """Run one small plan through ``policy`` and check it (blocking; call from a thread). A
        :class:`DegradablePolicy` plans its own ``warmup_request`` a few times (first ORT runs allocate)
        and fails warm-up with a ``BundleError`` when its model does not answer."""
        degradable = isinstance(policy, DegradablePolicy)
        if isinstance(policy, DegradablePolicy):
            request = policy.warmup_request(self._clock_ms())
        else:
            request = warmup_request(policy.info, self._clock_ms())
        for _ in range(WARMUP_RUNS if degradable else 1):
            planned = policy.plan(request, self._clock_ms())
            validate_plan(request, planned, policy.info, plan_budget(request, planned, policy.info))
            if planned.degraded:
                raise BundleError(f"warm-up of policy {policy.name!r} fell back: {planned.reason}")

    async def _plan_in_slot(self, policy: Policy, request: PlanRequest) -> PlannedLines:
        await self._acquire_slot(request)
        self._inflight += 1
        self._report_slots()
        task: asyncio.Future[PlannedLines] | None = None
        try:
            check_deadline(request, "dequeue", self._clock_ms())
            task = asyncio.ensure_future(asyncio.to_thread(self._compute, policy, request))
            degradable = self._degradable(policy)
            margin_s = degradable.fallback_margin_ms / 1000.0 if degradable is not None else 0.0
            done, _ = await asyncio.wait({task}, timeout=max(0.0, self._seconds_left(request) - margin_s))
            if task not in done and degradable is not None:
                # The fallback is a cheap fixed mask: made here, it is out before the deadline.
                return degradable.fallback_plan(
                    request,
                    MODEL_LATE,
                    f"the model was still running {degradable.fallback_margin_ms} ms before the deadline",
                )
            if task not in done:
                raise DeadlineExceededError(
                    f"policy {policy.name!r} still computing scan {request.scan_id!r} at its deadline",
                    stage="result",
                )
            return task.result()
        finally:
            if task is None or task.done():
                self._release_slot()
            else:
                # The thread cannot be interrupted; its slot stays taken until it really ends.
                task.add_done_callback(self._release_after_abandoned)

    async def _acquire_slot(self, request: PlanRequest) -> None:
        if self._slots.locked() and self._queued >= self.max_queued:
            # Back-pressure: the caller (the gateway) serves its fallback now rather than at the deadline.
            raise OverloadedError(f"{self._queued} plans already wait for a compute slot", retry_after_s=1)
        self._queued += 1
        self._report_slots()
        waited_from = time.perf_counter()
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: returns without yielding
            self._queued -= 1
            self._observer.queue_waited(time.perf_counter() - waited_from)
            return
        acquiring = asyncio.ensure_future(self._slots.acquire())
        acquired = False
        try:
            done, _ = await asyncio.wait({acquiring}, timeout=self._seconds_left(request))
            acquired = acquiring in done
        finally:
            self._queued -= 1
            self._observer.queue_waited(time.perf_counter() - waited_from)
            if not acquired:  # timed out, or this request was cancelled while waiting
                if acquiring.done():
                    self._return_unused_slot(acquiring)
                else:
                    acquiring.cancel()
                    # A cancel can lose the race against a release: give such a slot straight back.
                    acquiring.add_done_callback(self._return_unused_slot)
            self._report_slots()
        if not acquired:
            raise DeadlineExceededError(
                f"plan for scan {request.scan_id!r} waited for a compute slot until its deadline",
                stage="queue",
            )

    def _degradable(self, policy: Policy) -> DegradablePolicy | None:
        """``policy`` when it is a :class:`DegradablePolicy`, else ``None``; remembered per policy
        object, because ``isinstance`` against a runtime-checkable protocol walks its members (about
        0.1 ms per plan under load, profiled)."""
        cached = self._degradable_of.get(id(policy))
        if cached is None or cached[0] is not policy:
            cached = (policy, policy if isinstance(policy, DegradablePolicy) else None)
            self._degradable_of[id(policy)] = cached
        return cached[1]

    def _compute(self, policy: Policy, request: PlanRequest) -> PlannedLines:
        check_deadline(request, "compute", self._clock_ms())
        return policy.plan(request, self._clock_ms())

    def _seconds_left(self, request: PlanRequest) -> float:
        return max(0.0, (request.deadline_unix_ms - self._clock_ms()) / 1000.0)

    def _release_slot(self) -> None:
        self._inflight -= 1
        self._slots.release()
        self._report_slots()

    def _release_after_abandoned(self, task: asyncio.Future[PlannedLines]) -> None:
        if not task.cancelled():
            task.exception()  # mark retrieved: nobody awaits an abandoned plan
        self._release_slot()

    def _return_unused_slot(self, acquiring: asyncio.Future[Any]) -> None:
        if not acquiring.cancelled() and acquiring.exception() is None:
            self._slots.release()

    def _report_slots(self) -> None:
        self._observer.slots_changed(self._inflight, self._queued)
