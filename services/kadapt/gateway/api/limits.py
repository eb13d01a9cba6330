"""Request-body limit as pure ASGI middleware: 413 problem+json without reading an oversize body.

A declared ``Content-Length`` above the limit is refused before the body is read; a chunked (or lying)
body is counted as it streams and the request fails as soon as the count passes the limit, so a client
can never make the gateway buffer more than ``max_body_bytes``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kadapt.errors import InvalidInputError, KadaptError, PayloadTooLargeError
from kadapt.gateway.api.problems import problem_response


async def send_problem(scope: Scope, receive: Receive, send: Send, error: KadaptError) -> None:
    """Send ``error`` as a complete problem+json response (closing the connection afterwards, as the
    rest of the body is never read)."""
    path = str(scope.get("path", ""))
    response = problem_response(error.to_problem(instance=path), {"connection": "close"})
    await response(scope, receive, send)


class BodySizeLimit:
    """Refuse request bodies larger than ``max_body_bytes`` with 413 ``payload-too-large``."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                error = InvalidInputError(f"Content-Length {declared!r} is not a number")
                await send_problem(scope, receive, send, error)
                return
            if length > self.max_body_bytes:
                await send_problem(scope, receive, send, self._too_large(f"Content-Length {length}"))
                return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large(f"more than {received} bytes streamed")
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except PayloadTooLargeError as error:
            # Only reached when the error escaped the app's own handlers (e.g. a middleware read).
            if started:
                raise
            await send_problem(scope, receive, send, error)

    def _too_large(self, what: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"request body of {what} exceeds the limit of {self.max_body_bytes} bytes",
            limit=self.max_body_bytes,
        )
