"""Metrics and statistics of ``kadapt bench dynamic``: the seed-004 centre crop (2/3 per axis) per frame and
per volume, the best-baseline choice and the sign of the paired comparisons (ADS minus baseline)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from kadapt.errors import InvalidStateError
from kadapt.masks import acs_lines
from kadapt.metrics import psnr, ssim
from kadapt.trainer.bench_dynamic_report import (
    DynamicRecords,
    RowInfo,
    crop_two_thirds,
    evaluate_cine,
    markdown_table,
    summarise_dynamic,
)
from kadapt.trainer.bench_dynamic_samplers import check_dynamic_mask, opt_mask
from kadapt.trainer.bench_stats import aso_epsilon

SLICES, FRAMES, HEIGHT, WIDTH = 2, 3, 12, 18


def _volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (1.0 + rng.random((SLICES, FRAMES, HEIGHT, WIDTH))).astype(np.float32)


def test_crop_is_the_centre_two_thirds_of_each_axis() -> None:
    image = np.arange(HEIGHT * WIDTH, dtype=np.float32).reshape(HEIGHT, WIDTH)
    cropped = crop_two_thirds(image)
    assert cropped.shape == (8, 12)
    np.testing.assert_array_equal(cropped, image[2:10, 3:15])


def test_errors_outside_the_crop_do_not_count_and_inside_they_hit_their_frame() -> None:
    reference = _volume()
    outside = reference.copy()
    outside[..., 0, :] += 5.0  # the first row and column lie outside the centre crop
    outside[..., :, 0] += 5.0
    metrics = evaluate_cine(reference, outside)
    assert metrics["nmse"] == 0.0
    assert math.isinf(metrics["psnr"])
    assert metrics["ssim"] == pytest.approx(1.0)
    inside = reference.copy()
    inside[:, 1, HEIGHT // 2, WIDTH // 2] += 1.0  # frame 1 only, in the crop
    metrics = evaluate_cine(reference, inside)
    assert metrics["ssim_per_frame"][0] == pytest.approx(1.0)
    assert metrics["ssim_per_frame"][2] == pytest.approx(1.0)
    assert metrics["ssim_per_frame"][1] < 1.0
    assert metrics["nmse_per_frame"][1] > 0.0
    assert metrics["nmse_per_frame"][0] == 0.0
    # fastMRI conventions on the cropped volume: data range = the cropped volume's maximum.
    gt, pred = crop_two_thirds(reference), crop_two_thirds(inside)
    flat = (-1, *gt.shape[-2:])
    assert metrics["psnr"] == pytest.approx(psnr(gt.reshape(flat), pred.reshape(flat), float(gt.max())))
    assert metrics["ssim_per_frame"][1] == pytest.approx(ssim(gt[:, 1], pred[:, 1], float(gt.max())))


def _records(ads: list[float], baselines: dict[str, list[float]]) -> tuple[DynamicRecords, list[RowInfo]]:
    records = DynamicRecords()
    mask = np.zeros((FRAMES, WIDTH), dtype=bool)
    infos = [RowInfo("ads-fs", "ads", "ads", "frame-specific", "1d", "ads-fs/1", "rec/1")]
    infos += [
        RowInfo(name, name, "baseline", "frame-specific", "1d", f"{name}/1", f"{name}/1")
        for name in baselines
    ]
    for info, values in zip(infos, [ads, *baselines.values()], strict=True):
        for index, value in enumerate(values):
            metrics: dict[str, Any] = {"psnr": 30 + 10 * value, "ssim": value, "nmse": 1 - value}
            metrics.update({f"{m}_per_frame": [metrics[m]] * FRAMES for m in ("psnr", "ssim", "nmse")})
            records.add_slice((info.name, 8.0), mask, 0.01, 0.1)
            records.add_volume((info.name, 8.0), f"v{index}", "tiny", metrics)
    return records, infos


def test_the_paired_comparison_is_ads_minus_the_best_baseline() -> None:
    ads = [0.80, 0.82, 0.85, 0.90, 0.88]
    records, infos = _records(
        ads, {"kt-equispaced": [v - 0.05 for v in ads], "random": [v - 0.10 for v in ads]}
    )
    rows, best = summarise_dynamic(records, infos, (8.0,), seed=0, resamples=200)
    assert best["8"]["name"] == "kt-equispaced"
    row = rows[0]
    versus = row["vs_best_baseline"]
    assert versus["baseline"] == "kt-equispaced"
    assert versus["ssim_diff"] == pytest.approx(0.05)
    assert versus["psnr_diff"] == pytest.approx(0.5)
    assert versus["nmse_diff"] == pytest.approx(-0.05)  # lower NMSE: better, negative difference
    assert versus["ssim_aso_eps_min"] < 0.5  # ADS almost stochastically dominates
    assert row["vs_baselines"]["random"]["ssim_diff"] == pytest.approx(0.10)
    assert row["s_per_slice"] == pytest.approx(0.11)
    assert rows[1]["vs_best_baseline"] is None
    worse, infos = _records([v - 0.2 for v in ads], {"kt-equispaced": ads})
    rows, _ = summarise_dynamic(worse, infos, (8.0,), seed=0, resamples=200)
    assert rows[0]["vs_best_baseline"]["ssim_diff"] == pytest.approx(-0.2)
    assert rows[0]["vs_best_baseline"]["ssim_aso_eps_min"] > 0.5


def test_aso_is_symmetric_in_spirit_and_undefined_for_one_score() -> None:
    rng = np.random.default_rng(0)
    better = list(rng.normal(1.0, 0.1, 40))
    worse = list(rng.normal(0.0, 0.1, 40))
    assert aso_epsilon(better, worse, np.random.default_rng(1), resamples=100) == pytest.approx(0.0, abs=0.05)
    assert aso_epsilon(worse, better, np.random.default_rng(1), resamples=100) == pytest.approx(1.0, abs=0.05)
    assert aso_epsilon([1.0], [0.0], np.random.default_rng(1)) is None


def test_opt_pattern_keeps_the_acs_and_the_budget() -> None:
    scores = np.random.default_rng(0).random((FRAMES, WIDTH))
    mask = opt_mask(scores, 6.0, 2)
    check_dynamic_mask(mask, FRAMES, WIDTH, 6.0, 2, "opt")
    free = ~mask[0]
    free[acs_lines(WIDTH, 2)] = False
    chosen = mask[0].copy()
    chosen[acs_lines(WIDTH, 2)] = False
    assert scores[0][chosen].min() >= scores[0][free].max()  # top-k among the free lines
    broken = mask.copy()
    broken[1, acs_lines(WIDTH, 2)[0]] = False
    with pytest.raises(InvalidStateError, match="ACS kept per frame"):
        check_dynamic_mask(broken, FRAMES, WIDTH, 6.0, 2, "opt")


def test_markdown_table_has_one_line_per_row() -> None:
    records, infos = _records([0.8, 0.9], {"kt-equispaced": [0.7, 0.8]})
    rows, _ = summarise_dynamic(records, infos, (8.0,), seed=0, resamples=50)
    result = {"rows": rows, "data": {"volumes": ["v0", "v1"], "slices": 2, "geometry": {"frames": FRAMES}}}
    lines = markdown_table(result).splitlines()
    assert lines[0].startswith("| sampler |")
    assert (
        len([line for line in lines if line.startswith("| ads-fs") or line.startswith("| kt-equispaced")])
        == 2
    )
