"""``kadapt bench recon`` on the tiny dataset: the real CLI path once (--quick, with the quick-trained bundles
of every kind), the JSON schema, paired masks, the interval arithmetic and the path without BART."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from kadapt.classic.bart import BART_ENV
from kadapt.cli.main import app
from kadapt.errors import InvalidInputError
from kadapt.masks import acs_lines
from kadapt.trainer.bench_methods import BenchMethod
from kadapt.trainer.bench_recon import BenchSettings, load_split, run_methods, run_recon_benchmark
from kadapt.trainer.bench_stats import bench_mask, paired_difference, t_interval

from .conftest import QuickRun

CLASSIC = ("zero-filled", "sense", "cg-sense", "l1-wavelet")
FAMILIES = ("equispaced", "vd-random")
ROW_KEYS = {
    "method", "ref", "kind", "mask", "R", "psnr", "ssim", "nmse", "psnr_ci", "ssim_ci", "nmse_ci",
    "per_volume", "s_per_slice", "slices", "vs_bart",
}  # fmt: skip


@pytest.fixture(scope="module")
def quick_bench(
    tiny_dataset: Path, quick_runs: dict[str, QuickRun], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One ``kadapt bench recon --quick`` at R 4 and 8 with the unet, modl and vsharp bundles (R 4, 3)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    bundles = [str(run.repository / kind / "1") for kind, run in sorted(quick_runs.items())]
    result = CliRunner().invoke(
        app,
        [
            "bench", "recon", "--data", str(tiny_dataset), "--bundles", *bundles, "--R", "4", "8",
            "--quick", "--threads", "1", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "bart-pics" in result.output  # the table went to stdout
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def test_quick_bench_json_schema(quick_bench: dict[str, Any], tiny_dataset: Path) -> None:
    assert quick_bench["kind"] == "kadapt-bench-recon"
    assert quick_bench["version"] == 1
    for key in (
        "created",
        "code_version",
        "machine",
        "data",
        "num_acs",
        "settings",
        "bart",
        "rows",
        "skipped",
    ):
        assert key in quick_bench
    assert quick_bench["machine"]["cpu_count"] >= 1
    data = quick_bench["data"]
    assert data["split"] == "test"
    assert data["geometry"] == {"coils": 4, "height": 32, "width": 32}
    assert (len(data["volumes"]), data["slices"]) == (1, 2)
    assert quick_bench["num_acs"] == 4  # the trainer's default at W = 32
    assert quick_bench["settings"]["threads"] == 1
    assert quick_bench["settings"]["classic"]["l1-wavelet"]["lamda"] > 0
    for row in quick_bench["rows"]:
        assert set(row) >= ROW_KEYS, row["method"]
        assert row["slices"] == 2
        assert row["s_per_slice"] > 0
        assert math.isfinite(row["psnr"])
        assert 0 < row["ssim"] <= 1
        assert row["nmse"] > 0
        assert row["psnr_ci"] is None  # one volume: no interval
        assert [entry["volume"] for entry in row["per_volume"]] == data["volumes"]
        assert row["per_volume"][0]["psnr"] == pytest.approx(row["psnr"])


def test_every_method_has_every_cell_it_accepts(quick_bench: dict[str, Any]) -> None:
    cells = {(row["method"], row["mask"], row["R"]) for row in quick_bench["rows"]}
    for method in (*CLASSIC, "bart-pics"):
        for family in FAMILIES:
            for rate in (4.0, 8.0):
                assert (method, family, rate) in cells
    # The bundles were trained at R 4 and 3: they run at R 4 and are refused at R 8, with the reason.
    for kind in ("unet", "modl", "vsharp"):
        for family in FAMILIES:
            assert (kind, family, 4.0) in cells
            assert (kind, family, 8.0) not in cells
        refusals = [entry for entry in quick_bench["skipped"] if entry["method"] == kind]
        assert {(entry["mask"], entry["R"]) for entry in refusals} == {(family, 8.0) for family in FAMILIES}
        assert all(f"bundle '{kind}/1' accepts 32x32x4 at R 4, 3" in entry["reason"] for entry in refusals)
    learned = [row for row in quick_bench["rows"] if row["kind"] == "learned"]
    assert {row["ref"] for row in learned} == {"unet/1", "modl/1", "vsharp/1"}


def test_bart_is_tuned_on_val_and_paired(quick_bench: dict[str, Any]) -> None:
    bart = quick_bench["bart"]
    assert bart["available"] is True
    assert bart["tuning"]["split"] == "val"
    for rate in ("4", "8"):
        grid = bart["tuning"]["by_R"][rate]["grid"]
        assert [entry["lamda"] for entry in grid] == quick_bench["settings"]["lamda_grid"]
        best = max(grid, key=lambda entry: (entry["psnr"], entry["ssim"]))
        assert bart["tuning"]["by_R"][rate]["lamda"] == best["lamda"]
    rows = {(row["method"], row["mask"], row["R"]): row for row in quick_bench["rows"]}
    for (method, family, rate), row in rows.items():
        if method == "bart-pics":
            assert row["vs_bart"] is None
            assert row["calib_s"] > 0
            assert row["pics_s"] > 0
            continue
        bart_psnr = rows[("bart-pics", family, rate)]["psnr"]
        assert row["vs_bart"]["psnr_diff"] == pytest.approx(row["psnr"] - bart_psnr)


def test_masks_are_drawn_per_cell_and_reproducible() -> None:
    def draw(**changes: Any) -> np.ndarray[Any, Any]:
        coordinates: dict[str, Any] = {
            "width": 32, "acceleration": 4.0, "num_acs": 4, "seed": 0, "split": "test", "volume": 0,
            "slice_index": 0,
        }  # fmt: skip
        return bench_mask("vd-random", **{**coordinates, **changes})

    first = draw()
    np.testing.assert_array_equal(first, draw())
    assert first.shape == (32,)
    assert first.dtype == np.bool_
    assert first.sum() == 8
    assert first[acs_lines(32, 4)].all()
    others = [draw(slice_index=1), draw(volume=1), draw(split="val"), draw(seed=1)]
    assert all(not np.array_equal(first, other) for other in others)


def _recording_method(name: str, seen: list[tuple[int, ...]]) -> BenchMethod:
    def run(kspace: Any, mask: Any, acceleration: float) -> tuple[Any, dict[str, float]]:
        seen.append(tuple(np.flatnonzero(mask)))
        # Samples off the mask arrive as zeros: every method gets the same masked data.
        assert not np.any(kspace[..., ~mask])
        return np.abs(kspace).sum(axis=0).astype(np.float32), {}

    return BenchMethod(name=name, kind="classic", reconstruct=run)


def test_every_method_sees_the_same_mask(tiny_dataset: Path) -> None:
    test = load_split(tiny_dataset, "test", None)
    seen_a: list[tuple[int, ...]] = []
    seen_b: list[tuple[int, ...]] = []
    methods = [_recording_method("a", seen_a), _recording_method("b", seen_b)]
    records, refused = run_methods(
        test, methods, [("vd-random", 4.0), ("equispaced", 4.0)], num_acs=4, seed=7, progress=lambda _: None
    )
    assert refused == []
    assert seen_a == seen_b
    slices = test[0].kspace.shape[0]
    assert len(seen_a) == 2 * slices + 1  # one untimed warm-up call, then every slice of both cells
    expected = [
        tuple(np.flatnonzero(bench_mask(family, width=32, acceleration=4.0, num_acs=4, seed=7, split="test",
                                        volume=0, slice_index=index)))
        for family in ("vd-random", "equispaced")
        for index in range(slices)
    ]  # fmt: skip
    assert seen_a[1:] == expected
    assert len(records.seconds[("a", "vd-random", 4.0)]) == slices


def test_t_interval_on_known_numbers() -> None:
    mean, interval = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # sd = sqrt(2.5), t_{0.975, 4} = 2.776445: half-width 2.776445 * 1.581139 / sqrt(5) = 1.963243
    assert mean == 3.0
    assert interval == pytest.approx([3.0 - 1.963243, 3.0 + 1.963243], abs=1e-6)
    assert t_interval([2.5]) == (2.5, None)
    assert t_interval([4.0, 4.0, 4.0]) == (4.0, [4.0, 4.0])
    diff, diff_interval = paired_difference([31.0, 29.0, 30.5], [30.0, 28.5, 29.0])
    # differences 1.0, 0.5, 1.5: mean 1, sd 0.5, t_{0.975, 2} = 4.302653 -> half-width 1.242069
    assert diff == pytest.approx(1.0)
    assert diff_interval == pytest.approx([1.0 - 1.242069, 1.0 + 1.242069], abs=1e-6)
    with pytest.raises(InvalidInputError, match="paired samples differ in length"):
        paired_difference([1.0], [1.0, 2.0])


def test_without_bart_the_json_says_why(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bart (and no git: code_version copes)
    monkeypatch.delenv(BART_ENV, raising=False)
    result = run_recon_benchmark(BenchSettings(data=tiny_dataset, quick=True, threads=1))
    assert result["bart"]["available"] is False
    assert "dependency-unavailable" in result["bart"]["reason"]
    assert result["skipped"] == [
        {"method": "bart-pics", "ref": None, "mask": None, "R": None, "reason": result["bart"]["reason"]}
    ]
    assert {row["method"] for row in result["rows"]} == set(CLASSIC)
    assert {(row["mask"], row["R"]) for row in result["rows"]} == {(family, 4.0) for family in FAMILIES}
    assert all(row["vs_bart"] is None for row in result["rows"])


def test_a_bundle_given_twice_is_refused(tiny_dataset: Path, quick_runs: dict[str, QuickRun]) -> None:
    bundle = quick_runs["unet"].repository / "unet" / "1"
    settings = BenchSettings(data=tiny_dataset, quick=True, threads=1, bundles=(bundle, bundle))
    with pytest.raises(InvalidInputError, match="given more than once"):
        run_recon_benchmark(settings)
