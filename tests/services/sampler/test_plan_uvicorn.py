"""The binary plan transport through a real uvicorn sampler process (``ProcessStack``, loopback): the
same plan as JSON, a broken body answered with problem+json, and uvicorn's fast loop / parser present."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch

from kadapt.http_client import LeanHTTPClient
from kadapt.launcher.processes import ProcessStack
from kadapt.masks import acs_lines
from kadapt.nn.mnet import MNet, MNetGeometry, randomise_parameters
from kadapt.nn.mnet_bundle import export_mnet_bundle
from kadapt.schemas import PlanRequest, PlanResponse
from kadapt.schemas.plan_binary import PLAN_BINARY_MEDIA_TYPE, encode_plan_body

pytestmark = pytest.mark.integration

NAME = "mnet-uvicorn"


@pytest.fixture(scope="module")
def sampler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    scratch = tmp_path_factory.mktemp("sampler")
    geometry = MNetGeometry(width=64, height=16, coils=2, num_acs=8)
    model = randomise_parameters(MNet(geometry, channels=(8, 8), hidden=16), torch.Generator().manual_seed(9))
    export_mnet_bundle(
        model,
        scratch / "models",
        name=NAME,
        accelerations=(4.0,),
        training={"description": "UNTRAINED random weights (test)"},
        code_version="test",
    )
    stack = ProcessStack(
        data_dir=scratch / "data",
        services=("sampler",),
        redis=False,
        model_repository=scratch / "models",
        log_dir=scratch / "logs",
    )
    with stack, httpx.Client(base_url=stack.url("sampler"), timeout=30.0) as client:
        yield client


def header() -> PlanRequest:
    return PlanRequest(
        scan_id="scan-1",
        policy=NAME,
        width=64,
        height=16,
        coils=2,
        acceleration=4.0,
        num_acs=8,
        acquired=tuple(int(ky) for ky in acs_lines(64, 8)),
        deadline_unix_ms=time.time() * 1000.0 + 10_000.0,
    )


def acs_npy(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    acs = (rng.standard_normal((2, 16, 8)) + 1j * rng.standard_normal((2, 16, 8))).astype(np.complex64)
    buffer = io.BytesIO()
    np.save(buffer, acs, allow_pickle=False)
    return buffer.getvalue()


def test_uvicorn_has_its_fast_loop_and_parser() -> None:
    # uvicorn's "auto" loop / http pick these when importable (pyproject dependencies)
    assert importlib.util.find_spec("uvloop") is not None
    assert importlib.util.find_spec("httptools") is not None


def test_binary_body_plans_like_json_through_the_process(sampler: httpx.Client) -> None:
    for seed in range(3):
        npy = acs_npy(seed)
        binary = sampler.post(
            "/v1/plan",
            content=encode_plan_body(header(), npy),
            headers={"content-type": PLAN_BINARY_MEDIA_TYPE},
        )
        as_json = header().model_copy(update={"acs_npy_b64": base64.b64encode(npy).decode()})
        inline = sampler.post(
            "/v1/plan", content=as_json.model_dump_json(), headers={"content-type": "application/json"}
        )
        assert binary.status_code == 200, binary.text
        assert inline.status_code == 200, inline.text
        fast, slow = (PlanResponse.model_validate_json(r.content) for r in (binary, inline))
        assert not fast.degraded, fast.reason
        assert fast.lines == slow.lines


def test_broken_binary_body_is_a_problem_through_the_process(sampler: httpx.Client) -> None:
    response = sampler.post(
        "/v1/plan", content=b"NOPE" + bytes(64), headers={"content-type": PLAN_BINARY_MEDIA_TYPE}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "https://kadapt.dev/problems/invalid-input"
    other = sampler.post("/v1/plan", content=b"x", headers={"content-type": "application/x-npy"})
    assert other.status_code == 415
    assert other.json()["type"] == "https://kadapt.dev/problems/unsupported-media-type"


def test_the_gateways_lean_client_gets_the_same_plans_over_one_connection(sampler: httpx.Client) -> None:
    """The gateway's :class:`LeanHTTPClient` against the real process: the same plans as httpx, every
    request on one kept-alive connection, and problem+json answers read back intact."""
    url = str(sampler.base_url).rstrip("/") + "/v1/plan"
    expected = []
    for seed in range(3):
        answer = sampler.post(
            "/v1/plan",
            content=encode_plan_body(header(), acs_npy(seed)),
            headers={"content-type": PLAN_BINARY_MEDIA_TYPE},
        )
        expected.append(PlanResponse.model_validate_json(answer.content).lines)

    async def ask() -> tuple[list[tuple[int, ...]], int, dict[str, object], int]:
        client = LeanHTTPClient(max_connections=4)
        try:
            lines = []
            for seed in range(3):
                reply = await client.post(
                    url,
                    content=encode_plan_body(header(), acs_npy(seed)),
                    headers={"content-type": PLAN_BINARY_MEDIA_TYPE},
                    timeout=10.0,
                )
                assert reply.status_code == 200, reply.content
                lines.append(PlanResponse.model_validate_json(reply.content).lines)
            broken = await client.post(
                url,
                content=b"NOPE" + bytes(64),
                headers={"content-type": PLAN_BINARY_MEDIA_TYPE},
                timeout=10.0,
            )
            return lines, broken.status_code, broken.json(), client.idle_connections
        finally:
            await client.aclose()

    lines, status, problem, connections = asyncio.run(ask())
    assert lines == expected
    assert status == 400
    assert problem["type"] == "https://kadapt.dev/problems/invalid-input"
    assert connections == 1
