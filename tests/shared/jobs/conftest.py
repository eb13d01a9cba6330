"""Fixtures for the jobs tests: a factory of valid recon jobs (blob paths need not exist here)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kadapt.schemas.jobs import ReconJob

JobFactory = Callable[..., ReconJob]


@pytest.fixture
def make_job() -> JobFactory:
    def factory(job_id: str = "job-1", **fields: object) -> ReconJob:
        values: dict[str, object] = {
            "job_id": job_id,
            "scan_id": "scan-1",
            "method": "zero-filled",
            "num_acs": 8,
            "acceleration": 4.0,
            "kspace_path": "scan-1/kspace.npy",
            "kspace_sha256": "0" * 64,
            "mask_path": "scan-1/mask.npy",
            "mask_sha256": "1" * 64,
        }
        values.update(fields)
        return ReconJob.model_validate(values)

    return factory
