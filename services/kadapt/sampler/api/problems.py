"""RFC 9457 problem+json for every error the sampler returns (one handler for the kadapt error tree).

Services never import each other, so this is the sampler's own copy of the mapping: a
:class:`~kadapt.errors.KadaptError` becomes ``err.to_problem(instance=<request path>)`` with the error's
status; a request that fails validation becomes ``.../invalid-input`` (422) listing the bad fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kadapt.errors import PROBLEM_BASE, InvalidInputError, KadaptError

PROBLEM_MEDIA_TYPE = "application/problem+json"
_MAX_DETAIL_ERRORS = 5


def problem_response(problem: dict[str, Any], status: int) -> JSONResponse:
    """A JSON response with the problem+json media type."""
    return JSONResponse(problem, status_code=status, media_type=PROBLEM_MEDIA_TYPE)


def error_response(err: KadaptError, instance: str) -> JSONResponse:
    """``err`` as problem+json, ``instance`` the request path."""
    return problem_response(err.to_problem(instance=instance), err.status)


def summarise_validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic error dicts reduced to JSON-safe ``{loc, msg, type}`` (their ``ctx``/``input`` may hold
    arbitrary objects)."""
    return [
        {
            "loc": [str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in errors
    ]


async def handle_kadapt_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, KadaptError):  # registered for KadaptError only; keeps the signature general
        raise exc
    return error_response(exc, request.url.path)


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = summarise_validation_errors(exc.errors() if isinstance(exc, RequestValidationError) else [])
    shown = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:_MAX_DETAIL_ERRORS])
    more = f" (+{len(errors) - _MAX_DETAIL_ERRORS} more)" if len(errors) > _MAX_DETAIL_ERRORS else ""
    problem = {
        "type": PROBLEM_BASE + InvalidInputError.slug,
        "title": InvalidInputError.title,
        "status": 422,
        "detail": f"invalid request: {shown}{more}",
        "instance": request.url.path,
        "errors": errors,
    }
    return problem_response(problem, 422)


async def handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    """Framework errors (unknown route, wrong method) as problem+json with ``about:blank`` type."""
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    detail = exc.detail if isinstance(exc, StarletteHTTPException) else str(exc)
    problem = {"type": "about:blank", "title": str(detail), "status": status, "instance": request.url.path}
    return problem_response(problem, status)


async def handle_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug (not a :class:`KadaptError`): 500 problem+json naming the exception type; the server error
    middleware still re-raises it for the logs."""
    err = KadaptError(f"internal error: {type(exc).__name__}")
    return error_response(err, request.url.path)


def install_problem_handlers(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app``."""
    app.add_exception_handler(Exception, handle_unexpected_error)
    app.add_exception_handler(KadaptError, handle_kadapt_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
