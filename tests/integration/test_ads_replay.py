"""A cine scan replayed through the real process stack with an ``ads`` policy (issue 5, Done-when):
redis-server + sampler + recon + gateway as uvicorn processes, a tiny cine MRD file (``phase`` = frame,
written here with the repo's MRD builders) and a tiny two-cascade ``ads`` bundle. The replay client
plans two rounds through the REST gateway; each must be the model's (not degraded) and answered within
its deadline."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.shared.bundles.ads_fixtures import write_tiny_ads_bundle

from kadapt.kspace.fft import fft2c
from kadapt.launcher.processes import ProcessStack
from kadapt.masks.mechanics import budget_split
from kadapt.mrd.builders import make_acquisition
from kadapt.mrd.files import write_mrd
from kadapt.mrd.header import make_header
from kadapt.replay.run import ReplaySettings, replay_files

pytestmark = pytest.mark.integration
FRAMES, HEIGHT, WIDTH, COILS, NUM_ACS = 4, 16, 32, 2, 4
DEADLINE_MS = 2_000.0


def write_cine_mrd(path: Path, rng: np.random.Generator) -> Path:
    """A fully sampled cine MRD file: a beating disc seen by two smooth coils, 2x readout oversampling,
    one readout per (frame, ky) with ``phase`` = frame."""
    y, x = np.mgrid[: 2 * HEIGHT, :WIDTH]
    frames = []
    for frame in range(FRAMES):
        radius = 5.0 + 1.5 * np.sin(2 * np.pi * frame / FRAMES)
        disc = ((y - HEIGHT) ** 2 + (x - WIDTH / 2) ** 2 < radius**2).astype(np.float64)
        inside = np.zeros_like(disc)
        inside[HEIGHT // 2 : HEIGHT // 2 + HEIGHT] = (
            1.0  # zero outside the recon FOV: exact oversampling removal
        )
        frames.append((disc + 0.2) * inside + 0.01 * rng.standard_normal(disc.shape))
    coils = np.stack([np.exp(1j * c + (x - c * WIDTH) / 40.0) for c in range(COILS)])
    raw = fft2c((np.asarray(frames)[:, None] * coils[None]).astype(np.complex64))  # (T, C, 2H, W)
    header = make_header(readout=2 * HEIGHT, recon_readout=HEIGHT, width=WIDTH, frames=FRAMES, coils=COILS)
    acquisitions = [
        make_acquisition(ky, raw[frame, :, :, ky], phase=frame)
        for frame in range(FRAMES)
        for ky in range(WIDTH)
    ]
    write_mrd(path, header, acquisitions)
    return path


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[ProcessStack]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make setup installs it as root)")
    models = tmp_path / "models"
    write_tiny_ads_bundle(
        models,
        "tiny-ads",
        frames=FRAMES,
        height=HEIGHT,
        width=WIDTH,
        num_acs=NUM_ACS,
        fallback="kt-equispaced",
    )
    with ProcessStack(
        data_dir=tmp_path / "stack", log_dir=tmp_path / "logs", model_repository=models
    ) as running:
        yield running


def test_cine_replay_plans_two_ads_rounds_each_within_its_deadline(
    stack: ProcessStack, tmp_path: Path
) -> None:
    cine = write_cine_mrd(tmp_path / "cine.mrd.h5", np.random.default_rng(0))
    settings = ReplaySettings(
        policies=["tiny-ads"],
        recons=["zero-filled"],
        accelerations=[4.0],
        num_acs=NUM_ACS,
        deadline_ms=DEADLINE_MS,
        fallback="kt-equispaced",
        figures=False,
    )

    async def replay() -> None:
        async with httpx.AsyncClient(base_url=stack.url("gateway"), timeout=120.0) as client:
            await replay_files(client, [cine], settings, tmp_path / "out")

    asyncio.run(replay())
    (volume,) = json.loads((tmp_path / "out" / "volumes.json").read_text())
    rounds = volume["rounds"]
    budget = round(WIDTH / 4.0)
    first = NUM_ACS + budget_split(budget - NUM_ACS, 2)[0]
    assert [entry["round"] for entry in rounds] == [0, 1]
    assert [entry["lines_per_frame"] for entry in rounds] == [[first] * FRAMES, [budget] * FRAMES]
    assert [entry["final"] for entry in rounds] == [False, True]
    for entry in rounds:
        assert not entry["degraded"], entry["reason"]
        assert entry["served_by"] == "tiny-ads/1"
        assert entry["deadline_met"], f"round {entry['round']} took {entry['elapsed_ms']:.1f} ms"
    assert volume["lines"] == budget
    (row,) = json.loads((tmp_path / "out" / "report.json").read_text())
    assert row["plan_rounds"] == 2
    assert row["rounds_deadline_missed"] == 0
    assert row["rounds_degraded"] == 0
