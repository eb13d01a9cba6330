"""The deadline-aware planner: admission / queue / dequeue / result drops, the in-flight bound, metrics."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kadapt.bundles import read_manifest
from kadapt.errors import (
    DeadlineExceededError,
    InvalidAccelerationError,
    InvalidInputError,
    OverloadedError,
    PlanContractError,
    UnknownPolicyError,
)
from kadapt.masks import mask_families
from kadapt.sampler.domain.planner import Planner, PolicyRegistry
from kadapt.sampler.domain.policies import FixedFamilyPolicy, PlannedLines, PolicyInfo
from kadapt.schemas import PlanRequest

RequestFactory = Callable[..., PlanRequest]


class RecordingObserver:
    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.stages: Counter[str] = Counter()
        self.queue_waits: list[float] = []
        self.slots: list[tuple[int, int]] = []

    def plan_done(self, policy: str, outcome: str, seconds: float) -> None:
        self.outcomes[(policy, outcome)] += 1

    def deadline_missed(self, stage: str) -> None:
        self.stages[stage] += 1

    def queue_waited(self, seconds: float) -> None:
        self.queue_waits.append(seconds)

    def slots_changed(self, inflight: int, queued: int) -> None:
        self.slots.append((inflight, queued))


def family_registry(*extra: object) -> PolicyRegistry:
    registry = PolicyRegistry([FixedFamilyPolicy(mask_families()["vd-random"])])
    for policy in extra:
        registry.add(policy)  # type: ignore[arg-type]
    return registry


async def test_plan_answers_with_the_complete_line_set(plan_request: RequestFactory) -> None:
    observer = RecordingObserver()
    planner = Planner(family_registry(), observer=observer)
    response = await planner.plan(plan_request(scan_id="s", round=2, acquired=(0, 1)))
    assert len(response.lines) == 32
    assert {0, 1, *range(56, 72)} <= set(response.lines)
    assert (response.policy, response.served_by, response.round) == ("vd-random", "vd-random", 2)
    assert response.frame_lines is None
    assert not response.degraded
    assert response.elapsed_ms > 0
    assert observer.outcomes == {("vd-random", "ok"): 1}
    assert observer.slots[-1] == (0, 0)


async def test_past_deadline_is_dropped_at_admission(plan_request: RequestFactory) -> None:
    observer = RecordingObserver()
    planner = Planner(family_registry(), observer=observer)
    with pytest.raises(DeadlineExceededError, match="admission") as info:
        await planner.plan(plan_request(deadline_unix_ms=time.time() * 1000 - 1))
    assert info.value.extra["stage"] == "admission"
    assert observer.stages == {"admission": 1}
    assert observer.outcomes == {("unknown", "deadline-exceeded"): 1}


async def test_errors_are_counted_by_slug(plan_request: RequestFactory) -> None:
    observer = RecordingObserver()
    planner = Planner(family_registry(), observer=observer)
    with pytest.raises(UnknownPolicyError, match="'nope'"):
        await planner.plan(plan_request(policy="nope"))
    with pytest.raises(InvalidAccelerationError):
        await planner.plan(plan_request(acceleration=32.0))
    assert observer.outcomes == {("unknown", "policy-not-found"): 1, ("vd-random", "invalid-acceleration"): 1}


async def test_deadline_passing_while_queued_is_dropped(
    plan_request: RequestFactory, gated_policy: Any
) -> None:
    observer = RecordingObserver()
    planner = Planner(family_registry(gated_policy), max_inflight=1, observer=observer)
    first = asyncio.create_task(planner.plan(plan_request(policy="slow", scan_id="first")))
    await asyncio.to_thread(gated_policy.started.wait, 5.0)

    started = time.perf_counter()
    with pytest.raises(DeadlineExceededError, match="compute slot") as info:
        await planner.plan(plan_request(scan_id="queued", deadline_unix_ms=time.time() * 1000 + 100))
    waited = time.perf_counter() - started
    assert info.value.extra["stage"] == "queue"
    assert 0.05 < waited < 1.0  # cut at the deadline, not after the slow plan
    assert gated_policy.calls == 1  # the queued request never reached a policy

    gated_policy.gate.set()
    assert len((await first).lines) == 32
    assert observer.stages == {"queue": 1}
    # the slot freed by the first plan serves the next request at once
    assert len((await planner.plan(plan_request())).lines) == 32


async def test_plan_still_computing_at_the_deadline_answers_at_once(
    plan_request: RequestFactory, gated_policy: Any
) -> None:
    observer = RecordingObserver()
    planner = Planner(family_registry(gated_policy), max_inflight=1, observer=observer)
    started = time.perf_counter()
    with pytest.raises(DeadlineExceededError, match="still computing") as info:
        await planner.plan(plan_request(policy="slow", deadline_unix_ms=time.time() * 1000 + 100))
    assert time.perf_counter() - started < 1.0
    assert info.value.extra["stage"] == "result"
    assert observer.slots[-1] == (1, 0)  # the abandoned thread still holds its slot

    gated_policy.gate.set()
    for _ in range(200):
        if observer.slots[-1] == (0, 0):
            break
        await asyncio.sleep(0.01)
    assert observer.slots[-1] == (0, 0)
    assert len((await planner.plan(plan_request())).lines) == 32


async def test_inflight_is_bounded(plan_request: RequestFactory, gated_policy: Any) -> None:
    planner = Planner(family_registry(gated_policy), max_inflight=2)
    tasks = [
        asyncio.create_task(planner.plan(plan_request(policy="slow", scan_id=f"s{i}"))) for i in range(5)
    ]
    await asyncio.sleep(0.2)
    assert gated_policy.running == 2
    gated_policy.gate.set()
    responses = await asyncio.gather(*tasks)
    assert [r.scan_id for r in responses] == [f"s{i}" for i in range(5)]
    assert gated_policy.most_running == 2


class BrokenPolicy:
    """Returns too few lines, to prove the planner checks every answer."""

    info = PolicyInfo(
        name="broken", kind="test-double", dims="1d", population=False, description="", served_by="b"
    )
    name = "broken"

    def plan(self, request: PlanRequest, now_ms: float) -> PlannedLines:
        return PlannedLines(lines=(1, 2, 3))


async def test_contract_violations_are_caught(plan_request: RequestFactory) -> None:
    planner = Planner(family_registry(BrokenPolicy()))
    with pytest.raises(PlanContractError, match="broken: frame 0"):
        await planner.plan(plan_request(policy="broken"))


def test_registry_reports_bad_bundles_without_raising(tmp_path: Path, repo_models: Path) -> None:
    shutil.copytree(repo_models / "centre-weighted", tmp_path / "centre-weighted")
    shutil.copytree(repo_models / "centre-weighted", tmp_path / "tampered")
    manifest_path = tmp_path / "tampered" / "1" / "manifest.json"
    manifest_path.write_text(manifest_path.read_text().replace('"centre-weighted"', '"tampered"'))
    (tmp_path / "tampered" / "1" / "mask.npy").write_bytes(b"not the mask")
    kinds = (("recon-model", "modl"), ("mnet-model", "mnet"), ("ads-model", "ads"))
    kinds += (("vd-random", "fixed-mask"),)
    for name, kind in kinds:
        shutil.copytree(repo_models / "centre-weighted", tmp_path / name)
        path = tmp_path / name / "1" / "manifest.json"
        path.write_text(
            path.read_text().replace('"centre-weighted"', f'"{name}"').replace('"fixed-mask"', f'"{kind}"')
        )
        assert read_manifest(path.parent).kind == kind

    registry = PolicyRegistry.from_sources(tmp_path)

    names = [p.name for p in registry.policies()]
    assert {"centre-weighted", "vd-random"} <= set(names)
    assert not {"tampered", "recon-model", "mnet-model", "ads-model"} & set(names)
    assert set(registry.failures) == {"tampered/1", "vd-random/1", "mnet-model/1", "ads-model/1"}
    assert registry.failures["tampered/1"].startswith("checksum-mismatch: ")
    assert "mask family" in registry.failures["vd-random/1"]
    assert "mnet geometry needs kx and coils" in registry.failures["mnet-model/1"]  # a mask, not a model
    assert "training.ads must be an object" in registry.failures["ads-model/1"]  # ads bundles are served now
    assert registry.skipped == {}
    with pytest.raises(InvalidInputError, match="'poisson-2d'"):
        registry.get("poisson-2d")


async def test_deadline_passing_on_the_way_to_a_slot_is_dropped_at_dequeue(
    plan_request: RequestFactory, gated_policy: Any
) -> None:
    offset = [0.0]
    observer = RecordingObserver()
    planner = Planner(
        family_registry(gated_policy),
        max_inflight=1,
        observer=observer,
        clock_ms=lambda: time.time() * 1000 + offset[0],
    )
    first = asyncio.create_task(
        planner.plan(plan_request(policy="slow", deadline_unix_ms=time.time() * 1e3 + 1e6))
    )
    await asyncio.to_thread(gated_policy.started.wait, 5.0)
    queued = asyncio.create_task(planner.plan(plan_request(deadline_unix_ms=time.time() * 1000 + 2_000)))
    await asyncio.sleep(0.05)
    offset[0] = 10_000.0  # the clock jumps past the queued request's deadline while it waits
    gated_policy.gate.set()
    await first
    with pytest.raises(DeadlineExceededError) as info:
        await queued
    assert info.value.extra["stage"] == "dequeue"
    assert observer.stages == {"dequeue": 1}
    assert observer.slots[-1] == (0, 0)


async def test_cancelled_queued_request_gives_its_slot_back(
    plan_request: RequestFactory, gated_policy: Any
) -> None:
    observer = RecordingObserver()
    planner = Planner(family_registry(gated_policy), max_inflight=1, observer=observer)
    first = asyncio.create_task(planner.plan(plan_request(policy="slow")))
    await asyncio.to_thread(gated_policy.started.wait, 5.0)
    queued = asyncio.create_task(planner.plan(plan_request()))
    await asyncio.sleep(0.05)
    assert observer.slots[-1] == (1, 1)
    queued.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await queued
    gated_policy.gate.set()
    await first
    for _ in range(3):  # one slot, reused: nothing leaked, nothing over-released
        assert len((await planner.plan(plan_request())).lines) == 32
    assert observer.slots[-1] == (0, 0)
    assert planner._slots._value == 1  # type: ignore[attr-defined]  # exactly max_inflight free again


async def test_requests_beyond_max_queued_are_refused_at_once(
    plan_request: RequestFactory, gated_policy: Any
) -> None:
    """Back-pressure: one plan computing, one waiting (``max_queued=1``): the next is refused at once
    with 503 ``overloaded`` instead of waiting for its deadline, and the waiting one is still served."""
    observer = RecordingObserver()
    planner = Planner(family_registry(gated_policy), max_inflight=1, max_queued=1, observer=observer)
    first = asyncio.create_task(planner.plan(plan_request(policy="slow", scan_id="first")))
    await asyncio.to_thread(gated_policy.started.wait, 5.0)
    waiting = asyncio.create_task(planner.plan(plan_request(scan_id="waiting")))
    while observer.slots[-1] != (1, 1):
        await asyncio.sleep(0.001)

    with pytest.raises(OverloadedError, match="1 plans already wait") as info:  # not DeadlineExceeded
        await planner.plan(plan_request(scan_id="refused"))
    assert info.value.status == 503
    assert info.value.headers() == {"retry-after": "1"}
    assert observer.outcomes[("vd-random", "overloaded")] == 1

    gated_policy.gate.set()
    assert len((await first).lines) == 32
    assert len((await waiting).lines) == 32
