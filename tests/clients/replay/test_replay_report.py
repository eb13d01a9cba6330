"""Aggregation of replayed volumes into report.json rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kadapt.replay.report import VolumeResult, aggregate, write_report


def _result(volume: str, policy: str, psnr: float, plan_ms: float, degraded: bool = False) -> VolumeResult:
    return VolumeResult(
        volume=volume,
        policy=policy,
        recon="cg-sense",
        R=4.0,
        num_acs=10,
        lines=32,
        width=128,
        metrics={"psnr": psnr, "ssim": 0.9, "nmse": 0.01},
        plan_ms=plan_ms,
        plan_rtt_ms=1.0,
        degraded=degraded,
        degraded_reason="sampler-timeout" if degraded else None,
        served_by="vd-random",
        recon_method_used="cg-sense",
        scan_seconds=1.0,
        recon_seconds=2.0,
    )


def test_rows_group_by_policy_recon_and_acceleration_with_means_and_latency_percentiles() -> None:
    results = [
        _result("a.h5", "vd-random", 30.0, 2.0),
        _result("b.h5", "vd-random", 32.0, 4.0, degraded=True),
        _result("a.h5", "equispaced", 28.0, 1.0),
    ]
    rows = aggregate(results)
    assert [row["policy"] for row in rows] == ["vd-random", "equispaced"]
    vd = rows[0]
    assert vd["n_volumes"] == 2
    assert vd["psnr"] == pytest.approx(31.0)
    assert vd["psnr_std"] == pytest.approx(1.0)
    assert vd["plan_ms_p50"] == pytest.approx(3.0)
    assert vd["plan_ms_p99"] == pytest.approx(3.98)
    assert vd["degraded_plans"] == 1
    assert rows[1]["degraded_plans"] == 0


def test_report_json_is_a_list_of_rows_with_the_documented_fields(tmp_path: Path) -> None:
    write_report(tmp_path, [_result("a.h5", "random", 25.0, 3.0)])
    rows = json.loads((tmp_path / "report.json").read_text())
    assert isinstance(rows, list)
    required = {
        "policy",
        "recon",
        "R",
        "n_volumes",
        "psnr",
        "ssim",
        "nmse",
        "plan_ms_p50",
        "plan_ms_p99",
        "degraded_plans",
    }
    assert required <= set(rows[0])
    volumes = json.loads((tmp_path / "volumes.json").read_text())
    assert volumes[0]["volume"] == "a.h5"
