"""Serving ``mnet`` bundles (domain): exact-budget deterministic top-k plans, every fallback reason,
deadline handling with a slow model, and bundles that must not be served (checksum, files, fallback)."""

from __future__ import annotations

import base64
import io
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kadapt.bundles import Bundle, BundleGeometry, Manifest, load_bundle, utc_now
from kadapt.errors import DeadlineExceededError, UnknownPolicyError
from kadapt.masks import acs_lines, line_budget, mask_families
from kadapt.nn.mnet import MNet, MNetGeometry, randomise_parameters
from kadapt.nn.mnet_bundle import export_mnet_bundle
from kadapt.sampler.domain.mnet import MNetBundlePolicy, MNetServing, open_mnet_session
from kadapt.sampler.domain.planner import Planner, PolicyRegistry
from kadapt.sampler.domain.policies import FixedFamilyPolicy
from kadapt.schemas import PlanRequest

GEOMETRY = MNetGeometry(width=32, height=16, coils=2, num_acs=4)
NAME = "mnet-tiny"


def now_ms() -> float:
    return time.time() * 1000.0


def acs_tuple(width: int, num_acs: int) -> tuple[int, ...]:
    return tuple(int(ky) for ky in acs_lines(width, num_acs))


def encode(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def scan_acs(seed: int, shape: tuple[int, ...] = (2, 16, 4)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def request(**changes: Any) -> PlanRequest:
    fields: dict[str, Any] = {
        "scan_id": "scan-1",
        "policy": NAME,
        "width": 32,
        "height": 16,
        "coils": 2,
        "acceleration": 4.0,
        "num_acs": 4,
        "acquired": acs_tuple(32, 4),
        "deadline_unix_ms": now_ms() + 5_000.0,
        "acs_npy_b64": encode(scan_acs(0)),
    }
    fields.update(changes)
    return PlanRequest(**fields)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with one tiny random-weight mnet bundle (W=32, H=16, 2 coils, 4 ACS, R 4 / 2)."""
    repo = tmp_path_factory.mktemp("models")
    model = randomise_parameters(MNet(GEOMETRY, channels=(8, 8), hidden=16), torch.Generator().manual_seed(0))
    export_mnet_bundle(
        model,
        repo,
        name=NAME,
        accelerations=(4.0, 2.0),
        training={"description": "UNTRAINED random weights (test)"},
        code_version="test",
    )
    return repo


@pytest.fixture(scope="module")
def registry(repository: Path) -> PolicyRegistry:
    return PolicyRegistry.from_sources(repository)


def policy_of(registry: PolicyRegistry) -> MNetBundlePolicy:
    policy = registry.get(NAME)
    assert isinstance(policy, MNetBundlePolicy)
    return policy


class FixedScores:
    """A session double returning ``scores`` ``(W,)`` after ``delay_s``, or raising ``error``."""

    def __init__(self, scores: np.ndarray, delay_s: float = 0.0, error: Exception | None = None) -> None:
        self.scores, self.delay_s, self.error = scores, delay_s, error
        self.calls = 0

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        self.calls += 1
        time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return [self.scores[None, :].astype(np.float32)]


def fake_bundle(width: int, num_acs: int, accelerations: tuple[float, ...] = (2.0, 3.0, 4.0, 8.0)) -> Bundle:
    manifest = Manifest(
        name=NAME,
        version="1",
        kind="mnet",
        geometry=BundleGeometry(ky=width, kx=16, coils=2),
        accelerations=accelerations,
        num_acs=num_acs,
        code_version="test",
        created=utc_now(),
    )
    return Bundle(path=Path("/nonexistent"), manifest=manifest)


def fake_policy(
    session: FixedScores, width: int = 32, num_acs: int = 4, margin_ms: float = 2.0
) -> MNetBundlePolicy:
    family = FixedFamilyPolicy(mask_families()["vd-random"])
    return MNetBundlePolicy(
        fake_bundle(width, num_acs), session, family, last_resort=family, margin_ms=margin_ms
    )


def test_plan_is_the_top_scored_free_lines_with_the_acs_kept(
    registry: PolicyRegistry, repository: Path
) -> None:
    policy = policy_of(registry)
    acquired = (*acs_tuple(32, 4), 3)
    planned = policy.plan(request(acquired=acquired), now_ms())
    assert not planned.degraded
    assert planned.served_by is None
    assert len(planned.lines) == line_budget(32, 4.0, 4) == 8
    assert set(acquired) <= set(planned.lines)
    assert list(planned.lines) == sorted(planned.lines)
    # The free lines chosen are exactly the model's best-scored ones (ORT run independently).
    session = open_mnet_session(load_bundle(repository, NAME), 1)
    acs = scan_acs(0)
    scores = session.run(["scores"], {"acs": np.stack((acs.real, acs.imag), -1)[None].astype(np.float32)})[0][
        0
    ]
    free = [ky for ky in range(32) if ky not in acquired]
    best = sorted(free, key=lambda ky: (-scores[ky], ky))[: 8 - len(acquired)]
    assert set(planned.lines) == set(acquired) | set(best)
    # Deterministic, and the scan's own data decides.
    assert policy.plan(request(acquired=acquired), now_ms()) == planned
    others = {policy.plan(request(acs_npy_b64=encode(scan_acs(seed))), now_ms()).lines for seed in range(6)}
    assert len(others) > 1


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(min_value=8, max_value=64),
    acceleration=st.sampled_from([2.0, 3.0, 4.0, 8.0]),
    data=st.data(),
)
def test_plans_are_exact_budget_and_deterministic(
    width: int, acceleration: float, data: st.DataObject
) -> None:
    budget = round(width / acceleration)
    num_acs = data.draw(st.integers(min_value=1, max_value=max(1, budget - 1)))
    acs = set(acs_tuple(width, num_acs))
    extra = data.draw(st.sets(st.integers(0, width - 1), max_size=max(0, budget - len(acs))))
    acquired = tuple(sorted(acs | extra))
    # Few distinct values: many ties, broken by the lower line index.
    scores = np.asarray(
        data.draw(st.lists(st.integers(-2, 2), min_size=width, max_size=width)), dtype=np.float32
    )
    policy = fake_policy(FixedScores(scores), width=width, num_acs=num_acs)
    plan_request = request(
        width=width,
        acceleration=acceleration,
        num_acs=num_acs,
        acquired=acquired,
        acs_npy_b64=encode(scan_acs(1, (2, 16, num_acs))),
    )
    planned = policy.plan(plan_request, now_ms())
    assert not planned.degraded
    assert len(planned.lines) == budget
    assert set(acquired) | acs <= set(planned.lines)
    free = [ky for ky in range(width) if ky not in set(acquired) | acs]
    expected = sorted(free, key=lambda ky: (-scores[ky], ky))[: budget - len(set(acquired) | acs)]
    assert set(planned.lines) == set(acquired) | acs | set(expected)
    assert policy.plan(plan_request, now_ms()) == planned


def vd_random_lines(plan_request: PlanRequest) -> tuple[int, ...]:
    return FixedFamilyPolicy(mask_families()["vd-random"]).plan(plan_request, now_ms()).lines


@pytest.mark.parametrize(
    ("changes", "reason", "detail"),
    [
        ({"acs_npy_b64": None}, "acs-missing", "no ACS"),
        ({"width": 48, "acquired": acs_tuple(48, 4)}, "geometry-mismatch", "W=48 (bundle: 32)"),
        (
            {"coils": 4, "acs_npy_b64": encode(scan_acs(0, (4, 16, 4)))},
            "geometry-mismatch",
            "coils=4 (bundle: 2)",
        ),
        ({"height": 20}, "geometry-mismatch", "H=20 (bundle: 16)"),
        ({"num_acs": 6, "acquired": acs_tuple(32, 6)}, "geometry-mismatch", "num_acs=6 (bundle: 4)"),
        ({"acceleration": 8.0}, "acceleration-untrained", "not R=8.0"),
        ({"acs_npy_b64": "not base64!"}, "acs-invalid", "not base64"),
        ({"acs_npy_b64": encode(scan_acs(0, (2, 16, 5)))}, "acs-invalid", "shape (2, 16, 5)"),
        ({"acs_npy_b64": encode(np.zeros((2, 16, 4), np.float32))}, "acs-invalid", "must be complex"),
        ({"acs_npy_b64": encode(np.full((2, 16, 4), np.nan, np.complex64))}, "acs-invalid", "NaN"),
        ({"acs_npy_b64": encode(np.zeros((2, 16, 4), np.complex64))}, "acs-invalid", "no signal"),
    ],
)
def test_scans_the_model_cannot_serve_get_the_fallback_degraded(
    registry: PolicyRegistry, changes: dict[str, Any], reason: str, detail: str
) -> None:
    plan_request = request(**changes)
    planned = policy_of(registry).plan(plan_request, now_ms())
    assert planned.degraded
    assert planned.fallback == reason
    assert planned.served_by == "vd-random"
    assert planned.reason is not None
    assert planned.reason.startswith(reason)
    assert detail in planned.reason
    assert planned.lines == vd_random_lines(plan_request)
    assert len(planned.lines) == line_budget(
        plan_request.width, plan_request.acceleration, plan_request.num_acs
    )


def test_failing_or_broken_models_fall_back() -> None:
    failing = fake_policy(FixedScores(np.zeros(32), error=RuntimeError("ORT: bad node")))
    planned = failing.plan(request(), now_ms())
    assert planned.fallback == "model-error"
    assert "RuntimeError: ORT: bad node" in (planned.reason or "")
    nan = fake_policy(FixedScores(np.full(32, np.nan)))
    assert nan.plan(request(), now_ms()).fallback == "model-error"
    short = fake_policy(FixedScores(np.zeros(31)))
    assert "shape (1, 31)" in (short.plan(request(), now_ms()).reason or "")


def test_inference_ending_past_the_deadline_budget_falls_back() -> None:
    slow = fake_policy(FixedScores(np.arange(32.0), delay_s=0.08), margin_ms=5.0)
    planned = slow.plan(request(deadline_unix_ms=now_ms() + 40.0), now_ms())
    assert planned.fallback == "model-late"
    assert "inference took" in (planned.reason or "")
    no_time = fake_policy(FixedScores(np.arange(32.0)), margin_ms=50.0)
    assert no_time.plan(request(deadline_unix_ms=now_ms() + 30.0), now_ms()).fallback == "model-late"
    with pytest.raises(DeadlineExceededError) as late:
        no_time.plan(request(deadline_unix_ms=now_ms() - 1.0), now_ms())
    assert late.value.extra["stage"] == "inference"


class Recorder:
    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.stages: Counter[str] = Counter()
        self.fallbacks: Counter[tuple[str, str]] = Counter()

    def plan_done(self, policy: str, outcome: str, seconds: float) -> None:
        self.outcomes[(policy, outcome)] += 1

    def deadline_missed(self, stage: str) -> None:
        self.stages[stage] += 1

    def fallback_served(self, policy: str, reason: str) -> None:
        self.fallbacks[(policy, reason)] += 1

    def queue_waited(self, seconds: float) -> None:
        return None

    def slots_changed(self, inflight: int, queued: int) -> None:
        return None


async def test_slow_model_is_answered_with_the_fallback_before_the_deadline() -> None:
    session = FixedScores(np.arange(32.0), delay_s=1.0)
    observer = Recorder()
    planner = Planner(PolicyRegistry([fake_policy(session, margin_ms=20.0)]), observer=observer)
    plan_request = request(deadline_unix_ms=now_ms() + 150.0)
    response = await planner.plan(plan_request)
    assert now_ms() < plan_request.deadline_unix_ms  # answered in time, the model still running
    assert response.degraded
    assert response.served_by == "vd-random"
    assert response.reason is not None
    assert response.reason.startswith("model-late")
    assert response.lines == vd_random_lines(plan_request)
    assert observer.fallbacks == Counter({(NAME, "model-late"): 1})
    assert observer.stages == Counter({"inference": 1})
    assert observer.outcomes == Counter({(NAME, "fallback"): 1})


async def test_planner_passes_model_plans_and_fallbacks_through(registry: PolicyRegistry) -> None:
    observer = Recorder()
    planner = Planner(registry, observer=observer)
    served = await planner.plan(request())
    assert not served.degraded
    assert served.served_by == f"{NAME}/1"
    assert served.reason is None
    fallback = await planner.plan(request(acs_npy_b64=None))
    assert fallback.degraded
    assert fallback.served_by == "vd-random"
    assert observer.fallbacks == Counter({(NAME, "acs-missing"): 1})


def test_warm_up_runs_the_model_and_refuses_a_model_that_falls_back(registry: PolicyRegistry) -> None:
    planner = Planner(registry)
    planner.warm_up(policy_of(registry))
    broken = fake_policy(FixedScores(np.zeros(32), error=RuntimeError("no kernel")))
    broken_planner = Planner(PolicyRegistry([broken]))
    with pytest.raises(Exception, match="warm-up of policy 'mnet-tiny' fell back: model-error"):
        broken_planner.warm_up(broken)


def copy_repository(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_checksum_mismatch_is_a_failure_and_the_policy_is_not_served(
    repository: Path, tmp_path: Path
) -> None:
    repo = copy_repository(repository, tmp_path / "models")
    model = repo / NAME / "1" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    registry = PolicyRegistry.from_sources(repo)
    assert registry.failures[f"{NAME}/1"].startswith("checksum-mismatch")
    with pytest.raises(UnknownPolicyError):
        registry.get(NAME)
    assert "vd-random" in {policy.name for policy in registry.policies()}  # the rest is served


def test_missing_model_file_and_unknown_fallback_are_failures(repository: Path, tmp_path: Path) -> None:
    repo = copy_repository(repository, tmp_path / "models")
    (repo / NAME / "1" / "model.onnx").unlink()
    assert PolicyRegistry.from_sources(repo).failures[f"{NAME}/1"].startswith("bundle-invalid")
    other = copy_repository(repository, tmp_path / "other")
    failures = PolicyRegistry.from_sources(other, mnet=MNetServing(default_fallback="no-such-mask")).failures
    assert "fallback policy 'no-such-mask' is not served" in failures[f"{NAME}/1"]
    kt = PolicyRegistry.from_sources(other, mnet=MNetServing(default_fallback="kt-equispaced")).failures
    assert "a fallback must be a 1d" in kt[f"{NAME}/1"]


def test_session_factory_and_threads_come_from_the_serving_settings(repository: Path) -> None:
    opened: list[int] = []

    def open_session(bundle: Bundle, threads: int) -> FixedScores:
        opened.append(threads)
        return FixedScores(np.arange(32.0))

    registry = PolicyRegistry.from_sources(repository, mnet=MNetServing(threads=2, open_session=open_session))
    assert opened == [2]
    assert policy_of(registry).plan(request(), now_ms()).lines[-1] == 31  # the fake's scores decide


def test_declared_fixed_mask_fallback_defers_to_the_last_resort_for_other_widths() -> None:
    from kadapt.sampler.domain.policies import FixedMaskBundlePolicy

    repo_models = Path(__file__).resolve().parents[3] / "models"
    centre = FixedMaskBundlePolicy(load_bundle(repo_models, "centre-weighted"))  # W = 128
    family = FixedFamilyPolicy(mask_families()["vd-random"])
    policy = MNetBundlePolicy(fake_bundle(32, 4), FixedScores(np.zeros(32)), centre, last_resort=family)
    at_128 = policy.plan(request(width=128, acquired=acs_tuple(128, 4)), now_ms())
    assert at_128.served_by == "centre-weighted/1"
    assert at_128.fallback == "geometry-mismatch"
    at_48 = policy.plan(request(width=48, acquired=acs_tuple(48, 4)), now_ms())
    assert at_48.served_by == "vd-random"
    assert "fallback 'centre-weighted' refused the scan" in (at_48.reason or "")


def test_concurrent_plans_share_one_session_safely(registry: PolicyRegistry) -> None:
    policy = policy_of(registry)
    expected = {
        seed: policy.plan(request(acs_npy_b64=encode(scan_acs(seed))), now_ms()).lines for seed in range(4)
    }
    results: dict[int, tuple[int, ...]] = {}

    def run(seed: int) -> None:
        results[seed] = policy.plan(request(acs_npy_b64=encode(scan_acs(seed))), now_ms()).lines

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected
