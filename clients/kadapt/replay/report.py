"""Per-volume results and the aggregated ``report.json`` rows (one row per policy x recon x R).

A multi-round (ADS) scan lists its plan rounds in ``volumes.json`` (``rounds``: per round the lines per
frame, degraded and its reason, the scanner's wait ``elapsed_ms`` and ``deadline_met``); the aggregate row
counts them (``plan_rounds``, ``rounds_degraded``, ``rounds_deadline_missed``, ``round_ms_p99``)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class VolumeResult:
    """The outcome of replaying one volume under one policy / recon / R."""

    volume: str
    policy: str
    recon: str
    R: float
    num_acs: int
    lines: int
    width: int
    metrics: dict[str, float]
    plan_ms: float
    plan_rtt_ms: float
    degraded: bool
    degraded_reason: str | None
    served_by: str
    recon_method_used: str | None
    scan_seconds: float
    recon_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def aggregate(results: list[VolumeResult]) -> list[dict[str, Any]]:
    """Rows of ``report.json``: means of the volume-level metrics, plan latency p50 / p99 and the
    number of degraded (fallback) plans, grouped by (policy, recon, R) in first-seen order."""
    groups: dict[tuple[str, str, float], list[VolumeResult]] = defaultdict(list)
    for result in results:
        groups[(result.policy, result.recon, result.R)].append(result)
    rows: list[dict[str, Any]] = []
    for (policy, recon, R), items in groups.items():
        metric_names = sorted({name for item in items for name in item.metrics})
        row: dict[str, Any] = {"policy": policy, "recon": recon, "R": R, "n_volumes": len(items)}
        for name in metric_names:
            values = [item.metrics[name] for item in items if name in item.metrics]
            row[name] = float(np.mean(values))
            row[f"{name}_std"] = float(np.std(values))
        plan_ms = [item.plan_ms for item in items]
        row["plan_ms_p50"] = _percentile(plan_ms, 50)
        row["plan_ms_p99"] = _percentile(plan_ms, 99)
        row["plan_rtt_ms_p50"] = _percentile([item.plan_rtt_ms for item in items], 50)
        row["degraded_plans"] = sum(item.degraded for item in items)
        rounds = [entry for item in items for entry in item.rounds]
        if rounds:
            row["plan_rounds"] = max(len(item.rounds) for item in items)
            row["rounds_degraded"] = sum(bool(entry["degraded"]) for entry in rounds)
            row["rounds_deadline_missed"] = sum(not entry["deadline_met"] for entry in rounds)
            row["round_ms_p99"] = _percentile([float(entry["elapsed_ms"]) for entry in rounds], 99)
        row["recon_methods_used"] = sorted({item.recon_method_used or "?" for item in items})
        row["recon_seconds_mean"] = float(np.mean([item.recon_seconds for item in items]))
        rows.append(row)
    return rows


def write_report(out_dir: Path, results: list[VolumeResult]) -> list[dict[str, Any]]:
    """Write ``report.json`` (aggregate rows) and ``volumes.json`` (one entry per replayed volume)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = aggregate(results)
    (out_dir / "report.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out_dir / "volumes.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return rows
