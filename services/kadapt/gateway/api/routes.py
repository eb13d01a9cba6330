"""REST routes of the gateway: thin handlers over :class:`~kadapt.gateway.domain.scans.ScanService`.

Binary bodies are MRD stream messages (``application/vnd.ismrmrd.stream``) or ``.npy``; JSON only for
metadata; every error is problem+json (``kadapt.problems``). See ``docs/api.md``.

Every ``/v1`` route runs the bearer-token guard (:mod:`kadapt.gateway.api.auth`) first; no route declares
a body parameter, so a refused request is never read past its headers (``docs/security.md``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError

from kadapt.auth import AUTH_RESPONSES, auth_state
from kadapt.dicom import DICOM_MEDIA_TYPE
from kadapt.errors import ServiceUnavailableError, UnsupportedMediaTypeError
from kadapt.gateway.api.auth import Scanner, Viewer
from kadapt.gateway.domain.images import MRD_MEDIA_TYPE, NPY_MEDIA_TYPE, PNG_MEDIA_TYPE, ZIP_MEDIA_TYPE
from kadapt.gateway.domain.scans import ScanService
from kadapt.schemas import IngestReport, PlanResponse, ScanCreate, ScanPublic

router = APIRouter()

INGEST_MEDIA_TYPES = (MRD_MEDIA_TYPE, "application/octet-stream")
IMAGE_MEDIA_TYPES = (NPY_MEDIA_TYPE, PNG_MEDIA_TYPE, MRD_MEDIA_TYPE, ZIP_MEDIA_TYPE, DICOM_MEDIA_TYPE)
ScanId = Annotated[str, "scan id (32 hex characters)"]
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
METRICS_RESPONSE: dict[str, Any] = {
    "description": "Prometheus text exposition",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


def _inline_refs(schema: Any, defs: dict[str, Any]) -> Any:
    """``schema`` with its ``#/$defs/...`` references replaced by the definitions (OpenAPI has no $defs)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline_refs(value, defs) for key, value in schema.items() if key != "$defs"}
    if isinstance(schema, list):
        return [_inline_refs(item, defs) for item in schema]
    return schema


def _scan_create_schema() -> Any:
    schema = ScanCreate.model_json_schema()
    return _inline_refs(schema, schema.get("$defs", {}))


async def scan_create_body(request: Request) -> ScanCreate:
    """The ``POST /v1/scans`` body, read only after the auth guard (a dependency declared after it) and
    validated in strict JSON mode; a bad body is a 422 ``invalid-input`` like FastAPI's own."""
    try:
        return ScanCreate.model_validate_json(await request.body())
    except ValidationError as err:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in err.errors(include_url=False)]
        raise RequestValidationError(errors) from err


def service_of(request: Request) -> ScanService:
    service: ScanService = request.app.state.service
    return service


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], responses={503: _PROBLEM})
async def readyz(request: Request) -> dict[str, str]:
    """Readiness: the session store and the job queue answer (Redis in a deployment). The sampler's
    state is reported (``ready``, ``unready: ...``, ``down: ...``) but never makes the gateway unready:
    the fallback mask answers plans while it is away."""
    service = service_of(request)
    store_ok, queue_ok, sampler = await asyncio.gather(
        service.store.ping(), service.queue.ping(), service.planner.sampler_status()
    )
    store, queue = ("ok" if store_ok else "down"), ("ok" if queue_ok else "down")
    if not (store_ok and queue_ok):
        raise ServiceUnavailableError(
            f"not ready: store {store}, queue {queue}", store=store, queue=queue, sampler=sampler
        )
    auth = auth_state(request.app.state.auth)
    return {"status": "ready", "store": store, "queue": queue, "sampler": sampler, "auth": auth}


@router.get("/metrics", tags=["health"], response_class=Response, responses={200: METRICS_RESPONSE})
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this app (its own registry)."""
    registry: CollectorRegistry = request.app.state.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/v1/scans",
    status_code=201,
    tags=["scans"],
    dependencies=[Scanner],
    responses={**AUTH_RESPONSES, 404: _PROBLEM, 422: _PROBLEM, 507: _PROBLEM},
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _scan_create_schema()}}}
    },
)
async def create_scan(
    body: Annotated[ScanCreate, Depends(scan_create_body)], request: Request, response: Response
) -> ScanPublic:
    """Open a scan session from the MRD XML header and the policy."""
    scan = await service_of(request).create_scan(body)
    response.headers["location"] = f"/v1/scans/{scan.scan_id}"
    return scan


@router.get(
    "/v1/scans/{scan_id}", tags=["scans"], dependencies=[Viewer], responses={**AUTH_RESPONSES, 404: _PROBLEM}
)
async def get_scan(scan_id: ScanId, request: Request) -> ScanPublic:
    """The session (its state follows the recon job's result)."""
    return await service_of(request).get_scan(scan_id)


@router.post(
    "/v1/scans/{scan_id}/acquisitions",
    tags=["scans"],
    dependencies=[Scanner],
    responses={
        **AUTH_RESPONSES,
        400: _PROBLEM,
        404: _PROBLEM,
        409: _PROBLEM,
        413: _PROBLEM,
        415: _PROBLEM,
        422: _PROBLEM,
        507: _PROBLEM,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}} for media in INGEST_MEDIA_TYPES
            },
        }
    },
)
async def ingest_acquisitions(
    scan_id: ScanId,
    request: Request,
    wait_plan: Annotated[
        bool,
        Query(
            description="when this request leaves the scan planning (its ACS block is in), answer with "
            "the plan in `plan`, within the plan deadline as GET .../plan would (saves that round trip)"
        ),
    ] = False,
) -> IngestReport:
    """Ingest MRD messages: ACQUISITION readouts are stored, a CLOSE completes the scan."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in INGEST_MEDIA_TYPES:
        raise UnsupportedMediaTypeError(
            f"content-type {media_type or '(none)'!r}; send {' or '.join(INGEST_MEDIA_TYPES)}"
        )
    received_unix_ms = getattr(request.state, "received_unix_ms", None)
    return await service_of(request).ingest(
        scan_id, await request.body(), wait_plan=wait_plan, received_unix_ms=received_unix_ms
    )


@router.get(
    "/v1/scans/{scan_id}/plan",
    tags=["scans"],
    dependencies=[Scanner],
    responses={**AUTH_RESPONSES, 404: _PROBLEM, 409: _PROBLEM},
)
async def get_plan(scan_id: ScanId, request: Request) -> PlanResponse:
    """The lines to acquire; answered within the plan deadline, with the fallback mask if need be."""
    return await service_of(request).get_plan(scan_id)


@router.post(
    "/v1/scans/{scan_id}/complete",
    tags=["scans"],
    dependencies=[Scanner],
    responses={**AUTH_RESPONSES, 404: _PROBLEM, 409: _PROBLEM, 507: _PROBLEM},
)
async def complete_scan(scan_id: ScanId, request: Request, force: bool = False) -> ScanPublic:
    """Finish acquisition and enqueue the reconstruction (``force``: the scanner says it is done)."""
    return await service_of(request).complete(scan_id, force=force)


@router.get(
    "/v1/scans/{scan_id}/images",
    tags=["scans"],
    response_class=Response,
    dependencies=[Viewer],
    responses={
        **AUTH_RESPONSES,
        200: {"content": {media: {} for media in IMAGE_MEDIA_TYPES}},
        404: _PROBLEM,
        409: _PROBLEM,
        422: _PROBLEM,
    },
)
async def get_images(
    scan_id: ScanId,
    request: Request,
    image_format: Annotated[Literal["npy", "png", "mrd", "dicom"], Query(alias="format")] = "npy",
    slice_index: Annotated[int | None, Query(alias="slice", ge=0)] = None,
    frame: Annotated[int | None, Query(ge=0)] = None,
    deidentify: Annotated[
        bool | None, Query(description="DICOM: remove patient fields (default: the gateway's setting)")
    ] = None,
) -> Response:
    """Magnitude images once the scan is done: ``.npy`` float32 ``(slice, frame, H, W)``, a PNG preview
    of one (slice, frame), an MRD stream of IMAGE messages, or DICOM (a ZIP of one file per (slice,
    frame), one ``application/dicom`` file with ``slice``)."""
    if deidentify is None:
        deidentify = bool(request.app.state.settings.dicom_deidentify)
    body, media_type = await service_of(request).images(
        scan_id, image_format, slice_index=slice_index, frame=frame, deidentify=deidentify
    )
    headers = {}
    if media_type == ZIP_MEDIA_TYPE:
        headers["content-disposition"] = f'attachment; filename="{scan_id}-dicom.zip"'
    return Response(body, media_type=media_type, headers=headers)


@router.get(
    "/v1/scans/{scan_id}/mask",
    tags=["scans"],
    response_class=Response,
    dependencies=[Viewer],
    responses={**AUTH_RESPONSES, 200: {"content": {NPY_MEDIA_TYPE: {}}}, 404: _PROBLEM},
)
async def get_mask(scan_id: ScanId, request: Request) -> Response:
    """The acquired-line mask, bool ``(slice, frame, W)`` as ``.npy``."""
    return Response(await service_of(request).mask(scan_id), media_type=NPY_MEDIA_TYPE)


@router.delete(
    "/v1/scans/{scan_id}",
    status_code=204,
    tags=["scans"],
    dependencies=[Scanner],
    responses={**AUTH_RESPONSES, 404: _PROBLEM},
)
async def delete_scan(scan_id: ScanId, request: Request) -> Response:
    """Forget the scan and remove its files."""
    await service_of(request).delete(scan_id)
    return Response(status_code=204)
