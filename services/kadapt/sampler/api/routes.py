"""Routes: ``POST /v1/plan``, ``GET /v1/policies``, ``/healthz``, ``/readyz``, ``/metrics``.

Thin: parse, call the planner, answer. Errors are raised as :mod:`kadapt.errors` classes and turned into
problem+json by :mod:`kadapt.problems`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel

from kadapt.auth import AUTH_RESPONSES, auth_state
from kadapt.errors import ServiceUnavailableError
from kadapt.problems import PROBLEM_MEDIA_TYPE
from kadapt.sampler.api.auth import Scanner, Viewer
from kadapt.sampler.api.bodies import plan_body_openapi, read_plan_request
from kadapt.sampler.api.problems import problem_response
from kadapt.sampler.domain.planner import Planner
from kadapt.sampler.settings import SamplerSettings
from kadapt.schemas import PlanResponse

router = APIRouter()


@dataclass
class SamplerState:
    """What the routes read from ``app.state.sampler``; ``planner`` is ``None`` until start-up ran,
    ``failures`` (bundle or policy -> reason) keep the service unready."""

    settings: SamplerSettings
    metrics_registry: CollectorRegistry
    planner: Planner | None = None
    warm: bool = False
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.planner is not None and self.warm and not self.failures


class PolicyPublic(BaseModel):
    """One entry of ``GET /v1/policies``."""

    name: str
    kind: str
    dims: Literal["1d", "kt"]
    population: bool
    description: str
    served_by: str
    width: int | None = None
    accelerations: tuple[float, ...] = ()
    cascades: int | None = None


# The dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its worker
# thread pool, two thread hops per plan request that cost about 1 ms of CPU under uvicorn (profiled).
async def sampler_state(request: Request) -> SamplerState:
    state: SamplerState = request.app.state.sampler
    return state


async def ready_planner(state: Annotated[SamplerState, Depends(sampler_state)]) -> Planner:
    """The planner, or 503 while start-up has not run."""
    if state.planner is None:
        raise ServiceUnavailableError("the sampler is starting: policies are not loaded yet")
    return state.planner


_PROBLEM: dict[str, Any] = {"content": {PROBLEM_MEDIA_TYPE: {}}}
METRICS_RESPONSE: dict[str, Any] = {
    "description": "Prometheus text exposition",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


@router.post(
    "/v1/plan",
    response_model=PlanResponse,
    openapi_extra=plan_body_openapi(),
    dependencies=[Scanner],
    responses={
        **AUTH_RESPONSES,
        400: {"description": "Malformed binary plan body (invalid-input)", **_PROBLEM},
        404: {"description": "Unknown policy (policy-not-found)", **_PROBLEM},
        413: {"description": "Body over max_body_bytes (payload-too-large)", **_PROBLEM},
        415: {"description": "Neither JSON nor application/x-kadapt-plan", **_PROBLEM},
        422: {"description": "Invalid request or impossible acceleration", **_PROBLEM},
        503: {"description": "Policies not loaded yet, or max_queued plans waiting (overloaded)", **_PROBLEM},
        504: {"description": "The deadline passed before the plan was ready (deadline-exceeded)", **_PROBLEM},
    },
)
async def plan_next_lines(
    request: Request,
    state: Annotated[SamplerState, Depends(sampler_state)],
    planner: Annotated[Planner, Depends(ready_planner)],
) -> Response:
    """The complete ky line set for the scan's next round (``round(W / R)`` lines, ACS and acquired
    lines included; per frame for kt policies), or a 504 once ``deadline_unix_ms`` has passed.

    The body is a ``PlanRequest`` as JSON or as ``application/x-kadapt-plan`` (JSON header + raw ``.npy``
    ACS, see :mod:`kadapt.schemas.plan_binary`); the answer is serialised here in one pass."""
    body = await read_plan_request(request, state.settings.max_body_bytes)
    plan = await planner.plan(body)
    return Response(plan.model_dump_json(), media_type="application/json")


@router.get("/v1/policies", dependencies=[Viewer], responses=AUTH_RESPONSES)
async def list_policies(planner: Annotated[Planner, Depends(ready_planner)]) -> list[PolicyPublic]:
    """The plannable policies: the 1d / kt mask families and the fixed-mask bundles."""
    return [
        PolicyPublic(
            name=info.name,
            kind=info.kind,
            dims=info.dims,
            population=info.population,
            description=info.description,
            served_by=info.served_by,
            width=info.width,
            accelerations=info.accelerations,
            cascades=info.cascades,
        )
        for info in planner.registry.infos()
    ]


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=None,
    responses={503: {"description": "Not ready: policies loading or failed (service-unavailable)"}},
)
async def readyz(request: Request, state: Annotated[SamplerState, Depends(sampler_state)]) -> Any:
    """200 once every policy is loaded, checksum-verified and warm; 503 problem+json otherwise, with
    ``failures`` (bundle or policy -> reason)."""
    if state.ready and state.planner is not None:
        registry = state.planner.registry
        return {
            "status": "ready",
            "policies": [policy.name for policy in registry.policies()],
            "skipped": registry.skipped,
            "auth": auth_state(request.app.state.auth),
        }
    if state.planner is None:
        detail = "policies are not loaded and warmed up yet"
    else:
        detail = f"{len(state.failures)} bundle(s) or policies failed: {sorted(state.failures)}"
    err = ServiceUnavailableError(detail, warm=state.warm, failures=state.failures)
    return problem_response(err.to_problem(instance=request.url.path))


@router.get("/metrics", response_class=Response, responses={200: METRICS_RESPONSE})
async def metrics(state: Annotated[SamplerState, Depends(sampler_state)]) -> Response:
    """Prometheus text exposition of this app's registry."""
    return Response(generate_latest(state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
