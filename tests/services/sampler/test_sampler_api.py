"""The sampler's HTTP API in-process (httpx ASGITransport), start-up run through the app's lifespan."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from kadapt.errors import PROBLEM_BASE
from kadapt.masks import mask_families
from kadapt.sampler.api import create_app
from kadapt.sampler.domain.planner import PolicyRegistry
from kadapt.sampler.domain.policies import FixedFamilyPolicy, PlannedLines, PolicyInfo
from kadapt.sampler.settings import SamplerSettings
from kadapt.schemas import PlanRequest, PlanResponse

RequestFactory = Callable[..., PlanRequest]
PROBLEM_JSON = "application/problem+json"


def now_ms() -> float:
    return time.time() * 1000.0


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (lifespan entered) with a client on it."""
    async with app.router.lifespan_context(app), client_for(app) as client:
        yield client


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sampler")


def body(request: PlanRequest) -> dict[str, Any]:
    return request.model_dump(mode="json")


def metric_value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    raise AssertionError(f"no sample {name}{labels} in /metrics")


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem: dict[str, Any] = response.json()
    assert problem["type"] == PROBLEM_BASE + slug
    assert problem["status"] == status
    return problem


@pytest.fixture
def settings(repo_models: Path) -> SamplerSettings:
    return SamplerSettings(model_repository=repo_models, max_inflight=4, warmup=True)


async def test_readyz_is_503_until_warm_then_200(settings: SamplerSettings) -> None:
    app = create_app(settings)
    async with client_for(app) as client:
        before = await client.get("/readyz")
        problem = assert_problem(before, 503, "service-unavailable")
        assert problem["warm"] is False
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert_problem(await client.get("/v1/policies"), 503, "service-unavailable")
        async with app.router.lifespan_context(app):
            after = await client.get("/readyz")
            assert after.status_code == 200
            assert after.json()["status"] == "ready"
            assert {"vd-random", "centre-weighted"} <= set(after.json()["policies"])
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "kadapt_sampler_ready") == 1.0


async def test_plan_round_trip(settings: SamplerSettings, plan_request: RequestFactory) -> None:
    async with running(create_app(settings)) as client:
        response = await client.post("/v1/plan", json=body(plan_request(acquired=[3, 120])))
        assert response.status_code == 200, response.text
        plan = PlanResponse.model_validate_json(response.text)
        assert len(plan.lines) == 32
        assert {3, 120, *range(56, 72)} <= set(plan.lines)
        assert plan.served_by == "vd-random"
        again = PlanResponse.model_validate_json(
            (await client.post("/v1/plan", json=body(plan_request()))).text
        )
        assert (
            again.lines
            == PlanResponse.model_validate_json(
                (await client.post("/v1/plan", json=body(plan_request()))).text
            ).lines
        )

        bundle = await client.post("/v1/plan", json=body(plan_request(policy="centre-weighted")))
        assert bundle.status_code == 200, bundle.text
        assert bundle.json()["served_by"] == "centre-weighted/1"

        kt_family = next(n for n, f in mask_families().items() if f.dims == "kt")
        kt = await client.post("/v1/plan", json=body(plan_request(policy=kt_family, frames=6)))
        assert kt.status_code == 200, kt.text
        assert len(kt.json()["frame_lines"]) == 6


async def test_late_request_is_504_and_counted(
    settings: SamplerSettings, plan_request: RequestFactory
) -> None:
    async with running(create_app(settings)) as client:
        late = await client.post("/v1/plan", json=body(plan_request(deadline_unix_ms=now_ms() - 10)))
        problem = assert_problem(late, 504, "deadline-exceeded")
        assert problem["type"].endswith("deadline-exceeded")
        assert problem["stage"] == "admission"
        assert problem["instance"] == "/v1/plan"
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "kadapt_sampler_deadline_exceeded_total", stage="admission") == 1.0
        assert metric_value(metrics, "kadapt_sampler_deadline_exceeded_total", stage="queue") == 0.0
        assert (
            metric_value(metrics, "kadapt_sampler_plans_total", policy="unknown", outcome="deadline-exceeded")
            == 1.0
        )


async def test_slow_policy_makes_a_queued_request_504(
    repo_models: Path, plan_request: RequestFactory, gated_policy: Any
) -> None:
    registry = PolicyRegistry([FixedFamilyPolicy(mask_families()["vd-random"]), gated_policy])
    settings = SamplerSettings(model_repository=repo_models, max_inflight=1, warmup=False)
    async with running(create_app(settings, registry=registry)) as client:
        first = asyncio.create_task(client.post("/v1/plan", json=body(plan_request(policy="slow"))))
        await asyncio.to_thread(gated_policy.started.wait, 5.0)
        queued = await client.post("/v1/plan", json=body(plan_request(deadline_unix_ms=now_ms() + 150)))
        problem = assert_problem(queued, 504, "deadline-exceeded")
        assert problem["stage"] == "queue"
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "kadapt_sampler_deadline_exceeded_total", stage="queue") == 1.0
        assert metric_value(metrics, "kadapt_sampler_inflight") == 1.0
        gated_policy.gate.set()
        assert (await first).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "kadapt_sampler_plans_total", policy="slow", outcome="ok") == 1.0
        assert metric_value(metrics, "kadapt_sampler_inflight") == 0.0
        assert metric_value(metrics, "kadapt_sampler_queue_wait_seconds_count") == 2.0


async def test_client_errors_are_problem_json(
    settings: SamplerSettings, plan_request: RequestFactory
) -> None:
    async with running(create_app(settings)) as client:
        impossible = await client.post("/v1/plan", json=body(plan_request(acceleration=32.0)))
        assert "R=32" in assert_problem(impossible, 422, "invalid-acceleration")["detail"]

        below_one = {**body(plan_request()), "acceleration": 0.5}
        problem = assert_problem(await client.post("/v1/plan", json=below_one), 422, "invalid-input")
        assert problem["errors"][0]["loc"] == ["body", "acceleration"]

        wrong_type = {**body(plan_request()), "width": "128"}  # strict: no lax coercion
        assert_problem(await client.post("/v1/plan", json=wrong_type), 422, "invalid-input")
        not_json = await client.post("/v1/plan", content=b"{", headers={"content-type": "application/json"})
        assert_problem(not_json, 422, "invalid-input")

        unknown = await client.post("/v1/plan", json=body(plan_request(policy="nope")))
        assert "'nope'" in assert_problem(unknown, 404, "policy-not-found")["detail"]

        point = await client.post("/v1/plan", json=body(plan_request(policy="poisson-2d")))
        assert "'poisson-2d'" in assert_problem(point, 400, "invalid-input")["detail"]

        wrong_width = await client.post(
            "/v1/plan", json=body(plan_request(policy="centre-weighted", width=96))
        )
        assert "W=96" in assert_problem(wrong_width, 422, "geometry-mismatch")["detail"]

        assert_problem(await client.get("/v1/nothing"), 404, "not-found")
        assert_problem(await client.get("/v1/plan"), 405, "method-not-allowed")


async def test_policies_lists_families_and_bundles(settings: SamplerSettings) -> None:
    async with running(create_app(settings)) as client:
        policies = {p["name"]: p for p in (await client.get("/v1/policies")).json()}
    plannable = {n for n, f in mask_families().items() if f.dims != "2d" and not f.population}
    assert plannable <= set(policies)
    assert not {n for n, f in mask_families().items() if f.dims == "2d"} & set(policies)
    bundle = policies["centre-weighted"]
    assert bundle["kind"] == "fixed-mask"
    assert bundle["dims"] == "1d"
    assert bundle["population"] is True
    assert bundle["width"] == 128
    assert set(policies["vd-random"]) >= {"name", "kind", "dims", "population", "description"}


async def test_bad_bundle_fails_readiness_not_startup(tmp_path: Path, repo_models: Path) -> None:
    shutil.copytree(repo_models / "centre-weighted", tmp_path / "centre-weighted")
    (tmp_path / "centre-weighted" / "1" / "mask.npy").write_bytes(b"tampered")
    app = create_app(SamplerSettings(model_repository=tmp_path))
    async with running(app) as client:
        problem = assert_problem(await client.get("/readyz"), 503, "service-unavailable")
        assert problem["warm"] is True
        assert problem["failures"]["centre-weighted/1"].startswith("checksum-mismatch")
        ok = await client.post(
            "/v1/plan",
            json=body(
                PlanRequest(
                    scan_id="s",
                    policy="vd-random",
                    width=64,
                    height=64,
                    coils=1,
                    acceleration=4.0,
                    num_acs=8,
                    deadline_unix_ms=now_ms() + 5000,
                )
            ),
        )
        assert ok.status_code == 200
        assert metric_value((await client.get("/metrics")).text, "kadapt_sampler_ready") == 0.0


class CrashingPolicy:
    info = PolicyInfo(
        name="crashing", kind="test-double", dims="1d", population=False, description="", served_by="c"
    )
    name = "crashing"

    def plan(self, request: PlanRequest, now_ms: float) -> PlannedLines:
        raise RuntimeError("model file corrupt")


async def test_failed_warmup_disables_the_policy_and_readiness(repo_models: Path) -> None:
    registry = PolicyRegistry([CrashingPolicy()])
    app = create_app(SamplerSettings(model_repository=repo_models), registry=registry)
    async with running(app) as client:
        problem = assert_problem(await client.get("/readyz"), 503, "service-unavailable")
        assert "model file corrupt" in problem["failures"]["crashing"]
        assert (await client.get("/v1/policies")).json() == []


async def test_a_policy_bug_is_a_500_problem(repo_models: Path, plan_request: RequestFactory) -> None:
    registry = PolicyRegistry([CrashingPolicy()])
    app = create_app(SamplerSettings(model_repository=repo_models, warmup=False), registry=registry)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://s") as client,
    ):
        response = await client.post("/v1/plan", json=body(plan_request(policy="crashing")))
        problem = assert_problem(response, 500, "internal-error")
        assert "model file corrupt" not in problem["detail"]
        assert "RuntimeError" not in problem["detail"]
        metrics = (await client.get("/metrics")).text
        assert (
            metric_value(metrics, "kadapt_sampler_plans_total", policy="crashing", outcome="internal-error")
            == 1.0
        )
