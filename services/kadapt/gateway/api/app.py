"""The gateway's app factory (never a module-level app).

``create_app(settings)`` builds what is not injected: with ``settings.redis_url`` a
:class:`RedisSessionStore` and a :class:`RedisJobQueue` (a deployment), else the in-memory store and queue
(the embedded default); the sampler client is a pooled :class:`kadapt.http_client.LeanHTTPClient`.
Injected objects stay the caller's to close; the ones built here close with the app's lifespan. With
``settings.mrd_port`` set, the lifespan also runs the MRD streaming server on that port
(``app.state.mrd_server``, ``docs/mrd.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Histogram

from kadapt.gateway.api.auth import install_auth
from kadapt.gateway.api.limits import BodySizeLimit
from kadapt.gateway.api.observability import RequestContext, configure_logging
from kadapt.gateway.api.problems import install_problem_handlers
from kadapt.gateway.api.routes import router
from kadapt.gateway.domain.fallbacks import FallbackBundles
from kadapt.gateway.domain.kspace_files import KspaceFiles
from kadapt.gateway.domain.planning import PlanMetrics, Planner, SamplerClient
from kadapt.gateway.domain.scan_io import background_executor
from kadapt.gateway.domain.scans import ScanService
from kadapt.gateway.domain.store import MemorySessionStore, RedisSessionStore, SessionStore
from kadapt.gateway.mrd_server import MrdServer
from kadapt.gateway.settings import GatewaySettings
from kadapt.http_client import LeanHTTPClient
from kadapt.jobs import BlobStore, JobQueue, MemoryJobQueue, RedisJobQueue
from kadapt.loop_lag import LOOP_LAG_BUCKETS, watch_loop_lag

log = structlog.get_logger("kadapt.gateway")

API_VERSION = "1.0.0"


def create_app(
    settings: GatewaySettings,
    *,
    sampler_client: SamplerClient | None = None,
    queue: JobQueue | None = None,
    store: SessionStore | None = None,
) -> FastAPI:
    """The gateway app over ``settings``; ``sampler_client`` / ``queue`` / ``store`` are test and
    composition seams (e.g. an ``httpx.AsyncClient`` over an ``ASGITransport`` to an in-process sampler, a
    shared memory queue)."""
    configure_logging(json_logs=settings.log_json, level=settings.log_level)
    closers: list[Callable[[], Awaitable[None]]] = []
    if store is None:
        store = RedisSessionStore.from_url(settings.redis_url) if settings.redis_url else MemorySessionStore()
        closers.append(store.close)
    if queue is None:
        queue = RedisJobQueue.from_url(settings.redis_url) if settings.redis_url else MemoryJobQueue()
        closers.append(queue.close)
    if sampler_client is None:
        lean = LeanHTTPClient(max_connections=settings.sampler_pool_size)
        closers.append(lean.aclose)
        sampler_client = lean
    settings.scans_dir.mkdir(parents=True, exist_ok=True)
    settings.blobs_dir.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    loop_lag = Histogram(
        "kadapt_gateway_event_loop_lag_seconds",
        "How late the event loop woke from a 50 ms sleep (blocking work, a wait for a core, the GIL)",
        registry=registry,
        buckets=LOOP_LAG_BUCKETS,
    )
    planner = Planner(
        sampler_client,
        sampler_url=settings.sampler_url,
        margin_ms=settings.sampler_margin_ms,
        margin_fraction=settings.sampler_margin_fraction,
        metrics=PlanMetrics(registry),
        token=settings.sampler_token.get_secret_value() if settings.sampler_token else None,
    )
    service = ScanService(
        store=store,
        queue=queue,
        planner=planner,
        kspace_files=KspaceFiles(settings.scans_dir, max_scan_bytes=settings.max_scan_bytes),
        blobs=BlobStore(settings.blobs_dir),
        offload_bytes=settings.offload_bytes,
        fallback_bundles=FallbackBundles(settings.model_repository),
    )

    mrd_server = MrdServer(service, settings, registry=registry) if settings.mrd_port is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Bulk work (job blobs, images, the trash) behind the scanner's path: see scan_io.py.
        background = background_executor()
        asyncio.get_running_loop().set_default_executor(background)
        watcher = asyncio.create_task(
            watch_loop_lag(
                loop_lag.observe,
                on_stall=lambda lag, stalls: log.info(
                    "event_loop_stall", lag_ms=round(lag * 1e3, 1), stalls=stalls
                ),
            )
        )
        try:
            await asyncio.to_thread(service.trash.empty)  # what a previous process left behind
            if mrd_server is not None:
                await mrd_server.start()
            yield
        finally:
            watcher.cancel()
            if mrd_server is not None:
                await mrd_server.close()
            await service.close()
            for close in reversed(closers):
                await close()

    app = FastAPI(
        title="kadapt gateway",
        version=API_VERSION,
        summary="Scanner-facing API: scan sessions, plans under a deadline, recon jobs, images.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.mrd_server = mrd_server
    app.state.registry = registry
    install_auth(app, settings)
    install_problem_handlers(app)
    app.include_router(router)
    app.add_middleware(RequestContext, registry=registry)
    # Added last = outermost: an oversize body is refused before anything else runs.
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    return app
