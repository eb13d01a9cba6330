"""Metrics, rows and tables of ``kadapt bench dynamic`` (issue 5).

Metrics follow seed 004 (sec. 2.6 "Evaluation") with fastMRI's conventions (:mod:`kadapt.metrics`): the
magnitude images and the RSS reference of a volume ``(slice, frame, H, W)`` are cropped to the centre
2/3 of H and of W (:func:`crop_two_thirds`), then

- per volume: PSNR and NMSE over the whole cropped volume with ``data_range`` = the cropped reference's
  maximum, SSIM the mean over every (slice, frame) image;
- per frame: the same three on frame ``t`` of every slice, ``data_range`` still the volume maximum, so
  frames are comparable with each other and with the volume value.

Volumes are the unit of replication: rows hold means and 95 % Student-t intervals over volumes; each ADS
row is compared with the **best baseline** at its R -- the non-adaptive learned sampler (family or
``opt`` pattern, each with its own recon bundle) of the highest mean SSIM -- per volume (paired, ADS minus
baseline: positive PSNR / SSIM differences favour ADS) with Student-t and bootstrap intervals, and with
the almost-stochastic-order ``eps_min`` seed 004 reports significance with (< 0.5: ADS tends to score
higher; :func:`kadapt.trainer.bench_stats.aso_epsilon`).
"""

from __future__ import annotations

import statistics
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.table import Table

from kadapt.errors import InvalidInputError
from kadapt.metrics import center_crop, nmse, psnr, ssim
from kadapt.trainer.bench_sampling_report import paired_bootstrap
from kadapt.trainer.bench_stats import aso_epsilon, paired_difference, t_interval

METRICS = ("psnr", "ssim", "nmse")
#: ``(row name, R)``
CellKey = tuple[str, float]


def crop_two_thirds(images: NDArray[Any]) -> NDArray[Any]:
    """The centre ``(2 H // 3, 2 W // 3)`` of ``images`` ``(..., H, W)`` (seed 004's evaluation region)."""
    height, width = images.shape[-2:]
    return center_crop(images, (2 * height // 3, 2 * width // 3))


def evaluate_cine(reference: NDArray[Any], image: NDArray[Any]) -> dict[str, Any]:
    """Metrics of one cine volume: ``reference`` and ``image`` magnitudes ``(slice, frame, H, W)``.

    Returns ``psnr``, ``ssim``, ``nmse`` (volume level, see the module docstring) and
    ``psnr_per_frame``, ``ssim_per_frame``, ``nmse_per_frame`` (lists of length T)."""
    if reference.shape != image.shape or reference.ndim != 4:
        raise InvalidInputError(
            f"reference {reference.shape} and image {image.shape} must share one (slice, frame, H, W) shape"
        )
    gt = crop_two_thirds(np.asarray(reference, dtype=np.float64))
    pred = crop_two_thirds(np.asarray(image, dtype=np.float64))
    frames = gt.shape[1]
    flat_gt = gt.reshape(-1, *gt.shape[-2:])
    flat_pred = pred.reshape(-1, *pred.shape[-2:])
    maxval = float(flat_gt.max())
    result: dict[str, Any] = {
        "psnr": psnr(flat_gt, flat_pred, maxval),
        "ssim": ssim(flat_gt, flat_pred, maxval),
        "nmse": nmse(flat_gt, flat_pred),
    }
    result["psnr_per_frame"] = [psnr(gt[:, t], pred[:, t], maxval) for t in range(frames)]
    result["ssim_per_frame"] = [ssim(gt[:, t], pred[:, t], maxval) for t in range(frames)]
    result["nmse_per_frame"] = [nmse(gt[:, t], pred[:, t]) for t in range(frames)]
    return result


@dataclass(frozen=True)
class RowInfo:
    """What identifies a row: unique ``name``; ``sampler`` (``ads``, ``opt``, a family); ``kind``
    ``ads`` / ``baseline`` (non-adaptive learned) / ``classic`` (context); the recon that ran."""

    name: str
    sampler: str
    kind: str
    pattern: str
    dim: str
    ref: str | None
    recon: str


@dataclass
class DynamicRecords:
    """Per (row, R): per-volume metrics and per-slice planning / reconstruction seconds."""

    per_volume: dict[CellKey, list[dict[str, Any]]] = field(default_factory=dict)
    plan_seconds: dict[CellKey, list[float]] = field(default_factory=dict)
    recon_seconds: dict[CellKey, list[float]] = field(default_factory=dict)
    masks: dict[CellKey, set[bytes]] = field(default_factory=dict)

    def add_slice(self, key: CellKey, mask: NDArray[np.bool_], plan_s: float, recon_s: float) -> None:
        self.plan_seconds.setdefault(key, []).append(plan_s)
        self.recon_seconds.setdefault(key, []).append(recon_s)
        self.masks.setdefault(key, set()).add(np.packbits(mask).tobytes())

    def add_volume(self, key: CellKey, volume: str, source: str, metrics: dict[str, Any]) -> None:
        self.per_volume.setdefault(key, []).append({"volume": volume, "source": source, **metrics})


def _per_frame_mean(per_volume: list[dict[str, Any]], name: str) -> list[float]:
    return [float(value) for value in np.mean([entry[f"{name}_per_frame"] for entry in per_volume], axis=0)]


def compare(
    rows: list[dict[str, Any]], baseline: list[dict[str, Any]], *, seed: int, label: str, resamples: int
) -> dict[str, Any]:
    """Paired (by volume) comparison of per-volume entries ``rows`` against ``baseline``: for each metric
    the mean difference (row - baseline), its Student-t interval, for PSNR and SSIM a bootstrap interval,
    and ASO ``eps_min`` of "row scores higher SSIM" (seeded by ``seed`` and ``label``)."""
    base = {entry["volume"]: entry for entry in baseline}
    paired = [entry for entry in rows if entry["volume"] in base]
    out: dict[str, Any] = {"volumes": len(paired)}
    rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
    for name in METRICS:
        values = [entry[name] for entry in paired]
        reference = [base[entry["volume"]][name] for entry in paired]
        out[f"{name}_diff"], out[f"{name}_diff_ci"] = paired_difference(values, reference)
        if name != "nmse":
            out[f"{name}_diff_bootstrap_ci"] = paired_bootstrap(values, reference, resamples, rng)
    out["ssim_aso_eps_min"] = aso_epsilon(
        [entry["ssim"] for entry in paired], [base[entry["volume"]]["ssim"] for entry in paired], rng,
        resamples=resamples,
    )  # fmt: skip
    return out


def summarise_dynamic(
    records: DynamicRecords,
    infos: list[RowInfo],
    accelerations: tuple[float, ...],
    *,
    seed: int,
    resamples: int = 1000,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(rows, best_baseline)``: one row per (R, row info) that ran, in that order, and per R the best
    baseline ``{"R": {"name", "ssim", "psnr"}}`` (module docstring)."""
    rows: list[dict[str, Any]] = []
    best_baseline: dict[str, Any] = {}
    for acceleration in accelerations:
        ran = [info for info in infos if (info.name, acceleration) in records.per_volume]
        means = {
            info.name: {
                name: float(np.mean([e[name] for e in records.per_volume[(info.name, acceleration)]]))
                for name in METRICS
            }
            for info in ran
        }
        baselines = [info for info in ran if info.kind == "baseline"]
        best = max(baselines, key=lambda info: means[info.name]["ssim"]) if baselines else None
        if best is not None:
            best_baseline[f"{acceleration:g}"] = {"name": best.name, **means[best.name]}
        for info in ran:
            key = (info.name, acceleration)
            per_volume = records.per_volume[key]
            row: dict[str, Any] = {
                "name": info.name, "sampler": info.sampler, "kind": info.kind, "pattern": info.pattern,
                "dim": info.dim, "R": acceleration, "ref": info.ref, "recon": info.recon,
            }  # fmt: skip
            for name in METRICS:
                row[name], row[f"{name}_ci"] = t_interval([entry[name] for entry in per_volume])
                row[f"{name}_per_frame"] = _per_frame_mean(per_volume, name)
            plan, recon = records.plan_seconds[key], records.recon_seconds[key]
            row["plan_s_per_slice"] = statistics.median(plan)
            row["recon_s_per_slice"] = statistics.median(recon)
            row["s_per_slice"] = statistics.median([a + b for a, b in zip(plan, recon, strict=True)])
            row["slices"] = len(plan)
            row["volumes"] = len(per_volume)
            row["distinct_masks"] = len(records.masks[key])
            row["vs_best_baseline"] = None
            row["vs_baselines"] = {}
            if info.kind == "ads":
                for other in baselines:
                    label = f"{info.name}|{other.name}|{acceleration:g}"
                    versus = compare(
                        per_volume, records.per_volume[(other.name, acceleration)], seed=seed, label=label,
                        resamples=resamples,
                    )  # fmt: skip
                    row["vs_baselines"][other.name] = versus
                    if best is not None and other.name == best.name:
                        row["vs_best_baseline"] = {"baseline": best.name, **versus}
            row["per_volume"] = per_volume
            rows.append(row)
    return rows, best_baseline


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
    "sampler", "pattern", "dim", "R", "recon", "SSIM", "PSNR dB", "NMSE", "ΔSSIM vs best baseline",
    "ASO ε", "plan s/slice", "recon s/slice",
)  # fmt: skip


def _cells(row: dict[str, Any]) -> list[str]:
    versus = row["vs_best_baseline"] or {}
    eps = versus.get("ssim_aso_eps_min")
    name, sampler = row["name"], row["sampler"]
    named = name == sampler or name.endswith((f"({sampler})", f"[{sampler}]"))
    label = name if named else f"{name} ({sampler})"
    return [
        label,
        row["pattern"],
        row["dim"],
        f"{row['R']:g}",
        row["recon"],
        _with_interval(row["ssim"], row["ssim_ci"], 4),
        _with_interval(row["psnr"], row["psnr_ci"], 2),
        _with_interval(row["nmse"], row["nmse_ci"], 4),
        (
            f"{_with_interval(versus.get('ssim_diff'), versus.get('ssim_diff_ci'), 4, signed=True)} "
            f"({versus['baseline']})"
            if versus
            else "-"
        ),
        "-" if eps is None else f"{eps:.2f}",
        f"{row['plan_s_per_slice']:.3f}",
        f"{row['recon_s_per_slice']:.3f}",
    ]


def dynamic_table(result: dict[str, Any]) -> Table:
    """The rows of a result as a rich table (means ± half the 95 % interval)."""
    data = result["data"]
    table = Table(title=f"kadapt bench dynamic: {data['dir']} ({data['slices']} test slices)")
    for column in COLUMNS:
        table.add_column(
            column, justify="left" if column in ("sampler", "pattern", "dim", "recon") else "right"
        )
    for row in result["rows"]:
        table.add_row(*_cells(row))
    return table


def markdown_table(result: dict[str, Any]) -> str:
    """The rows of a result as a GitHub markdown table for docs/benchmarks.md (same cells as the terminal
    table), with a line naming the data, crop and statistics under it."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in _cells(row)) + " |" for row in result["rows"]
    ]
    data = result["data"]
    lines.append("")
    lines.append(
        f"{len(data['volumes'])} test volumes, {data['slices']} slices x "
        f"{data['geometry']['frames']} frames; "
        "centre crop 2/3 per axis; mean ± half the 95 % t-interval over volumes; Δ paired by volume; "
        "ASO ε < 0.5: the ADS row tends to the higher SSIM."
    )
    return "\n".join(lines) + "\n"
