"""The gateway against the real sampler app in-process (``httpx.ASGITransport``), as the embedded stack
wires them: the plan protocol, deadlines and problem+json between two real services."""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest

from kadapt.gateway.api.app import create_app
from kadapt.gateway.settings import GatewaySettings
from kadapt.jobs import MemoryJobQueue
from kadapt.sampler.api.app import create_app as create_sampler
from kadapt.sampler.settings import SamplerSettings
from kadapt.schemas import PlanResponse

if TYPE_CHECKING:
    from conftest import Scanner

MRD = {"content-type": "application/vnd.ismrmrd.stream"}


@contextlib.asynccontextmanager
async def stack(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    repository = tmp_path / "models"
    repository.mkdir()
    sampler = create_sampler(SamplerSettings(model_repository=repository, warmup=False))
    async with contextlib.AsyncExitStack() as exits:
        await exits.enter_async_context(sampler.router.lifespan_context(sampler))
        sampler_client = await exits.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=sampler), base_url="http://sampler")
        )
        gateway = create_app(
            GatewaySettings(data_dir=tmp_path / "data", sampler_url="http://sampler"),
            sampler_client=sampler_client,
            queue=MemoryJobQueue(),
        )
        await exits.enter_async_context(gateway.router.lifespan_context(gateway))
        yield await exits.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gateway")
        )


@pytest.mark.parametrize(("sampler", "degraded"), [("equispaced", False), ("no-such-policy", True)])
async def test_plans_from_the_real_sampler(
    tmp_path: Path, scanner: Scanner, sampler: str, degraded: bool
) -> None:
    async with stack(tmp_path) as client:
        policy = {"sampler": sampler, "num_acs": 4, "acceleration": 4.0, "retrospective": True}
        created = await client.post("/v1/scans", json={"header_xml": scanner.header(), "policy": policy})
        scan_id = created.json()["scan_id"]
        response = await client.post(
            f"/v1/scans/{scan_id}/acquisitions", content=scanner.readouts(scanner.all_lines()), headers=MRD
        )
        assert response.status_code == 200, response.text
        plan = PlanResponse.model_validate_json((await client.get(f"/v1/scans/{scan_id}/plan")).content)
        assert plan.degraded is degraded
        assert len(plan.lines) == 8
        assert set(scanner.acs_columns(4)) <= set(plan.lines)
        if degraded:
            assert plan.reason == "sampler-error: policy-not-found"
        else:
            assert plan.served_by == "equispaced"
        assert response.json()["accepted"] == 8
        mask = np.load(io.BytesIO((await client.get(f"/v1/scans/{scan_id}/mask")).content))
        assert tuple(np.flatnonzero(mask[0, 0])) == plan.lines
