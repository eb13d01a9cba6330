"""The deployment topology for real: redis-server + sampler + recon + gateway as uvicorn processes.

A real MRD raw file (written by ismrmrd-tools, 2x readout oversampling) is replayed through the REST
API as a scanner would; queued recon work survives a recon-worker restart and a Redis restart.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from kadapt.launcher.processes import ProcessStack
from kadapt.replay.run import ReplaySettings, replay_files
from kadapt.replay.sources import load_scan
from kadapt.schemas import ScanCreate, ScanPolicy, ScanPublic, ScanState

pytestmark = pytest.mark.integration
MRD_STREAM = {"content-type": "application/vnd.ismrmrd.stream"}


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("redis-server", "ismrmrd_generate_cartesian_shepp_logan"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make setup installs it as root)")
    path = tmp_path_factory.mktemp("mrd") / "shepp_logan.h5"
    subprocess.run(
        [
            "ismrmrd_generate_cartesian_shepp_logan",
            "-m",
            "128",
            "-c",
            "8",
            "-n",
            "0.01",
            "-C",
            "-o",
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[ProcessStack]:
    with ProcessStack(data_dir=tmp_path / "stack", log_dir=tmp_path / "logs") as running:
        yield running


def test_replay_of_a_real_mrd_file_through_the_process_stack(
    stack: ProcessStack, phantom_file: Path, tmp_path: Path
) -> None:
    settings = ReplaySettings(
        policies=["vd-random"],
        recons=["zero-filled", "cg-sense"],
        accelerations=[4.0],
        num_acs=16,
        deadline_ms=500.0,
    )

    async def replay() -> list[object]:
        async with httpx.AsyncClient(base_url=stack.url("gateway"), timeout=300.0) as client:
            return await replay_files(client, [phantom_file], settings, tmp_path / "out")  # type: ignore[return-value]

    asyncio.run(replay())
    rows = json.loads((tmp_path / "out" / "report.json").read_text())
    by_recon = {row["recon"]: row for row in rows}
    assert set(by_recon) == {"zero-filled", "cg-sense"}
    for row in rows:
        assert row["n_volumes"] == 1
        assert row["degraded_plans"] == 0
        assert row["policy"] == "vd-random"
        assert row["R"] == 4.0
        assert np.isfinite(row["plan_ms_p99"])
        assert row["plan_ms_p99"] < 500.0
    # CG-SENSE recovers what zero-filling aliases: a real reconstruction ran in the recon process.
    # (The generator's phantom carries noise; ESPIRiT's crop removes the noisy background, so the gain
    # shows in NMSE / PSNR and the edge-sensitive HFEN rather than in SSIM.)
    assert by_recon["cg-sense"]["psnr"] > by_recon["zero-filled"]["psnr"] + 1.0
    assert by_recon["cg-sense"]["hfen"] < by_recon["zero-filled"]["hfen"] - 0.2
    assert (tmp_path / "out" / "figures").is_dir()
    metrics = httpx.get(f"{stack.url('recon')}/metrics").text
    assert "kadapt_recon_jobs_total" in metrics


def _scan_until_reconstructing(gateway: str, phantom_file: Path) -> str:
    """Create a scan, send every line of the phantom at R = 2, complete it; returns the scan id."""
    scan = load_scan(phantom_file)
    policy = ScanPolicy(sampler="equispaced", acceleration=2.0, num_acs=16, recon="zero-filled")
    with httpx.Client(base_url=gateway, timeout=60.0) as client:
        created = client.post(
            "/v1/scans", json=ScanCreate(header_xml=scan.header_xml, policy=policy).model_dump(mode="json")
        )
        assert created.status_code == 201, created.text
        scan_id = ScanPublic.model_validate_json(created.content).scan_id
        width = scan.info.width
        acs = list(range(width // 2 - 8, width // 2 + 8))
        cells = np.array([(0, 0, c) for c in acs])
        assert (
            client.post(
                f"/v1/scans/{scan_id}/acquisitions",
                content=scan.encode_lines(cells, frozenset(acs)),
                headers=MRD_STREAM,
            ).status_code
            == 200
        )
        plan = client.get(f"/v1/scans/{scan_id}/plan").json()
        rest = np.array([(0, 0, c) for c in plan["lines"] if c not in acs])
        assert (
            client.post(
                f"/v1/scans/{scan_id}/acquisitions",
                content=scan.encode_lines(rest, frozenset(acs)),
                headers=MRD_STREAM,
            ).status_code
            == 200
        )
        completed = client.post(f"/v1/scans/{scan_id}/complete")
        assert completed.status_code in (200, 202), completed.text
    return scan_id


def _wait_state(gateway: str, scan_id: str, timeout_s: float = 60.0) -> ScanPublic:
    deadline = time.monotonic() + timeout_s
    while True:
        scan = ScanPublic.model_validate_json(httpx.get(f"{gateway}/v1/scans/{scan_id}", timeout=10).content)
        if scan.state in (ScanState.done, ScanState.failed) or time.monotonic() > deadline:
            return scan
        time.sleep(0.2)


def test_queued_recon_work_survives_worker_and_redis_restarts(
    stack: ProcessStack, phantom_file: Path
) -> None:
    gateway = stack.url("gateway")
    stack.kill_service("recon")  # no worker: the job waits in the Redis stream
    scan_id = _scan_until_reconstructing(gateway, phantom_file)
    time.sleep(0.5)
    assert _wait_state(gateway, scan_id, timeout_s=1.0).state == ScanState.reconstructing
    time.sleep(1.5)  # appendfsync everysec: let the AOF reach the disk, then restart Redis
    stack.stop_service("redis")
    stack.start_service("redis")
    stack.start_service("recon")
    final = _wait_state(gateway, scan_id)
    assert final.state == ScanState.done, final.error
    images = httpx.get(f"{gateway}/v1/scans/{scan_id}/images", params={"format": "npy"}, timeout=30)
    assert images.status_code == 200
