"""The MRD streaming server: TCP (port 9002 by convention) beside the gateway's REST API, same scans.

``MrdServer(service, settings)`` listens with ``asyncio.start_server`` and runs one
:class:`~kadapt.gateway.mrd_server.connection.MrdSession` per connection, each a scan of the shared
:class:`ScanService` (so the REST API sees, plans and serves the same scans). A connection beyond
``mrd_max_connections`` gets a ``service-unavailable`` TEXT and a CLOSE; a failing connection ends alone
(its session catches everything), so one client cannot take the server or other sessions down.
The gateway's lifespan starts and stops it (``api/app.py``).
"""

from __future__ import annotations

import asyncio
import time

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kadapt.errors import ServiceUnavailableError
from kadapt.gateway.domain.scans import ScanService
from kadapt.gateway.mrd_server.connection import MrdSession
from kadapt.gateway.mrd_server.options import SessionOptions
from kadapt.gateway.mrd_server.replies import error_text
from kadapt.gateway.settings import GatewaySettings

log = structlog.get_logger("kadapt.gateway.mrd")


class MrdMetrics:
    """Prometheus metrics of the MRD server (in the gateway's registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A private registry when none is given: two servers in one process must not collide.
        registry = registry if registry is not None else CollectorRegistry()
        self.sessions = Counter(
            "kadapt_gateway_mrd_sessions_total",
            "MRD sessions by outcome (completed, disconnected, refused or the problem slug)",
            ["outcome"],
            registry=registry,
        )
        self.active = Gauge("kadapt_gateway_mrd_active_sessions", "open MRD sessions", registry=registry)
        self.seconds = Histogram(
            "kadapt_gateway_mrd_session_seconds",
            "MRD session duration, first byte to close",
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=registry,
        )
        self.readouts = Counter(
            "kadapt_gateway_mrd_readouts_total", "ACQUISITION messages received", registry=registry
        )


class MrdServer:
    """Listens on ``settings.mrd_host:settings.mrd_port`` (0: a free port, see :attr:`port`)."""

    def __init__(
        self,
        service: ScanService,
        settings: GatewaySettings,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.service = service
        self.host = settings.mrd_host
        self.requested_port = settings.mrd_port or 0
        self.max_connections = settings.mrd_max_connections
        self.options = SessionOptions.from_settings(settings)
        self.metrics = MrdMetrics(registry)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._server is None or not self._server.sockets:
            raise ServiceUnavailableError("the MRD server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        # The reader buffers up to ~2 chunks before pausing the socket: a bound per connection.
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, self.requested_port, limit=self.options.read_chunk_bytes
        )
        log.info("mrd_server_listening", host=self.host, port=self.port)

    async def close(self) -> None:
        """Stop listening and end every open session (their unfinished scans are deleted)."""
        if self._server is not None:
            self._server.close()
        sessions = list(self._sessions)
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        session = MrdSession(reader, writer, self.service, self.options, peer=peer)
        if len(self._sessions) >= self.max_connections:
            refusal = ServiceUnavailableError(
                f"{self.max_connections} MRD sessions are open (mrd_max_connections); try again later"
            )
            log.warning("mrd_connection_refused", peer=peer, open=len(self._sessions))
            try:
                await session.refuse(error_text(refusal))
            finally:
                writer.close()
            self.metrics.sessions.labels(outcome="refused").inc()
            return
        task = asyncio.current_task()
        if task is not None:
            self._sessions.add(task)
        self.metrics.active.inc()
        started = time.monotonic()
        try:
            outcome = await session.run()
        finally:
            self.metrics.active.dec()
            self.metrics.readouts.inc(session.readouts)
            self.metrics.seconds.observe(time.monotonic() - started)
            if task is not None:
                self._sessions.discard(task)
        self.metrics.sessions.labels(outcome=outcome).inc()
