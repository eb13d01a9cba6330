"""Bearer tokens on the gateway, in-process: scopes per route, refusals before the body is read or a
session touched, rate limits, the OpenAPI documentation, the gateway -> sampler token and log redaction."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import structlog
from pydantic import SecretStr

from kadapt.auth import mint_token
from kadapt.gateway.api.app import create_app
from kadapt.gateway.settings import GatewaySettings
from kadapt.jobs import MemoryJobQueue
from kadapt.mrd.redact import redact_log_event
from kadapt.sampler.api.app import create_app as create_sampler
from kadapt.sampler.settings import SamplerSettings
from kadapt.schemas import PlanResponse

if TYPE_CHECKING:
    from conftest import Gateway, GatewayFactory, Scanner

MRD = {"content-type": "application/vnd.ismrmrd.stream"}
SCANNER, SCANNER_LINE = mint_token("scanner-a", ["scanner"])
VIEWER, VIEWER_LINE = mint_token("viewer-b", ["viewer"])
ADMIN, ADMIN_LINE = mint_token("ops", ["admin"])
TOKENS = "\n".join((SCANNER_LINE, VIEWER_LINE, ADMIN_LINE))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/" + slug)


@contextlib.asynccontextmanager
async def guarded(make_gateway: GatewayFactory, **settings: Any) -> AsyncIterator[Gateway]:
    async with make_gateway(auth_tokens=TOKENS, **settings) as gateway:
        yield gateway


async def create_scan(gateway: Gateway, scanner: Scanner) -> str:
    body = {"header_xml": scanner.header(), "policy": {"num_acs": 4, "acceleration": 4.0}}
    response = await gateway.client.post("/v1/scans", json=body, headers=bearer(SCANNER))
    assert response.status_code == 201, response.text
    return str(response.json()["scan_id"])


async def test_open_routes_and_refusals_without_a_token(
    make_gateway: GatewayFactory, scanner: Scanner
) -> None:
    async with guarded(make_gateway) as gateway:
        client = gateway.client
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["auth"] == "enabled"
        assert (await client.get("/metrics")).status_code == 200
        body = {"header_xml": scanner.header(), "policy": {"num_acs": 4}}
        missing = await client.post("/v1/scans", json=body)
        assert_problem(missing, 401, "unauthenticated")
        assert missing.headers["www-authenticate"] == 'Bearer realm="kadapt"'
        wrong = await client.get("/v1/scans/" + "a" * 32, headers=bearer("not-a-token"))
        assert_problem(wrong, 401, "unauthenticated")
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        # a malformed body with no token is still a 401: the body is read after the guard
        assert_problem(await client.post("/v1/scans", content=b"{not json"), 401, "unauthenticated")


async def test_scopes_per_route(make_gateway: GatewayFactory, scanner: Scanner) -> None:
    async with guarded(make_gateway) as gateway:
        client = gateway.client
        body = {"header_xml": scanner.header(), "policy": {"num_acs": 4}}
        forbidden = await client.post("/v1/scans", json=body, headers=bearer(VIEWER))
        assert_problem(forbidden, 403, "forbidden")
        assert 'scope="scanner"' in forbidden.headers["www-authenticate"]
        scan_id = await create_scan(gateway, scanner)
        # viewer (and scanner, which implies it) read; admin does everything
        for token in (VIEWER, SCANNER, ADMIN):
            assert (await client.get(f"/v1/scans/{scan_id}", headers=bearer(token))).status_code == 200
            assert (await client.get(f"/v1/scans/{scan_id}/mask", headers=bearer(token))).status_code == 200
        for method, path in (
            ("GET", f"/v1/scans/{scan_id}/plan"),
            ("POST", f"/v1/scans/{scan_id}/complete"),
            ("DELETE", f"/v1/scans/{scan_id}"),
        ):
            assert_problem(await client.request(method, path, headers=bearer(VIEWER)), 403, "forbidden")
        assert (await client.delete(f"/v1/scans/{scan_id}", headers=bearer(ADMIN))).status_code == 204


async def test_refused_ingest_never_reads_the_body_nor_touches_the_session(
    make_gateway: GatewayFactory, scanner: Scanner
) -> None:
    async with guarded(make_gateway) as gateway:
        scan_id = await create_scan(gateway, scanner)
        before = (await gateway.client.get(f"/v1/scans/{scan_id}", headers=bearer(VIEWER))).json()
        payload = scanner.readouts(scanner.lines_for(scanner.acs_columns(4)))
        for headers, status in (({}, 401), (bearer("forged"), 401), (bearer(VIEWER), 403)):
            read = False

            async def body() -> AsyncIterator[bytes]:
                nonlocal read
                read = True
                yield payload

            response = await gateway.client.post(
                f"/v1/scans/{scan_id}/acquisitions", content=body(), headers={**MRD, **headers}
            )
            assert response.status_code == status, response.text
            assert not read, "the gateway read the body of a refused request"
        after = (await gateway.client.get(f"/v1/scans/{scan_id}", headers=bearer(VIEWER))).json()
        assert after == before
        assert (after["state"], after["acquired_lines"]) == ("created", 0)
        assert not np.any(gateway.stored_kspace(scan_id))
        accepted = await gateway.client.post(
            f"/v1/scans/{scan_id}/acquisitions", content=payload, headers={**MRD, **bearer(SCANNER)}
        )
        assert accepted.status_code == 200
        assert accepted.json()["accepted"] == 4


async def test_rate_limit_is_per_client_with_retry_after(make_gateway: GatewayFactory) -> None:
    async with guarded(make_gateway, rate_limit_per_s=0.01, rate_limit_burst=2) as gateway:
        path = "/v1/scans/" + "a" * 32
        for _ in range(2):
            assert (await gateway.client.get(path, headers=bearer(VIEWER))).status_code == 404
        limited = await gateway.client.get(path, headers=bearer(VIEWER))
        assert_problem(limited, 429, "rate-limited")
        assert int(limited.headers["retry-after"]) >= 1
        assert (await gateway.client.get(path, headers=bearer(SCANNER))).status_code == 404


async def test_auth_off_is_shown_in_readyz(gateway: Gateway) -> None:
    assert (await gateway.client.get("/readyz")).json()["auth"] == "disabled"
    assert (await gateway.client.get("/v1/scans/" + "a" * 32)).status_code == 404  # open


def test_every_protected_operation_documents_401_403_429(tmp_path: Path) -> None:
    spec = create_app(GatewaySettings(data_dir=tmp_path)).openapi()
    operations = [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    ]
    protected = [entry for entry in operations if entry[0].startswith("/v1/")]
    assert len(protected) == 8
    for path, method, operation in protected:
        for status in ("401", "403", "429"):
            assert "application/problem+json" in operation["responses"][status]["content"], (path, method)
    for path, _, operation in operations:
        if not path.startswith("/v1/"):
            assert "401" not in operation["responses"], path
    create = spec["paths"]["/v1/scans"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "$ref" not in str(create)
    assert "$defs" not in create
    assert set(create["properties"]) == {"header_xml", "policy"}


def test_gateway_logging_redacts_after_rendering_tracebacks(tmp_path: Path) -> None:
    create_app(GatewaySettings(data_dir=tmp_path))  # configures structlog once per process
    processors = structlog.get_config()["processors"]
    assert processors.index(structlog.processors.format_exc_info) < processors.index(redact_log_event)


@pytest.mark.parametrize(("sampler_token", "degraded"), [(SCANNER, False), (None, True)])
async def test_gateway_sends_its_sampler_token(
    tmp_path: Path, scanner: Scanner, sampler_token: str | None, degraded: bool
) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    sampler = create_sampler(
        SamplerSettings(model_repository=repository, warmup=False, auth_tokens=SCANNER_LINE)
    )
    async with contextlib.AsyncExitStack() as exits:
        await exits.enter_async_context(sampler.router.lifespan_context(sampler))
        sampler_client = await exits.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=sampler), base_url="http://sampler")
        )
        gateway = create_app(
            GatewaySettings(
                data_dir=tmp_path / "data",
                sampler_url="http://sampler",
                auth_tokens=TOKENS,
                sampler_token=SecretStr(sampler_token) if sampler_token else None,
            ),
            sampler_client=sampler_client,
            queue=MemoryJobQueue(),
        )
        await exits.enter_async_context(gateway.router.lifespan_context(gateway))
        client = await exits.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gateway), base_url="http://gateway", headers=bearer(SCANNER)
            )
        )
        policy = {"sampler": "equispaced", "num_acs": 4, "acceleration": 4.0, "retrospective": True}
        scan_id = (
            await client.post("/v1/scans", json={"header_xml": scanner.header(), "policy": policy})
        ).json()["scan_id"]
        ingest = await client.post(
            f"/v1/scans/{scan_id}/acquisitions", content=scanner.readouts(scanner.all_lines()), headers=MRD
        )
        assert ingest.status_code == 200, ingest.text
        plan = PlanResponse.model_validate_json((await client.get(f"/v1/scans/{scan_id}/plan")).content)
        assert plan.degraded is degraded
        if degraded:
            assert plan.reason == "sampler-error: unauthenticated"
        else:
            assert plan.served_by == "equispaced"


@pytest.mark.parametrize("field", ["sampler", "recon", "fallback"])
@pytest.mark.parametrize("name", ["../etc", "/etc/passwd", "modl/../../x", "a\\b", "a/b/c"])
async def test_model_names_that_could_traverse_paths_are_422(
    make_gateway: GatewayFactory, scanner: Scanner, field: str, name: str
) -> None:
    async with guarded(make_gateway) as gateway:
        body = {"header_xml": scanner.header(), "policy": {"num_acs": 4, field: name}}
        response = await gateway.client.post("/v1/scans", json=body, headers=bearer(SCANNER))
        assert_problem(response, 422, "invalid-input")
        assert response.json()["errors"][0]["loc"] == ["body", "policy", field]
        assert name not in response.text  # the submitted value is never echoed
