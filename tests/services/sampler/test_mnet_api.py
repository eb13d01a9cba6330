"""``mnet`` bundles through the sampler app (httpx ASGITransport, lifespan run): readiness after
checksums and warm-up, plans and degraded fallbacks on the wire, and the fallback / deadline metrics."""

from __future__ import annotations

import base64
import io
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from kadapt.bundles import Bundle
from kadapt.masks import acs_lines
from kadapt.sampler.api import create_app
from kadapt.sampler.domain.mnet import MNetServing, open_mnet_session
from kadapt.sampler.domain.planner import PolicyRegistry
from kadapt.sampler.settings import SamplerSettings
from kadapt.schemas import PlanRequest, PlanResponse

NAME = "mnet-tiny"


def now_ms() -> float:
    return time.time() * 1000.0


@pytest.fixture(scope="module")
def repository(tiny_mnet_repository: Callable[..., Path]) -> Path:
    return tiny_mnet_repository(NAME, 1, fallback="equispaced")


def plan_body(**changes: Any) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    acs = (rng.standard_normal((2, 16, 8)) + 1j * rng.standard_normal((2, 16, 8))).astype(np.complex64)
    buffer = io.BytesIO()
    np.save(buffer, acs, allow_pickle=False)
    fields: dict[str, Any] = {
        "scan_id": "scan-1",
        "policy": NAME,
        "width": 64,
        "height": 16,
        "coils": 2,
        "acceleration": 4.0,
        "num_acs": 8,
        "acquired": tuple(int(ky) for ky in acs_lines(64, 8)),
        "deadline_unix_ms": now_ms() + 5_000.0,
        "acs_npy_b64": base64.b64encode(buffer.getvalue()).decode("ascii"),
    }
    fields.update(changes)
    return PlanRequest(**fields).model_dump(mode="json")


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sampler") as client,
    ):
        yield client


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    raise AssertionError(f"no sample {name}{labels} in /metrics")


async def test_ready_after_warm_up_lists_and_serves_the_model(repository: Path) -> None:
    async with running(create_app(SamplerSettings(model_repository=repository))) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert NAME in ready.json()["policies"]
        listed = {entry["name"]: entry for entry in (await client.get("/v1/policies")).json()}
        assert listed[NAME]["kind"] == "mnet"
        assert listed[NAME]["width"] == 64
        assert listed[NAME]["description"].startswith("UNTRAINED")
        response = await client.post("/v1/plan", json=plan_body())
        assert response.status_code == 200, response.text
        plan = PlanResponse.model_validate(response.json())
        assert not plan.degraded
        assert plan.served_by == f"{NAME}/1"
        assert len(plan.lines) == 16
        assert set(acs_lines(64, 8).tolist()) <= set(plan.lines)
        again = PlanResponse.model_validate((await client.post("/v1/plan", json=plan_body())).json())
        assert again.lines == plan.lines


async def test_fallbacks_are_degraded_with_a_reason_and_counted(repository: Path) -> None:
    async with running(create_app(SamplerSettings(model_repository=repository))) as client:
        missing = PlanResponse.model_validate(
            (await client.post("/v1/plan", json=plan_body(acs_npy_b64=None))).json()
        )
        assert missing.degraded
        assert missing.served_by == "equispaced"  # the manifest's declared fallback
        assert missing.reason is not None
        assert missing.reason.startswith("acs-missing")
        wide = plan_body(width=96, acquired=[int(ky) for ky in acs_lines(96, 8)], acs_npy_b64=None)
        other = PlanResponse.model_validate((await client.post("/v1/plan", json=wide)).json())
        assert other.degraded
        assert "W=96 (bundle: 64)" in (other.reason or "")
        assert len(other.lines) == 24
        text = (await client.get("/metrics")).text
        assert metric(text, "kadapt_sampler_fallback_total", policy=NAME, reason="acs-missing") == 1.0
        assert metric(text, "kadapt_sampler_fallback_total", policy=NAME, reason="geometry-mismatch") == 1.0
        assert metric(text, "kadapt_sampler_plans_total", policy=NAME, outcome="fallback") == 2.0
        assert metric(text, "kadapt_sampler_plan_seconds_count", policy=NAME) >= 2.0


class SwitchableDelay:
    """Wraps a real session; sleeps ``delay_s`` before each run (set after warm-up)."""

    def __init__(self, bundle: Bundle, threads: int) -> None:
        self.session = open_mnet_session(bundle, threads)
        self.delay_s = 0.0

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        time.sleep(self.delay_s)
        return list(self.session.run(output_names, input_feed))


async def test_slow_model_gets_the_fallback_within_the_deadline(repository: Path) -> None:
    sessions: list[SwitchableDelay] = []

    def open_session(bundle: Bundle, threads: int) -> SwitchableDelay:
        sessions.append(SwitchableDelay(bundle, threads))
        return sessions[-1]

    serving = MNetServing(margin_ms=20.0, open_session=open_session)
    registry = PolicyRegistry.from_sources(repository, mnet=serving)
    app = create_app(SamplerSettings(model_repository=repository), registry=registry)
    async with running(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        sessions[0].delay_s = 1.0
        body = plan_body(deadline_unix_ms=now_ms() + 200.0)
        response = await client.post("/v1/plan", json=body)
        answered = now_ms()
        assert response.status_code == 200, response.text
        plan = PlanResponse.model_validate(response.json())
        assert answered < body["deadline_unix_ms"]
        assert plan.degraded
        assert (plan.reason or "").startswith("model-late")
        text = (await client.get("/metrics")).text
        assert metric(text, "kadapt_sampler_deadline_exceeded_total", stage="inference") == 1.0
        assert metric(text, "kadapt_sampler_fallback_total", policy=NAME, reason="model-late") == 1.0
        sessions[0].delay_s = 0.0


async def test_checksum_mismatch_keeps_the_service_unready(repository: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(repository, repo)
    model = repo / NAME / "1" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"tampered")
    async with running(create_app(SamplerSettings(model_repository=repo))) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["failures"][f"{NAME}/1"].startswith("checksum-mismatch")
        refused = await client.post("/v1/plan", json=plan_body())
        assert refused.status_code == 404  # never served from an unverified file
