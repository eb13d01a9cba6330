"""``create_app(settings)``: the sampler's FastAPI application (a factory; there is no module-level app).

Start-up (the lifespan) builds the policy registry from the mask families and the model repository
(checksums verified), warms every policy up with one plan, and only then reports ready; a bad bundle or
a failed warm-up leaves the service alive but unready, with the reason in ``/readyz``. Metrics go to a
per-app Prometheus registry, so several apps (tests, the embedded stack) never share counters.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kadapt.errors import KadaptError
from kadapt.loop_lag import LOOP_LAG_BUCKETS, watch_loop_lag
from kadapt.sampler.api.auth import install_auth
from kadapt.sampler.api.problems import install_problem_handlers
from kadapt.sampler.api.routes import SamplerState, router
from kadapt.sampler.domain.mnet import MNetServing
from kadapt.sampler.domain.planner import Planner, PolicyRegistry
from kadapt.sampler.settings import SamplerSettings

logger = logging.getLogger("kadapt.sampler")

# Plans take 0.1-1 ms for fixed masks and a few ms for models; deadlines are tens to hundreds of ms, so
# the buckets are dense from 1 to 100 ms (typical deadlines 5, 10, 20, 50, 100 ms fall on a boundary).
LATENCY_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.2, 0.5, 1.0, 2.5,
)  # fmt: skip
DEADLINE_STAGES = ("admission", "queue", "dequeue", "compute", "inference", "result")


class PrometheusObserver:
    """The planner's metrics, all prefixed ``kadapt_sampler_``, in one :class:`CollectorRegistry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        prefix = "kadapt_sampler"
        self.plans = Counter(
            "plans",
            "Plan requests by policy and outcome",
            ["policy", "outcome"],
            namespace=prefix,
            registry=registry,
        )
        self.deadline_exceeded = Counter(
            "deadline_exceeded",
            "Plan requests dropped past their deadline, by stage",
            ["stage"],
            namespace=prefix,
            registry=registry,
        )
        self.plan_seconds = Histogram(
            "plan_seconds",
            "Plan latency from admission to answer (or drop)",
            ["policy"],
            namespace=prefix,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.fallbacks = Counter(
            "fallback",
            "Plans answered with a model policy's fallback mask (degraded), by policy and reason",
            ["policy", "reason"],
            namespace=prefix,
            registry=registry,
        )
        self.queue_wait_seconds = Histogram(
            "queue_wait_seconds",
            "Time waiting for a compute slot",
            namespace=prefix,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.inflight = Gauge("inflight", "Plans holding a compute slot", namespace=prefix, registry=registry)
        self.queued = Gauge("queued", "Plans waiting for a compute slot", namespace=prefix, registry=registry)
        self.ready = Gauge(
            "ready", "1 once policies are loaded and warm", namespace=prefix, registry=registry
        )
        self.policy_loaded = Gauge(
            "policy_loaded",
            "1 for a policy served (loaded and warm), 0 for one whose bundle or warm-up failed",
            ["policy"],
            namespace=prefix,
            registry=registry,
        )
        self.onnx_provider = Gauge(
            "onnx_provider",
            "1 for the ONNX Runtime execution provider a model policy's bundle runs on (get_providers()[0])",
            ["model", "version", "provider"],
            namespace=prefix,
            registry=registry,
        )
        self.loop_lag_seconds = Histogram(
            "event_loop_lag_seconds",
            "How late the event loop woke from a 50 ms sleep (blocking work, a wait for a core, the GIL)",
            namespace=prefix,
            registry=registry,
            buckets=LOOP_LAG_BUCKETS,
        )
        for stage in DEADLINE_STAGES:
            self.deadline_exceeded.labels(stage=stage)

    def plan_done(self, policy: str, outcome: str, seconds: float) -> None:
        self.plans.labels(policy=policy, outcome=outcome).inc()
        self.plan_seconds.labels(policy=policy).observe(seconds)

    def deadline_missed(self, stage: str) -> None:
        self.deadline_exceeded.labels(stage=stage).inc()

    def fallback_served(self, policy: str, reason: str) -> None:
        self.fallbacks.labels(policy=policy, reason=reason).inc()

    def queue_waited(self, seconds: float) -> None:
        self.queue_wait_seconds.observe(seconds)

    def slots_changed(self, inflight: int, queued: int) -> None:
        self.inflight.set(inflight)
        self.queued.set(queued)

    def policies_loaded(self, registry: PolicyRegistry) -> None:
        """Load state of every policy (a failed bundle under its name, the part of ``name/version``
        before the slash) and the provider of each ONNX session a served policy holds."""
        served = {policy.name for policy in registry.policies()}
        for name in served:
            self.policy_loaded.labels(policy=name).set(1.0)
        for ref in registry.failures:
            name = ref.split("/", 1)[0]
            if name not in served:
                self.policy_loaded.labels(policy=name).set(0.0)
        for policy in registry.policies():
            get_providers = getattr(getattr(policy, "session", None), "get_providers", None)
            if get_providers is None:
                continue  # a mask family, or a test double without ONNX Runtime
            providers = list(get_providers())
            if providers:
                model, _, version = policy.info.served_by.partition("/")
                self.onnx_provider.labels(model=model, version=version, provider=str(providers[0])).set(1.0)


async def start_planner(
    state: SamplerState, observer: PrometheusObserver, registry: PolicyRegistry | None
) -> None:
    """Build (or take) the registry, create the planner, warm every policy up, then mark warm."""
    settings = state.settings
    if registry is None:
        serving = MNetServing(
            threads=settings.ort_threads,
            margin_ms=settings.fallback_margin_ms,
            default_fallback=settings.mnet_fallback,
        )
        registry = await asyncio.to_thread(
            functools.partial(PolicyRegistry.from_sources, settings.model_repository, mnet=serving)
        )
    planner = Planner(
        registry, max_inflight=settings.max_inflight, max_queued=settings.max_queued, observer=observer
    )
    if settings.warmup:
        for policy in registry.policies():
            try:
                await asyncio.to_thread(planner.warm_up, policy)
            except KadaptError as err:
                registry.disable(policy.name, f"warm-up failed: {err.slug}: {err.detail}")
            except Exception as err:  # a policy's own bug must leave the service unready, not dead
                logger.exception("warm-up of policy %s crashed", policy.name)
                registry.disable(policy.name, f"warm-up crashed: {type(err).__name__}: {err}")
    state.failures = dict(registry.failures)
    state.planner = planner
    state.warm = True
    observer.ready.set(1.0 if state.ready else 0.0)
    observer.policies_loaded(registry)
    for ref, reason in sorted(state.failures.items()):
        logger.error("sampler not ready: %s: %s", ref, reason)


def create_app(settings: SamplerSettings, *, registry: PolicyRegistry | None = None) -> FastAPI:
    """The sampler app. ``registry`` replaces the one built from ``settings.model_repository`` (tests
    inject policy doubles this way); it is still warmed up when ``settings.warmup``."""
    metrics_registry = CollectorRegistry(auto_describe=True)
    observer = PrometheusObserver(metrics_registry)
    state = SamplerState(settings=settings, metrics_registry=metrics_registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = asyncio.create_task(
            watch_loop_lag(
                observer.loop_lag_seconds.observe,
                on_stall=lambda lag, stalls: logger.info(
                    "event loop stalled: %d wake-ups 25 ms late or more, the worst %.1f ms", stalls, lag * 1e3
                ),
            )
        )
        try:
            await start_planner(state, observer, registry)
            yield
        finally:
            observer.ready.set(0.0)
            watcher.cancel()

    app = FastAPI(
        title="kadapt sampler",
        version="1",
        summary="Deadline-aware planning of the next phase-encode lines of a scan",
        lifespan=lifespan,
    )
    app.state.sampler = state
    install_auth(app, settings)
    install_problem_handlers(app)
    app.include_router(router)
    return app


def app_from_environment() -> FastAPI:
    """``create_app`` with settings from the environment, for ``uvicorn --factory
    kadapt.sampler.api.app:app_from_environment`` (process deployments)."""
    return create_app(SamplerSettings())
