"""``ads`` bundles in the sampler (issue 5, C4): rounds with exact per-frame budgets, unified plans,
deadline fallbacks, refused payloads, missing / unservable bundles, and the wire (JSON and binary)."""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from tests.shared.bundles.ads_fixtures import write_tiny_ads_bundle

from kadapt.bundles import load_bundle
from kadapt.bundles.ads_runtime import AdsRuntime
from kadapt.errors import DeadlineExceededError, GeometryMismatchError, InvalidInputError, UnknownPolicyError
from kadapt.kspace.dynamic import sense_image_so_far
from kadapt.kspace.fft import fft2c
from kadapt.masks import acs_mask, line_budget, mask_families
from kadapt.sampler.api import create_app
from kadapt.sampler.domain.ads import AdsBundlePolicy, AdsServing
from kadapt.sampler.domain.planner import Planner, PolicyRegistry
from kadapt.sampler.domain.policies import FixedFamilyPolicy
from kadapt.sampler.settings import SamplerSettings
from kadapt.schemas import PlanRequest, PlanResponse
from kadapt.schemas.plan_binary import PLAN_BINARY_MEDIA_TYPE, encode_plan_body

FRAMES, HEIGHT, WIDTH, NUM_ACS, COILS = 4, 16, 24, 2, 3
NAME, UNIFIED = "tiny-ads", "tiny-ads-unified"


def now_ms() -> float:
    return time.time() * 1000.0


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ads-models")
    write_tiny_ads_bundle(root, NAME, frames=FRAMES, height=HEIGHT, width=WIDTH, num_acs=NUM_ACS, seed=1)
    write_tiny_ads_bundle(
        root, UNIFIED, frames=FRAMES, height=HEIGHT, width=WIDTH, num_acs=NUM_ACS, pattern="unified", seed=2
    )
    return root


@pytest.fixture(scope="module")
def registry(repository: Path) -> PolicyRegistry:
    return PolicyRegistry.from_sources(repository)


def cine_kspace(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (FRAMES, COILS, HEIGHT, WIDTH)
    images = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return np.asarray(fft2c(images.astype(np.complex64)), dtype=np.complex64)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def round_request(
    round_index: int, acquired: np.ndarray, *, kspace: np.ndarray | None = None, **changes: Any
) -> PlanRequest:
    """Round ``round_index`` with ``acquired`` ``(T, W)`` per frame and the image of that data (binary)."""
    image = sense_image_so_far(cine_kspace(0) if kspace is None else kspace, acquired, NUM_ACS)
    fields: dict[str, Any] = {
        "scan_id": "cine-1",
        "policy": NAME,
        "width": WIDTH,
        "height": HEIGHT,
        "coils": COILS,
        "frames": FRAMES,
        "acceleration": 4.0,
        "num_acs": NUM_ACS,
        "acquired": tuple(int(ky) for ky in np.flatnonzero(acs_mask(WIDTH, NUM_ACS))),
        "acquired_per_frame": tuple(tuple(int(ky) for ky in np.flatnonzero(row)) for row in acquired),
        "round": round_index,
        "deadline_unix_ms": now_ms() + 10_000.0,
        "payload": "sense-image",
    }
    fields.update(changes)
    payload = fields.pop("image_npy", npy(image))
    return PlanRequest(**fields).with_acs_npy(payload) if payload is not None else PlanRequest(**fields)


def acs_only() -> np.ndarray:
    return np.repeat(acs_mask(WIDTH, NUM_ACS)[None], FRAMES, axis=0)


def as_mask(frame_lines: tuple[tuple[int, ...], ...] | None) -> np.ndarray:
    assert frame_lines is not None
    mask = np.zeros((FRAMES, WIDTH), dtype=bool)
    for frame, lines in enumerate(frame_lines):
        mask[frame, list(lines)] = True
    return mask


def ads_policy(registry: PolicyRegistry, name: str = NAME) -> AdsBundlePolicy:
    policy = registry.get(name)
    assert isinstance(policy, AdsBundlePolicy)
    return policy


def test_registry_serves_ads_bundles_as_kt_policies_with_rounds(registry: PolicyRegistry) -> None:
    info = ads_policy(registry).info
    assert (info.kind, info.dims, info.cascades, info.width) == ("ads", "kt", 2, WIDTH)
    assert info.served_by == f"{NAME}/1"
    assert not registry.failures


@pytest.mark.parametrize("rate", [4.0, 6.0, 8.0])
async def test_two_rounds_exact_budget_every_frame(registry: PolicyRegistry, rate: float) -> None:
    """The issue's Done-when: every frame, every round, exact (here through the planner)."""
    planner = Planner(registry)
    runtime = ads_policy(registry).runtime
    acquired = acs_only()
    for round_index in range(2):
        response = await planner.plan(round_request(round_index, acquired, acceleration=rate))
        mask = as_mask(response.frame_lines)
        expected = runtime.round_budget(rate, NUM_ACS, round_index)
        assert mask.sum(axis=1).tolist() == [expected] * FRAMES
        assert np.all(mask[acquired])  # the ACS and every earlier line, frame by frame
        assert response.final == (round_index == 1)
        assert response.round == round_index
        assert not response.degraded
        assert response.lines == response.frame_lines[0]  # type: ignore[index]
        acquired = mask
    assert acquired.sum(axis=1).tolist() == [line_budget(WIDTH, rate, NUM_ACS)] * FRAMES


async def test_served_rounds_equal_the_runtime_replay(registry: PolicyRegistry) -> None:
    """What the gateway gets round by round is what the bench's ``plan_all`` computes offline."""
    planner = Planner(registry)
    kspace = cine_kspace(5)
    acquired = acs_only()
    for round_index in range(2):
        response = await planner.plan(round_request(round_index, acquired, kspace=kspace))
        acquired = as_mask(response.frame_lines)
    assert np.array_equal(acquired, ads_policy(registry).runtime.plan_all(kspace, 4.0, NUM_ACS))


async def test_unified_plans_identical_lines_in_every_frame(registry: PolicyRegistry) -> None:
    planner = Planner(registry)
    acquired = acs_only()
    for round_index in range(2):
        response = await planner.plan(round_request(round_index, acquired, policy=UNIFIED))
        assert response.frame_lines is not None
        assert len(set(response.frame_lines)) == 1
        acquired = as_mask(response.frame_lines)


class SlowSession:
    """An ORT session double that answers zero scores after ``delay_s``, or raises ``error``."""

    def __init__(self, delay_s: float = 0.0, error: Exception | None = None) -> None:
        self.delay_s, self.error = delay_s, error

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return [np.zeros_like(input_feed["mask"])]


def doubled_policy(repository: Path, session: SlowSession, margin_ms: float = 2.0) -> AdsBundlePolicy:
    runtime = AdsRuntime(load_bundle(repository, NAME).manifest, [session, session])
    family = FixedFamilyPolicy(mask_families()["kt-equispaced"])
    return AdsBundlePolicy(runtime, family, last_resort=family, margin_ms=margin_ms)


async def test_slow_model_gets_the_kt_fallback_before_the_deadline(repository: Path) -> None:
    planner = Planner(PolicyRegistry([doubled_policy(repository, SlowSession(delay_s=1.0), margin_ms=20.0)]))
    round0 = await Planner(PolicyRegistry.from_sources(repository)).plan(round_request(0, acs_only()))
    acquired = as_mask(round0.frame_lines)
    request = round_request(1, acquired, deadline_unix_ms=now_ms() + 300.0)
    response = await planner.plan(request)  # the model takes 1 s: the planner answers at deadline - margin
    assert response.degraded
    assert response.final
    assert response.served_by == "kt-equispaced"
    assert (response.reason or "").startswith("model-late")
    mask = as_mask(response.frame_lines)
    assert mask.sum(axis=1).tolist() == [line_budget(WIDTH, 4.0, NUM_ACS)] * FRAMES
    assert np.all(mask[acquired])  # a later round's fallback keeps every frame's acquired lines


def test_failing_model_and_missing_or_bad_images_fall_back(
    repository: Path, registry: PolicyRegistry
) -> None:
    broken = doubled_policy(repository, SlowSession(error=RuntimeError("no kernel")))
    assert broken.plan(round_request(0, acs_only()), now_ms()).fallback == "model-error"
    policy = ads_policy(registry)
    assert policy.plan(round_request(0, acs_only(), image_npy=None), now_ms()).fallback == "image-missing"
    acs_payload = round_request(0, acs_only(), payload="acs")
    assert policy.plan(acs_payload, now_ms()).fallback == "image-missing"
    nan = np.full((FRAMES, HEIGHT, WIDTH), np.nan, dtype=np.complex64)
    assert policy.plan(round_request(0, acs_only(), image_npy=npy(nan)), now_ms()).fallback == "image-invalid"
    untrained = policy.plan(round_request(0, acs_only(), acceleration=5.0), now_ms())
    assert untrained.fallback == "acceleration-untrained"
    assert untrained.final


def test_scan_of_another_geometry_is_served_by_the_fallback(registry: PolicyRegistry) -> None:
    kspace = np.concatenate([cine_kspace(1), cine_kspace(2)[:1]])  # one frame more than the bundle's
    acquired = np.repeat(acs_mask(WIDTH, NUM_ACS)[None], FRAMES + 1, axis=0)
    request = round_request(0, acquired, kspace=kspace, frames=FRAMES + 1)
    planned = ads_policy(registry).plan(request, now_ms())
    assert planned.fallback == "geometry-mismatch"
    assert planned.frame_lines is not None
    assert len(planned.frame_lines) == FRAMES + 1


def test_payload_of_the_wrong_shape_and_bad_rounds_are_refused(registry: PolicyRegistry) -> None:
    policy = ads_policy(registry)
    wrong = np.zeros((FRAMES, HEIGHT, WIDTH + 1), dtype=np.complex64)
    with pytest.raises(GeometryMismatchError, match=r"\(frames, height, width\)"):
        policy.plan(round_request(0, acs_only(), image_npy=npy(wrong)), now_ms())
    with pytest.raises(GeometryMismatchError):
        policy.plan(round_request(0, acs_only(), image_npy=npy(np.zeros((FRAMES, HEIGHT, WIDTH)))), now_ms())
    with pytest.raises(InvalidInputError, match=r"rounds 0\.\.1"):
        policy.plan(round_request(2, acs_only()), now_ms())
    with pytest.raises(DeadlineExceededError) as late:
        policy.plan(round_request(0, acs_only(), deadline_unix_ms=now_ms() - 1.0), now_ms())
    assert late.value.extra["stage"] == "inference"


def test_warm_up_runs_every_cascade(registry: PolicyRegistry) -> None:
    Planner(registry).warm_up(ads_policy(registry))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("delete-cascade", "bundle-invalid"),
        ("init-equispaced", "init 'acs'"),
        ("unknown-fallback", "fallback policy 'no-such-family' is not served"),
        ("1d-fallback", "must be a kt mask family"),
    ],
)
def test_missing_or_unservable_bundles_are_failures(
    repository: Path, tmp_path: Path, damage: str, reason: str
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(repository / NAME, repo / NAME)
    bundle_dir = repo / NAME / "1"
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    if damage == "delete-cascade":
        (bundle_dir / "cascade-1.onnx").unlink()
    elif damage == "init-equispaced":
        manifest["training"]["ads"]["init"] = "equispaced"
    else:
        manifest["training"]["fallback"] = "no-such-family" if damage == "unknown-fallback" else "vd-random"
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    registry = PolicyRegistry.from_sources(repo)
    assert reason in registry.failures[f"{NAME}/1"]
    with pytest.raises(UnknownPolicyError):
        registry.get(NAME)


def test_runtime_factory_and_threads_come_from_the_serving_settings(repository: Path) -> None:
    opened: list[int] = []

    def open_runtime(bundle: Any, threads: int) -> AdsRuntime:
        opened.append(threads)
        return AdsRuntime.open(bundle, threads)

    PolicyRegistry.from_sources(repository, ads=AdsServing(threads=2, open_runtime=open_runtime))
    assert opened == [2, 2]


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sampler") as client,
    ):
        yield client


async def test_wire_binary_and_json_transports_plan_alike_and_bad_shapes_are_422(repository: Path) -> None:
    async with running(create_app(SamplerSettings(model_repository=repository))) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        policies = {entry["name"]: entry for entry in (await client.get("/v1/policies")).json()}
        assert policies[NAME]["cascades"] == 2
        request = round_request(0, acs_only())
        image = request.acs_npy()
        assert image is not None
        header = PlanRequest.model_validate_json(request.model_dump_json())
        binary = await client.post(
            "/v1/plan",
            content=encode_plan_body(header, image),
            headers={"content-type": PLAN_BINARY_MEDIA_TYPE},
        )
        import base64

        inline = header.model_copy(update={"acs_npy_b64": base64.b64encode(image).decode("ascii")})
        as_json = await client.post("/v1/plan", content=inline.model_dump_json())
        assert binary.status_code == as_json.status_code == 200, binary.text
        first, second = (
            PlanResponse.model_validate_json(binary.content),
            PlanResponse.model_validate_json(as_json.content),
        )
        assert first.frame_lines == second.frame_lines
        assert first.final is False
        wrong = await client.post(
            "/v1/plan",
            content=encode_plan_body(header, npy(np.zeros((FRAMES, HEIGHT - 1, WIDTH), np.complex64))),
            headers={"content-type": PLAN_BINARY_MEDIA_TYPE},
        )
        assert wrong.status_code == 422
        assert wrong.headers["content-type"].startswith("application/problem+json")
        assert wrong.json()["type"].endswith("/geometry-mismatch")
