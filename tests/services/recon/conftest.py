"""Recon test fixtures: jobs staged as blobs from the phantom (``phantom`` and ``vd_mask`` come from
tests/conftest.py, shared with the core's classic-recon tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from numpy.typing import NDArray

from kadapt.jobs.blobs import BlobStore
from kadapt.recon.settings import ReconSettings
from kadapt.schemas.jobs import ReconJob

SIZE = 64
NUM_ACS = 12


@dataclass(frozen=True)
class StagedJob:
    job: ReconJob
    kspace: NDArray[np.complex64]
    mask: NDArray[np.bool_]


@pytest.fixture
def stage_job(
    tmp_path: Path, phantom: Any, vd_mask: Callable[..., NDArray[np.bool_]]
) -> Callable[..., StagedJob]:
    """``stage_job(job_id, method=...)``: writes an undersampled phantom's k-space and mask as blobs under
    ``tmp_path / "blobs"`` (as the gateway does) and returns the job referencing them."""
    store = BlobStore(tmp_path / "blobs")

    def stage(
        job_id: str = "job-1", method: str = "zero-filled", seed: int = 0, **fields: object
    ) -> StagedJob:
        mask = vd_mask(SIZE, 4.0, NUM_ACS, np.random.default_rng(seed), leading=(1, 1))
        kspace = np.where(mask[:, :, None, None, :], phantom.kspace, 0).astype(np.complex64)
        kspace_path, kspace_sha = store.put_array(f"scans/{job_id}/kspace", kspace)
        mask_path, mask_sha = store.put_array(f"scans/{job_id}/mask", mask)
        values: dict[str, object] = {
            "job_id": job_id,
            "scan_id": f"scan-{job_id}",
            "method": method,
            "num_acs": NUM_ACS,
            "acceleration": 4.0,
            "kspace_path": kspace_path,
            "kspace_sha256": kspace_sha,
            "mask_path": mask_path,
            "mask_sha256": mask_sha,
        }
        values.update(fields)
        return StagedJob(ReconJob.model_validate(values), kspace, mask)

    return stage


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, behind an in-process httpx client."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://recon") as client,
    ):
        yield client


def settings_for(tmp_path: Path, **overrides: Any) -> ReconSettings:
    """Recon settings on ``tmp_path`` (blobs, an empty model repository), fast queue polling."""
    values: dict[str, Any] = {
        "blob_dir": tmp_path / "blobs",
        "model_repository": tmp_path / "models",
        "block_ms": 50,
        "consumer": "test-recon",
    }
    values.update(overrides)
    return ReconSettings(**values)
