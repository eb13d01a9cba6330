"""The recon service's routes: thin handlers over the domain (state in :class:`ReconRuntime`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Literal

import pydantic
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kadapt.errors import NotFoundError, ServiceUnavailableError
from kadapt.jobs.blobs import BlobStore
from kadapt.jobs.queue import JobQueue
from kadapt.recon.domain.methods import MethodRegistry
from kadapt.recon.domain.worker import ReconWorker
from kadapt.recon.settings import ReconSettings
from kadapt.schemas.jobs import ReconJob, ReconResult, ReconStatus
from kadapt.service_kit import parse_body


@dataclass
class ReconRuntime:
    """What the routes read: set up by ``create_app``, the queue and workers filled in by its lifespan."""

    settings: ReconSettings
    blobs: BlobStore
    methods: MethodRegistry
    registry: CollectorRegistry
    run_worker: bool
    queue: JobQueue | None = None
    workers: list[ReconWorker] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def require_queue(self) -> JobQueue:
        if self.queue is None:
            raise ServiceUnavailableError("the recon service is not started (no job queue yet)")
        return self.queue

    async def readiness_problem(self) -> str | None:
        """Why the service is not ready, or None when it is."""
        if self.queue is None:
            return "the job queue is not set up yet"
        if not await self.queue.ping():
            return "the job queue does not answer"
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


class ReadinessPublic(pydantic.BaseModel):
    status: Literal["ready"]
    workers: int


def runtime(request: Request) -> ReconRuntime:
    state: ReconRuntime = request.app.state.runtime
    return state


Runtime = Annotated[ReconRuntime, Depends(runtime)]

router = APIRouter()


@router.get("/healthz", tags=["health"])
async def healthz() -> HealthPublic:
    """Liveness: the process answers."""
    return HealthPublic(status="ok")


@router.get("/readyz", tags=["health"], responses={503: {"description": "not ready (problem+json)"}})
async def readyz(state: Runtime) -> ReadinessPublic:
    """Readiness: the queue answers and every worker runs (503 problem+json otherwise)."""
    problem = await state.readiness_problem()
    if problem is not None:
        raise ServiceUnavailableError(f"recon not ready: {problem}")
    return ReadinessPublic(status="ready", workers=len(state.workers))


@router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(state: Runtime) -> Response:
    """Prometheus text exposition of this app's registry."""
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/methods", tags=["recon"])
async def list_methods(state: Runtime) -> list[MethodPublic]:
    """The reconstruction methods a job may name."""
    return [
        MethodPublic(
            name=method.name,
            description=method.description,
            kind=method.kind,
            fallback=method.name == state.methods.fallback,
        )
        for method in state.methods.methods()
    ]


@router.get("/v1/jobs/{job_id}", tags=["recon"], responses={404: {"description": "no result (problem+json)"}})
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
    choice = state.methods.choose(job.method)
    state.blobs.resolve(job.kspace_path)
    state.blobs.resolve(job.mask_path)
    await state.require_queue().enqueue(job)
    return ReconResult(
        job_id=job.job_id,
        scan_id=job.scan_id,
        status=ReconStatus.queued,
        method_requested=job.method,
        method_used=choice.method.name,
        fallback_reason=choice.fallback_reason,
    )
