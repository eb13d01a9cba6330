"""Schemathesis against every service's OpenAPI, in-process (issue 7).

Each service app (gateway, sampler, recon) is built with its factory over a temporary data directory,
the embedded memory queue and an empty model repository; schemathesis loads ``/openapi.json`` from the
app and generates positive and negative requests for every operation, checked for: no 5xx, every status
code and content type documented, every documented response body valid against its schema. Two runs per
service: with a valid admin token (auth on; known-valid bodies and, on the gateway, a real scan in
acquisition join the generated cases so the success paths are checked too) and with none, where every
``/v1`` operation must answer a documented 401 problem+json and the gateway's session store must never be
touched (``docs/security.md``). A third test sweeps the methods no path documents (405 with ``Allow``).

Kept small for CI: a few examples per operation, derandomized, no shrinking, no health checks. The
driver is a plain loop over the schema's operations: ``schemathesis.pytest.from_fixture`` (4.x) relies on
a pytest-internal attribute that pytest 9 removed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CheckContext
from schemathesis.core.failures import FailureGroup, ServerError
from schemathesis.core.result import Ok
from schemathesis.core.transport import Response as SchemathesisResponse
from schemathesis.generation.case import Case
from schemathesis.python import asgi
from schemathesis.schemas import APIOperation, BaseSchema

from kadapt.auth import mint_token
from kadapt.gateway.api.app import create_app as create_gateway
from kadapt.gateway.domain.store import MemorySessionStore
from kadapt.gateway.settings import GatewaySettings
from kadapt.jobs import MemoryJobQueue
from kadapt.mrd.header import make_header
from kadapt.mrd.stream import encode_acquisitions, make_acquisition_heads
from kadapt.recon.api.app import create_app as create_recon
from kadapt.recon.settings import ReconSettings
from kadapt.sampler.api.app import create_app as create_sampler
from kadapt.sampler.settings import SamplerSettings

AnyOperation = APIOperation[Any, Any, Any, Any]
AnyCase = Case[AnyOperation]
ADMIN, ADMIN_LINE = mint_token("schemathesis", ["admin"])
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
PROBLEM = "application/problem+json"
MRD = "application/vnd.ismrmrd.stream"
schemathesis.serializer.alias(MRD, "application/octet-stream")  # MRD bodies are bytes on the wire


def no_unplanned_server_error(ctx: CheckContext, response: SchemathesisResponse, case: AnyCase) -> None:
    """``not_a_server_error``, except for a 5xx the operation documents with a typed problem: the
    sampler's 504 ``deadline-exceeded`` for a deadline already past and 503 ``service-unavailable`` are
    answers, not crashes. A 500 (``internal-error``, a bug) always fails."""
    status = response.status_code
    if status < 500:
        return
    documented = str(status) in case.operation.responses.status_codes
    problem_type = ""
    if response.headers.get("content-type") == [PROBLEM]:
        problem_type = str(response.json().get("type", ""))
    if status == 500 or not documented or not problem_type or problem_type.endswith("/internal-error"):
        raise ServerError(operation=case.operation.label, status_code=status)


CHECKS = [
    no_unplanned_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]
# Examples per operation: small for CI; KADAPT_SCHEMATHESIS_EXAMPLES=200 for a deeper local run.
FAST = settings(
    max_examples=int(os.environ.get("KADAPT_SCHEMATHESIS_EXAMPLES", "15")),
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as first found
    suppress_health_check=list(HealthCheck),
)
# Every SessionStore operation except the health probe and shutdown: what "touching a session" means.
SESSION_OPERATIONS = frozenset(
    {"create", "get", "update", "claim_lines", "claim_and_count", "release_lines", "promote_staged",
     "count_present", "line_keys", "count_lines", "delete"}
)  # fmt: skip


class SpyStore(MemorySessionStore):
    """The memory session store, recording every session operation called on it."""

    def __init__(self) -> None:
        super().__init__()
        self.touched: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        if name in SESSION_OPERATIONS:
            object.__getattribute__(self, "touched").append(name)
        return super().__getattribute__(name)


def _sampler_down(request: httpx.Request) -> httpx.Response:
    """The gateway's sampler: always 503, so a plan is the gateway's own fallback mask."""
    return httpx.Response(503, json={"status": 503, "title": "down"})


@dataclass
class Service:
    name: str
    schema: BaseSchema
    store: SpyStore | None = None


def build_app(name: str, root: Path, store: SpyStore) -> Any:
    """``name``'s app over ``root`` with auth on (one admin token) and no rate limit."""
    auth: dict[str, Any] = {"auth_tokens": ADMIN_LINE, "rate_limit_per_s": 0.0}
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    if name == "gateway":
        sampler = httpx.AsyncClient(transport=httpx.MockTransport(_sampler_down))
        settings_ = GatewaySettings(
            data_dir=root / "gateway", sampler_url="http://sampler", log_level="warning", **auth
        )
        return create_gateway(settings_, sampler_client=sampler, queue=MemoryJobQueue(), store=store)
    if name == "sampler":
        return create_sampler(SamplerSettings(model_repository=models, warmup=False, **auth))
    recon_settings = ReconSettings(blob_dir=root / "blobs", model_repository=models, consumer="st", **auth)
    return create_recon(recon_settings, queue=MemoryJobQueue(), run_worker=False)


def admin_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN}"}


def acs_readouts(width: int = 32, readout: int = 64, coils: int = 2, num_acs: int = 4) -> bytes:
    """The central ``num_acs`` lines of a ``readout`` x ``width`` scan as MRD ACQUISITION messages."""
    rng = np.random.default_rng(0)
    lines = list(range(width // 2 - num_acs // 2, width // 2 - num_acs // 2 + num_acs))
    shape = (num_acs, coils, readout)
    data = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    heads = make_acquisition_heads(num_acs, coils=coils, samples=readout)
    heads["idx"]["kspace_encode_step_1"] = lines
    return encode_acquisitions(heads, data)


def scan_in_acquisition(schema: BaseSchema) -> dict[str, str]:
    """A new scan (64 x 32, 2 coils, 4 ACS lines, R = 4) created and given its ACS lines through the API,
    so it has a plan (the sampler is down: the gateway's fallback mask) and lines to acquire."""
    create = schema["/v1/scans"]["POST"].Case(
        body={"header_xml": make_header(readout=64, width=32, coils=2), "policy": {"num_acs": 4}}
    )
    created = create.call(headers=admin_headers())
    assert created.status_code == 201, created.text
    scan_id = str(created.json()["scan_id"])
    ingest = schema["/v1/scans/{scan_id}/acquisitions"]["POST"].Case(
        path_parameters={"scan_id": scan_id}, body=acs_readouts(), media_type=MRD
    )
    ingested = ingest.call(headers=admin_headers())
    assert ingested.status_code == 200, ingested.text
    return {"scan_id": scan_id}


@pytest.fixture(scope="module", params=["gateway", "sampler", "recon"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    name = request.param
    store = SpyStore()
    app = build_app(name, tmp_path_factory.mktemp(name), store)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield Service(name, schema, store if name == "gateway" else None)
    asgi.shutdown_lifespans()  # run the apps' shutdown (closes their queues)


def valid_bodies(label: str) -> list[tuple[Any, str]]:
    """Known-valid bodies (with their media type) for the operations whose random bodies are almost never
    valid, so the success paths and their response schemas are checked too."""
    if label == "POST /v1/scans":
        header = make_header(readout=64, width=32, coils=2)
        return [({"header_xml": header, "policy": {"num_acs": 4}}, "application/json")]
    if label == "POST /v1/scans/{scan_id}/acquisitions":
        return [(acs_readouts(), MRD)]
    if label == "POST /v1/plan":
        deadline = time.time() * 1000.0 + 60_000.0
        plan = {"scan_id": "s", "policy": "vd-random", "width": 64, "height": 64, "coils": 2}
        plan |= {"acceleration": 4.0, "num_acs": 8, "deadline_unix_ms": deadline}
        dynamic = {**plan, "policy": "kt-gaussian-1d", "frames": 3}
        return [(plan, "application/json"), (dynamic, "application/json")]
    if label == "POST /v1/jobs":
        job = {"job_id": "j", "scan_id": "s", "method": "zero-filled", "num_acs": 8, "acceleration": 4.0}
        job |= {"kspace_path": "scans/s/kspace.npy", "mask_path": "scans/s/mask.npy"}
        job |= {"kspace_sha256": "0" * 64, "mask_sha256": "0" * 64}
        return [(job, "application/json")]
    return []


def strategy(operation: AnyOperation, known: dict[str, str]) -> st.SearchStrategy[AnyCase]:
    """Positive and negative cases, plus cases with ``known`` path parameters (a real scan) and with
    :func:`valid_bodies`."""
    strategies = [operation.as_strategy(mode) for mode in GenerationMode]
    names = {parameter.name for parameter in operation.path_parameters}
    reused = {name: value for name, value in known.items() if name in names}
    if reused:
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=reused))
    strategies += [
        operation.as_strategy(path_parameters=reused or None, body=body, media_type=media_type)
        for body, media_type in valid_bodies(operation.label)
    ]
    return st.one_of(strategies)


def run_operations(
    service: Service,
    headers: dict[str, str],
    extra: Callable[[AnyCase, SchemathesisResponse], None],
    known: Callable[[], dict[str, str]] | None = None,
) -> dict[str, str]:
    """Run every operation's property test (``known()``: fresh path parameters for each operation); the
    first failure of each operation, by label."""
    failures: dict[str, str] = {}
    results = list(service.schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert operations, "the schema has no operations"
    assert len(operations) == len(results), "schemathesis could not read every operation"
    for operation in operations:

        @FAST
        @given(case=strategy(operation, known() if known is not None else {}))
        def check(case: AnyCase) -> None:
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            extra(case, response)

        try:
            check()
        except (AssertionError, FailureGroup) as exc:  # the checks' failures, or ``extra``'s assertion
            failures[operation.label] = f"{type(exc).__name__}: {exc}"
    return failures


def test_every_operation_with_an_admin_token(service: Service) -> None:
    def nothing(case: AnyCase, response: SchemathesisResponse) -> None:
        return None

    def known() -> dict[str, str]:
        return scan_in_acquisition(service.schema) if service.name == "gateway" else {}

    if service.store is not None:
        service.store.touched.clear()
    failures = run_operations(service, admin_headers(), nothing, known)
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())
    if service.store is not None:
        assert {"create", "get", "delete"} <= set(service.store.touched)  # the spy sees sessions used


def test_every_operation_without_a_token(service: Service) -> None:
    if service.store is not None:
        service.store.touched.clear()

    def refused(case: AnyCase, response: SchemathesisResponse) -> None:
        if case.path in OPEN_PATHS:
            return
        assert response.status_code == 401, f"{case.method} {case.formatted_path}: {response.status_code}"
        assert response.headers["content-type"] == [PROBLEM]
        assert response.headers["www-authenticate"][0].startswith("Bearer")

    failures = run_operations(service, {}, refused)
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())
    if service.store is not None:
        assert service.store.touched == []


def test_undocumented_methods_are_405_problems(service: Service) -> None:
    """Every method a path does not document (HEAD and OPTIONS included) is a 405 problem+json with
    ``Allow``, with or without a token, and never reaches a session."""
    if service.store is not None:
        service.store.touched.clear()
    document = service.schema.raw_schema
    checked = 0
    with asgi.get_client(service.schema.app) as client:
        for path, operations in document["paths"].items():
            url = path.replace("{scan_id}", "0" * 32).replace("{job_id}", "job")
            allowed = {method.upper() for method in operations}
            for method in sorted({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} - allowed):
                for headers in ({}, admin_headers()):
                    response = client.request(method, url, headers=headers)
                    assert response.status_code == 405, (method, path, response.status_code)
                    assert set(response.headers["allow"].split(", ")) == allowed
                    if method != "HEAD":
                        assert response.headers["content-type"] == PROBLEM
                        assert response.json()["type"].endswith("/method-not-allowed")
                    checked += 1
    assert checked
    if service.store is not None:
        assert service.store.touched == []
