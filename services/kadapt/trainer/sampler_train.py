"""``kadapt train sampler``: MNet from label masks, LOUPE, and the energy-density population mask as bundles.

:func:`train_sampler` is the entry point. Per method:

- ``mnet``: labels from the cache (or generated there, :mod:`kadapt.trainer.sampler_labels`), then
  :class:`~kadapt.trainer.sampler_loop.MNetLearner` (seed 001 eq. 2-3 within seed 000 Alg. 2's
  alternation), validation of the served plans, best checkpoint, export with
  :func:`kadapt.nn.mnet_bundle.export_mnet_bundle` (kind ``mnet``, ONNX parity in the manifest);
- ``loupe``: :class:`~kadapt.trainer.sampler_loop.LoupeLearner`, exported as a ``fixed-mask`` bundle of
  the learned line scores;
- ``energy-density``: :func:`kadapt.trainer.population.energy_profile` over the train split, no learning.

One bundle serves every R of ``--R``: the sampler's ``mnet`` graph maps the ACS block to one score per
line and plans the top-k at each R's budget, so one network trained over the R list answers all of them
under one policy name (docs/trainer.md, "kadapt train sampler"). The runs directory holds ``last.pt``
(everything ``--resume`` needs), ``best.pt`` (the best epoch by mean validation SSIM of the served plans;
with ``--recon unet`` it includes the co-trained U-Net) and ``tensorboard/``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import JsonValue
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from kadapt.bundles import Bundle
from kadapt.data.build import code_version
from kadapt.data.manifest import load_manifest
from kadapt.errors import InvalidInputError, InvalidStateError
from kadapt.masks import make_mask
from kadapt.nn.mnet import MNet, MNetGeometry
from kadapt.nn.mnet_bundle import export_mnet_bundle
from kadapt.trainer.data import PreparedSlice, SliceDataset, check_budgets, default_num_acs
from kadapt.trainer.loop import load_checkpoint
from kadapt.trainer.population import (
    LoupeLines,
    energy_density_scores,
    energy_profile,
    served_fixed_plan,
    served_lines,
    write_fixed_mask_bundle,
)
from kadapt.trainer.sampler_config import SamplerTrainConfig, load_recon
from kadapt.trainer.sampler_labels import TrainingLabels, labels_for_run
from kadapt.trainer.sampler_loop import (
    BASELINE_FAMILY,
    LoupeLearner,
    MNetLearner,
    PlanFunction,
    SamplerLearner,
    selection_score,
    validate_plans,
)

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
Metrics = dict[str, dict[str, float]]


@dataclass(frozen=True)
class SamplerTrainResult:
    """What a run did: the bundle, the epochs run by this invocation (``first_epoch`` ..
    ``epochs_completed``; ``energy-density``: 1 .. 0), optimiser steps in total, the best epoch, its
    score (mean validation SSIM of the served plans over R) and metrics, and wall seconds."""

    bundle: Bundle
    method: str
    first_epoch: int
    epochs_completed: int
    global_step: int
    best_epoch: int
    best_score: float
    validation: Metrics
    seconds: float


@dataclass
class _RunState:
    """The counters a checkpoint carries (besides the models and the batch generator)."""

    epoch: int = 0
    step: int = 0
    warmed: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    best_metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True)
class _Run:
    """One run's fixed context: config, data, recon summary, TensorBoard writer and progress bar."""

    config: SamplerTrainConfig
    train_set: SliceDataset
    val_set: SliceDataset
    recon_summary: dict[str, JsonValue]
    writer: SummaryWriter
    progress: Progress
    console: Console

    def summary(self) -> dict[str, JsonValue]:
        """The training-data part of the manifest's ``training``."""
        return {
            "method": self.config.method,
            "data": self.config.data.resolve().name,
            "dataset_seed": self.train_set.manifest.seed,
            "train_slices": len(self.train_set),
            "val_slices": len(self.val_set),
            "geometry": list(self.train_set.geometry),
            "accelerations": list(self.config.accelerations),
            "num_acs": self.train_set.num_acs,
            "seed": self.config.seed,
            "quick": self.config.quick,
            "recon": self.recon_summary,
        }

    def log(self, metrics: Metrics, epoch: int) -> None:
        for key, entry in metrics.items():
            for name, value in entry.items():
                self.writer.add_scalar(f"val/{key}/{name}", value, epoch)
        self.writer.add_scalar("val/mean_ssim", selection_score(metrics, self.config.accelerations), epoch)


def train_sampler(
    config: SamplerTrainConfig, *, show_progress: bool = True, console: Console | None = None
) -> SamplerTrainResult:
    """Train (or compute) ``config.method`` on the train split, validate on val, write the bundle.

    Raises :class:`InvalidStateError` if the bundle version exists, if ``config.runs`` holds a checkpoint
    and ``resume`` is off, or if ``resume`` is on and there is none (``mnet`` and ``loupe``; the
    ``energy-density`` computation has no state and simply runs again).
    """
    started = time.perf_counter()
    console = console or Console(stderr=True)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if config.out.exists():
        raise InvalidStateError(f"bundle {config.out} exists already; versions are immutable")
    learned = config.method != "energy-density"
    last_path = config.runs / LAST_CHECKPOINT
    if learned and last_path.exists() and not config.resume:
        raise InvalidStateError(f"{last_path} exists: pass --resume to continue it, or another --runs")
    if learned and config.resume and not last_path.is_file():
        raise InvalidStateError(f"no checkpoint at {last_path} to resume from")
    records = load_manifest(config.data).volumes_in("train")
    if not records:
        raise InvalidInputError(f"dataset {config.data} has no train volume")
    num_acs = int(config.num_acs or default_num_acs(records[0].width))
    check_budgets(records[0].width, config.accelerations, num_acs)
    train_set = SliceDataset(config.data, "train", num_acs)
    val_set = SliceDataset(config.data, "val", num_acs, config.val_slices)
    if val_set.geometry != train_set.geometry:
        raise InvalidInputError(f"val geometry {val_set.geometry} differs from train {train_set.geometry}")
    recon, recon_summary = load_recon(config, train_set.geometry, num_acs)
    config.runs.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(config.runs / "tensorboard"))
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"), console=console, disable=not show_progress,
    )  # fmt: skip
    try:
        with progress:
            run = _Run(config, train_set, val_set, recon_summary, writer, progress, console)
            if not learned:
                bundle, metrics = _energy_density(run, recon)
                score = selection_score(metrics, config.accelerations)
                return SamplerTrainResult(
                    bundle, config.method, 1, 0, 0, 0, score, metrics, time.perf_counter() - started
                )
            bundle, first_epoch, state = _learn(run, recon)
    finally:
        writer.close()
    return SamplerTrainResult(
        bundle, config.method, first_epoch, state.epoch, state.step, state.best_epoch, state.best_score,
        state.best_metrics, time.perf_counter() - started,
    )  # fmt: skip


def _fixed_plans(scores: NDArray[np.float32], num_acs: int) -> PlanFunction:
    def plan(items: Sequence[PreparedSlice], acceleration: float) -> NDArray[np.bool_]:
        mask = served_fixed_plan(scores, num_acs, acceleration)
        return np.broadcast_to(mask, (len(items), mask.shape[0])).copy()

    return plan


def _energy_density(run: _Run, recon: nn.Module) -> tuple[Bundle, Metrics]:
    config, num_acs = run.config, run.train_set.num_acs
    task = run.progress.add_task("energy density", total=2, status="profile")
    profile = energy_profile(run.train_set.slices)
    for ky, share in enumerate(profile):
        run.writer.add_scalar("energy/profile", float(share), ky)  # x axis: the ky line
    scores = energy_density_scores(profile, np.random.default_rng(config.seed))
    run.progress.update(task, advance=1, status="validation")
    plan = _fixed_plans(scores, num_acs)
    metrics = validate_plans(plan, recon, run.val_set, config.accelerations, baseline_seed=config.seed)
    run.log(metrics, 0)
    run.progress.update(
        task, advance=1, status=f"val SSIM {selection_score(metrics, config.accelerations):.4f}"
    )
    training: dict[str, JsonValue] = {
        "description": "energy-density population mask (seed 000 section 3.1): mean normalised k-space "
        "energy per ky line over the training split, lines ordered by one weighted draw without "
        f"replacement (seed {config.seed}); top-k at any R is a draw from that density",
        **run.summary(),
        "profile": [float(share) for share in profile],
        "served_lines": served_lines(scores, num_acs, config.accelerations),
    }
    bundle = write_fixed_mask_bundle(
        scores, config.repository, name=config.bundle_name, version=config.bundle_version,
        accelerations=config.accelerations, num_acs=num_acs, training=training,
        validation={key: dict(entry) for key, entry in metrics.items()}, code_version=code_version(),
    )  # fmt: skip
    return bundle, metrics


def _learner(config: SamplerTrainConfig, train_set: SliceDataset, recon: nn.Module) -> SamplerLearner:
    coils, height, width = train_set.geometry
    if config.method == "mnet":
        geometry = MNetGeometry(width=width, height=height, coils=coils, num_acs=train_set.num_acs)
        with torch.random.fork_rng(devices=[]):  # initialisation from a local seed, no global seeding
            torch.manual_seed(config.seed + 1)
            try:
                mnet = MNet(geometry, **config.model_params)
            except TypeError as error:
                raise InvalidInputError(
                    f"MNet: bad hyper-parameters {config.model_params}: {error}"
                ) from error
        return MNetLearner(
            mnet, recon, co_trained=config.co_trained, sampler_lr=config.sampler_lr, recon_lr=config.recon_lr,
            recon_weight=config.recon_weight, sampler_updates=config.sampler_updates,
        )  # fmt: skip
    generator = torch.Generator().manual_seed(config.seed + 1)
    loupe = LoupeLines(width, float(config.loupe.get("slope", 5.0)), generator)
    return LoupeLearner(
        loupe, recon, num_acs=train_set.num_acs, co_trained=config.co_trained, sampler_lr=config.sampler_lr,
        recon_lr=config.recon_lr, binariser=str(config.loupe.get("binariser", "bernoulli")),
        threshold_slope=float(config.loupe.get("threshold_slope", 10.0)), generator=generator,
    )  # fmt: skip


def _restore(config: SamplerTrainConfig, learner: SamplerLearner, rng: np.random.Generator) -> _RunState:
    path = config.runs / LAST_CHECKPOINT
    checkpoint = load_checkpoint(path)
    if checkpoint["method"] != config.method or bool(checkpoint["co_trained"]) != config.co_trained:
        raise InvalidInputError(
            f"{path} holds a {checkpoint['method']!r} run (co-trained recon {checkpoint['co_trained']}), "
            f"not {config.method!r} (co-trained recon {config.co_trained})"
        )
    learner.load_state(checkpoint["learner"])
    rng.bit_generator.state = checkpoint["rng"]
    return _RunState(
        epoch=int(checkpoint["epoch"]), step=int(checkpoint["step"]), warmed=int(checkpoint["warmed"]),
        best_score=float(checkpoint["best_score"]), best_epoch=int(checkpoint["best_epoch"]),
        best_metrics=checkpoint["best_metrics"],
    )  # fmt: skip


def _draw(rng: np.random.Generator, count: int, size: int) -> NDArray[np.intp]:
    return np.asarray(rng.choice(count, size=size, replace=count < size), dtype=np.intp)


def _warm_up(
    run: _Run, learner: SamplerLearner, state: _RunState, rng: np.random.Generator, task: TaskID
) -> None:
    """Seed 000 Alg. 2's U_0: the co-trained recon first learns variable-density random masks."""
    config, width = run.config, run.train_set.geometry[2]
    while state.warmed < (config.warmup_steps if config.co_trained else 0):
        picks = _draw(rng, len(run.train_set), config.batch_size)
        acceleration = config.accelerations[int(rng.integers(len(config.accelerations)))]
        masks = make_mask(
            BASELINE_FAMILY, width=width, acceleration=acceleration, num_acs=run.train_set.num_acs, rng=rng,
            batch=config.batch_size,
        )  # fmt: skip
        items = [run.train_set.slices[int(i)] for i in picks]
        loss = learner.warm_up(items, np.asarray(masks, dtype=np.bool_).reshape(-1, width))
        state.warmed += 1
        run.writer.add_scalar("warmup/recon_loss", loss, state.warmed)
        run.progress.update(task, advance=1, status=f"warm-up recon {loss:.4f}")


def _train_epoch(
    run: _Run, learner: SamplerLearner, pools: dict[float, TrainingLabels], state: _RunState,
    rng: np.random.Generator, task: TaskID,
) -> None:  # fmt: skip
    config = run.config
    for _ in range(config.steps_per_epoch):
        acceleration = config.accelerations[int(rng.integers(len(config.accelerations)))]
        labels: Tensor | None = None
        if config.method == "mnet":
            pool = pools[acceleration]
            indices, labels = pool.batch(_draw(rng, len(pool.indices), config.batch_size))
        else:
            indices = [int(i) for i in _draw(rng, len(run.train_set), config.batch_size)]
        terms = learner.train_step([run.train_set.slices[i] for i in indices], acceleration, labels)
        if not all(math.isfinite(value) for name, value in terms.items() if name != "recon_loss"):
            raise InvalidStateError(f"training diverged at step {state.step} (R={acceleration:g}): {terms}")
        state.step += 1
        for name, value in terms.items():
            if math.isfinite(value):  # recon_loss is NaN with a frozen recon
                run.writer.add_scalar(f"train/{name}", value, state.step)
        shown = " ".join(f"{name} {value:.4f}" for name, value in terms.items() if math.isfinite(value))
        run.progress.update(task, advance=1, status=f"epoch {state.epoch} {shown}")


def _learn(run: _Run, recon: nn.Module) -> tuple[Bundle, int, _RunState]:
    config = run.config
    last_path, best_path = config.runs / LAST_CHECKPOINT, config.runs / BEST_CHECKPOINT
    pools = labels_for_run(config, run.train_set, run.console) if config.method == "mnet" else {}
    learner = _learner(config, run.train_set, recon)
    rng = np.random.default_rng(config.seed)
    state = _restore(config, learner, rng) if config.resume else _RunState()
    first_epoch = state.epoch + 1
    warmup = config.warmup_steps if config.co_trained else 0
    total = max(0, warmup - state.warmed) + max(0, config.epochs - state.epoch) * config.steps_per_epoch
    task = run.progress.add_task(f"train {config.method}", total=total, status="")
    _warm_up(run, learner, state, rng, task)
    for epoch in range(first_epoch, config.epochs + 1):
        state.epoch = epoch
        _train_epoch(run, learner, pools, state, rng, task)
        metrics = validate_plans(
            learner.plan, learner.recon, run.val_set, config.accelerations, baseline_seed=config.seed
        )
        score = selection_score(metrics, config.accelerations)
        run.log(metrics, epoch)
        if score > state.best_score:
            state.best_score, state.best_epoch, state.best_metrics = score, epoch, metrics
            torch.save({"learner": learner.state(), "epoch": epoch, "metrics": metrics}, best_path)
        torch.save(
            {
                "method": config.method, "co_trained": config.co_trained, "learner": learner.state(),
                "epoch": epoch, "step": state.step, "warmed": state.warmed, "best_score": state.best_score,
                "best_epoch": state.best_epoch, "best_metrics": state.best_metrics,
                "rng": rng.bit_generator.state,
            },
            last_path,
        )  # fmt: skip
        run.progress.update(task, status=f"epoch {epoch} val SSIM {score:.4f} (best {state.best_score:.4f})")
    learner.load_state(load_checkpoint(best_path)["learner"])
    training: dict[str, JsonValue] = {
        **run.summary(),
        "steps": state.step, "epochs": state.epoch, "best_epoch": state.best_epoch,
        "batch_size": config.batch_size, "warmup_steps": state.warmed, "sampler_lr": config.sampler_lr,
        "recon_lr": config.recon_lr, "selection": "mean SSIM of the served plans over R (val split)",
    }  # fmt: skip
    validation: dict[str, JsonValue] = {key: dict(entry) for key, entry in state.best_metrics.items()}
    if isinstance(learner, MNetLearner):
        return _export_mnet(config, learner.mnet, training, pools, validation), first_epoch, state
    if isinstance(learner, LoupeLearner):
        bundle = _export_loupe(config, learner.loupe, training, validation, learner.num_acs)
        return bundle, first_epoch, state
    raise InvalidInputError(f"no exporter for {type(learner).__name__}")


def _recon_name(training: dict[str, JsonValue]) -> str:
    recon = training.get("recon")
    return str(recon.get("name")) if isinstance(recon, dict) else "?"


def _export_mnet(
    config: SamplerTrainConfig, mnet: MNet, training: dict[str, JsonValue],
    pools: dict[float, TrainingLabels], validation: dict[str, JsonValue],
) -> Bundle:  # fmt: skip
    quick = ", --quick run" if config.quick else ""
    training.update(
        description=f"MNet (ACS block, {mnet.coil_handling} coils) trained on {config.labels} labels with "
        f"recon {_recon_name(training)} (seed 001 eq. 2-3, lambda {config.recon_weight:g}){quick}",
        label_method=config.labels,
        labels={f"R{r:g}": pool.summary for r, pool in pools.items()},
        recon_weight=config.recon_weight,
        sampler_updates=config.sampler_updates,
        model={key: list(v) if isinstance(v, tuple) else v for key, v in config.model_params.items()},
    )
    if config.fallback is not None:
        training["fallback"] = config.fallback
    return export_mnet_bundle(
        mnet.cpu().eval(), config.repository, name=config.bundle_name, version=config.bundle_version,
        accelerations=config.accelerations, training=training, code_version=code_version(),
        validation=validation, generator=torch.Generator().manual_seed(config.seed),
    )  # fmt: skip


def _export_loupe(
    config: SamplerTrainConfig, loupe: LoupeLines, training: dict[str, JsonValue],
    validation: dict[str, JsonValue], num_acs: int,
) -> Bundle:  # fmt: skip
    scores = loupe.scores()
    quick = ", --quick run" if config.quick else ""
    training.update(
        description=f"LOUPE line pattern (seed 000 section 1.4) co-learned with recon "
        f"{_recon_name(training)}: top-k of the learned line logits at any R{quick}",
        loupe=dict(config.loupe),
        served_lines=served_lines(scores, num_acs, config.accelerations),
    )
    return write_fixed_mask_bundle(
        scores, config.repository, name=config.bundle_name, version=config.bundle_version,
        accelerations=config.accelerations, num_acs=num_acs, training=training, validation=validation,
        code_version=code_version(),
    )  # fmt: skip
