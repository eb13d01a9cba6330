"""Structured JSON logs with scan id and request id (no patient data), and HTTP metrics.

:class:`RequestContext` is pure ASGI: it takes the ``X-Request-ID`` header (or makes one), binds it and
the scan id from the path into structlog's context variables for every log line of the request, echoes
it in the response and logs one ``request`` event with method, path, status, duration and the
authenticated client (when auth is on). Every event passes :func:`kadapt.mrd.redact.redact_log_event`
(patient keys dropped, MRD header patient fields blanked, tracebacks included) before rendering.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid

import structlog
from prometheus_client import CollectorRegistry, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kadapt.mrd.redact import redact_log_event

_SCAN_PATH = re.compile(r"^/v1/scans/([^/]+)")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
log = structlog.get_logger("kadapt.gateway.http")


def configure_logging(*, json_logs: bool, level: str) -> None:
    """Configure structlog once per process (JSON lines on stderr); later calls keep the first setup."""
    if structlog.is_configured():
        return
    renderer = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_log_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class RequestContext:
    """Request id + scan id in the log context, one access log line and a latency histogram."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.seconds = Histogram(
            "kadapt_gateway_http_request_seconds",
            "HTTP request latency",
            ["method", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        offered = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if _REQUEST_ID.match(offered) else uuid.uuid4().hex
        path = str(scope.get("path", ""))
        match = _SCAN_PATH.match(path)
        context = {"request_id": request_id, **({"scan_id": match.group(1)} if match else {})}
        status = 500
        started = time.perf_counter()
        # When the request reached the app: the scan's plan deadline counts from here (ScanService.ingest).
        scope.setdefault("state", {})["received_unix_ms"] = time.time() * 1000.0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())],
                }
            await send(message)

        with structlog.contextvars.bound_contextvars(**context):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                self.seconds.labels(method=str(scope.get("method", "")), status=str(status)).observe(elapsed)
                log.info(
                    "request",
                    method=scope.get("method"),
                    path=path,
                    status=status,
                    duration_ms=round(elapsed * 1000.0, 3),
                    client=scope.get("state", {}).get("client_id"),
                )
