"""The core's problem+json mapping (:mod:`kadapt.problems`) as a service registers it (the recon glue, the
one with ``parse_body``) on a tiny FastAPI app, through httpx.ASGITransport: kadapt errors, request
validation (FastAPI's and hand-parsed bodies), framework HTTP errors, Redis outages and bugs, each with a
stable ``type``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pydantic
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from kadapt.errors import PROBLEM_BASE, ServiceUnavailableError, UnknownScanError
from kadapt.problems import PROBLEM_MEDIA_TYPE, json_safe_errors, problem_for
from kadapt.recon.api.problems import install_problem_handlers, parse_body, problem_response

PATIENT = "DOE^JANE"  # a submitted value that must never come back in a problem


class Scan(pydantic.BaseModel):
    """Lax FastAPI-validated body."""

    scan_id: str
    width: int
    height: int

    @pydantic.field_validator("width")
    @classmethod
    def even(cls, width: int) -> int:
        if width % 2:
            raise ValueError(f"width {width} is odd")  # lands in ctx as an exception object
        return width


class StrictLines(pydantic.BaseModel):
    """Strict wire model with a tuple field: Python-mode validation rejects JSON arrays for it."""

    model_config = pydantic.ConfigDict(strict=True)

    lines: tuple[int, ...]
    patient: str


async def strict_lines(request: Request) -> StrictLines:
    return await parse_body(request, StrictLines)


def build_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/scans/{scan_id}")
    async def unknown_scan(scan_id: str) -> None:
        raise UnknownScanError(f"no scan {scan_id!r}", scan_id=scan_id)

    @app.post("/scans")
    async def create_scan(scan: Scan) -> dict[str, int]:
        return {"width": scan.width}

    @app.post("/lines")
    async def post_lines(body: Annotated[StrictLines, Depends(strict_lines)]) -> dict[str, int]:
        return {"count": len(body.lines)}

    @app.get("/http/{status}")
    async def http_error(status: int) -> None:
        raise HTTPException(status_code=status, detail="framework says no", headers={"Retry-After": "3"})

    @app.get("/redis")
    async def redis_down() -> None:
        raise RedisConnectionError("Error 111 connecting to 10.0.0.7:6379. Connection refused.")

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError(f"secret internals of {PATIENT}")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # The 500 handler runs in Starlette's ServerErrorMiddleware, which re-raises for the server log.
    transport = httpx.ASGITransport(app=build_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://kit") as http:
        yield http


def assert_problem(response: httpx.Response, status: int, slug: str, path: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    problem: dict[str, Any] = response.json()
    assert problem["type"] == PROBLEM_BASE + slug
    assert problem["status"] == status
    assert problem["instance"] == path
    assert isinstance(problem["title"], str)
    assert problem["title"]
    assert isinstance(problem["detail"], str)
    assert problem["detail"]
    return problem


async def test_kadapt_error_is_its_own_problem(client: httpx.AsyncClient) -> None:
    problem = assert_problem(await client.get("/scans/s-1"), 404, "scan-not-found", "/scans/s-1")
    assert problem["detail"] == "no scan 's-1'"
    assert problem["scan_id"] == "s-1"  # the error's extra fields are kept
    assert problem["title"] == UnknownScanError.title


async def test_validation_error_lists_locations_not_values(client: httpx.AsyncClient) -> None:
    response = await client.post("/scans", json={"scan_id": 1, "width": PATIENT, "height": 8})
    problem = assert_problem(response, 422, "invalid-input", "/scans")
    assert [error["loc"] for error in problem["errors"]] == [["body", "scan_id"], ["body", "width"]]
    assert all(set(error) == {"loc", "msg"} for error in problem["errors"])
    assert problem["detail"].startswith("invalid request: body.scan_id: ")
    assert "body.width: " in problem["detail"]
    assert PATIENT not in response.text


async def test_validation_error_with_an_exception_in_ctx_is_json_safe(client: httpx.AsyncClient) -> None:
    response = await client.post("/scans", json={"scan_id": "s", "width": 7, "height": 8})
    problem = assert_problem(response, 422, "invalid-input", "/scans")
    assert problem["errors"] == [{"loc": ["body", "width"], "msg": "Value error, width 7 is odd"}]


async def test_validation_detail_shows_the_first_five_errors(client: httpx.AsyncClient) -> None:
    response = await client.post("/lines", json={"lines": ["a", "b", "c", "d", "e", "f", "g"], "patient": 1})
    problem = assert_problem(response, 422, "invalid-input", "/lines")
    assert len(problem["errors"]) == 8
    assert problem["errors"][0]["loc"] == ["body", "lines", 0]  # list indices stay ints
    assert problem["detail"].count(";") == 4
    assert problem["detail"].endswith("(+3 more)")


async def test_parse_body_accepts_json_arrays_for_strict_tuples(client: httpx.AsyncClient) -> None:
    ok = await client.post("/lines", json={"lines": [1, 2, 3], "patient": PATIENT})
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"count": 3}
    not_json = await client.post("/lines", content=b"{", headers={"content-type": "application/json"})
    problem = assert_problem(not_json, 422, "invalid-input", "/lines")
    assert problem["errors"][0]["loc"] == ["body"]


@pytest.mark.parametrize(
    ("status", "slug"),
    [
        (404, "not-found"),
        (405, "method-not-allowed"),
        (413, "payload-too-large"),
        (415, "unsupported-media-type"),
        (418, "http-418"),
        (429, "http-429"),
    ],
)
async def test_http_exceptions_get_stable_types_and_keep_headers(
    client: httpx.AsyncClient, status: int, slug: str
) -> None:
    response = await client.get(f"/http/{status}")
    problem = assert_problem(response, status, slug, f"/http/{status}")
    assert problem["detail"] == f"GET /http/{status}: framework says no"
    assert response.headers["retry-after"] == "3"


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nowhere"), 404, "not-found", "/nowhere")
    wrong = await client.delete("/scans")
    problem = assert_problem(wrong, 405, "method-not-allowed", "/scans")
    assert problem["title"] == "Method Not Allowed"
    assert wrong.headers["allow"] == "POST"


async def test_redis_outage_is_503_and_logged(client: httpx.AsyncClient) -> None:
    with capture_logs() as logs:
        response = await client.get("/redis")
    problem = assert_problem(response, 503, "service-unavailable", "/redis")
    assert problem["title"] == ServiceUnavailableError.title
    assert "10.0.0.7" not in problem["detail"]
    assert [(log["event"], log["log_level"], log["error"]) for log in logs] == [
        ("store_unavailable", "warning", "ConnectionError")
    ]


async def test_a_bug_is_a_500_without_internals(client: httpx.AsyncClient) -> None:
    with capture_logs() as logs:
        response = await client.get("/bug")
    problem = assert_problem(response, 500, "internal-error", "/bug")
    assert problem["detail"] == "GET /bug failed; see the recon log"
    assert "secret" not in response.text
    assert PATIENT not in response.text
    assert [(log["event"], log["log_level"], log["path"]) for log in logs] == [
        ("unhandled_error", "error", "/bug")
    ]
    assert isinstance(logs[0]["exc_info"], RuntimeError)  # the traceback goes to the log


def test_response_helpers() -> None:
    response = problem_response(
        problem_for(UnknownScanError("no scan 'x'"), service="t", method="GET", instance="/scans/x")
    )
    assert response.status_code == 404
    assert response.media_type == PROBLEM_MEDIA_TYPE
    custom = problem_response({"type": PROBLEM_BASE + "x", "status": 413}, {"connection": "close"})
    assert custom.status_code == 413
    assert custom.headers["connection"] == "close"


def test_json_safe_errors_drop_input_and_ctx() -> None:
    raw = [
        {
            "loc": ("body", "items", 3),
            "msg": "bad",
            "type": "value_error",
            "input": PATIENT,
            "ctx": {"error": ValueError(PATIENT)},
        }
    ]
    assert json_safe_errors(raw) == [{"loc": ["body", "items", 3], "msg": "bad"}]
