"""Evaluations of ``kadapt bench tasks``: one line pattern per (policy, R, test slice) scored per volume.

Every evaluation takes the same checked masks (:func:`kadapt.trainer.bench_samplers.check_mask`) and
records volume-level values (the volume is the unit of replication, as in the other benches):

- ``segmentation``: the frozen segmenter of the IGS segmentation bundle on the zero-filled RSS; ``dice``
  per foreground class over all pixels of the volume (1 where a class is absent from both), mean over
  classes;
- ``classification``: the frozen classifier of the IGS classification bundle on the zero-filled RSS;
  ``f1`` of the lesion class over the volume's slices (1 when the volume has no lesion and none is
  predicted: nothing to find, nothing claimed) and ``accuracy``;
- ``recon/zero-filled`` and ``recon/<bundle>``: the zero-filled RSS or a learned recon bundle through ONNX
  Runtime (:func:`kadapt.trainer.bench_methods.bundle_method`, skipped where it refuses the geometry or R),
  fastMRI's volume metrics (:func:`kadapt.metrics.evaluate_volume`) against the fully sampled RSS;
- ``dps``: at the score network's size, DPS posterior sampling (seed 003 Alg. 1,
  :func:`kadapt.trainer.diffusion.dps_recon`) of the multi-coil measurement, magnitude against the fully
  sampled SENSE image's, on evenly spaced slices of each volume (DPS costs seconds per slice on a CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from kadapt.metrics import evaluate_volume
from kadapt.nn.score import EDMDenoiser
from kadapt.trainer.bench_methods import BenchMethod
from kadapt.trainer.bench_samplers import SamplingPolicy, SliceRequest, check_mask
from kadapt.trainer.diffusion import dps_recon
from kadapt.trainer.diffusion_data import DiffusionSlice, stack_measurement_inputs
from kadapt.trainer.diffusion_dps import DPSConfig
from kadapt.trainer.igs import zero_filled_rss

__all__ = [
    "DpsPattern",
    "Evaluation",
    "Mask2d",
    "TaskRecords",
    "TestVolume",
    "dice_volume",
    "dps_volumes",
    "evaluate_lines",
    "f1_score",
    "spaced_indices",
]

RECON_METRICS = ("ssim", "psnr", "nmse")
#: ``(policy name, R) -> mask`` for patterns that are not line policies (2D points), or None to refuse.
Mask2d = Callable[[float], NDArray[np.bool_] | None]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class TestVolume:
    """One test volume's slices: ``kspace (S, C, H, W)``, ``target (S, H, W)`` (RSS), labels or None."""

    name: str
    index: int
    kspace: NDArray[np.complex64]
    target: NDArray[np.float32]
    segmentation: NDArray[np.uint8] | None
    lesion: NDArray[np.uint8] | None


@dataclass
class TaskRecords:
    """Per ``(evaluation, policy, R)``: per-volume metric dicts and the line count of the masks."""

    per_volume: dict[tuple[str, str, float], list[dict[str, Any]]] = field(default_factory=dict)
    lines: dict[tuple[str, str, float], int] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def add(self, key: tuple[str, str, float], volume: str, metrics: dict[str, float], lines: int) -> None:
        self.per_volume.setdefault(key, []).append({"volume": volume, **metrics})
        self.lines[key] = lines


@dataclass(frozen=True)
class Evaluation:
    """A named evaluation of the zero-filled / learned family: ``score(volume, images, masked) -> metrics``
    where ``images (S, H, W)`` are the reconstructed magnitudes; ``recon`` None means zero-filled RSS."""

    name: str
    score: Callable[[TestVolume, NDArray[np.float32]], dict[str, float]]
    recon: BenchMethod | None = None


def dice_volume(predicted: NDArray[np.int64], truth: NDArray[np.integer[Any]], classes: int) -> float:
    """Mean over foreground classes ``1 .. K-1`` of the Dice of ``predicted`` vs ``truth`` (any equal
    shapes, here a volume ``(S, H, W)``); 1 for a class absent from both."""
    values = []
    for c in range(1, classes):
        a, b = predicted == c, truth == c
        size = int(a.sum()) + int(b.sum())
        values.append(1.0 if size == 0 else 2.0 * int((a & b).sum()) / size)
    return float(np.mean(values))


def f1_score(predicted: NDArray[np.int64], truth: NDArray[np.integer[Any]]) -> float:
    """F1 of class 1: ``2 TP / (2 TP + FP + FN)``, 1 when that denominator is 0 (module docstring)."""
    tp = int(np.sum((predicted == 1) & (truth == 1)))
    wrong = int(np.sum(predicted != truth))
    return 1.0 if 2 * tp + wrong == 0 else 2.0 * tp / (2 * tp + wrong)


def segmentation_scorer(
    model: nn.Module, classes: int
) -> Callable[[TestVolume, NDArray[np.float32]], dict[str, float]]:
    def score(volume: TestVolume, images: NDArray[np.float32]) -> dict[str, float]:
        if volume.segmentation is None:
            return {}
        with torch.no_grad():
            predicted = model(torch.from_numpy(images)).argmax(dim=1).numpy()
        return {"dice": dice_volume(predicted, volume.segmentation, classes)}

    return score


def classification_scorer(model: nn.Module) -> Callable[[TestVolume, NDArray[np.float32]], dict[str, float]]:
    def score(volume: TestVolume, images: NDArray[np.float32]) -> dict[str, float]:
        if volume.lesion is None:
            return {}
        with torch.no_grad():
            predicted = model(torch.from_numpy(images)).argmax(dim=1).numpy()
        truth = volume.lesion.astype(np.int64)
        return {"f1": f1_score(predicted, truth), "accuracy": float(np.mean(predicted == truth))}

    return score


def recon_scorer(volume: TestVolume, images: NDArray[np.float32]) -> dict[str, float]:
    metrics = evaluate_volume(volume.target, images)
    return {name: metrics[name] for name in RECON_METRICS}


def _zero_filled(masked: NDArray[np.complex64], mask: NDArray[np.bool_]) -> NDArray[np.float32]:
    with torch.no_grad():
        images = zero_filled_rss(torch.from_numpy(masked), torch.from_numpy(mask.astype(np.float32)))
    return images.numpy().astype(np.float32)


def evaluate_lines(
    volumes: Sequence[TestVolume],
    policies: Sequence[SamplingPolicy],
    evaluations: Sequence[Evaluation],
    accelerations: Sequence[float],
    *,
    num_acs: int,
    records: TaskRecords,
    progress: Progress,
) -> None:
    """Every policy's mask (checked) per test slice and R, reconstructed once per recon and scored by
    every evaluation that uses it; refusals (policy or recon) go to ``records.skipped`` with the reason."""
    from kadapt.bundles.onnx_recon import ScanShape
    from kadapt.masks import line_budget

    coils, height, width = volumes[0].kspace.shape[1:]
    for acceleration in accelerations:
        budget = line_budget(width, acceleration, num_acs)
        shape = ScanShape(coils, height, width, frames=1, acceleration=width / budget)
        live = []
        for evaluation in evaluations:
            reason = None if evaluation.recon is None else evaluation.recon.rejection(shape)
            if reason is None:
                live.append(evaluation)
            else:
                records.skipped.append(
                    {"evaluation": evaluation.name, "policy": None, "R": acceleration, "reason": reason}
                )
        for policy in policies:
            refusal = policy.refusal(acceleration)
            if refusal is not None:
                records.skipped.append(
                    {"evaluation": None, "policy": policy.name, "R": acceleration, "reason": refusal}
                )
                continue
            for volume in volumes:
                masks = [
                    policy.plan(SliceRequest(volume.index, s, volume.kspace[s], acceleration))
                    for s in range(volume.kspace.shape[0])
                ]
                for mask in masks:
                    check_mask(mask, width, acceleration, num_acs, policy.name)
                masked = np.stack(
                    [
                        np.where(m[None, None, :], k, 0).astype(np.complex64)
                        for k, m in zip(volume.kspace, masks, strict=True)
                    ]
                )
                zero_filled = np.stack(
                    [_zero_filled(k[None], m)[0] for k, m in zip(masked, masks, strict=True)]
                )
                for evaluation in live:
                    if evaluation.recon is None:
                        images = zero_filled
                    else:
                        method = evaluation.recon
                        images = np.stack(
                            [
                                method.reconstruct(k, m, acceleration)[0]
                                for k, m in zip(masked, masks, strict=True)
                            ]
                        )
                    metrics = evaluation.score(volume, images.astype(np.float32))
                    if metrics:
                        records.add(
                            (evaluation.name, policy.name, acceleration), volume.name, metrics, budget
                        )
                progress(f"{volume.name} R{acceleration:g} {policy.name}")


def spaced_indices(count: int, take: int | None) -> list[int]:
    """``take`` evenly spaced indices of ``range(count)``, each at the middle of its share
    (``floor((k + 0.5) count / take)``: 2 and 6 of 8, never only the edge slices); all when None or
    ``take >= count``."""
    if take is None or take >= count:
        return list(range(count))
    return sorted({int((k + 0.5) * count / take) for k in range(take)})


@dataclass(frozen=True)
class DpsPattern:
    """A pattern at the score network's size: ``plan(R, volume index, slice) -> mask`` ``(W,)`` lines or
    ``(H, W)`` points; ``refusal(R)`` says why it does not serve R (None: it does)."""

    name: str
    plan: Callable[[float, int, int], NDArray[np.bool_]]
    refusal: Callable[[float], str | None] = lambda _acceleration: None


def dps_volumes(
    denoiser: EDMDenoiser,
    slices: Sequence[DiffusionSlice],
    patterns: Sequence[DpsPattern],
    accelerations: Sequence[float],
    *,
    config: DPSConfig,
    seed: int,
    records: TaskRecords,
    progress: Progress,
) -> None:
    """DPS of each volume's ``slices`` under each pattern at each R -> ``dps`` records (SSIM, PSNR, NMSE of
    the magnitude vs the fully sampled SENSE image's magnitude; ``lines`` holds the sampled count: lines,
    or points for a point pattern). One DPS noise stream per (volume, R), the same for every pattern
    (paired)."""
    by_volume: dict[str, list[DiffusionSlice]] = {}
    for item in slices:
        by_volume.setdefault(item.volume, []).append(item)
    for acceleration in accelerations:
        for pattern in patterns:
            refusal = pattern.refusal(acceleration)
            if refusal is not None:
                records.skipped.append(
                    {"evaluation": "dps", "policy": pattern.name, "R": acceleration, "reason": refusal}
                )
                continue
            for volume_index, (volume, items) in enumerate(by_volume.items()):
                kspace, sens = stack_measurement_inputs(items)
                masks = [pattern.plan(acceleration, volume_index, item.slice_index) for item in items]
                stacked = torch.from_numpy(np.stack([np.asarray(m, dtype=np.float32) for m in masks]))
                mask = stacked[:, None, None, :, None] if stacked.ndim == 2 else stacked[:, None, :, :, None]
                generator = torch.Generator().manual_seed(
                    seed * 1_000_003 + volume_index * 1009 + round(acceleration * 100)
                )
                image = dps_recon(denoiser, kspace * mask, mask, sens, generator, config)
                magnitude = torch.linalg.vector_norm(image, dim=-1).detach().numpy()
                reference = np.abs(np.stack([item.image for item in items]))
                metrics = evaluate_volume(reference, magnitude)
                sampled = int(np.asarray(masks[0]).sum())
                records.add(
                    ("dps", pattern.name, acceleration),
                    volume,
                    {m: metrics[m] for m in RECON_METRICS},
                    sampled,
                )
                progress(f"dps {volume} R{acceleration:g} {pattern.name}")
