"""Validation of IGS patterns and their ``fixed-mask`` bundle (docs/sampler.md, "IGS fixed-mask bundles").

:func:`evaluate_pattern` scores one line pattern through the frozen pipeline: the mean task loss plus the
task's metric -- reconstruction: slice-level SSIM / PSNR / NMSE (:mod:`kadapt.metrics`, each slice its own
one-slice volume: the manifest's quick summary; the task bench reports volume-level values); segmentation:
hard Dice of the arg-max classes per foreground class (1 where a class is absent from both), mean over
classes and items; classification: accuracy and F1 (class 1 positive for two classes, macro otherwise).
:func:`validate_igs` does it for the served pattern at each R and for baseline families (``centre-only``
by default: seed 002's "Center"). :func:`write_igs_bundle` writes the scores with
:func:`kadapt.trainer.population.write_fixed_mask_bundle` and the IGS fields in ``training``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import JsonValue

from kadapt.bundles import Bundle
from kadapt.bundles.sampler_masks import served_fixed_plan
from kadapt.errors import InvalidInputError
from kadapt.masks import get_family, line_budget, make_mask, mask_families
from kadapt.metrics import nmse, psnr, ssim
from kadapt.trainer.igs.pipeline import (
    TASK_OF_LOSS,
    Reconstructor,
    TaskModel,
    batches,
    check_frozen,
    run_pipeline,
    task_loss,
    zero_filled_rss,
)
from kadapt.trainer.igs.search import IgsHistory
from kadapt.trainer.population import served_lines, write_fixed_mask_bundle

__all__ = ["evaluate_pattern", "validate_igs", "write_igs_bundle"]


def _hard_dice(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    classes = logits.shape[1]
    predicted = logits.argmax(dim=1)
    values: list[float] = []
    for item in range(labels.shape[0]):
        per_class = []
        for c in range(1, classes):
            a, b = predicted[item] == c, labels[item] == c
            size = int(a.sum()) + int(b.sum())
            per_class.append(1.0 if size == 0 else 2.0 * int((a & b).sum()) / size)
        values.append(float(np.mean(per_class)))
    return values


def _f1(predicted: NDArray[np.int64], truth: NDArray[np.int64], classes: int) -> float:
    positives = [1] if classes == 2 else list(range(classes))
    scores = []
    for c in positives:
        tp = int(np.sum((predicted == c) & (truth == c)))
        fp = int(np.sum((predicted == c) & (truth != c)))
        fn = int(np.sum((predicted != c) & (truth == c)))
        scores.append(0.0 if tp == 0 else 2.0 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def evaluate_pattern(
    samples: Iterable[tuple[Any, Any, Any]],
    loss: str,
    mask: NDArray[np.bool_],
    *,
    task_model: TaskModel | None = None,
    recon: Reconstructor = zero_filled_rss,
    batch_size: int = 8,
) -> dict[str, float]:
    """``{"loss": ..., <metrics>}`` of the line pattern ``mask (W,)`` over ``samples`` (module docstring)."""
    if loss not in TASK_OF_LOSS:
        raise InvalidInputError(f"unknown IGS task loss {loss!r}; use one of {sorted(TASK_OF_LOSS)}")
    check_frozen(task_model, recon)
    task = TASK_OF_LOSS[loss]
    weights = torch.from_numpy(np.asarray(mask, dtype=np.float32))
    loss_sum, count = 0.0, 0
    per_item: dict[str, list[float]] = {}
    predicted: list[NDArray[np.int64]] = []
    truth: list[NDArray[np.int64]] = []
    classes = 0
    with torch.no_grad():
        for batch in batches(samples, batch_size):
            _image, prediction = run_pipeline(batch, weights, recon, task_model)
            loss_sum += float(task_loss(loss, prediction, batch)) * batch.size
            count += batch.size
            if task == "reconstruction":
                for reference, estimate in zip(batch.target.numpy(), prediction.numpy(), strict=True):
                    gt, est = reference[None].astype(np.float64), estimate[None].astype(np.float64)
                    per_item.setdefault("ssim", []).append(ssim(gt, est))
                    per_item.setdefault("psnr", []).append(psnr(gt, est))
                    per_item.setdefault("nmse", []).append(nmse(gt, est))
            elif task == "segmentation" and batch.label is not None:
                per_item.setdefault("dice", []).extend(_hard_dice(prediction, batch.label))
            elif batch.label is not None:
                classes = int(prediction.shape[1])
                predicted.append(prediction.argmax(dim=1).numpy().astype(np.int64))
                truth.append(batch.label.numpy().astype(np.int64))
    if count == 0:
        raise InvalidInputError("evaluating a pattern needs at least one sample")
    result = {"loss": loss_sum / count, **{name: float(np.mean(v)) for name, v in per_item.items()}}
    if predicted:
        guess, labels = np.concatenate(predicted), np.concatenate(truth)
        result["accuracy"] = float(np.mean(guess == labels))
        result["f1"] = _f1(guess, labels, classes)
    return result


def validate_igs(
    samples: Iterable[tuple[Any, Any, Any]],
    scores: NDArray[np.floating[Any]],
    loss: str,
    *,
    accelerations: Sequence[float],
    num_acs: int,
    task_model: TaskModel | None = None,
    recon: Reconstructor = zero_filled_rss,
    baselines: Sequence[str] = ("centre-only",),
    rng: np.random.Generator | None = None,
    batch_size: int = 8,
) -> dict[str, dict[str, float]]:
    """``{"R4": metrics, "centre-only/R4": metrics, ...}``: :func:`evaluate_pattern` of the served plan of
    ``scores`` at each R and of each baseline 1D family's mask (stochastic families need ``rng``)."""
    width = int(np.asarray(scores).shape[0])
    results: dict[str, dict[str, float]] = {}
    for acceleration in accelerations:
        plans = {f"R{acceleration:g}": served_fixed_plan(scores, num_acs, acceleration)}
        for family in baselines:
            if get_family(family).stochastic and rng is None:
                raise InvalidInputError(f"baseline {family!r} is random: pass rng")
            source = rng if rng is not None else np.random.default_rng(0)  # unused by deterministic families
            plans[f"{family}/R{acceleration:g}"] = make_mask(
                family, width=width, acceleration=acceleration, num_acs=num_acs, rng=source
            )
        for key, mask in plans.items():
            results[key] = evaluate_pattern(
                samples, loss, mask, task_model=task_model, recon=recon, batch_size=batch_size
            )
    return results


def write_igs_bundle(
    scores: NDArray[np.floating[Any]],
    history: IgsHistory,
    repository: Path,
    *,
    name: str,
    version: str,
    accelerations: Sequence[float],
    recon: str,
    data: Mapping[str, JsonValue],
    validation: Mapping[str, JsonValue],
    code_version: str,
    task_model: str | None = None,
) -> Bundle:
    """Write an IGS pattern as a ``fixed-mask`` bundle ``name/version``; returns it loaded and verified.

    ``training`` records ``method: igs``, the task and loss, ``recon`` (e.g. ``"zero-filled-rss"`` or a
    recon bundle ref), the ``task_model`` description, ``data`` (the caller's training-data summary),
    the accelerations, the pick order with the per-round losses and the served lines per R;
    ``validation`` is stored as given (e.g. :func:`validate_igs`'s result). :class:`InvalidInputError`
    when an R needs more lines than the run picked (its top-k would not be an IGS pattern) or ``name`` is a
    mask family's (the sampler refuses such a bundle).
    """
    if name in mask_families():
        raise InvalidInputError(f"bundle name {name!r} is a mask family's; the sampler would refuse it")
    for acceleration in accelerations:
        history.pattern(line_budget(history.width, acceleration, history.num_acs))  # R within the run
    task = TASK_OF_LOSS[history.loss]
    training: dict[str, JsonValue] = {
        "description": f"IGS pattern (seed 002 Alg. 1, eq. 9) for {task} with the {history.loss} loss "
        f"through {recon}: lines added one per round by the most negative accumulated mask gradient, "
        "starting from the ACS block; top-k at any R is the IGS pattern of that budget",
        "method": "igs",
        "task": task,
        "loss": history.loss,
        "recon": recon,
        "task_model": task_model,
        "data": dict(data),
        "accelerations": [float(r) for r in accelerations],
        "num_acs": history.num_acs,
        **history.summary(),
        "served_lines": served_lines(scores, history.num_acs, accelerations),
    }
    return write_fixed_mask_bundle(
        scores,
        repository,
        name=name,
        version=version,
        accelerations=accelerations,
        num_acs=history.num_acs,
        training=training,
        validation=dict(validation),
        code_version=code_version,
    )
