"""Replay many files under many (policy, reconstruction, R) settings and write the report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from kadapt.errors import InvalidInputError
from kadapt.metrics import evaluate_volume
from kadapt.replay.figures import save_volume_figure
from kadapt.replay.report import VolumeResult, write_report
from kadapt.replay.scanner import replay_scan
from kadapt.replay.sources import ReplayScan, load_scan
from kadapt.schemas import ScanPolicy


def default_num_acs(width: int, acceleration: float) -> int:
    """fastMRI's centre fractions (0.08 of W at 4x, 0.04 at 8x), i.e. ``0.32 W / R`` lines, at least 4."""
    return max(4, round(width * 0.32 / acceleration))


@dataclass(frozen=True)
class ReplaySettings:
    policies: Sequence[str]
    recons: Sequence[str]
    accelerations: Sequence[float]
    num_acs: int | None = None
    deadline_ms: float = 200.0
    fallback: str | None = None  # None: vd-random for single-frame scans, kt-equispaced for cine
    tr_ms: float = 0.0
    shot_lines: int = 32
    seed: int = 0
    figures: bool = True


def default_fallback(frames: int) -> str:
    """The fixed policy served when the sampler is late: ``vd-random``, or for cine scans (``frames`` > 1)
    ``kt-equispaced``, which interleaves the lines of consecutive frames as the ADS policy's own fallback
    does (a 1d family would repeat the same lines in every frame)."""
    return "kt-equispaced" if frames > 1 else "vd-random"


def score(scan: ReplayScan, images: np.ndarray) -> dict[str, float]:
    """Volume-level fastMRI metrics of the returned magnitude images against the fully sampled RSS."""
    reference = scan.reference
    if images.shape != reference.shape:
        raise InvalidInputError(
            f"{scan.name}: images {images.shape} do not match the reference {reference.shape}"
        )
    height, width = reference.shape[-2:]
    return evaluate_volume(reference.reshape(-1, height, width), images.reshape(-1, height, width))


async def replay_files(
    client: httpx.AsyncClient,
    paths: Sequence[Path],
    settings: ReplaySettings,
    out_dir: Path,
    progress: Callable[[str], None] | None = None,
) -> list[VolumeResult]:
    """Replay every file under every setting through the gateway behind ``client``; write
    ``out_dir/report.json``, ``out_dir/volumes.json`` and one PNG per replayed volume."""
    results: list[VolumeResult] = []
    for path in paths:
        scan = load_scan(path)
        width = scan.info.width
        for R in settings.accelerations:
            num_acs = settings.num_acs or default_num_acs(width, R)
            for policy_name in settings.policies:
                for recon in settings.recons:
                    policy = ScanPolicy(
                        sampler=policy_name,
                        acceleration=float(R),
                        num_acs=num_acs,
                        plan_deadline_ms=settings.deadline_ms,
                        fallback=settings.fallback or default_fallback(scan.info.frames),
                        recon=recon,
                        outputs=("npy",),
                        seed=settings.seed,
                    )
                    outcome = await replay_scan(
                        client, scan, policy, shot_lines=settings.shot_lines, tr_ms=settings.tr_ms
                    )
                    metrics = score(scan, outcome.images)
                    result = VolumeResult(
                        volume=scan.name,
                        policy=policy_name,
                        recon=recon,
                        R=float(R),
                        num_acs=num_acs,
                        lines=int(outcome.mask.reshape(-1, width)[0].sum()),
                        width=width,
                        metrics=metrics,
                        plan_ms=outcome.plan_ms,
                        plan_rtt_ms=outcome.plan_rtt_ms,
                        degraded=outcome.plan.degraded,
                        degraded_reason=outcome.plan.reason,
                        served_by=outcome.plan.served_by,
                        recon_method_used=outcome.final.recon_method_used,
                        scan_seconds=outcome.scan_seconds,
                        recon_seconds=outcome.recon_seconds,
                        rounds=[asdict(entry) for entry in outcome.rounds],
                    )
                    results.append(result)
                    if settings.figures:
                        middle = scan.reference.shape[0] // 2
                        save_volume_figure(
                            out_dir / "figures" / f"{Path(scan.name).stem}_{policy_name}_{recon}_R{R:g}.png",
                            mask=outcome.mask.reshape(-1, width)[0],
                            reconstruction=outcome.images[middle, 0],
                            reference=scan.reference[middle, 0],
                            title=f"{scan.name}  {policy_name} / {recon}  R={R:g}  "
                            f"PSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.3f}",
                        )
                    if progress is not None:
                        progress(f"{scan.name} {policy_name}/{recon} R={R:g}: PSNR {metrics['psnr']:.2f}")
                        for entry in outcome.rounds if len(outcome.rounds) > 1 else ():
                            progress(
                                f"  round {entry.round}: {min(entry.lines_per_frame)}-"
                                f"{max(entry.lines_per_frame)} lines/frame, {entry.elapsed_ms:.1f} ms, "
                                f"{'deadline met' if entry.deadline_met else 'DEADLINE MISSED'}"
                                f"{', degraded: ' + (entry.reason or '') if entry.degraded else ''}"
                            )
    write_report(out_dir, results)
    return results
