"""The recon service's monitoring scraped from ``/metrics`` in-process: queue depth / pending / age /
dead letters (memory queue and a real redis-server), queue wait and run time per job, model load state
and ORT provider; and the blob volume in ``/readyz``."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from kadapt.jobs.queue import MemoryJobQueue
from kadapt.recon.api.app import create_app
from kadapt.recon.domain.learned import BundleStatus
from kadapt.recon.domain.monitoring import ReconGauges, blob_volume_problem

from .conftest import serve, settings_for


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample, None when the series is not exported."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    return None


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


async def wait_done(client: httpx.AsyncClient, job_ids: list[str], timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    for job_id in job_ids:
        while (await client.get(f"/v1/jobs/{job_id}")).status_code == 404:
            assert asyncio.get_running_loop().time() < deadline, f"job {job_id} not done"
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def test_queue_depth_goes_from_two_to_zero_as_a_worker_drains_the_queue(
    tmp_path: Path, stage_job: Callable[..., Any], backend: str, request: pytest.FixtureRequest
) -> None:
    """An API-only replica takes two jobs (depth 2, nothing pending); a worker replica on the same queue
    runs them; then both report depth 0, and the worker has one queue wait and one run time per job."""
    shared: MemoryJobQueue | None = None
    options: dict[str, Any] = {}
    if backend == "redis":
        options["redis_url"] = request.getfixturevalue("redis_server").url
    else:
        shared = MemoryJobQueue()
    api = create_app(settings_for(tmp_path, **options), queue=shared, run_worker=False)
    worker = create_app(settings_for(tmp_path, consumer="drainer", **options), queue=shared)
    async with serve(api) as api_client:
        text = await scrape(api_client)
        assert metric(text, "kadapt_recon_queue_depth") == 0.0
        assert metric(text, "kadapt_recon_oldest_job_age_seconds") == 0.0
        jobs = [stage_job(f"job-{index}").job for index in range(2)]
        for job in jobs:
            assert (await api_client.post("/v1/jobs", content=job.model_dump_json())).status_code == 202
        text = await scrape(api_client)
        assert metric(text, "kadapt_recon_queue_depth") == 2.0
        assert metric(text, "kadapt_recon_queue_pending") == 0.0
        assert metric(text, "kadapt_recon_dead_letters") == 0.0
        age = metric(text, "kadapt_recon_oldest_job_age_seconds")
        assert age is not None
        assert age >= 0.0
        free = metric(text, "kadapt_recon_blob_free_bytes")
        assert free is not None
        assert free > 0

        async with serve(worker) as worker_client:
            await wait_done(worker_client, [job.job_id for job in jobs])
            worker_text = await scrape(worker_client)
        assert metric(worker_text, "kadapt_recon_jobs_total", status="done") == 2.0
        assert metric(worker_text, "kadapt_recon_queue_wait_seconds_count") == 2.0
        assert metric(worker_text, "kadapt_recon_job_seconds_count") == 2.0
        assert metric(worker_text, "kadapt_recon_queue_depth") == 0.0

        text = await scrape(api_client)
        assert metric(text, "kadapt_recon_queue_depth") == 0.0
        assert metric(text, "kadapt_recon_queue_pending") == 0.0
        assert metric(text, "kadapt_recon_oldest_job_age_seconds") == 0.0
        assert metric(text, "kadapt_recon_queue_wait_seconds_count") == 0.0  # this replica ran nothing


async def test_a_closed_queue_keeps_the_last_values_and_counts_the_error(tmp_path: Path) -> None:
    queue = MemoryJobQueue()
    app = create_app(settings_for(tmp_path), queue=queue, run_worker=False)
    async with serve(app) as client:
        await scrape(client)
        await queue.close()
        text = await scrape(client)
        assert metric(text, "kadapt_recon_queue_stats_errors_total") == 1.0
        assert metric(text, "kadapt_recon_queue_depth") == 0.0


async def test_readiness_fails_when_the_blob_volume_cannot_be_written(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "blobs"
    not_a_directory.write_bytes(b"a file where the volume should be")
    app = create_app(settings_for(tmp_path), queue=MemoryJobQueue(), run_worker=False)
    async with serve(app) as client:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert "blob volume" in response.json()["detail"]
        assert "not writable" in response.json()["detail"]
    assert blob_volume_problem(tmp_path / "fresh") is None  # created on demand, probe removed
    assert list((tmp_path / "fresh").iterdir()) == []


async def test_a_refused_bundle_is_reported_as_not_loaded(tmp_path: Path) -> None:
    broken = tmp_path / "models" / "unet-broken" / "3"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text('{"kind": "unet"')  # truncated
    app = create_app(settings_for(tmp_path), queue=MemoryJobQueue(), run_worker=False)
    async with serve(app) as client:
        text = await scrape(client)
    assert metric(text, "kadapt_recon_model_loaded", model="unet-broken", version="3") == 0.0
    assert metric(text, "kadapt_recon_onnx_provider", model="unet-broken") is None


def test_loaded_bundles_export_their_provider() -> None:
    registry = CollectorRegistry()
    gauges = ReconGauges(registry)
    gauges.record_models(
        [
            BundleStatus(
                "modl/2", "loaded", True, providers=("CUDAExecutionProvider", "CPUExecutionProvider")
            ),
            BundleStatus("unet/1", "failed", False, reason="checksum"),
        ]
    )
    value = registry.get_sample_value
    assert value("kadapt_recon_model_loaded", {"model": "modl", "version": "2"}) == 1.0
    assert value("kadapt_recon_model_loaded", {"model": "unet", "version": "1"}) == 0.0
    provider = {"model": "modl", "version": "2", "provider": "CUDAExecutionProvider"}
    assert value("kadapt_recon_onnx_provider", provider) == 1.0
    assert value("kadapt_recon_onnx_provider", {**provider, "provider": "CPUExecutionProvider"}) is None
