"""Bearer tokens on the sampler, in-process: /v1/plan needs scanner, /v1/policies viewer, the probes stay
open, a refused plan body is never read, and the OpenAPI lists 401/403/429 on both /v1 routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx

from kadapt.auth import mint_token
from kadapt.sampler.api.app import create_app
from kadapt.sampler.settings import SamplerSettings
from kadapt.schemas import PlanRequest

SCANNER, SCANNER_LINE = mint_token("kadapt-gateway", ["scanner"])
VIEWER, VIEWER_LINE = mint_token("dashboard", ["viewer"])


def settings(tmp_path: Path, **overrides: object) -> SamplerSettings:
    repository = tmp_path / "models"
    repository.mkdir(exist_ok=True)
    return SamplerSettings(
        model_repository=repository,
        warmup=False,
        auth_tokens=f"{SCANNER_LINE};{VIEWER_LINE}",
        **overrides,  # type: ignore[arg-type]
    )


async def test_plan_and_policies_by_scope(tmp_path: Path, plan_request: Callable[..., PlanRequest]) -> None:
    app = create_app(settings(tmp_path))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sampler") as client,
    ):
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["auth"] == "enabled"
        assert (await client.get("/metrics")).status_code == 200

        read = False

        async def body() -> AsyncIterator[bytes]:
            nonlocal read
            read = True
            yield plan_request().model_dump_json().encode()

        plain = {"content-type": "application/json"}
        missing = await client.post("/v1/plan", content=body(), headers=plain)
        assert missing.status_code == 401
        assert not read
        assert missing.headers["content-type"] == "application/problem+json"
        viewer = await client.post(
            "/v1/plan", content=body(), headers={**plain, "authorization": f"Bearer {VIEWER}"}
        )
        assert viewer.status_code == 403
        assert not read
        planned = await client.post(
            "/v1/plan",
            content=plan_request().model_dump_json(),
            headers={**plain, "authorization": f"Bearer {SCANNER}"},
        )
        assert planned.status_code == 200, planned.text

        bad_name = {**plan_request().model_dump(mode="json"), "policy": "../../etc/passwd"}
        traversal = await client.post(
            "/v1/plan", json=bad_name, headers={"authorization": f"Bearer {SCANNER}"}
        )
        assert traversal.status_code == 422, traversal.text

        assert (await client.get("/v1/policies")).status_code == 401
        for token in (VIEWER, SCANNER):  # scanner implies viewer
            listed = await client.get("/v1/policies", headers={"authorization": f"Bearer {token}"})
            assert listed.status_code == 200


def test_openapi_documents_the_refusals(tmp_path: Path) -> None:
    paths = create_app(settings(tmp_path)).openapi()["paths"]
    for path, method in (("/v1/plan", "post"), ("/v1/policies", "get")):
        responses = paths[path][method]["responses"]
        assert {"401", "403", "429"} <= set(responses), path
        assert "application/problem+json" in responses["401"]["content"]
    assert "401" not in paths["/readyz"]["get"]["responses"]
