"""Rows of ``kadapt bench tasks``: per (evaluation, policy, R) the per-volume values, means with Student-t
intervals over volumes and paired differences to ``centre-only`` and ``equispaced`` on the same volumes
(:mod:`kadapt.trainer.bench_stats`); the issue's "done when" comparisons; the terminal table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from kadapt.trainer.bench_stats import CONFIDENCE, paired_difference, t_interval
from kadapt.trainer.bench_tasks_eval import TaskRecords

__all__ = ["BASELINES", "done_when", "summarise_tasks", "tasks_table"]

BASELINES = ("centre-only", "equispaced")
#: Metrics per evaluation family (``recon/...`` share one list).
METRICS = {"segmentation": ("dice",), "classification": ("f1", "accuracy"), "recon": ("ssim", "psnr", "nmse")}
METRICS["dps"] = METRICS["recon"]


def metrics_of(evaluation: str) -> tuple[str, ...]:
    return METRICS[evaluation.split("/")[0]]


def _paired(
    row: list[dict[str, Any]], base: list[dict[str, Any]], metric: str
) -> tuple[list[float], list[float]]:
    baseline = {entry["volume"]: entry[metric] for entry in base}
    pairs = [(entry[metric], baseline[entry["volume"]]) for entry in row if entry["volume"] in baseline]
    return [a for a, _ in pairs], [b for _, b in pairs]


def summarise_tasks(records: TaskRecords, roles: dict[str, str]) -> list[dict[str, Any]]:
    """One row per recorded (evaluation, policy, R), in record order; ``roles`` maps a policy name to its
    role (``igs-segmentation``, ``diffusion-lines``, ``baseline``, ...)."""
    rows = []
    for (evaluation, policy, acceleration), per_volume in records.per_volume.items():
        metrics: dict[str, Any] = {}
        paired: dict[str, Any] = {}
        for metric in metrics_of(evaluation):
            mean, interval = t_interval([entry[metric] for entry in per_volume])
            metrics[metric] = {"mean": mean, "interval": interval}
            for baseline in BASELINES:
                base = records.per_volume.get((evaluation, baseline, acceleration))
                if base is None or baseline == policy:
                    continue
                values, reference = _paired(per_volume, base, metric)
                difference, diff_interval = paired_difference(values, reference)
                paired.setdefault(baseline, {})[metric] = {
                    "mean_difference": difference,
                    "interval": diff_interval,
                    "volumes": len(values),
                }
        rows.append(
            {
                "evaluation": evaluation,
                "policy": policy,
                "role": roles.get(policy, "baseline"),
                "R": acceleration,
                "lines": records.lines[(evaluation, policy, acceleration)],
                "n_volumes": len(per_volume),
                "metrics": metrics,
                "paired": paired,
                "per_volume": per_volume,
                "confidence": CONFIDENCE,
            }
        )
    return rows


def _comparison(
    rows: list[dict[str, Any]], evaluation: str, role: str, metric: str, baseline: str
) -> list[dict[str, Any]]:
    found = []
    for row in rows:
        if row["evaluation"] == evaluation and row["role"] == role and baseline in row["paired"]:
            paired = row["paired"][baseline][metric]
            found.append(
                {
                    "policy": row["policy"],
                    "R": row["R"],
                    "evaluation": evaluation,
                    "metric": metric,
                    "vs": baseline,
                    "mean": row["metrics"][metric]["mean"],
                    "mean_difference": paired["mean_difference"],
                    "interval": paired["interval"],
                    "higher": paired["mean_difference"] > 0,
                }
            )
    return found


def done_when(rows: list[dict[str, Any]], recon_evaluation: str = "recon/zero-filled") -> dict[str, Any]:
    """The issue's criteria as found in ``rows``: IGS segmentation Dice vs centre and equispaced (the
    issue asks at R = 16), IGS reconstruction SSIM vs centre (``recon_evaluation``), diffusion lines and
    points SSIM under DPS vs equispaced (R >= 8). Every R is listed; empty where the policy is absent."""
    return {
        "igs_segmentation_dice": [
            *_comparison(rows, "segmentation", "igs-segmentation", "dice", "centre-only"),
            *_comparison(rows, "segmentation", "igs-segmentation", "dice", "equispaced"),
        ],
        "igs_reconstruction_ssim_vs_centre": _comparison(
            rows, recon_evaluation, "igs-reconstruction", "ssim", "centre-only"
        ),
        "diffusion_dps_ssim_vs_equispaced": [
            *_comparison(rows, "dps", "diffusion-lines", "ssim", "equispaced"),
            *_comparison(rows, "dps", "diffusion-points", "ssim", "equispaced"),
        ],
    }


def _cell(metric: dict[str, Any]) -> str:
    mean, interval = metric["mean"], metric["interval"]
    if mean is None:
        return "-"
    half = "" if interval is None or interval[0] is None else f" ±{(interval[1] - interval[0]) / 2:.3f}"
    return f"{mean:.3f}{half}"


def tasks_table(result: dict[str, Any], evaluations: Sequence[str] | None = None) -> Table:
    """Mean ± half-interval per row and the paired difference to each baseline, first metric only."""
    table = Table(title="kadapt bench tasks (test split, per-volume means)")
    for column in ("evaluation", "policy", "R", "metric", "mean", "- centre", "- equispaced"):
        table.add_column(column)
    for row in result["rows"]:
        if evaluations is not None and row["evaluation"] not in evaluations:
            continue
        metric = metrics_of(row["evaluation"])[0]
        diffs = []
        for baseline in BASELINES:
            paired = row["paired"].get(baseline, {}).get(metric)
            if paired is None or paired["mean_difference"] is None:
                diffs.append("-")
                continue
            interval = paired["interval"]
            span = "" if interval is None else f" [{interval[0]:+.3f}, {interval[1]:+.3f}]"
            diffs.append(f"{paired['mean_difference']:+.3f}{span}")
        table.add_row(
            row["evaluation"], row["policy"], f"{row['R']:g}", metric, _cell(row["metrics"][metric]), *diffs
        )
    return table
