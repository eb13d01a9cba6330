"""Bearer tokens on the recon service, in-process: job submission needs admin, reads need viewer, the
probes stay open and a refused job body is never read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from kadapt.auth import mint_token
from kadapt.jobs.queue import MemoryJobQueue
from kadapt.recon.api.app import create_app
from kadapt.recon.settings import ReconSettings

ADMIN, ADMIN_LINE = mint_token("ops", ["admin"])
SCANNER, SCANNER_LINE = mint_token("scanner-a", ["scanner"])
VIEWER, VIEWER_LINE = mint_token("dashboard", ["viewer"])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_recon_routes_by_scope(tmp_path: Path) -> None:
    settings = ReconSettings(
        blob_dir=tmp_path / "blobs",
        model_repository=tmp_path / "models",
        block_ms=50,
        consumer="test-recon",
        auth_tokens="\n".join((ADMIN_LINE, SCANNER_LINE, VIEWER_LINE)),
    )
    app = create_app(settings, queue=MemoryJobQueue(), run_worker=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://recon") as client,
    ):
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).json()["auth"] == "enabled"
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/v1/methods")).status_code == 401
        assert (await client.get("/v1/methods", headers=bearer(VIEWER))).status_code == 200
        assert (await client.get("/v1/jobs/nope", headers=bearer(VIEWER))).status_code == 404

        read = False

        async def body() -> AsyncIterator[bytes]:
            nonlocal read
            read = True
            yield b"{}"

        for headers, status in (({}, 401), (bearer(VIEWER), 403), (bearer(SCANNER), 403)):
            response = await client.post("/v1/jobs", content=body(), headers=headers)
            assert response.status_code == status, response.text
            assert not read
        # admin passes the guard; the empty job is then invalid (422), proving the body is read only now
        invalid = await client.post("/v1/jobs", content=b"{}", headers=bearer(ADMIN))
        assert invalid.status_code == 422
        job = {
            "job_id": "j",
            "scan_id": "s",
            "method": "../modl-knee",
            "num_acs": 8,
            "acceleration": 4.0,
            "kspace_path": "k.npy",
            "kspace_sha256": "0" * 64,
            "mask_path": "m.npy",
            "mask_sha256": "0" * 64,
        }
        traversal = await client.post("/v1/jobs", json=job, headers=bearer(ADMIN))
        assert traversal.status_code == 422, traversal.text
        assert traversal.json()["errors"][0]["loc"] == ["body", "method"]

        spec = app.openapi()["paths"]
        for path, method in (("/v1/jobs", "post"), ("/v1/jobs/{job_id}", "get"), ("/v1/methods", "get")):
            assert {"401", "403", "429"} <= set(spec[path][method]["responses"]), path
