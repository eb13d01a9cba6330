"""Shared helpers for the sampler tests: request builders, the shipped model repository, policy doubles."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from kadapt.masks import line_budget
from kadapt.sampler.domain.policies import PlannedLines, PolicyInfo, complete_plan, fixed_lines
from kadapt.schemas import PlanRequest

REPO_MODELS = Path(__file__).resolve().parents[3] / "models"


def now_ms() -> float:
    return time.time() * 1000.0


def build_plan_request(**changes: object) -> PlanRequest:
    """A valid request (vd-random, W=128, R=4, 16 ACS, 1 s deadline) with ``changes`` applied."""
    fields: dict[str, object] = {
        "scan_id": "scan-1",
        "policy": "vd-random",
        "width": 128,
        "height": 128,
        "coils": 4,
        "acceleration": 4.0,
        "num_acs": 16,
        "deadline_unix_ms": now_ms() + 5_000.0,
    }
    fields.update(changes)
    return PlanRequest(**fields)  # type: ignore[arg-type]


class GatedPolicy:
    """A test double: blocks in ``plan`` until ``gate`` is set (at most 10 s), then returns the centre-out
    plan. ``started`` is set when a plan begins; ``calls`` counts plans."""

    def __init__(self, name: str = "slow") -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.calls = 0
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()
        self._info = PolicyInfo(
            name=name, kind="test-double", dims="1d", population=False, description="gated", served_by=name
        )

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def info(self) -> PolicyInfo:
        return self._info

    def plan(self, request: PlanRequest, now_ms: float) -> PlannedLines:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.started.set()
        try:
            self.gate.wait(timeout=10.0)
            budget = line_budget(request.width, request.acceleration, request.num_acs)
            planned = complete_plan(
                np.zeros(request.width), fixed_lines(request, budget, per_frame=False), budget
            )
            return PlannedLines(lines=planned.lines)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def gated_policy() -> Iterator[GatedPolicy]:
    policy = GatedPolicy()
    yield policy
    policy.gate.set()  # never leave a worker thread blocked


@pytest.fixture
def plan_request() -> Callable[..., PlanRequest]:
    """Factory of valid requests (vd-random, W=128, R=4, 16 ACS, 5 s deadline); keywords override."""
    return build_plan_request


@pytest.fixture
def repo_models() -> Path:
    """The repository's ``models/`` directory (the shipped demo bundles)."""
    return REPO_MODELS
