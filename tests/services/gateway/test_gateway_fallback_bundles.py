"""A learned fixed-mask bundle as a scan's fallback: checked at creation, its served plan when the sampler
is down, kept in the session (bundle deleted, another replica, Redis)."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from kadapt.bundles import BundleGeometry, Manifest, utc_now, write_bundle
from kadapt.bundles.sampler_masks import centre_tiebreak, served_fixed_order, served_fixed_plan
from kadapt.errors import PROBLEM_BASE
from kadapt.gateway.api.app import create_app
from kadapt.gateway.domain.fallbacks import FallbackPattern
from kadapt.gateway.domain.planning import PlanContext, fallback_plan
from kadapt.gateway.domain.store import MemorySessionStore, RedisSessionStore, SessionStore
from kadapt.gateway.settings import GatewaySettings
from kadapt.jobs import MemoryJobQueue
from kadapt.masks import acs_lines, line_budget
from kadapt.masks.mechanics import topk_plan
from kadapt.schemas import PlanResponse, ScanGeometry, ScanPolicy

if TYPE_CHECKING:
    from conftest import Scanner

WIDTH, NUM_ACS, R = 32, 4, 4.0
# Distinct float scores with a tie (lines 3 and 28), so the served order needs the centre tie-break.
SCORES = np.random.default_rng(7).permutation(np.linspace(0.0, 1.0, WIDTH)).astype(np.float32)
SCORES[28] = SCORES[3]


def write_fixed(
    repository: Path,
    name: str = "learned",
    version: str = "1",
    scores: np.ndarray[Any, Any] = SCORES,
    accelerations: Sequence[float] = (R, 8.0),
) -> None:
    """A ``fixed-mask`` bundle as the trainer writes one (``mask.npy`` float32 scores ``(W,)``)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(scores), allow_pickle=False)
    manifest = Manifest(
        name=name,
        version=version,
        kind="fixed-mask",
        geometry=BundleGeometry(ky=int(np.asarray(scores).shape[0])),
        accelerations=tuple(accelerations),
        num_acs=NUM_ACS,
        training={"description": "test pattern"},
        code_version="test",
        created=utc_now(),
    )
    write_bundle(repository, manifest, {"mask.npy": buffer.getvalue()})


def write_mnet(repository: Path) -> None:
    """An ``mnet`` manifest (its model file is never read: the kind is refused first)."""
    manifest = Manifest(
        name="scan-adaptive",
        version="1",
        kind="mnet",
        geometry=BundleGeometry(ky=WIDTH, kx=32, coils=4),
        accelerations=(R,),
        num_acs=NUM_ACS,
        code_version="test",
        created=utc_now(),
    )
    write_bundle(repository, manifest, {"model.onnx": b"not a model"})


def served_lines(scores: np.ndarray[Any, Any] = SCORES, acceleration: float = R) -> tuple[int, ...]:
    """The plan the sampler serves for the bundle (nothing but the ACS block acquired)."""
    return tuple(int(line) for line in np.flatnonzero(served_fixed_plan(scores, NUM_ACS, acceleration)))


def refused_port() -> int:
    with socket.socket() as probe:  # bound, never listening, closed: connecting is refused
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Running:
    client: httpx.AsyncClient
    app: Any


@contextlib.asynccontextmanager
async def running(
    data_dir: Path, *, store: SessionStore | None = None, **settings: Any
) -> AsyncIterator[Running]:
    """A gateway app in this process whose sampler is a real refused port (its own httpx client)."""
    gateway_settings = GatewaySettings(
        data_dir=data_dir, sampler_url=f"http://127.0.0.1:{refused_port()}", **settings
    )
    queue = None if gateway_settings.redis_url else MemoryJobQueue()
    app = create_app(gateway_settings, queue=queue, store=store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
            yield Running(client, app)


async def create(client: httpx.AsyncClient, scanner: Scanner, **policy: Any) -> httpx.Response:
    body = {"header_xml": scanner.header(), "policy": {"num_acs": NUM_ACS, **policy}}
    return await client.post("/v1/scans", json=body)


async def plan_after_acs(client: httpx.AsyncClient, scanner: Scanner, scan_id: str) -> PlanResponse:
    acs = scanner.readouts(scanner.lines_for(scanner.acs_columns(NUM_ACS)))
    sent = await client.post(
        f"/v1/scans/{scan_id}/acquisitions",
        content=acs,
        headers={"content-type": "application/vnd.ismrmrd.stream"},
    )
    assert sent.status_code == 200, sent.text
    response = await client.get(f"/v1/scans/{scan_id}/plan")
    assert response.status_code == 200, response.text
    return PlanResponse.model_validate_json(response.content)


def metric(text: str, name: str, label: str = "") -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name}{label} "):
            return float(line.split()[-1])
    return None


# --- the pattern: the sampler's plan for the bundle, in every round -------------------------------------


@pytest.mark.parametrize("scores", [SCORES, SCORES > 0.5], ids=["float", "bool"])
@pytest.mark.parametrize("extra", [(), (0, 31), (1, 2, 3, 20)], ids=["round0", "edges", "several"])
def test_pattern_lines_are_the_samplers_plan(scores: np.ndarray[Any, Any], extra: tuple[int, ...]) -> None:
    """Round 0 is :func:`served_fixed_plan`; with more lines acquired, the sampler's rule (acquired plus
    top-k of scores + centre tie-break among the free lines; ``sampler.domain.policies.complete_plan``)."""
    pattern = FallbackPattern(ref="learned/1", order=tuple(int(i) for i in served_fixed_order(scores)))
    acquired = sorted({*(int(c) for c in acs_lines(WIDTH, NUM_ACS)), *extra})
    budget = line_budget(WIDTH, R, NUM_ACS)
    values = np.asarray(scores, dtype=np.float64)
    distinct = np.unique(values)
    gap = float(np.min(np.diff(distinct))) if distinct.size > 1 else 1.0
    taken = np.zeros(WIDTH, dtype=bool)
    taken[acquired] = True
    expected = topk_plan(values + centre_tiebreak(WIDTH, gap), taken, budget)
    assert pattern.lines(acquired, budget) == tuple(int(i) for i in np.flatnonzero(expected))
    if not extra:
        assert pattern.lines(acquired, budget) == served_lines(scores)
        assert np.array_equal(expected, served_fixed_plan(scores, NUM_ACS, R))


def test_fallback_plan_serves_the_pattern_degraded_with_its_ref() -> None:
    pattern = FallbackPattern(ref="learned/1", order=tuple(int(i) for i in served_fixed_order(SCORES)))
    context = PlanContext(
        scan_id="a" * 32,
        policy=ScanPolicy(num_acs=NUM_ACS, acceleration=R, fallback="learned"),
        geometry=ScanGeometry(slices=1, frames=1, coils=4, height=32, width=WIDTH, readout_samples=64),
        acquired=tuple(int(c) for c in acs_lines(WIDTH, NUM_ACS)),
        round=0,
        deadline_unix_ms=time.time() * 1000.0,
        fallback_pattern=pattern,
    )
    plan = fallback_plan(context, "sampler-unavailable")
    assert plan.lines == served_lines()
    assert (plan.degraded, plan.final, plan.served_by, plan.frame_lines) == (True, True, "learned/1", None)


# --- through the API --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fallback", "ref"), [("learned/1", "learned/1"), ("learned", "learned/2")])
async def test_sampler_down_serves_the_bundles_plan(
    tmp_path: Path, scanner: Scanner, fallback: str, ref: str
) -> None:
    repository = tmp_path / "models"
    write_fixed(repository, version="1")
    newer = SCORES[::-1].copy()
    write_fixed(repository, version="2", scores=newer)  # "learned" alone is the latest version
    async with running(tmp_path / "gw", model_repository=repository) as gateway:
        client = gateway.client
        created = await create(client, scanner, fallback=fallback, plan_deadline_ms=2000.0)
        assert created.status_code == 201, created.text
        assert created.json()["policy"]["fallback"] == fallback
        plan = await plan_after_acs(client, scanner, created.json()["scan_id"])
        metrics = (await client.get("/metrics")).text
    assert plan.lines == served_lines(SCORES if ref.endswith("/1") else newer)
    assert len(plan.lines) == line_budget(WIDTH, R, NUM_ACS)
    assert (plan.degraded, plan.reason, plan.served_by) == (True, "sampler-unavailable", ref)
    # Answered from the refused connection, not at the deadline: the gateway counted no deadline miss.
    assert metric(metrics, "kadapt_gateway_fallback_total", '{reason="sampler-unavailable"}') == 1.0
    assert metric(metrics, "kadapt_gateway_deadline_miss_total") == 0.0


PROBLEMS = [
    ({"fallback": "scan-adaptive"}, 422, "bundle-kind-mismatch", "kind 'mnet'"),
    ({"fallback": "wide"}, 422, "geometry-mismatch", "W=32 (bundle: 64)"),
    ({"fallback": "learned", "acceleration": 2.0}, 422, "invalid-acceleration", "not R=2.0"),
    ({"fallback": "no-such-pattern"}, 404, "mask-family-not-found", "no-such-pattern"),
    ({"fallback": "learned/9"}, 404, "bundle-not-found", "learned/9"),
    ({"fallback": "tampered"}, 500, "checksum-mismatch", "mask.npy"),
]


@pytest.mark.parametrize(("policy", "status", "slug", "fragment"), PROBLEMS, ids=[p[2] for p in PROBLEMS])
async def test_unusable_fallback_bundles_are_refused_at_creation(
    tmp_path: Path, scanner: Scanner, policy: dict[str, Any], status: int, slug: str, fragment: str
) -> None:
    repository = tmp_path / "models"
    write_fixed(repository)
    write_fixed(repository, name="wide", scores=np.linspace(0.0, 1.0, 64))
    write_fixed(repository, name="tampered")
    (repository / "tampered" / "1" / "mask.npy").write_bytes(b"changed")
    write_mnet(repository)
    async with running(tmp_path / "gw", model_repository=repository) as gateway:
        response = await create(gateway.client, scanner, **policy)
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["type"] == PROBLEM_BASE + slug
    assert fragment in problem["detail"]
    assert list((tmp_path / "gw" / "scans").iterdir()) == []


async def test_without_a_repository_only_families_are_fallbacks(
    tmp_path: Path, scanner: Scanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = tmp_path / "models"
    write_fixed(repository)
    async with running(tmp_path / "gw", model_repository=None) as gateway:
        client = gateway.client
        response = await create(client, scanner, fallback="learned")
        assert response.status_code == 404, response.text
        assert response.json()["type"] == PROBLEM_BASE + "mask-family-not-found"
        assert (await create(client, scanner, fallback="equispaced")).status_code == 201
    monkeypatch.setenv("KADAPT_GATEWAY_MODEL_REPOSITORY", "")  # empty: bundle fallbacks off
    assert GatewaySettings().model_repository is None


async def test_the_session_keeps_its_fallback_when_the_bundle_goes(tmp_path: Path, scanner: Scanner) -> None:
    """Created with the bundle, planned by this gateway after the bundle is deleted and by a replica that
    has no repository at all (sharing the store and the data volume): the same lines each time."""
    repository = tmp_path / "models"
    write_fixed(repository)
    store = MemorySessionStore()
    shared = tmp_path / "shared"
    async with running(shared, store=store, model_repository=repository) as gateway:
        first = gateway.client
        ids = []
        for _ in range(2):
            created = await create(first, scanner, fallback="learned", plan_deadline_ms=2000.0)
            assert created.status_code == 201, created.text
            ids.append(created.json()["scan_id"])
        shutil.rmtree(repository / "learned")
        plan = await plan_after_acs(first, scanner, ids[0])
        assert (plan.lines, plan.served_by) == (served_lines(), "learned/1")
        refused = await create(first, scanner, fallback="learned")
        assert refused.json()["type"] == PROBLEM_BASE + "mask-family-not-found"  # no cache of a gone one
    async with running(shared, store=store, model_repository=None) as other:
        replica = other.client
        plan = await plan_after_acs(replica, scanner, ids[1])
        assert (plan.lines, plan.served_by, plan.degraded) == (served_lines(), "learned/1", True)


async def test_redis_session_round_trip_keeps_the_fallback_lines(
    tmp_path: Path, scanner: Scanner, redis_server: Any
) -> None:
    repository = tmp_path / "models"
    write_fixed(repository)
    shared = tmp_path / "shared"
    async with running(shared, redis_url=redis_server.url, model_repository=repository) as gateway:
        created = await create(gateway.client, scanner, fallback="learned/1", plan_deadline_ms=2000.0)
        assert created.status_code == 201, created.text
        scan_id = created.json()["scan_id"]
        store = gateway.app.state.service.store
        assert isinstance(store, RedisSessionStore)
        stored = (await store.get(scan_id)).fallback_pattern
    assert stored == FallbackPattern(ref="learned/1", order=tuple(int(i) for i in served_fixed_order(SCORES)))
    shutil.rmtree(repository)
    async with running(shared, redis_url=redis_server.url, model_repository=None) as restarted:
        plan = await plan_after_acs(restarted.client, scanner, scan_id)
    assert (plan.lines, plan.served_by, plan.reason) == (served_lines(), "learned/1", "sampler-unavailable")
