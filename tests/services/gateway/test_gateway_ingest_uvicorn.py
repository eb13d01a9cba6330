"""Concurrent batched ingest and single-readout requests through a real uvicorn process on loopback.

Speed is measured by ``kadapt bench ingest`` (docs/benchmarks.md), not asserted here: this test checks
that three concurrent senders of 64-readout batches and a run of single-readout requests store every
line exactly once. The measured rate is printed (``pytest -s``) for a quick look.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from kadapt.mrd.header import make_header
from kadapt.mrd.stream import encode_acquisitions, make_acquisition_heads

COILS, SAMPLES, HEIGHT, WIDTH, SLICES = 8, 256, 128, 256, 24
BATCH = 64
SERVER = (
    "import uvicorn; from kadapt.gateway.api.app import create_app; "
    "from kadapt.gateway.settings import GatewaySettings; "
    "uvicorn.run(create_app(GatewaySettings()), host='127.0.0.1', port={port}, log_level='warning', "
    "access_log=False)"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(params=["memory", "redis"])
def gateway_url(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A gateway process; ``redis``: sessions and jobs in a real redis-server (the deployment path)."""
    port = free_port()
    environment = {
        **(
            {"KADAPT_GATEWAY_REDIS_URL": request.getfixturevalue("redis_server").url}
            if request.param == "redis"
            else {}
        ),
        **os.environ,
        "KADAPT_GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "KADAPT_GATEWAY_SAMPLER_URL": f"http://127.0.0.1:{free_port()}",  # nobody: fallback plans
        "KADAPT_GATEWAY_LOG_LEVEL": "warning",
    }
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVER.format(port=port)],
            env=environment,
            stdout=log_file,
            stderr=log_file,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        process.kill()
        process.wait(timeout=10)
        raise TimeoutError(f"the gateway did not start: {log_path.read_text()}")
    yield url
    process.terminate()
    process.wait(timeout=10)


def batches() -> list[bytes]:
    """Every (slice, ky) line of the scan once, in batches of ``BATCH`` acquisitions."""
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((BATCH, COILS, SAMPLES)) + 1j).astype(np.complex64)
    payloads = []
    lines = [(s, ky) for s in range(SLICES) for ky in range(WIDTH)]
    for start in range(0, len(lines), BATCH):
        chunk = lines[start : start + BATCH]
        heads = make_acquisition_heads(len(chunk), coils=COILS, samples=SAMPLES)
        heads["idx"]["slice"] = [s for s, _ in chunk]
        heads["idx"]["kspace_encode_step_1"] = [ky for _, ky in chunk]
        payloads.append(encode_acquisitions(heads, data[: len(chunk)]))
    return payloads


async def create_scan(client: httpx.AsyncClient, slices: int) -> str:
    header = make_header(readout=SAMPLES, recon_readout=HEIGHT, width=WIDTH, coils=COILS, slices=slices)
    policy = {"num_acs": 16, "acceleration": 4.0, "plan_deadline_ms": 50.0}
    response = await client.post("/v1/scans", json={"header_xml": header, "policy": policy})
    assert response.status_code == 201, response.text
    return str(response.json()["scan_id"])


@pytest.mark.integration
@pytest.mark.slow
async def test_concurrent_batches_and_single_readouts_store_every_line(
    gateway_url: str, request: pytest.FixtureRequest
) -> None:
    payloads = batches()
    headers = {"content-type": "application/vnd.ismrmrd.stream"}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30.0) as client:
        scan_id = await create_scan(client, SLICES)
        queue = list(reversed(payloads))

        async def sender() -> None:
            while queue:
                body = queue.pop()
                response = await client.post(
                    f"/v1/scans/{scan_id}/acquisitions", content=body, headers=headers
                )
                assert response.status_code == 200, response.text

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(3)))
        elapsed = time.perf_counter() - started
        rate = SLICES * WIDTH / elapsed
        scan = (await client.get(f"/v1/scans/{scan_id}")).json()
        assert scan["acquired_lines"] == SLICES * WIDTH

        single_id = await create_scan(client, 1)
        singles = []
        for ky in range(WIDTH):
            heads = make_acquisition_heads(1, coils=COILS, samples=SAMPLES)
            heads["idx"]["kspace_encode_step_1"] = ky
            singles.append(encode_acquisitions(heads, np.ones((1, COILS, SAMPLES), dtype=np.complex64)))
        for body in singles:
            response = await client.post(f"/v1/scans/{single_id}/acquisitions", content=body, headers=headers)
            assert response.status_code == 200, response.text
        single = (await client.get(f"/v1/scans/{single_id}")).json()
        assert single["acquired_lines"] == WIDTH
    print(
        f"\n{request.node.callspec.id} ingest: {rate:.0f} acquisitions/s (batches of {BATCH}), not asserted"
    )
