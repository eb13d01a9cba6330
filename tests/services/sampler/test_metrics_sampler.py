"""The sampler's model state scraped from ``/metrics`` in-process: ``policy_loaded{policy}`` (1 served,
0 refused), ``onnx_provider{model,version,provider}`` for an ``mnet`` bundle, latency buckets."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from kadapt.sampler.api import create_app
from kadapt.sampler.settings import SamplerSettings

NAME = "mnet-metrics"


@pytest.fixture(scope="module")
def repository(tiny_mnet_repository: Callable[..., Path]) -> Path:
    return tiny_mnet_repository(NAME, 3, fallback="equispaced")


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sampler") as client,
    ):
        yield client


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample, None when the series is not exported."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    return None


async def test_a_loaded_mnet_bundle_reports_its_provider(repository: Path) -> None:
    async with running(create_app(SamplerSettings(model_repository=repository))) as client:
        assert (await client.get("/readyz")).status_code == 200
        text = (await client.get("/metrics")).text
    assert metric(text, "kadapt_sampler_policy_loaded", policy=NAME) == 1.0
    assert metric(text, "kadapt_sampler_policy_loaded", policy="equispaced") == 1.0  # a mask family
    provider = {"model": NAME, "version": "1", "provider": "CPUExecutionProvider"}
    assert metric(text, "kadapt_sampler_onnx_provider", **provider) == 1.0
    assert metric(text, "kadapt_sampler_onnx_provider", model="equispaced") is None
    # plan_seconds and queue_wait_seconds share the buckets; the unlabelled one is always exported
    bounds = set(re.findall(r'kadapt_sampler_queue_wait_seconds_bucket\{le="([^"]+)"\}', text))
    assert {"0.005", "0.0075", "0.01", "0.02", "0.03", "0.04", "0.05", "0.075", "0.1"} <= bounds


async def test_a_tampered_bundle_is_reported_as_not_loaded(repository: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "models"
    shutil.copytree(repository, tampered)
    with (tampered / NAME / "1" / "model.onnx").open("ab") as handle:
        handle.write(b"tampered")
    async with running(create_app(SamplerSettings(model_repository=tampered))) as client:
        assert (await client.get("/readyz")).status_code == 503
        text = (await client.get("/metrics")).text
    assert metric(text, "kadapt_sampler_policy_loaded", policy=NAME) == 0.0
    assert metric(text, "kadapt_sampler_onnx_provider", model=NAME) is None
