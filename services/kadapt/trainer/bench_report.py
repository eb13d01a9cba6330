"""What ``kadapt bench recon`` collects per (method, mask, R) and how it is reported: JSON rows with means,
95 % intervals over volumes and paired differences to BART (:mod:`kadapt.trainer.bench_stats`), and a
rich table for the terminal."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.table import Table

from kadapt.trainer.bench_methods import BART_METHOD, BenchMethod
from kadapt.trainer.bench_stats import paired_difference, t_interval

METRICS = ("psnr", "ssim", "nmse")
#: ``(method name, mask family, R)``
CellKey = tuple[str, str, float]


@dataclass
class Records:
    """Everything measured: per-volume metrics, per-slice wall seconds and named sub-timings per cell."""

    per_volume: dict[CellKey, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: dict[CellKey, list[float]] = field(default_factory=dict)
    sub_seconds: dict[CellKey, dict[str, list[float]]] = field(default_factory=dict)

    def add_slice(self, key: CellKey, seconds: float, parts: dict[str, float]) -> None:
        self.seconds.setdefault(key, []).append(seconds)
        for name, value in parts.items():
            self.sub_seconds.setdefault(key, {}).setdefault(name, []).append(value)

    def add_volume(self, key: CellKey, volume: str, metrics: dict[str, float]) -> None:
        self.per_volume.setdefault(key, []).append({"volume": volume, **{m: metrics[m] for m in METRICS}})


def _versus(per_volume: list[dict[str, Any]], bart: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired (by volume) differences method - BART in PSNR and SSIM, with 95 % intervals."""
    baseline = {entry["volume"]: entry for entry in bart}
    paired = [entry for entry in per_volume if entry["volume"] in baseline]
    versus: dict[str, Any] = {"volumes": len(paired)}
    for name in ("psnr", "ssim"):
        diff, interval = paired_difference(
            [entry[name] for entry in paired], [baseline[entry["volume"]][name] for entry in paired]
        )
        versus[f"{name}_diff"], versus[f"{name}_diff_ci"] = diff, interval
    return versus


def summarise(
    records: Records, methods: list[BenchMethod], cells: list[tuple[str, float]]
) -> list[dict[str, Any]]:
    """One row per (mask, R, method) that ran, in that order: means and intervals over volumes, the
    per-volume metrics, the median seconds per slice (and of each sub-timing), the paired BART comparison."""
    rows = []
    for family, acceleration in cells:
        bart = records.per_volume.get((BART_METHOD, family, acceleration))
        for method in methods:
            key = (method.name, family, acceleration)
            if key not in records.per_volume:
                continue
            per_volume = records.per_volume[key]
            row: dict[str, Any] = {"method": method.name, "ref": method.ref, "kind": method.kind}
            row.update({"mask": family, "R": acceleration})
            for name in METRICS:
                row[name], row[f"{name}_ci"] = t_interval([entry[name] for entry in per_volume])
            row["per_volume"] = per_volume
            row["s_per_slice"] = statistics.median(records.seconds[key])
            row["slices"] = len(records.seconds[key])
            for name, values in records.sub_seconds.get(key, {}).items():
                row[name] = statistics.median(values)
            row["vs_bart"] = _versus(per_volume, bart) if bart is not None and method.kind != "bart" else None
            rows.append(row)
    return rows


def json_safe(value: Any) -> Any:
    """JSON has no NaN / Infinity: non-finite floats become null, recursively (dicts, lists, tuples)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def _with_interval(value: float | None, interval: list[float] | None, digits: int) -> str:
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    if interval is not None and None not in interval:
        text += f" ±{(interval[1] - interval[0]) / 2:.{digits}f}"
    return text


COLUMNS = ("method", "mask", "R", "PSNR dB", "SSIM", "NMSE", "s/slice", "ΔPSNR vs BART", "ΔSSIM vs BART")


def result_table(result: dict[str, Any]) -> Table:
    """The rows of a result as a rich table: mean ± half the 95 % interval; paired differences to BART."""
    data = result["data"]
    table = Table(title=f"kadapt bench recon: {data['dir']} ({data['slices']} test slices)")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("method", "mask") else "right")
    for row in result["rows"]:
        versus = row["vs_bart"] or {}
        table.add_row(
            row["method"],
            row["mask"],
            f"{row['R']:g}",
            _with_interval(row["psnr"], row["psnr_ci"], 2),
            _with_interval(row["ssim"], row["ssim_ci"], 3),
            _with_interval(row["nmse"], row["nmse_ci"], 4),
            f"{row['s_per_slice']:.3f}",
            _with_interval(versus.get("psnr_diff"), versus.get("psnr_diff_ci"), 2),
            _with_interval(versus.get("ssim_diff"), versus.get("ssim_diff_ci"), 3),
        )
    return table
