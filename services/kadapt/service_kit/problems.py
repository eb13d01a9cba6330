"""The one mapping from errors to RFC 9457 ``application/problem+json`` responses, for every service.

Every ``type`` is ``PROBLEM_BASE + <slug>``, stable for clients to switch on:

- :class:`~kadapt.errors.KadaptError` (the whole tree) -> ``err.to_problem(instance=<path>)`` with the
  error's status (domain code raises kadapt errors only and never imports this module);
- request validation (FastAPI's, or a body parsed by :func:`parse_body`) -> 422 ``invalid-input`` with
  the bad locations and messages in ``errors`` -- never the submitted values, which may be a header with
  patient data;
- framework HTTP errors (unknown route, wrong method, ...) -> their status with ``not-found``,
  ``method-not-allowed``, ``payload-too-large``, ``unsupported-media-type`` or ``http-<status>``, keeping
  their headers (e.g. ``Allow``);
- :class:`redis.exceptions.RedisError` (store or queue down or restarting) -> 503
  ``service-unavailable``, so callers retry;
- anything else (a bug) -> 500 ``internal-error`` without internals; the traceback goes to the log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, TypeVar

import pydantic
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from kadapt.errors import PROBLEM_BASE, InvalidInputError, KadaptError, ServiceUnavailableError

PROBLEM_MEDIA_TYPE = "application/problem+json"
INTERNAL_ERROR_SLUG = "internal-error"
_ERRORS_IN_DETAIL = 5
_HTTP_SLUGS = {
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
}
# Statuses whose responses must not carry a body (RFC 9110 sections 15.3.5 and 15.4.5).
_BODYLESS = frozenset({204, 304})

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


def problem_response(problem: dict[str, Any], *, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """``problem`` (a JSON-safe dict with an int ``status``) as an ``application/problem+json`` response
    with that status."""
    return JSONResponse(
        problem, status_code=int(problem["status"]), media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def error_response(error: KadaptError, instance: str) -> JSONResponse:
    """The problem+json response of ``error``; ``instance`` is the request path."""
    return problem_response(error.to_problem(instance=instance))


def http_problem_type(status: int) -> str:
    """The stable problem ``type`` of a framework HTTP error with ``status``."""
    return PROBLEM_BASE + _HTTP_SLUGS.get(status, f"http-{status}")


def json_safe_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic error dicts reduced to ``{loc, msg}``: their ``input`` (the submitted value, possibly
    patient data) is dropped, and ``ctx`` may hold arbitrary objects; ``loc`` keeps list indices as ints."""
    return [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
        }
        for error in errors
    ]


def validation_error_from(err: pydantic.ValidationError, location: str = "body") -> RequestValidationError:
    """A body validated by hand (e.g. ``Model.model_validate_json``) as FastAPI's validation error, so
    the same handler answers it, its locations prefixed with ``location``."""
    errors = [{**error, "loc": (location, *error["loc"])} for error in err.errors(include_url=False)]
    return RequestValidationError(errors)


async def parse_body(request: Request, model: type[ModelT]) -> ModelT:
    """The request body validated as ``model`` in pydantic's JSON mode; a bad body raises
    :class:`RequestValidationError` (422 ``invalid-input``).

    Needed for strict wire types: FastAPI validates bodies in Python mode, where strict models reject
    JSON arrays for tuple fields; JSON mode accepts them.
    """
    try:
        return model.model_validate_json(await request.body())
    except pydantic.ValidationError as err:
        raise validation_error_from(err) from err


def install_problem_handlers(app: FastAPI, *, service: str) -> None:
    """Register the problem+json handlers on ``app``; ``service`` (e.g. ``"gateway"``) names the
    structlog logger (``kadapt.<service>``) and the log a 500 points to."""
    log = structlog.get_logger(f"kadapt.{service}")

    async def kadapt_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, KadaptError):  # registered for KadaptError; the signature is Starlette's
            raise exc
        return error_response(exc, request.url.path)

    async def validation_error(request: Request, exc: Exception) -> Response:
        errors = json_safe_errors(exc.errors() if isinstance(exc, RequestValidationError) else [])
        shown = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in errors[:_ERRORS_IN_DETAIL]
        )
        more = f" (+{len(errors) - _ERRORS_IN_DETAIL} more)" if len(errors) > _ERRORS_IN_DETAIL else ""
        problem = {
            "type": PROBLEM_BASE + InvalidInputError.slug,
            "title": InvalidInputError.title,
            "status": 422,
            "detail": f"invalid request: {shown}{more}" if errors else "invalid request",
            "instance": request.url.path,
            "errors": errors,
        }
        return problem_response(problem)

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):  # registered for HTTPException only
            raise exc
        status = exc.status_code
        if status in _BODYLESS:
            return Response(status_code=status, headers=exc.headers)
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = f"HTTP {status}"
        problem = {
            "type": http_problem_type(status),
            "title": title,
            "status": status,
            "detail": f"{request.method} {request.url.path}: {exc.detail}",
            "instance": request.url.path,
        }
        return problem_response(problem, headers=exc.headers)

    async def store_error(request: Request, exc: Exception) -> Response:
        log.warning("store_unavailable", error=type(exc).__name__, path=request.url.path)
        error = ServiceUnavailableError(
            f"the {service}'s Redis store is unavailable ({type(exc).__name__}); retry later"
        )
        return error_response(error, request.url.path)

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        # Starlette's ServerErrorMiddleware calls this, then re-raises ``exc`` for the server's log.
        log.error("unhandled_error", method=request.method, path=request.url.path, exc_info=exc)
        problem = {
            "type": PROBLEM_BASE + INTERNAL_ERROR_SLUG,
            "title": "Internal error",
            "status": 500,
            "detail": f"{request.method} {request.url.path} failed; see the {service} log",
            "instance": request.url.path,
        }
        return problem_response(problem)

    app.add_exception_handler(KadaptError, kadapt_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RedisError, store_error)
    app.add_exception_handler(Exception, unexpected_error)
