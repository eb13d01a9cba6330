"""``kadapt bench load`` in a tiny configuration through the real processes, and its metric helpers.

The integration test runs 3 scanners x 2 scans of a one-slice phantom (128 x 128, 8 coils: the committed
``mnet-mb`` bundle's geometry) with the learned MNet policy and zero-filled recon jobs, and checks the
report's bookkeeping: every plan accounted for, on time or counted as a miss, fallbacks with reasons,
no error. It asserts no latency: the machine may be busy.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kadapt.fastmri.files import fastmri_volume, write_fastmri
from kadapt.launcher.bench_load import LoadSettings, run_load_benchmark
from kadapt.launcher.bench_load_report import FALLBACK_REASONS
from kadapt.launcher.bench_metrics import count_above, diff_samples, histogram_quantile, parse_samples
from kadapt.mrd.header import make_header

REPO = Path(__file__).resolve().parents[3]

METRICS_BEFORE = """# TYPE plan_seconds histogram
plan_seconds_bucket{le="0.01"} 1.0
plan_seconds_bucket{le="0.05"} 2.0
plan_seconds_bucket{le="+Inf"} 2.0
plan_seconds_count 2.0
plan_seconds_sum 0.03
"""
METRICS_AFTER = """# TYPE plan_seconds histogram
plan_seconds_bucket{le="0.01"} 5.0
plan_seconds_bucket{le="0.05"} 10.0
plan_seconds_bucket{le="+Inf"} 12.0
plan_seconds_count 12.0
plan_seconds_sum 0.9
"""


def test_histogram_difference_quantiles_and_count_above_a_bound() -> None:
    delta = diff_samples(parse_samples(METRICS_BEFORE), parse_samples(METRICS_AFTER))
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in delta.items()
        if name.endswith("_bucket")
    )
    assert buckets == [(0.01, 4.0), (0.05, 8.0), (float("inf"), 10.0)]
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.02)  # rank 5 of 10: 1 of 4 into (0.01, 0.05]
    assert histogram_quantile(buckets, 0.99) == 0.05  # in +Inf: the largest finite bound
    assert count_above(buckets, 0.05) == (2.0, 2.0)  # a bucket bound: exact
    assert count_above(buckets, 0.03) == (2.0, 6.0)  # between bounds: at least / at most


@pytest.fixture
def tiny_load_inputs(tmp_path: Path, phantom_factory: Callable[..., Any]) -> tuple[Path, Path]:
    """A data directory with one 1-slice test volume, and a repository with ``mnet-mb`` (and its
    fallback's bundle) only."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make setup installs it as root)")
    phantom = phantom_factory(slices=1, size=128, coils=8)
    kspace = np.ascontiguousarray(phantom.kspace[:, 0]).astype(np.complex64)  # (slice, coil, H, W)
    header = make_header(readout=128, width=128, slices=1, coils=8)
    (tmp_path / "data" / "test").mkdir(parents=True)
    volume = fastmri_volume(kspace, header_xml=header, acquisition="TEST", patient_id="phantom")
    write_fastmri(tmp_path / "data" / "test" / "phantom.h5", volume)
    for bundle in ("mnet-mb", "energy-pop"):  # mnet-mb falls back to the energy-pop mask
        shutil.copytree(REPO / "models" / bundle, tmp_path / "models" / bundle)
    return tmp_path / "data", tmp_path / "models"


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_bench_load_accounts_for_every_plan(tiny_load_inputs: tuple[Path, Path]) -> None:
    data, models = tiny_load_inputs
    settings = LoadSettings(
        scans=3,
        repeats=2,
        deadline_ms=50.0,
        policy="mnet-mb",
        recon="zero-filled",
        tr_ms=1.0,
        shot_lines=8,
        slices=1,
        stagger_ms=20.0,
        poll_max_s=0.1,
        data=data,
        models=models,
        log_dir=data.parent / "logs",
    )
    report = run_load_benchmark(settings, progress=lambda _: None)

    for key in (
        "machine", "settings", "plans_total", "deadline_misses", "plan_ms_p50", "plan_ms_p99", "plan_ms_p999",
        "fallbacks", "ingest", "recon_job_s_p50", "recon_job_s_p99", "errors", "services", "wall_s",
    ):  # fmt: skip
        assert key in report, key
    assert report["errors"] == {"total": 0, "non_2xx": {}, "exceptions": []}
    assert report["plans_total"] == report["plans_expected"] == 3 * 2
    assert report["plans_on_time"] + report["deadline_misses"] == report["plans_total"]
    for scan in report["scans"]:
        assert scan["missed"] == (scan["plan_ms"] > settings.deadline_ms)
    fallbacks = report["fallbacks"]
    degraded = [scan for scan in report["scans"] if scan["degraded"]]
    assert fallbacks["total"] == len(degraded) == sum(fallbacks["by_reason"].values())
    for slug, entry in fallbacks["explained"].items():
        assert slug in FALLBACK_REASONS
        assert entry["meaning"]
        assert entry["example"].startswith(slug)
    assert all(scan.get("reason") for scan in degraded)
    served = report["services"]
    assert sum(served["recon"]["jobs_by_status"].values()) >= report["plans_total"]
    assert served["gateway"]["plan_ms"]["count"] >= report["plans_total"]
    assert report["ingest"]["acquisitions"] == 6 * 32  # R 4 on 128 lines: 32 per scan
    assert report["recon_methods_used"] == {"zero-filled": 6}
