"""The recon app in-process (httpx.ASGITransport, lifespan run by hand): health, readiness, metrics,
methods, jobs, problem+json."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from kadapt.errors import PROBLEM_BASE
from kadapt.jobs.queue import MemoryJobQueue
from kadapt.jobs.redis_queue import RedisJobQueue
from kadapt.recon.api.app import create_app
from kadapt.recon.settings import ReconSettings

from .conftest import serve, settings_for

PROBLEM = "application/problem+json"


async def poll_job(client: httpx.AsyncClient, job_id: str, timeout_s: float = 30.0) -> httpx.Response:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        response = await client.get(f"/v1/jobs/{job_id}")
        if response.status_code != 404 or asyncio.get_running_loop().time() > deadline:
            return response
        await asyncio.sleep(0.02)


async def test_health_methods_and_a_job_round_trip(tmp_path: Path, stage_job: Callable[..., Any]) -> None:
    queue = MemoryJobQueue()
    app = create_app(settings_for(tmp_path), queue=queue)
    async with serve(app) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "workers": 1, "auth": "disabled"}

        methods = (await client.get("/v1/methods")).json()
        assert [m["name"] for m in methods] == ["zero-filled", "sense", "cg-sense", "l1-wavelet"]
        assert [m["name"] for m in methods if m["fallback"]] == ["cg-sense"]
        assert all(m["kind"] == "classic" and m["description"] for m in methods)

        job = stage_job("api-job", method="sense", outputs=("npy", "png")).job
        accepted = await client.post("/v1/jobs", content=job.model_dump_json())
        assert accepted.status_code == 202
        assert accepted.json()["status"] == "queued"
        assert accepted.json()["method_used"] is None  # chosen by the worker once the data is loaded

        done = await poll_job(client, "api-job")
        assert done.status_code == 200
        body = done.json()
        assert (body["status"], body["method_used"], body["deliveries"]) == ("done", "sense", 1)
        assert Path(body["images_path"]).is_relative_to((tmp_path / "blobs").resolve())

        metrics = await client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'kadapt_recon_jobs_total{status="done"} 1.0' in metrics.text
        assert "kadapt_recon_job_seconds_bucket" in metrics.text
    assert await queue.ping() is True  # a queue passed in belongs to the caller: not closed


async def test_problem_json_for_errors(tmp_path: Path, stage_job: Callable[..., Any]) -> None:
    app = create_app(settings_for(tmp_path), queue=MemoryJobQueue(), run_worker=False)
    async with serve(app) as client:
        missing = await client.get("/v1/jobs/nope")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == PROBLEM
        assert missing.json()["type"] == PROBLEM_BASE + "not-found"
        assert "'nope'" in missing.json()["detail"]
        assert missing.json()["instance"] == "/v1/jobs/nope"

        job = stage_job("j").job
        unknown = await client.post(
            "/v1/jobs", content=job.model_copy(update={"method": "grappa"}).model_dump_json()
        )
        assert unknown.status_code == 404
        assert unknown.json()["type"] == PROBLEM_BASE + "recon-method-not-found"

        escape = await client.post(
            "/v1/jobs", content=job.model_copy(update={"kspace_path": "/etc/passwd"}).model_dump_json()
        )
        assert escape.status_code == 400
        assert escape.json()["type"] == PROBLEM_BASE + "invalid-input"

        invalid = await client.post("/v1/jobs", json={**job.model_dump(mode="json"), "num_acs": "many"})
        assert invalid.status_code == 422
        assert invalid.headers["content-type"] == PROBLEM
        assert invalid.json()["type"] == PROBLEM_BASE + "invalid-input"
        assert invalid.json()["errors"][0]["loc"] == ["body", "num_acs"]

        route = await client.get("/v2/nothing")
        assert route.status_code == 404
        assert route.headers["content-type"] == PROBLEM
        assert route.json()["type"] == PROBLEM_BASE + "not-found"


async def test_readiness_follows_the_queue(tmp_path: Path) -> None:
    queue = MemoryJobQueue()
    app = create_app(settings_for(tmp_path), queue=queue)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://recon") as client:
        not_started = await client.get("/readyz")  # lifespan not run: no queue, no worker
        assert not_started.status_code == 503
        assert not_started.json()["type"] == PROBLEM_BASE + "service-unavailable"
    async with serve(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        await queue.close()
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.headers["content-type"] == PROBLEM
        assert "does not answer" in down.json()["detail"]


async def test_workers_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KADAPT_RECON_WORKERS", "2")
    monkeypatch.setenv("KADAPT_RECON_CONSUMER", "host-7")
    monkeypatch.setenv("KADAPT_RECON_BLOB_DIR", str(tmp_path / "blobs"))
    monkeypatch.setenv("KADAPT_RECON_BLOCK_MS", "20")
    monkeypatch.setenv("KADAPT_RECON_COIL_MAPS", "acs")
    # An empty repository: the default (models/) now holds learned bundles, listed in /readyz.
    monkeypatch.setenv("KADAPT_RECON_MODEL_REPOSITORY", str(tmp_path / "models"))
    settings = ReconSettings()
    assert (settings.workers, settings.redis_url, settings.max_deliveries, settings.coil_maps) == (
        2,
        None,
        3,
        "acs",
    )
    app = create_app(settings)  # no queue, no redis_url: in-memory
    async with serve(app) as client:
        assert (await client.get("/readyz")).json() == {"status": "ready", "workers": 2, "auth": "disabled"}
        runtime = app.state.runtime
        assert isinstance(runtime.queue, MemoryJobQueue)
        assert [w.consumer for w in runtime.workers] == ["host-7-0", "host-7-1"]
    assert runtime.tasks == []


@pytest.mark.integration
async def test_redis_backed_app(tmp_path: Path, stage_job: Callable[..., Any], redis_server: Any) -> None:
    app = create_app(settings_for(tmp_path, redis_url=redis_server.url))
    async with serve(app) as client:
        assert isinstance(app.state.runtime.queue, RedisJobQueue)
        assert (await client.get("/readyz")).status_code == 200
        job = stage_job("redis-api", method="zero-filled").job
        assert (await client.post("/v1/jobs", content=job.model_dump_json())).status_code == 202
        done = await poll_job(client, "redis-api")
        assert done.json()["status"] == "done"
        redis_server.stop()
        assert (await client.get("/readyz")).status_code == 503
