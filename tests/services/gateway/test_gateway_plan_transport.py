"""The gateway's sampler client in both plan transports against the real sampler app in-process
(``httpx.ASGITransport``) serving a small ``mnet`` bundle: a request with ACS goes out as
``application/x-kadapt-plan`` by default and as JSON with ``binary_acs=False``, and both get the same plan."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from kadapt.gateway.domain.planning import PlanContext, Planner
from kadapt.masks import acs_lines
from kadapt.sampler.api.app import create_app as create_sampler
from kadapt.sampler.settings import SamplerSettings
from kadapt.schemas import ScanGeometry, ScanPolicy
from kadapt.schemas.plan_binary import PLAN_BINARY_MEDIA_TYPE

NAME = "mnet-gateway"
GEOMETRY = ScanGeometry(slices=1, frames=1, coils=2, height=16, width=64, readout_samples=32)


@pytest.fixture(scope="module")
def repository(tiny_mnet_repository: Callable[..., Path]) -> Path:
    return tiny_mnet_repository(NAME, 5)


def context(seed: int) -> PlanContext:
    rng = np.random.default_rng(seed)
    acs = (rng.standard_normal((2, 16, 8)) + 1j * rng.standard_normal((2, 16, 8))).astype(np.complex64)
    buffer = io.BytesIO()
    np.save(buffer, acs, allow_pickle=False)
    policy = ScanPolicy.model_validate({"sampler": NAME, "num_acs": 8, "acceleration": 4.0})
    return PlanContext(
        scan_id=f"scan-{seed}",
        policy=policy,
        geometry=GEOMETRY,
        acquired=tuple(int(ky) for ky in acs_lines(64, 8)),
        round=0,
        deadline_unix_ms=time.time() * 1000.0 + 5_000.0,
        acs_npy=buffer.getvalue(),
    )


async def test_binary_and_json_transports_get_the_same_mnet_plan(repository: Path) -> None:
    sampler = create_sampler(SamplerSettings(model_repository=repository))
    seen: list[str] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request.headers["content-type"])

    async with (
        sampler.router.lifespan_context(sampler),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=sampler),
            base_url="http://sampler",
            event_hooks={"request": [record]},
        ) as client,
    ):
        binary = Planner(client, sampler_url="http://sampler")
        json_only = Planner(client, sampler_url="http://sampler", binary_acs=False)
        for seed in range(3):
            fast = await binary.plan(context(seed))
            slow = await json_only.plan(context(seed))
            assert not fast.degraded, fast.reason
            assert not slow.degraded, slow.reason
            assert fast.served_by == f"{NAME}/1"
            assert fast.lines == slow.lines
    assert seen == [PLAN_BINARY_MEDIA_TYPE, "application/json"] * 3


def test_requests_without_acs_stay_json() -> None:
    ctx = context(0)
    no_acs = PlanContext(**{**ctx.__dict__, "acs_npy": None})
    body, content_type = no_acs.body(binary_acs=True)
    assert content_type == "application/json"
    assert b'"acs_npy_b64":null' in body
    framed, binary_type = ctx.body(binary_acs=True)
    assert binary_type == PLAN_BINARY_MEDIA_TYPE
    assert framed.startswith(b"KPL1")
    assert len(framed) < len(ctx.body(binary_acs=False)[0])
