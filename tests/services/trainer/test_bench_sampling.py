"""``kadapt bench sampling`` on the tiny dataset: the CLI ``--quick`` path with a fixed-mask and an mnet
sampler bundle, exact-budget ACS-keeping masks for every policy, the MNet input as the sampler service
builds it, the statistics, determinism, and typed errors naming the bad value."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kadapt.bundles import BundleGeometry, Manifest, utc_now, write_bundle
from kadapt.cli.main import app
from kadapt.errors import BundleError, BundleNotFoundError, InvalidStateError, UnknownReconMethodError
from kadapt.masks import acs_lines, line_budget
from kadapt.nn.mnet import MNet, MNetGeometry, randomise_parameters
from kadapt.nn.mnet_bundle import export_mnet_bundle
from kadapt.sampler.domain.planner import PolicyRegistry
from kadapt.schemas import PlanRequest
from kadapt.trainer.bench_recon import load_split
from kadapt.trainer.bench_samplers import SliceRequest, check_mask, family_policy, sampler_policy
from kadapt.trainer.bench_sampling import SamplingBenchSettings, run_sampling_benchmark
from kadapt.trainer.bench_sampling_report import paired_bootstrap
from kadapt.trainer.population import write_fixed_mask_bundle

NUM_ACS = 4
SHAPE = (4, 32, 32)  # the tiny dataset's (coils, H, W)
ROW_KEYS = {
    "policy", "ref", "kind", "adaptive", "R", "psnr", "ssim", "nmse", "psnr_ci", "delta_psnr_vs_best_fixed",
    "ci95", "bootstrap_ci95", "delta_ssim_vs_best_fixed", "oracle_share", "distinct_masks", "slices", "lines",
    "per_volume",
}  # fmt: skip


@pytest.fixture(scope="module")
def samplers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with ``pop-tiny/1`` (fixed-mask, random scores), ``mnet-tiny/1`` (random-weight MNet at
    the tiny geometry) and ``unet-fake/1`` (a bundle of a recon kind)."""
    repo = tmp_path_factory.mktemp("samplers")
    scores = np.random.default_rng(0).uniform(size=32)
    write_fixed_mask_bundle(
        scores, repo, name="pop-tiny", version="1", accelerations=(4.0, 8.0), num_acs=NUM_ACS,
        training={"description": "random scores (test)"}, validation={}, code_version="test",
    )  # fmt: skip
    geometry = MNetGeometry(width=32, height=32, coils=4, num_acs=NUM_ACS)
    model = randomise_parameters(MNet(geometry, channels=(8, 8), hidden=16), torch.Generator().manual_seed(0))
    export_mnet_bundle(
        model, repo, name="mnet-tiny", accelerations=(4.0, 8.0),
        training={"description": "UNTRAINED random weights (test)"}, code_version="test",
    )  # fmt: skip
    manifest = Manifest(
        name="unet-fake", version="1", kind="unet", geometry=BundleGeometry(ky=32, kx=32, coils=4),
        accelerations=(4.0,), num_acs=NUM_ACS, code_version="test", created=utc_now(),
    )  # fmt: skip
    write_bundle(repo, manifest, {"model.onnx": b"not a graph"})
    return repo


@pytest.fixture(scope="module")
def quick_result(
    tiny_dataset: Path, samplers: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-sampling") / "sampling.json"
    result = CliRunner().invoke(
        app,
        [
            "bench", "sampling", "--data", str(tiny_dataset), "--recon", "cg-sense", "--samplers",
            str(samplers / "pop-tiny" / "1"), str(samplers / "mnet-tiny" / "1"), "--R", "4", "8", "--quick",
            "--threads", "1", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "greedy-population" in result.output  # the table went to stdout
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def test_quick_cli_writes_the_documented_json(quick_result: dict[str, Any]) -> None:
    assert quick_result["kind"] == "kadapt-bench-sampling"
    assert quick_result["version"] == 1
    for key in ("machine", "data", "num_acs", "budgets", "settings", "timings", "greedy_population", "oracle",
                "best_fixed", "rows", "per_source", "adaptive_distinct_masks", "skipped"):  # fmt: skip
        assert key in quick_result, key
    assert quick_result["budgets"] == {"4": 8, "8": 4}
    assert quick_result["settings"]["search_recon"] == "cg-sense"
    assert set(quick_result["timings"]) == {"greedy_population_s", "oracle_s", "recon_s"}
    policies = {row["policy"] for row in quick_result["rows"]}
    assert policies == {"equispaced", "vd-random", "gaussian-1d", "centre-only", "energy-density", "pop-tiny",
                        "mnet-tiny", "greedy-population", "oracle"}  # fmt: skip
    for row in quick_result["rows"]:
        assert set(row) >= ROW_KEYS, row["policy"]
        assert row["lines"] == quick_result["budgets"][f"{row['R']:g}"]
        assert np.isfinite(row["psnr"])
    assert len(quick_result["greedy_population"]["order"]) == 4  # R 4: 8 lines, 4 of them ACS
    assert {entry["volume"] for entry in quick_result["greedy_population"]["slices"]}.isdisjoint(
        quick_result["data"]["volumes"]
    )
    assert set(quick_result["adaptive_distinct_masks"]) == {"mnet-tiny", "oracle"}


def test_best_fixed_and_oracle_share(quick_result: dict[str, Any]) -> None:
    at_4 = [row for row in quick_result["rows"] if row["R"] == 4.0]
    fixed = [row for row in at_4 if not row["adaptive"]]
    best = max(fixed, key=lambda row: row["psnr"])
    assert quick_result["best_fixed"]["4"]["policy"] == best["policy"]
    assert best["delta_psnr_vs_best_fixed"] == 0.0
    oracle = next(row for row in at_4 if row["policy"] == "oracle")
    gain = oracle["psnr"] - best["psnr"]
    for row in at_4:
        assert row["delta_psnr_vs_best_fixed"] == pytest.approx(row["psnr"] - best["psnr"])  # one volume
        if gain > 0:
            assert row["oracle_share"] == pytest.approx((row["psnr"] - best["psnr"]) / gain)
        else:
            assert row["oracle_share"] is None
    at_8 = [row for row in quick_result["rows"] if row["R"] == 8.0]
    assert {row["distinct_masks"] for row in at_8} == {1}  # at R 8 the tiny budget is the ACS block alone
    sources = {(entry["policy"], entry["R"]) for entry in quick_result["per_source"]}
    assert sources == {(row["policy"], row["R"]) for row in quick_result["rows"]}


def test_every_policy_makes_exact_budget_masks_with_the_acs(tiny_dataset: Path, samplers: Path) -> None:
    test = load_split(tiny_dataset, "test", None)
    families = ("equispaced", "vd-random", "gaussian-1d", "centre-only")
    policies = [family_policy(name, num_acs=NUM_ACS, seed=0) for name in families]
    policies += [
        sampler_policy(samplers / name / "1", shape=SHAPE, num_acs=NUM_ACS, threads=1)
        for name in ("pop-tiny", "mnet-tiny")
    ]
    for policy in policies:
        for acceleration in (4.0, 8.0):
            for slice_index, kspace in enumerate(test[0].kspace):
                mask = policy.plan(SliceRequest(0, slice_index, kspace, acceleration))
                check_mask(mask, 32, acceleration, NUM_ACS, policy.name)
                assert int(mask.sum()) == line_budget(32, acceleration, NUM_ACS)
                assert mask[acs_lines(32, NUM_ACS)].all()


def test_check_mask_refuses_wrong_budgets_and_missing_acs() -> None:
    mask = np.zeros(32, dtype=bool)
    mask[acs_lines(32, NUM_ACS)] = True
    with pytest.raises(InvalidStateError, match="4 lines \\(budget 8\\)"):
        check_mask(mask, 32, 4.0, NUM_ACS, "p")
    shifted = np.zeros(32, dtype=bool)
    shifted[:8] = True
    with pytest.raises(InvalidStateError, match="without the 4 ACS lines"):
        check_mask(shifted, 32, 4.0, NUM_ACS, "p")


def test_mnet_masks_equal_the_sampler_service_plans(tiny_dataset: Path, samplers: Path) -> None:
    """The benchmark's MNet input is the sampler service's: the same ACS block gives the same plan."""
    import base64
    import io

    policy = sampler_policy(samplers / "mnet-tiny" / "1", shape=SHAPE, num_acs=NUM_ACS, threads=1)
    served = PolicyRegistry.from_sources(samplers).get("mnet-tiny")
    kspace = load_split(tiny_dataset, "test", None)[0].kspace[1]
    lines = acs_lines(32, NUM_ACS)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(kspace[:, :, lines]), allow_pickle=False)
    for acceleration in (4.0, 8.0):
        request = PlanRequest(
            scan_id="s", policy="mnet-tiny", width=32, height=32, coils=4, acceleration=acceleration,
            num_acs=NUM_ACS, acquired=tuple(int(ky) for ky in lines),
            deadline_unix_ms=time.time() * 1000 + 60_000,
            acs_npy_b64=base64.b64encode(buffer.getvalue()).decode("ascii"),
        )  # fmt: skip
        planned = served.plan(request, time.time() * 1000)
        assert not planned.degraded
        mask = policy.plan(SliceRequest(0, 1, kspace, acceleration))
        assert tuple(np.flatnonzero(mask)) == planned.lines


def test_sampler_refusals_are_skipped_with_the_reason(tiny_dataset: Path, samplers: Path) -> None:
    policy = sampler_policy(samplers / "mnet-tiny" / "1", shape=(4, 32, 32), num_acs=6, threads=1)
    assert "num_acs=6 (bundle: 4)" in (policy.refusal(4.0) or "")
    fixed = sampler_policy(samplers / "pop-tiny" / "1", shape=SHAPE, num_acs=NUM_ACS, threads=1)
    assert fixed.refusal(4.0) is None
    assert "not R=2.0" in (fixed.refusal(2.0) or "")


def settings_for(data: Path, **changes: Any) -> SamplingBenchSettings:
    fields: dict[str, Any] = {"data": data, "recon": "zero-filled", "accelerations": (4.0,), "quick": True,
                              "search_recon": "sense", "threads": 1, "bootstrap": 50}  # fmt: skip
    fields.update(changes)
    return SamplingBenchSettings(**fields)


def test_same_seed_gives_the_same_rows(tiny_dataset: Path) -> None:
    def rows(seed: int) -> list[dict[str, Any]]:
        result = run_sampling_benchmark(settings_for(tiny_dataset, seed=seed))
        return [{k: v for k, v in row.items() if k != "recon_s_per_slice"} for row in result["rows"]]

    first = rows(0)
    assert first == rows(0)
    assert first != rows(1)  # the random families draw other masks


def test_same_search_recon_runs_the_benchmark_recon(tiny_dataset: Path) -> None:
    result = run_sampling_benchmark(settings_for(tiny_dataset, search_recon="same", families=("equispaced",)))
    assert result["settings"]["search_recon"] == "same"
    assert len(result["greedy_population"]["order"]) == 4


def test_bad_input_is_a_typed_error_naming_the_value(tiny_dataset: Path, samplers: Path) -> None:
    with pytest.raises(UnknownReconMethodError, match="'bogus'"):
        run_sampling_benchmark(settings_for(tiny_dataset, recon="bogus"))
    with pytest.raises(BundleNotFoundError, match="missing"):
        run_sampling_benchmark(settings_for(tiny_dataset, samplers=(samplers / "missing" / "1",)))
    with pytest.raises(BundleError, match="kind 'unet'"):
        run_sampling_benchmark(settings_for(tiny_dataset, samplers=(samplers / "unet-fake" / "1",)))
    with pytest.raises(BundleError, match="kind 'fixed-mask'"):
        run_sampling_benchmark(settings_for(tiny_dataset, recon=str(samplers / "pop-tiny" / "1")))


def test_cli_reports_bad_input_and_exits_non_zero(tiny_dataset: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "sampling",
            "--data",
            str(tiny_dataset),
            "--recon",
            "bogus",
            "--out",
            str(tmp_path / "x.json"),
        ],
    )
    assert result.exit_code != 0
    assert "bogus" in result.output
    assert not (tmp_path / "x.json").exists()


def test_paired_bootstrap_interval() -> None:
    rng = np.random.default_rng(0)
    interval = paired_bootstrap([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0], 200, rng)
    assert interval == [1.0, 1.0]  # constant differences
    spread = paired_bootstrap([1.0, 3.0, 2.0, 6.0], [0.0, 0.0, 0.0, 0.0], 2000, np.random.default_rng(0))
    assert spread is not None
    assert spread[0] < 3.0 < spread[1]
    assert paired_bootstrap([1.0], [0.0], 100, rng) is None
