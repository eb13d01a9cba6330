"""Auth through real uvicorn processes (``ProcessStack(tokens=True)``): sampler + gateway on loopback
with minted tokens; no token 401, viewer ingest 403, scanner ingest 200, and the gateway's own token
gets its plans from the sampler (not the fallback)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from kadapt.launcher.processes import ProcessStack
from kadapt.schemas import PlanResponse

if TYPE_CHECKING:
    from conftest import Scanner

pytestmark = pytest.mark.integration
MRD = {"content-type": "application/vnd.ismrmrd.stream"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    scratch = tmp_path_factory.mktemp("auth-stack")
    models = scratch / "models"
    models.mkdir()
    with ProcessStack(
        data_dir=scratch / "data",
        services=("sampler", "gateway"),
        redis=False,
        model_repository=models,
        log_dir=scratch / "logs",
        tokens=True,
    ) as running:
        yield running


def test_tokens_through_real_processes(stack: ProcessStack, scanner: Scanner) -> None:
    auth = stack.auth
    assert auth is not None
    assert auth.path.stat().st_mode & 0o077 == 0
    with httpx.Client(base_url=stack.url("gateway"), timeout=30.0) as client:
        assert client.get("/readyz").json()["auth"] == "enabled"
        sampler_ready = httpx.get(stack.url("sampler") + "/readyz", timeout=10.0).json()
        assert sampler_ready["auth"] == "enabled"
        policy = {"sampler": "equispaced", "num_acs": 4, "acceleration": 4.0, "retrospective": True}
        body = {"header_xml": scanner.header(), "policy": policy}
        assert client.post("/v1/scans", json=body).status_code == 401
        created = client.post("/v1/scans", json=body, headers=auth.headers("scanner"))
        assert created.status_code == 201, created.text
        scan_id = created.json()["scan_id"]
        payload = scanner.readouts(scanner.all_lines())
        path = f"/v1/scans/{scan_id}/acquisitions"
        assert client.post(path, content=payload, headers=MRD).status_code == 401
        assert (
            client.post(path, content=payload, headers={**MRD, **auth.headers("viewer")}).status_code == 403
        )
        scan = client.get(f"/v1/scans/{scan_id}", headers=auth.headers("viewer")).json()
        assert (scan["state"], scan["acquired_lines"]) == ("created", 0)
        ingested = client.post(path, content=payload, headers={**MRD, **auth.headers("scanner")})
        assert ingested.status_code == 200, ingested.text
        plan = PlanResponse.model_validate_json(
            client.get(f"/v1/scans/{scan_id}/plan", headers=auth.headers("scanner")).content
        )
        assert not plan.degraded, plan.reason  # the gateway's sampler token was accepted
        assert plan.served_by == "equispaced"
    # the sampler itself refuses a caller without a token
    refused = httpx.post(stack.url("sampler") + "/v1/plan", json={}, timeout=10.0)
    assert refused.status_code == 401
