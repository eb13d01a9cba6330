"""Rows of ``kadapt bench sampling``: means over test volumes, paired differences to the best fixed mask,
the oracle share, a per-source breakdown and the terminal table.

Volumes are the unit of replication (fastMRI's volume-level metrics). For each R the **best fixed**
policy is the non-adaptive one (mask families, ``fixed-mask`` bundles, the greedy population mask) with
the highest mean PSNR; every policy's per-volume PSNR and SSIM are differenced against it on the same
volumes (paired: between-volume variation cancels) with a Student-t interval
(:func:`kadapt.trainer.bench_stats.paired_difference`) and a seeded paired bootstrap interval (volumes
resampled with replacement, percentile interval of the mean difference). ``oracle_share`` is
``(policy - best fixed) / (oracle - best fixed)`` on mean PSNR: the part of the per-object oracle's gain a
policy realises (None when the oracle gains nothing over the best fixed mask).
"""

from __future__ import annotations

import statistics
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.table import Table

from kadapt.trainer.bench_report import METRICS
from kadapt.trainer.bench_samplers import SamplingPolicy
from kadapt.trainer.bench_stats import CONFIDENCE, paired_difference, t_interval

#: ``(policy name, R)``
CellKey = tuple[str, float]


@dataclass
class SamplingRecords:
    """Per (policy, R): per-volume metrics (with the volume's source), the distinct masks seen, the
    reconstruction's wall seconds per slice and the lines of every mask."""

    per_volume: dict[CellKey, list[dict[str, Any]]] = field(default_factory=dict)
    masks: dict[CellKey, set[bytes]] = field(default_factory=dict)
    seconds: dict[CellKey, list[float]] = field(default_factory=dict)
    lines: dict[CellKey, list[int]] = field(default_factory=dict)

    def add_slice(self, key: CellKey, mask: np.ndarray[Any, Any], seconds: float) -> None:
        self.masks.setdefault(key, set()).add(np.packbits(mask).tobytes())
        self.seconds.setdefault(key, []).append(seconds)
        self.lines.setdefault(key, []).append(int(mask.sum()))

    def add_volume(self, key: CellKey, volume: str, source: str, metrics: dict[str, float]) -> None:
        entry = {"volume": volume, "source": source, **{name: metrics[name] for name in METRICS}}
        self.per_volume.setdefault(key, []).append(entry)


def paired_bootstrap(
    values: list[float], baseline: list[float], resamples: int, rng: np.random.Generator
) -> list[float] | None:
    """Percentile interval (level :data:`CONFIDENCE`) of the mean of ``values - baseline`` over
    ``resamples`` resamplings of the pairs with replacement; None for fewer than two pairs."""
    differences = np.asarray(values, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    if differences.size < 2 or resamples < 1:
        return None
    picks = rng.integers(0, differences.size, size=(resamples, differences.size))
    means = differences[picks].mean(axis=1)
    tail = (1.0 - CONFIDENCE) / 2.0 * 100.0
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100.0 - tail))]


def _paired(
    row: list[dict[str, Any]], base: list[dict[str, Any]], name: str
) -> tuple[list[float], list[float]]:
    baseline = {entry["volume"]: entry[name] for entry in base}
    pairs = [(entry[name], baseline[entry["volume"]]) for entry in row if entry["volume"] in baseline]
    return [a for a, _ in pairs], [b for _, b in pairs]


def summarise_sampling(
    records: SamplingRecords,
    policies: list[SamplingPolicy],
    accelerations: tuple[float, ...],
    *,
    resamples: int,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """``(rows, best_fixed, per_source)``: one row per (R, policy) that ran, in that order (see the
    module docstring); ``best_fixed`` ``{"R": {"policy", "psnr", "ssim"}}``; ``per_source`` one entry per
    (policy, R, source) with its volumes' mean PSNR / SSIM."""
    rows: list[dict[str, Any]] = []
    best_fixed: dict[str, Any] = {}
    per_source: list[dict[str, Any]] = []
    for acceleration in accelerations:
        ran = [policy for policy in policies if (policy.name, acceleration) in records.per_volume]
        means = {
            policy.name: {
                name: float(
                    np.mean([entry[name] for entry in records.per_volume[(policy.name, acceleration)]])
                )
                for name in METRICS
            }
            for policy in ran
        }
        fixed = [policy for policy in ran if not policy.adaptive]
        best = max(fixed, key=lambda policy: means[policy.name]["psnr"]) if fixed else None
        oracle = next((policy for policy in ran if policy.kind == "oracle"), None)
        if best is not None:
            best_fixed[f"{acceleration:g}"] = {
                "policy": best.name,
                **{m: means[best.name][m] for m in ("psnr", "ssim")},
            }
        gain = None
        if best is not None and oracle is not None:
            gain = means[oracle.name]["psnr"] - means[best.name]["psnr"]
        for policy in ran:
            key = (policy.name, acceleration)
            per_volume = records.per_volume[key]
            row: dict[str, Any] = {"policy": policy.name, "ref": policy.ref, "kind": policy.kind}
            row.update({"adaptive": policy.adaptive, "R": acceleration})
            for name in METRICS:
                row[name], row[f"{name}_ci"] = t_interval([entry[name] for entry in per_volume])
            row.update(_versus(records, key, best, acceleration, resamples, seed))
            row["oracle_share"] = (
                (means[policy.name]["psnr"] - means[best.name]["psnr"]) / gain
                if gain is not None and gain > 0 and best is not None
                else None
            )
            row["distinct_masks"] = len(records.masks[key])
            row["slices"] = len(records.seconds[key])
            row["lines"] = statistics.mean(records.lines[key])
            row["recon_s_per_slice"] = statistics.median(records.seconds[key])
            row["per_volume"] = per_volume
            rows.append(row)
            for source in sorted({entry["source"] for entry in per_volume}):
                entries = [entry for entry in per_volume if entry["source"] == source]
                per_source.append({
                    "policy": policy.name, "R": acceleration, "source": source, "volumes": len(entries),
                    "psnr": float(np.mean([entry["psnr"] for entry in entries])),
                    "ssim": float(np.mean([entry["ssim"] for entry in entries])),
                })  # fmt: skip
    return rows, best_fixed, per_source


def _versus(
    records: SamplingRecords,
    key: CellKey,
    best: SamplingPolicy | None,
    acceleration: float,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Paired differences of the cell ``key`` to the best fixed policy at ``acceleration``."""
    empty = {"delta_psnr_vs_best_fixed": None, "ci95": None, "bootstrap_ci95": None,
             "delta_ssim_vs_best_fixed": None, "ssim_ci95": None}  # fmt: skip
    if best is None:
        return empty
    base = records.per_volume[(best.name, acceleration)]
    row = records.per_volume[key]
    psnr, psnr_base = _paired(row, base, "psnr")
    ssim, ssim_base = _paired(row, base, "ssim")
    delta, interval = paired_difference(psnr, psnr_base)
    delta_ssim, ssim_interval = paired_difference(ssim, ssim_base)
    rng = np.random.default_rng([seed, zlib.crc32(key[0].encode()), round(acceleration * 1000)])
    return {
        "delta_psnr_vs_best_fixed": delta,
        "ci95": interval,
        "bootstrap_ci95": paired_bootstrap(psnr, psnr_base, resamples, rng),
        "delta_ssim_vs_best_fixed": delta_ssim,
        "ssim_ci95": ssim_interval,
    }


def _with_interval(
    value: float | None, interval: list[float] | None, digits: int, signed: bool = False
) -> str:
    if value is None:
        return "-"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    if interval is not None and None not in interval:
        text += f" ±{(interval[1] - interval[0]) / 2:.{digits}f}"
    return text


COLUMNS = (
    "policy",
    "kind",
    "R",
    "PSNR dB",
    "SSIM",
    "NMSE",
    "ΔPSNR vs best fixed",
    "ΔSSIM",
    "oracle share",
    "masks",
)


def sampling_table(result: dict[str, Any]) -> Table:
    """The rows of a result as a rich table: means ± half the 95 % interval, paired deltas."""
    table = Table(title=f"kadapt bench sampling: {result['data']['dir']} with {result['settings']['recon']}")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("policy", "kind") else "right")
    for row in result["rows"]:
        share = row["oracle_share"]
        table.add_row(
            row["policy"],
            row["kind"],
            f"{row['R']:g}",
            _with_interval(row["psnr"], row["psnr_ci"], 2),
            _with_interval(row["ssim"], row["ssim_ci"], 3),
            f"{row['nmse']:.4f}" if row["nmse"] is not None else "-",
            _with_interval(row["delta_psnr_vs_best_fixed"], row["ci95"], 2, signed=True),
            _with_interval(row["delta_ssim_vs_best_fixed"], row["ssim_ci95"], 3, signed=True),
            "-" if share is None else f"{share:.2f}",
            str(row["distinct_masks"]),
        )
    return table
