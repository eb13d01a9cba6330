"""``POST /v1/plan`` in both transports (httpx ASGITransport, lifespan run): the binary
``application/x-kadapt-plan`` body plans exactly what the JSON body with the same ACS plans, and bad
bodies are typed problems (400 framing, 413 size, 415 content type, 422 header validation)."""

from __future__ import annotations

import base64
import io
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from kadapt.masks import acs_lines
from kadapt.sampler.api import create_app
from kadapt.sampler.settings import SamplerSettings
from kadapt.schemas import PlanRequest, PlanResponse
from kadapt.schemas.plan_binary import PLAN_BINARY_MEDIA_TYPE, encode_plan_body

NAME = "mnet-transport"
BINARY = {"content-type": PLAN_BINARY_MEDIA_TYPE}
PROBLEMS = "https://kadapt.dev/problems/"


@pytest.fixture(scope="module")
def repository(tiny_mnet_repository: Callable[..., Path]) -> Path:
    return tiny_mnet_repository(NAME, 3, fallback="equispaced")


def acs_npy(seed: int, *, dtype: type = np.complex64, fortran: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    acs: np.ndarray = (rng.standard_normal((2, 16, 8)) + 1j * rng.standard_normal((2, 16, 8))).astype(dtype)
    buffer = io.BytesIO()
    np.save(buffer, np.asfortranarray(acs) if fortran else acs, allow_pickle=False)
    return buffer.getvalue()


def header(**changes: object) -> PlanRequest:
    fields: dict[str, object] = {
        "scan_id": "scan-1",
        "policy": NAME,
        "width": 64,
        "height": 16,
        "coils": 2,
        "acceleration": 4.0,
        "num_acs": 8,
        "acquired": tuple(int(ky) for ky in acs_lines(64, 8)),
        "deadline_unix_ms": time.time() * 1000.0 + 5_000.0,
    }
    fields.update(changes)
    return PlanRequest(**fields)  # type: ignore[arg-type]


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sampler") as client,
    ):
        yield client


async def plan_of(client: httpx.AsyncClient, content: bytes, headers: dict[str, str]) -> PlanResponse:
    response = await client.post("/v1/plan", content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return PlanResponse.model_validate_json(response.content)


async def problem_of(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, object] = response.json()
    assert problem["type"] == PROBLEMS + slug
    return problem


async def test_binary_and_json_bodies_plan_the_same_lines(repository: Path) -> None:
    async with running(create_app(SamplerSettings(model_repository=repository))) as client:
        plans = set()
        for seed in range(4):
            npy = acs_npy(seed)
            as_json = header(acs_npy_b64=base64.b64encode(npy).decode()).model_dump_json().encode()
            from_json = await plan_of(client, as_json, {"content-type": "application/json"})
            from_binary = await plan_of(client, encode_plan_body(header(), npy), BINARY)
            assert not from_json.degraded
            assert not from_binary.degraded
            assert from_binary.lines == from_json.lines
            assert len(from_binary.lines) == 16
            plans.add(from_binary.lines)
        assert len(plans) > 1  # the plans do depend on the ACS that came through the binary body


async def test_binary_acs_in_another_npy_layout_plans_the_same(repository: Path) -> None:
    # complex128 and Fortran-order .npy are converted, not refused; the plan is the complex64 one.
    async with running(create_app(SamplerSettings(model_repository=repository))) as client:
        reference = await plan_of(client, encode_plan_body(header(), acs_npy(7)), BINARY)
        fortran = await plan_of(client, encode_plan_body(header(), acs_npy(7, fortran=True)), BINARY)
        wide = await plan_of(client, encode_plan_body(header(), acs_npy(7, dtype=np.complex128)), BINARY)
        assert fortran.lines == reference.lines
        assert wide.lines == reference.lines


async def test_binary_acs_content_problems_are_the_policy_fallback_as_for_json(repository: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 16, 8), np.float32), allow_pickle=False)
    async with running(create_app(SamplerSettings(model_repository=repository))) as client:
        cases = {
            "acs-missing": encode_plan_body(header(), None),
            "acs-invalid": encode_plan_body(header(), b"not an npy file at all"),
        }
        cases["acs-invalid (real dtype)"] = encode_plan_body(header(), buffer.getvalue())
        cases["acs-invalid (truncated)"] = encode_plan_body(header(), acs_npy(0)[:-8])
        for reason, body in cases.items():
            plan = await plan_of(client, body, BINARY)
            assert plan.degraded, reason
            assert plan.served_by == "equispaced"
            assert (plan.reason or "").startswith(reason.split(" ")[0]), plan.reason


async def test_bad_binary_framing_is_a_400_problem(repository: Path) -> None:
    good = encode_plan_body(header(), acs_npy(0))
    with_b64 = header(acs_npy_b64="AAAA").model_dump_json().encode()
    async with running(create_app(SamplerSettings(model_repository=repository))) as client:
        bodies = {
            "short": b"KPL",
            "magic": b"XXXX" + good[4:],
            "length past the end": struct.pack("<4sI", b"KPL1", len(good)) + good[8:],
            "b64 and payload": struct.pack("<4sI", b"KPL1", len(with_b64)) + with_b64 + acs_npy(0),
        }
        for what, body in bodies.items():
            response = await client.post("/v1/plan", content=body, headers=BINARY)
            problem = await problem_of(response, 400, "invalid-input")
            assert "binary plan body" in str(problem["detail"]), what


async def test_invalid_binary_header_is_a_422_like_json(repository: Path) -> None:
    body = header(acceleration=4.0).model_dump_json().replace('"acceleration":4.0', '"acceleration":"4"')
    framed = struct.pack("<4sI", b"KPL1", len(body)) + body.encode() + acs_npy(0)
    not_json = struct.pack("<4sI", b"KPL1", 3) + b"{no" + acs_npy(0)
    async with running(create_app(SamplerSettings(model_repository=repository))) as client:
        problem = await problem_of(
            await client.post("/v1/plan", content=framed, headers=BINARY), 422, "invalid-input"
        )
        assert problem["errors"][0]["loc"] == ["body", "acceleration"]  # type: ignore[index]
        await problem_of(
            await client.post("/v1/plan", content=not_json, headers=BINARY), 422, "invalid-input"
        )


async def test_other_content_types_are_415_and_big_bodies_413(repository: Path) -> None:
    settings = SamplerSettings(model_repository=repository, max_body_bytes=2048)
    async with running(create_app(settings)) as client:
        text = await client.post("/v1/plan", content=b"x", headers={"content-type": "text/plain"})
        problem = await problem_of(text, 415, "unsupported-media-type")
        assert PLAN_BINARY_MEDIA_TYPE in problem["accepted"]  # type: ignore[operator]
        big = encode_plan_body(header(), acs_npy(0))  # 2 kB of ACS + header + prefix
        await problem_of(await client.post("/v1/plan", content=big, headers=BINARY), 413, "payload-too-large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused while reading
            for start in range(0, len(big), 1000):
                yield big[start : start + 1000]

        streamed = await client.post("/v1/plan", content=chunks(), headers=BINARY)
        await problem_of(streamed, 413, "payload-too-large")


async def test_json_without_content_type_and_json_suffix_types_still_plan(repository: Path) -> None:
    body = header(policy="equispaced").model_dump_json().encode()
    async with running(create_app(SamplerSettings(model_repository=repository))) as client:
        bare = httpx.Request("POST", "http://sampler/v1/plan", content=body)
        assert "content-type" not in bare.headers  # httpx sets none for raw bytes
        assert (await client.send(bare)).status_code == 200
        suffixed = await plan_of(client, body, {"content-type": "application/vnd.kadapt+json; charset=utf-8"})
        assert suffixed.served_by == "equispaced"


async def test_openapi_documents_both_plan_media_types(repository: Path) -> None:
    async with running(create_app(SamplerSettings(model_repository=repository))) as client:
        operation = (await client.get("/openapi.json")).json()["paths"]["/v1/plan"]["post"]
        content = operation["requestBody"]["content"]
        assert set(content) == {"application/json", PLAN_BINARY_MEDIA_TYPE}
        assert "acs_npy_b64" in content["application/json"]["schema"]["properties"]
        assert {"400", "413", "415", "422", "504"} <= set(operation["responses"])
