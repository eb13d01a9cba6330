"""Sampler policies: the contract test over every plannable mask family, refusals, fixed-mask bundles."""

from __future__ import annotations

import runpy
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from kadapt.bundles import BundleGeometry, Manifest, load_bundle, utc_now, write_bundle
from kadapt.errors import (
    BundleError,
    EncodeOutOfRangeError,
    GeometryMismatchError,
    InvalidAccelerationError,
    InvalidInputError,
)
from kadapt.masks import acs_lines, mask_families
from kadapt.sampler.domain.planner import validate_plan
from kadapt.sampler.domain.policies import (
    FixedFamilyPolicy,
    FixedMaskBundlePolicy,
    centre_tiebreak,
    complete_plan,
    fixed_lines,
    scan_rng,
    smallest_gap,
)
from kadapt.schemas import PlanRequest

RequestFactory = Callable[..., PlanRequest]
FAMILIES = mask_families()
PLANNABLE = sorted(n for n, f in FAMILIES.items() if f.dims in ("1d", "kt") and not f.population)
REFUSED = sorted(n for n, f in FAMILIES.items() if f.dims == "2d" or f.population)


def frame_rows(planned: object, frames: int) -> list[tuple[int, ...]]:
    frame_lines = getattr(planned, "frame_lines")  # noqa: B009
    return list(frame_lines) if frame_lines is not None else [getattr(planned, "lines")] * frames  # noqa: B009


def test_registry_has_plannable_1d_and_kt_families() -> None:
    dims = {FAMILIES[name].dims for name in PLANNABLE}
    assert dims == {"1d", "kt"}, PLANNABLE


@pytest.mark.parametrize("family", PLANNABLE)
@pytest.mark.parametrize(("width", "acceleration", "num_acs"), [(128, 4.0, 16), (97, 3.0, 9), (64, 8.0, 8)])
def test_family_policy_contract(
    family: str, width: int, acceleration: float, num_acs: int, plan_request: RequestFactory
) -> None:
    policy = FixedFamilyPolicy(FAMILIES[family])
    kt = FAMILIES[family].dims == "kt"
    frames = 5 if kt else 1
    budget = round(width / acceleration)
    acs = set(acs_lines(width, num_acs).tolist())
    first = plan_request(
        policy=family, width=width, acceleration=acceleration, num_acs=num_acs, frames=frames, seed=3
    )

    planned = policy.plan(first, 0.0)
    validate_plan(first, planned, policy.info, budget)  # the planner's own check agrees
    rows = frame_rows(planned, frames)
    assert len(rows) == frames
    for row in rows:
        assert len(row) == budget  # exact budget
        assert list(row) == sorted(set(row))
        assert acs <= set(row)  # ACS included
    assert (planned.frame_lines is not None) == kt

    # deterministic per (seed, scan_id)
    assert policy.plan(first, 0.0) == planned
    others = [policy.plan(plan_request(**{**first.model_dump(), "seed": s}), 0.0) for s in range(4, 10)]
    if FAMILIES[family].stochastic and budget > num_acs:
        assert any(other != planned for other in others)

    # a later round keeps every acquired line, wherever it came from (here: off-pattern edge lines)
    acquired = tuple(sorted({*rows[0][: budget // 2], 0, width - 1}))
    later = plan_request(**{**first.model_dump(), "acceleration": acceleration / 2, "acquired": acquired})
    replanned = policy.plan(later, 0.0)
    validate_plan(later, replanned, policy.info, round(width / (acceleration / 2)))
    for row in frame_rows(replanned, frames):
        assert set(acquired) <= set(row)
        assert len(row) == round(width / (acceleration / 2))


@pytest.mark.parametrize("family", [n for n in PLANNABLE if FAMILIES[n].dims == "kt"])
def test_kt_policy_keeps_per_frame_acquired_lines(family: str, plan_request: RequestFactory) -> None:
    policy = FixedFamilyPolicy(FAMILIES[family])
    per_frame = ((0,), (1, 2), (127,))
    request = plan_request(policy=family, frames=3, acquired=(5,), acquired_per_frame=per_frame)
    planned = policy.plan(request, 0.0)
    assert planned.frame_lines is not None
    for frame, row in enumerate(planned.frame_lines):
        assert {5, *per_frame[frame]} <= set(row)
        assert len(row) == 32
    assert planned.lines == planned.frame_lines[0]


@pytest.mark.parametrize("family", REFUSED)
def test_point_and_population_families_are_refused_naming_the_policy(family: str) -> None:
    with pytest.raises(InvalidInputError, match=repr(family)):
        FixedFamilyPolicy(FAMILIES[family])


def test_scan_rng_is_seeded_by_the_explicit_policy_seed_alone() -> None:
    expected = np.random.default_rng(7).random(4)
    np.testing.assert_array_equal(scan_rng(7).random(4), expected)
    assert not np.array_equal(scan_rng(8).random(4), expected)


def test_centre_tiebreak_is_distinct_bounded_and_centre_first() -> None:
    jitter = centre_tiebreak(10, ceiling=2e-3)
    assert len(set(jitter.tolist())) == 10
    assert 0 < jitter.min() < jitter.max() <= 1e-3
    assert int(np.argmax(jitter)) == 5
    assert jitter[4] > jitter[6] > jitter[3]  # equal distance: lower ky first


def test_tiebreak_never_reorders_close_but_distinct_scores(plan_request: RequestFactory) -> None:
    scores = np.zeros(16)
    scores[[0, 15]] = [1e-9, 2e-9]  # edge lines barely above the rest: they must still win
    planned = complete_plan(
        scores, fixed_lines(plan_request(width=16, num_acs=2, acceleration=4.0), 4, per_frame=False), 4
    )
    assert planned.lines == (0, 7, 8, 15)
    assert smallest_gap(np.array([[3.0, 1.0], [1.0, 1.5]])) == 0.5
    assert smallest_gap(np.ones(5)) == 1.0


def test_acquired_lines_outside_the_matrix_or_over_budget_are_refused(plan_request: RequestFactory) -> None:
    policy = FixedFamilyPolicy(FAMILIES["vd-random"])
    with pytest.raises(EncodeOutOfRangeError, match=r"\[128\]"):
        policy.plan(plan_request(acquired=(128,)), 0.0)
    with pytest.raises(InvalidAccelerationError, match="48 lines already acquired"):
        policy.plan(plan_request(acquired=tuple(range(32))), 0.0)
    with pytest.raises(InvalidAccelerationError):
        policy.plan(plan_request(acceleration=32.0), 0.0)  # 4 lines < 16 ACS
    with pytest.raises(InvalidInputError, match="2 entries for a scan of 3 frames"):
        policy.plan(plan_request(frames=3, acquired_per_frame=((1,), (2,))), 0.0)


def npy(array: np.ndarray) -> bytes:
    buffer = BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def mask_bundle(
    repository: Path, mask: np.ndarray, *, ky: int, name: str = "learned"
) -> FixedMaskBundlePolicy:
    manifest = Manifest(
        name=name,
        version="1",
        kind="fixed-mask",
        geometry=BundleGeometry(ky=ky),
        accelerations=(2.0, 4.0),
        num_acs=4,
        code_version="test",
        created=utc_now(),
    )
    return FixedMaskBundlePolicy(write_bundle(repository, manifest, {"mask.npy": npy(mask)}))


def test_fixed_mask_bundle_takes_the_top_scored_free_lines(
    tmp_path: Path, plan_request: RequestFactory
) -> None:
    scores = np.linspace(0.0, 1.0, 16, dtype=np.float32)  # higher ky scores higher
    policy = mask_bundle(tmp_path, scores, ky=16)
    request = plan_request(policy="learned", width=16, num_acs=4, acceleration=2.0, acquired=(0,))
    planned = policy.plan(request, 0.0)
    # 8 lines: acquired 0 and ACS 6..9 kept, then the three best-scored free lines
    assert planned.lines == (0, 6, 7, 8, 9, 13, 14, 15)
    assert planned.frame_lines is None


def test_fixed_mask_bundle_refuses_other_geometry_and_acceleration(
    tmp_path: Path, plan_request: RequestFactory
) -> None:
    policy = mask_bundle(tmp_path, np.ones(32, dtype=bool), ky=32)
    with pytest.raises(GeometryMismatchError, match=r"W=32.*W=64"):
        policy.plan(plan_request(policy="learned", width=64, num_acs=4), 0.0)
    with pytest.raises(InvalidAccelerationError, match=r"R=3\.0"):
        policy.plan(plan_request(policy="learned", width=32, num_acs=4, acceleration=3.0), 0.0)


def test_fixed_mask_bundle_with_a_bool_mask_prefers_its_lines(
    tmp_path: Path, plan_request: RequestFactory
) -> None:
    mask = np.zeros(32, dtype=bool)
    mask[[0, 3, 5, 14, 15, 16, 17, 30]] = True
    policy = mask_bundle(tmp_path, mask, ky=32)
    planned = policy.plan(plan_request(policy="learned", width=32, num_acs=4, acceleration=4.0), 0.0)
    assert planned.lines == (0, 3, 5, 14, 15, 16, 17, 30)  # the mask itself at its own R
    # line 1 already acquired: one mask line must go, the one farthest from the centre (0)
    planned = policy.plan(plan_request(policy="learned", width=32, num_acs=4, acquired=(1,)), 0.0)
    assert planned.lines == (1, 3, 5, 14, 15, 16, 17, 30)


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (np.ones(31), r"\(31,\)"),
        (np.ones((2, 32)), r"\(2, 32\)"),
        (np.arange(32), "int64"),
        (np.full(32, np.nan), "NaN"),
    ],
)
def test_bad_mask_files_are_bundle_errors(tmp_path: Path, mask: np.ndarray, match: str) -> None:
    with pytest.raises(BundleError, match=match):
        mask_bundle(tmp_path, mask, ky=32)


def test_shipped_demo_bundle_verifies_and_plans(repo_models: Path, plan_request: RequestFactory) -> None:
    bundle = load_bundle(repo_models, "centre-weighted")
    assert bundle.manifest.kind == "fixed-mask"
    assert "ANALYTIC" in str(bundle.manifest.training["description"])
    policy = FixedMaskBundlePolicy(bundle)
    request = plan_request(policy="centre-weighted", width=bundle.manifest.geometry.ky)
    planned = policy.plan(request, 0.0)
    validate_plan(request, planned, policy.info, 32)
    assert policy.info.served_by == "centre-weighted/1"


def test_shipped_demo_mask_is_the_documented_analytic_profile(repo_models: Path) -> None:
    builder = runpy.run_path(str(repo_models / "build_demo_bundles.py"))
    shipped = np.load(load_bundle(repo_models, "centre-weighted").file("mask.npy"))
    expected = builder["golden_ratio_vd_scores"](128)
    np.testing.assert_array_equal(shipped, expected)
    assert shipped.dtype == np.float32
    assert sorted(shipped.tolist()) == sorted(set(shipped.tolist()))  # a strict ranking of all 128 lines
