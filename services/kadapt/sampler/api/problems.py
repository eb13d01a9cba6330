"""FastAPI glue for the core's problem+json mapping (:mod:`kadapt.problems`): one handler registered for
the kadapt error tree, request validation, framework HTTP errors, Redis outages and bugs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from kadapt.errors import KadaptError
from kadapt.problems import (
    BODYLESS_STATUSES,
    PROBLEM_MEDIA_TYPE,
    document_problems,
    http_problem,
    problem_for,
    validation_problem,
)

SERVICE = "sampler"


def problem_response(problem: dict[str, object], headers: Mapping[str, str] | None = None) -> JSONResponse:
    """``problem`` as an ``application/problem+json`` response with its status."""
    status = problem["status"]
    return JSONResponse(
        problem,
        status_code=status if isinstance(status, int) else 500,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


async def handle_error(request: Request, exc: Exception) -> Response:
    path = request.url.path
    if isinstance(exc, RequestValidationError):
        return problem_response(validation_problem(exc.errors(), path))
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code in BODYLESS_STATUSES:
            return Response(status_code=exc.status_code, headers=exc.headers)
        return problem_response(http_problem(exc.status_code, request.method, path, exc.detail), exc.headers)
    problem = problem_for(exc, service=SERVICE, method=request.method, instance=path)
    # WWW-Authenticate on 401/403, Retry-After on 429.
    headers = exc.headers() if isinstance(exc, KadaptError) else None
    # Starlette's ServerErrorMiddleware re-raises a bug after this handler answers, for the server's log.
    return problem_response(problem, headers)


def install_problem_handlers(app: FastAPI) -> None:
    """Register :func:`handle_error` on ``app`` for every error kind the mapping covers, and document
    every error response of its OpenAPI as problem+json (:func:`kadapt.problems.document_problems`)."""
    for kind in (KadaptError, RequestValidationError, StarletteHTTPException, RedisError, Exception):
        app.add_exception_handler(kind, handle_error)
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        return document_problems(build_openapi())

    app.openapi = openapi  # type: ignore[method-assign]
