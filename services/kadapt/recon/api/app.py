"""``create_app(settings)``: the recon service's FastAPI app (a factory; there is no module-level app).

The lifespan first loads the learned model bundles (:func:`kadapt.recon.domain.learned.load_learned`, in a
thread: checksums, ONNX Runtime sessions on ``settings.providers``, warm-up) and attaches them to the method
registry; readiness reports their problems. It then picks the queue (the one passed in; else Redis from
``settings.redis_url``; else in-memory), starts ``settings.workers`` :class:`ReconWorker` tasks when
``run_worker``, and at shutdown stops them, giving a running job ``settings.shutdown_grace_s`` before
cancelling it (a cancelled job was not acked, so the queue redelivers it). A queue passed in belongs to
the caller and is not closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Histogram

from kadapt.classic import ClassicParameters
from kadapt.jobs.blobs import BlobStore
from kadapt.jobs.queue import JobQueue, MemoryJobQueue
from kadapt.jobs.redis_queue import RedisJobQueue
from kadapt.recon.api.auth import install_auth
from kadapt.recon.api.problems import install_problem_handlers
from kadapt.recon.api.routes import ReconRuntime, router
from kadapt.recon.domain.learned import load_learned
from kadapt.recon.domain.methods import MethodRegistry, default_registry
from kadapt.recon.domain.monitoring import ReconGauges
from kadapt.recon.domain.worker import ReconMetrics, ReconWorker
from kadapt.recon.settings import ReconSettings

logger = logging.getLogger(__name__)


def build_queue(settings: ReconSettings) -> JobQueue:
    """Redis Streams when ``settings.redis_url`` is set, otherwise the in-memory queue."""
    if settings.redis_url is None:
        return MemoryJobQueue(max_deliveries=settings.max_deliveries, claim_idle_ms=settings.claim_idle_ms)
    return RedisJobQueue.from_url(
        settings.redis_url,
        stream=settings.stream,
        group=settings.group,
        dead_stream=settings.dead_stream,
        result_prefix=settings.result_prefix,
        max_deliveries=settings.max_deliveries,
        claim_idle_ms=settings.claim_idle_ms,
    )


def _log_worker_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("recon worker task %s crashed", task.get_name(), exc_info=task.exception())


async def _stop_workers(tasks: list[asyncio.Task[None]], grace_s: float) -> None:
    if not tasks:
        return
    _, still_running = await asyncio.wait(tasks, timeout=grace_s)
    for task in still_running:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def create_app(
    settings: ReconSettings,
    *,
    queue: JobQueue | None = None,
    run_worker: bool = True,
    methods: MethodRegistry | None = None,
) -> FastAPI:
    """The recon app. ``queue``: share one with an embedded gateway; ``run_worker=False`` serves the API
    only (then readiness needs only the queue); ``methods`` replaces the default registry."""
    registry = CollectorRegistry()
    metrics = ReconMetrics.create(registry)
    inference_seconds = Histogram(
        "kadapt_recon_inference_seconds",
        "ONNX Runtime inference time of one (slice, frame) by bundle",
        ["bundle"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        registry=registry,
    )
    state = ReconRuntime(
        settings=settings,
        blobs=BlobStore(settings.blob_dir),
        methods=methods
        if methods is not None
        else default_registry(
            settings.model_repository, ClassicParameters(iterative_maps=settings.coil_maps)
        ),
        registry=registry,
        run_worker=run_worker,
        gauges=ReconGauges(registry),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        catalogue = await asyncio.to_thread(
            load_learned,
            settings.model_repository,
            settings.bundles,
            settings.providers,
            strict_providers=settings.strict_providers,
            intra_op_threads=settings.inference_threads,
        )
        catalogue.set_observer(lambda ref, seconds: inference_seconds.labels(bundle=ref).observe(seconds))
        state.methods.attach_learned(catalogue)
        state.learned = catalogue
        if state.gauges is not None:
            state.gauges.record_models(catalogue.statuses)
        owned_queue = queue is None
        active_queue = queue if queue is not None else build_queue(settings)
        state.queue = active_queue
        stop_event = asyncio.Event()
        if run_worker:
            for index in range(settings.workers):
                consumer = settings.consumer if settings.workers == 1 else f"{settings.consumer}-{index}"
                worker = ReconWorker(
                    active_queue,
                    state.blobs,
                    consumer,
                    methods=state.methods,
                    metrics=metrics,
                    block_ms=settings.block_ms,
                )
                task = asyncio.create_task(worker.run(stop_event), name=f"recon-worker:{consumer}")
                task.add_done_callback(_log_worker_exit)
                state.workers.append(worker)
                state.tasks.append(task)
        try:
            yield
        finally:
            stop_event.set()
            await _stop_workers(state.tasks, settings.shutdown_grace_s)
            state.workers.clear()
            state.tasks.clear()
            state.queue = None
            state.learned = None
            if owned_queue:
                await active_queue.close()

    app = FastAPI(
        title="kadapt recon",
        summary="Reconstruction workers for kadapt's recon job queue",
        lifespan=lifespan,
    )
    app.state.runtime = state
    install_auth(app, settings)
    install_problem_handlers(app)
    app.include_router(router)
    return app


def app_from_environment() -> FastAPI:
    """``uvicorn --factory kadapt.recon.api.app:app_from_environment``: settings from ``KADAPT_RECON_*``."""
    return create_app(ReconSettings())
