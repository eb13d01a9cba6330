"""The app shell: health, readiness, metrics, request ids, OpenAPI, settings, the torch boundary."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from kadapt.gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from conftest import Gateway


async def test_health_readiness_and_metrics(gateway: Gateway) -> None:
    assert (await gateway.client.get("/healthz")).json() == {"status": "ok"}
    ready = (await gateway.client.get("/readyz")).json()
    expected = {"status": "ready", "store": "ok", "queue": "ok", "sampler": "ready", "auth": "disabled"}
    assert ready == expected
    metrics = await gateway.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "kadapt_gateway_http_request_seconds" in metrics.text


async def test_readiness_fails_when_the_queue_is_down(gateway: Gateway) -> None:
    await gateway.queue.close()
    response = await gateway.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["type"].endswith("/service-unavailable")


async def test_request_id_is_echoed_or_made(gateway: Gateway) -> None:
    echoed = await gateway.client.get("/healthz", headers={"x-request-id": "scanner-42"})
    assert echoed.headers["x-request-id"] == "scanner-42"
    made = await gateway.client.get("/healthz", headers={"x-request-id": "bad id with spaces"})
    assert len(made.headers["x-request-id"]) == 32


async def test_openapi_lists_every_route(gateway: Gateway) -> None:
    paths = (await gateway.client.get("/openapi.json")).json()["paths"]
    assert {
        "/v1/scans", "/v1/scans/{scan_id}", "/v1/scans/{scan_id}/acquisitions", "/v1/scans/{scan_id}/plan",
        "/v1/scans/{scan_id}/complete", "/v1/scans/{scan_id}/images", "/v1/scans/{scan_id}/mask",
        "/healthz", "/readyz", "/metrics",
    } <= set(paths)  # fmt: skip
    body = paths["/v1/scans/{scan_id}/acquisitions"]["post"]["requestBody"]["content"]
    assert "application/vnd.ismrmrd.stream" in body


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KADAPT_GATEWAY_REDIS_URL", "redis://example:6379/1")
    monkeypatch.setenv("KADAPT_GATEWAY_MAX_BODY_BYTES", "1234")
    settings = GatewaySettings()
    assert settings.redis_url == "redis://example:6379/1"
    assert settings.max_body_bytes == 1234


def test_the_gateway_never_imports_torch() -> None:
    code = (
        "import sys; from kadapt.gateway.api.app import create_app; "
        "from kadapt.gateway.settings import GatewaySettings; "
        "import tempfile; create_app(GatewaySettings(data_dir=tempfile.mkdtemp())); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "False"
