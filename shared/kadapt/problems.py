"""RFC 9457 problem details for every kadapt error, framework-free (the services add thin glue).

Every ``type`` is ``PROBLEM_BASE + <slug>``, stable for clients to switch on:

- :class:`~kadapt.errors.KadaptError` (the whole tree) -> ``err.to_problem(instance=<path>)``;
- request validation -> 422 ``invalid-input`` with the bad locations and messages in ``errors`` --
  never the submitted values, which may be a header with patient data;
- framework HTTP errors (unknown route, wrong method, ...) -> their status with ``not-found``,
  ``method-not-allowed``, ``payload-too-large``, ``unsupported-media-type`` or ``http-<status>``;
- :class:`redis.exceptions.RedisError` (store or queue down or restarting) -> 503
  ``service-unavailable``, so callers retry;
- anything else (a bug) -> 500 ``internal-error`` without internals; the traceback goes to the log.

Each service's ``api/problems.py`` registers handlers that call :func:`problem_for` (or
:func:`validation_problem` / :func:`http_problem` for the framework's own exception types) and wraps the
dict in a ``PROBLEM_MEDIA_TYPE`` response; the mapping itself lives here, once. It also passes its app's
OpenAPI document through :func:`document_problems`, so the document says what the handlers send.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Final

import structlog
from redis.exceptions import RedisError

from kadapt.errors import PROBLEM_BASE, InvalidInputError, KadaptError, ServiceUnavailableError

PROBLEM_MEDIA_TYPE = "application/problem+json"
INTERNAL_ERROR_SLUG = "internal-error"
# Statuses whose responses must not carry a body (RFC 9110 sections 15.3.5 and 15.4.5).
BODYLESS_STATUSES = frozenset({204, 304})
_ERRORS_IN_DETAIL = 5
_HTTP_SLUGS = {
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
}


PROBLEM_SCHEMA_NAME: Final = "Problem"
PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "title": PROBLEM_SCHEMA_NAME,
    "description": "RFC 9457 problem details: `type` is a stable URI to switch on; some problems add "
    "members (`errors` for invalid input, `stage` for a missed deadline, ...).",
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "additionalProperties": True,
}
# The framework's own validation-error schemas, unused once its 422 answers are documented as problems.
_FRAMEWORK_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")


def document_problems(openapi: dict[str, Any]) -> dict[str, Any]:
    """``openapi`` (an app's OpenAPI document, changed in place and returned) with every 4xx / 5xx
    response of every operation documented as ``application/problem+json`` with the :data:`PROBLEM_SCHEMA`.

    That is what the services send for every error; without this the framework documents its request
    validation 422 as ``application/json`` with a schema nobody receives, and a route's hand-written
    error responses carry no schema. Idempotent.
    """
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas[PROBLEM_SCHEMA_NAME] = PROBLEM_SCHEMA
    problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{PROBLEM_SCHEMA_NAME}"}}}
    for path_item in openapi.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):  # a path-level ``parameters`` list
                continue
            for status, response in operation.get("responses", {}).items():
                if str(status)[:1] in ("4", "5"):
                    response["content"] = {media: dict(spec) for media, spec in problem.items()}
    for name in _FRAMEWORK_ERROR_SCHEMAS:  # in order: the first refers to the second
        if name in schemas and f'"#/components/schemas/{name}"' not in json.dumps(openapi):
            del schemas[name]
    return openapi


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


def validation_problem(errors: Sequence[Any], instance: str) -> dict[str, Any]:
    """422 ``invalid-input`` for pydantic-style ``errors``; the detail lists the first few locations."""
    safe = json_safe_errors(errors)
    shown = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
        for error in safe[:_ERRORS_IN_DETAIL]
    )
    more = f" (+{len(safe) - _ERRORS_IN_DETAIL} more)" if len(safe) > _ERRORS_IN_DETAIL else ""
    return {
        "type": PROBLEM_BASE + InvalidInputError.slug,
        "title": InvalidInputError.title,
        "status": 422,
        "detail": f"invalid request: {shown}{more}" if safe else "invalid request",
        "instance": instance,
        "errors": safe,
    }


def http_problem(status: int, method: str, instance: str, detail: object) -> dict[str, Any]:
    """A framework HTTP error (unknown route, wrong method, ...) with its stable type."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = f"HTTP {status}"
    return {
        "type": http_problem_type(status),
        "title": title,
        "status": status,
        "detail": f"{method} {instance}: {detail}",
        "instance": instance,
    }


def problem_for(exc: BaseException, *, service: str, method: str, instance: str) -> dict[str, Any]:
    """The problem of a kadapt error, a Redis outage (503, logged) or a bug (500, traceback logged to the
    ``kadapt.<service>`` logger; the detail points to that log and names no internals)."""
    if isinstance(exc, KadaptError):
        return exc.to_problem(instance=instance)
    log = structlog.get_logger(f"kadapt.{service}")
    if isinstance(exc, RedisError):
        log.warning("store_unavailable", error=type(exc).__name__, path=instance)
        error = ServiceUnavailableError(
            f"the {service}'s Redis store is unavailable ({type(exc).__name__}); retry later"
        )
        return error.to_problem(instance=instance)
    log.error("unhandled_error", method=method, path=instance, exc_info=exc)
    return {
        "type": PROBLEM_BASE + INTERNAL_ERROR_SLUG,
        "title": "Internal error",
        "status": 500,
        "detail": f"{method} {instance} failed; see the {service} log",
        "instance": instance,
    }
