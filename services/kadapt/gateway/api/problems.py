"""One mapping from the kadapt error tree to RFC 9457 ``application/problem+json`` responses.

Domain errors carry their own slug, status and detail (``KadaptError.to_problem``); request validation
becomes 422 ``invalid-input`` (locations and messages only, never the submitted values, which may be a
header with patient data); framework errors (unknown route, wrong method) keep their status.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from kadapt.errors import PROBLEM_BASE, InvalidInputError, KadaptError, ServiceUnavailableError

PROBLEM_MEDIA_TYPE = "application/problem+json"

_HTTP_SLUGS = {
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
}


def problem_response(problem: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        problem, status_code=int(problem["status"]), media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def error_response(error: KadaptError, instance: str) -> JSONResponse:
    """The problem+json response of a kadapt error."""
    return problem_response(error.to_problem(instance=instance))


async def _kadapt_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, KadaptError):  # registered for KadaptError only; keeps the signature generic
        raise exc
    return error_response(exc, request.url.path)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    summary = [
        {"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg", ""))}
        for error in errors
    ]
    first = summary[0] if summary else {"loc": [], "msg": "invalid request"}
    problem = {
        "type": PROBLEM_BASE + InvalidInputError.slug,
        "title": InvalidInputError.title,
        "status": 422,
        "detail": f"{'.'.join(first['loc'])}: {first['msg']}",
        "instance": request.url.path,
        "errors": summary,
    }
    return problem_response(problem)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    detail = exc.detail if isinstance(exc, StarletteHTTPException) else "error"
    headers = getattr(exc, "headers", None)
    problem = {
        "type": PROBLEM_BASE + _HTTP_SLUGS.get(status, f"http-{status}"),
        "title": str(detail),
        "status": status,
        "detail": f"{request.method} {request.url.path}: {detail}",
        "instance": request.url.path,
    }
    return problem_response(problem, headers=headers)


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    """Redis down or restarting: 503, so the scanner retries (requests are checked whole before storing)."""
    structlog.get_logger("kadapt.gateway").warning("store_unavailable", error=type(exc).__name__)
    return error_response(
        ServiceUnavailableError(f"session store unavailable ({type(exc).__name__})"), request.url.path
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered as problem+json without internals."""
    structlog.get_logger("kadapt.gateway").exception("unhandled_error", path=request.url.path)
    problem = {
        "type": PROBLEM_BASE + "internal-error",
        "title": "Internal error",
        "status": 500,
        "detail": f"{request.method} {request.url.path} failed ({type(exc).__name__}); see the gateway log",
        "instance": request.url.path,
    }
    return problem_response(problem)


def install_problem_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(KadaptError, _kadapt_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RedisError, _store_error)
    app.add_exception_handler(Exception, _unexpected_error)
