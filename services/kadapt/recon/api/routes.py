"""The recon service's routes: thin handlers over the domain (state in :class:`ReconRuntime`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import pydantic
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kadapt.auth import AUTH_RESPONSES, auth_state
from kadapt.errors import NotFoundError, ServiceUnavailableError
from kadapt.jobs.blobs import BlobStore
from kadapt.jobs.queue import JobQueue
from kadapt.recon.api.auth import Admin, Viewer
from kadapt.recon.api.problems import parse_body
from kadapt.recon.domain.learned import BundleStatus, LearnedCatalogue
from kadapt.recon.domain.methods import MethodRegistry
from kadapt.recon.domain.monitoring import ReconGauges, blob_volume_problem
from kadapt.recon.domain.worker import ReconWorker
from kadapt.recon.settings import ReconSettings
from kadapt.schemas.jobs import ReconJob, ReconResult, ReconStatus


@dataclass
class ReconRuntime:
    """What the routes read: set up by ``create_app``, the queue and workers filled in by its lifespan."""

    settings: ReconSettings
    blobs: BlobStore
    methods: MethodRegistry
    registry: CollectorRegistry
    run_worker: bool
    queue: JobQueue | None = None
    learned: LearnedCatalogue | None = None
    workers: list[ReconWorker] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    gauges: ReconGauges | None = None

    async def refresh_gauges(self) -> None:
        """Read the queue's statistics and the blob volume's free space into the gauges (per scrape)."""
        if self.gauges is None:
            return
        if self.queue is not None:
            await self.gauges.refresh_queue(self.queue)
        await asyncio.to_thread(self.gauges.refresh_blob_volume, self.blobs.root)

    def require_queue(self) -> JobQueue:
        if self.queue is None:
            raise ServiceUnavailableError("the recon service is not started (no job queue yet)")
        return self.queue

    async def readiness_problem(self) -> str | None:
        """Why the service is not ready, or None when it is."""
        if self.learned is None:
            return "model bundles are not loaded yet"
        learned_problem = self.learned.readiness_problem()
        if learned_problem is not None:
            return learned_problem
        if self.queue is None:
            return "the job queue is not set up yet"
        if not await self.queue.ping():
            return "the job queue does not answer"
        blob_problem = await asyncio.to_thread(blob_volume_problem, self.blobs.root)
        if blob_problem is not None:
            return blob_problem
        if self.run_worker:
            if len(self.workers) < self.settings.workers or not all(w.started for w in self.workers):
                return f"{sum(w.started for w in self.workers)} of {self.settings.workers} workers started"
            stopped = [task.get_name() for task in self.tasks if task.done()]
            if stopped:
                return f"worker task(s) stopped: {', '.join(stopped)}"
        return None


class MethodPublic(pydantic.BaseModel):
    """A reconstruction method this service runs (``fallback``: used for bundle names it cannot serve)."""

    name: str
    description: str
    kind: str
    fallback: bool


class HealthPublic(pydantic.BaseModel):
    status: Literal["ok"]


class BundlePublic(pydantic.BaseModel):
    """A bundle this process tried to load: ``loaded`` (verified, session open, warmed up) or ``failed``
    with the ``reason``; ``explicit`` when ``KADAPT_RECON_BUNDLES`` named it."""

    ref: str
    state: Literal["loaded", "failed"]
    explicit: bool
    reason: str | None = None
    kind: str | None = None
    geometry: dict[str, Any] | None = None
    accelerations: list[float] | None = None
    num_acs: int | None = None
    normalisation: str | None = None
    opset: int | None = None
    validation: dict[str, Any] | None = None
    providers: list[str] = []
    warmup_ms: float | None = None

    @classmethod
    def of(cls, status: BundleStatus) -> BundlePublic:
        manifest = status.manifest
        summary: dict[str, Any] = {}
        if manifest is not None:
            summary = {
                "kind": manifest.kind,
                "geometry": manifest.geometry.model_dump(),
                "accelerations": list(manifest.accelerations),
                "num_acs": manifest.num_acs,
                "normalisation": manifest.normalisation,
                "opset": manifest.opset,
                "validation": manifest.model_dump(mode="json")["validation"],
            }
        return cls(
            ref=status.ref,
            state=status.state,
            explicit=status.explicit,
            reason=status.reason,
            providers=list(status.providers),
            warmup_ms=status.warmup_ms,
            **summary,
        )


class ModelsPublic(pydantic.BaseModel):
    """The learned-model side of the service: providers asked for, strict mode, every bundle tried."""

    providers_requested: list[str]
    strict_providers: bool
    bundles: list[BundlePublic]


class ReadinessPublic(pydantic.BaseModel):
    status: Literal["ready"]
    workers: int
    bundles: list[BundlePublic] | None = None  # left out when no bundle was tried
    auth: Literal["enabled", "disabled"] = "disabled"


def _bundles_public(state: ReconRuntime) -> list[BundlePublic]:
    return [] if state.learned is None else [BundlePublic.of(s) for s in state.learned.statuses]


def runtime(request: Request) -> ReconRuntime:
    state: ReconRuntime = request.app.state.runtime
    return state


Runtime = Annotated[ReconRuntime, Depends(runtime)]

router = APIRouter()
METRICS_RESPONSE: dict[str, Any] = {
    "description": "Prometheus text exposition",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


@router.get("/healthz", tags=["health"])
async def healthz() -> HealthPublic:
    """Liveness: the process answers."""
    return HealthPublic(status="ok")


@router.get(
    "/readyz",
    tags=["health"],
    responses={503: {"description": "not ready (problem+json)"}},
    response_model_exclude_none=True,
)
async def readyz(state: Runtime, request: Request) -> ReadinessPublic:
    """Readiness: requested bundles loaded and warmed up on the requested providers, the queue answers
    and every worker runs (503 problem+json otherwise, with ``bundles`` listing each bundle's state)."""
    problem = await state.readiness_problem()
    bundles = _bundles_public(state)
    if problem is not None:
        raise ServiceUnavailableError(
            f"recon not ready: {problem}", bundles=[b.model_dump(mode="json") for b in bundles]
        )
    return ReadinessPublic(
        status="ready",
        workers=len(state.workers),
        bundles=bundles or None,
        auth=auth_state(request.app.state.auth),
    )


@router.get("/metrics", tags=["health"], response_class=Response, responses={200: METRICS_RESPONSE})
async def metrics(state: Runtime) -> Response:
    """Prometheus text exposition of this app's registry; the queue and blob-volume gauges are read
    fresh for each scrape."""
    await state.refresh_gauges()
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/methods", tags=["recon"], dependencies=[Viewer], responses=AUTH_RESPONSES)
async def list_methods(state: Runtime) -> list[MethodPublic]:
    """The reconstruction methods a job may name."""
    return [
        MethodPublic(
            name=method.name,
            description=method.description,
            kind=method.kind,
            fallback=method.name == state.methods.fallback,
        )
        for method in [*state.methods.methods(), *state.methods.learned_methods()]
    ]


@router.get(
    "/v1/models",
    tags=["recon"],
    dependencies=[Viewer],
    responses={**AUTH_RESPONSES, 503: {"description": "bundles not loaded yet"}},
)
async def list_models(state: Runtime) -> ModelsPublic:
    """The learned bundles this process loaded (manifest summary, providers in use) or refused (reason)."""
    if state.learned is None:
        raise ServiceUnavailableError("model bundles are not loaded yet")
    return ModelsPublic(
        providers_requested=list(state.learned.requested_providers),
        strict_providers=state.settings.strict_providers,
        bundles=_bundles_public(state),
    )


@router.get(
    "/v1/jobs/{job_id}",
    tags=["recon"],
    dependencies=[Viewer],
    responses={
        **AUTH_RESPONSES,
        404: {"description": "No result (unknown, queued or running)"},
        503: {"description": "Not started: no job queue yet (service-unavailable)"},
    },
)
async def get_job(job_id: str, state: Runtime) -> ReconResult:
    """The stored result of ``job_id`` (done or failed); 404 while it is queued or running, or unknown."""
    result = await state.require_queue().get_result(job_id)
    if result is None:
        raise NotFoundError(f"no result for recon job {job_id!r} (unknown, queued or running)", job_id=job_id)
    return result


async def recon_job_body(request: Request) -> ReconJob:
    """The body as a strict :class:`ReconJob`, validated in JSON mode (see ``parse_body``)."""
    return await parse_body(request, ReconJob)


@router.post(
    "/v1/jobs",
    tags=["recon"],
    status_code=202,
    dependencies=[Admin],
    responses={
        **AUTH_RESPONSES,
        400: {"description": "A blob path outside the blob root (invalid-input)"},
        404: {"description": "Unknown reconstruction method (recon-method-not-found)"},
        422: {"description": "Not a valid job (invalid-input)"},
        503: {"description": "Not started: no job queue yet (service-unavailable)"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ReconJob.model_json_schema()}},
        }
    },
)
async def submit_job(job: Annotated[ReconJob, Depends(recon_job_body)], state: Runtime) -> ReconResult:
    """Enqueue a job (for tools; the gateway enqueues directly). Checks the method and that the blob
    paths lie under the blob root before queueing; the returned result is ``queued``."""
    state.methods.validate(job.method)
    state.blobs.resolve(job.kspace_path)
    state.blobs.resolve(job.mask_path)
    await state.require_queue().enqueue(job)
    return ReconResult(
        job_id=job.job_id,
        scan_id=job.scan_id,
        status=ReconStatus.queued,
        method_requested=job.method,
    )
