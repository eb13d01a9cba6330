"""RFC 9457 problem+json for every error the recon service returns -- the pattern for a service's one
error handler (copy it; services never import each other).

- :class:`~kadapt.errors.KadaptError` (the whole tree) -> ``err.to_problem(instance=<path>)`` with the
  error's status; ``type`` is ``https://kadapt.dev/problems/<slug>``, stable for clients to switch on.
- request validation (FastAPI's, or a body parsed by :func:`validation_error_from`) -> ``invalid-input``
  with status 422 and the offending fields in ``errors``.
- framework HTTP errors (unknown route, wrong method) -> ``about:blank`` with their status.

Domain code raises kadapt errors only; nothing here is imported by the domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kadapt.errors import PROBLEM_BASE, InvalidInputError, KadaptError

PROBLEM_MEDIA_TYPE = "application/problem+json"
_ERRORS_IN_DETAIL = 5


def problem_response(problem: dict[str, Any], status: int) -> JSONResponse:
    """``problem`` as a JSON response with the ``application/problem+json`` media type."""
    return JSONResponse(problem, status_code=status, media_type=PROBLEM_MEDIA_TYPE)


def json_safe_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic error dicts reduced to ``{loc, msg, type}`` (``input`` / ``ctx`` may hold any object)."""
    return [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in errors
    ]


def validation_error_from(err: pydantic.ValidationError, location: str = "body") -> RequestValidationError:
    """A body validated by hand (e.g. ``Model.model_validate_json``) as FastAPI's validation error, so
    the same handler answers it. Needed for strict wire types: FastAPI validates bodies in Python mode,
    where strict models reject JSON arrays for tuple fields; JSON mode accepts them."""
    errors = [{**error, "loc": (location, *error["loc"])} for error in err.errors(include_url=False)]
    return RequestValidationError(errors)


async def handle_kadapt_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, KadaptError):  # registered for KadaptError; the signature is Starlette's
        raise exc
    return problem_response(exc.to_problem(instance=request.url.path), exc.status)


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
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
        "detail": f"invalid request: {shown}{more}",
        "instance": request.url.path,
        "errors": errors,
    }
    return problem_response(problem, 422)


async def handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    title = str(exc.detail) if isinstance(exc, StarletteHTTPException) else "Internal Server Error"
    problem = {"type": "about:blank", "title": title, "status": status, "instance": request.url.path}
    return problem_response(problem, status)


def install_problem_handlers(app: FastAPI) -> None:
    """Register the three problem+json handlers on ``app``."""
    app.add_exception_handler(KadaptError, handle_kadapt_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
