"""Train, validate, checkpoint, resume — and at the end export the best checkpoint as a bundle.

``train_recon(config)`` is the one entry point (the CLI's ``kadapt train recon`` calls it). The runs
directory (``config.runs``) holds ``last.pt`` (model, optimiser, epoch, step, best metric, mask-generator
state: what ``--resume`` continues from), ``best.pt`` (the weights with the best mean validation SSIM,
or PSNR with ``select: psnr``) and ``tensorboard/`` (SummaryWriter scalars).

Under torchrun (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel, every rank draws its
own batches and masks, and rank 0 alone validates and writes; see :mod:`kadapt.trainer.distributed`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from kadapt.bundles import Bundle
from kadapt.data.manifest import load_manifest
from kadapt.errors import InvalidInputError, InvalidStateError
from kadapt.metrics import evaluate_volume
from kadapt.nn.losses import DualDomainLoss, complex_magnitude
from kadapt.nn.smp import SensitivityRefinedRecon
from kadapt.trainer.bundle import write_recon_bundle
from kadapt.trainer.config import (
    TrainConfig,
    build_loss,
    build_model,
    learning_rate,
)
from kadapt.trainer.data import (
    Batch,
    MaskSampler,
    SliceDataset,
    check_budgets,
    default_num_acs,
    draw_batch,
    make_batch,
    validation_masks,
)
from kadapt.trainer.distributed import (
    DistributedContext,
    barrier,
    broadcast_from_main,
    context_from_environment,
    gather_objects,
    rank_generator,
    restore_rank_generator,
    start_distributed,
    stop_distributed,
    torch_threads,
    wrap_model,
)
from kadapt.trainer.policy_masks import prepare_policies, same_policies
from kadapt.trainer.warm_start import warm_start

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
VALIDATION_METRICS = ("psnr", "ssim", "nmse")


@dataclass(frozen=True)
class TrainResult:
    """What a run did: the written bundle, the epochs run by *this* invocation (``first_epoch`` ..
    ``epochs_completed``, 1-based; ``first_epoch > epochs_completed`` when a resume had nothing left),
    optimiser steps in total, the best epoch and its validation metrics, wall seconds, and the torchrun
    rank that returned it (every rank returns rank 0's bundle and metrics)."""

    bundle: Bundle
    first_epoch: int
    epochs_completed: int
    global_step: int
    best_epoch: int
    best_score: float
    validation: dict[str, dict[str, float]]
    seconds: float
    rank: int = 0


def validation_key(family: str, acceleration: float) -> str:
    """``"<family>/R<R>"``, e.g. ``"vd-random/R4"``: the key of one (mask, R) in the metrics."""
    return f"{family}/R{acceleration:g}"


def validate(
    model: nn.Module, dataset: SliceDataset, masks: dict[tuple[str, float], np.ndarray], device: torch.device
) -> dict[str, dict[str, float]]:
    """Volume-level fastMRI metrics per (mask, R), averaged over the validation volumes.

    Every slice of a volume is reconstructed with the fixed mask ``(W,)``, or its own row of a per-slice
    mask ``(slices, W)`` (a sampler policy's plans, indexed like ``dataset.slices``); prediction and target
    magnitudes ``(slices, H, W)`` are multiplied back by each slice's ACS scale before
    :func:`kadapt.metrics.evaluate_volume`, so the metrics are on the data's own scale.
    """
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, float]] = {}
    width = dataset.geometry[2]
    try:
        for (family, acceleration), mask in masks.items():
            per_volume: list[dict[str, float]] = []
            for indices in dataset.volumes.values():
                items = [dataset.slices[i] for i in indices]
                rows = mask[indices] if mask.ndim == 2 else np.broadcast_to(mask, (len(items), width))
                batch = make_batch(items, rows).to(device)
                with torch.no_grad():
                    image = model(batch.masked_kspace, batch.mask, batch.sens)
                scales = torch.tensor([item.scale for item in items], device=device).view(-1, 1, 1)
                prediction = (complex_magnitude(image) * scales).cpu().numpy()
                target = (complex_magnitude(batch.target) * scales).cpu().numpy()
                per_volume.append(evaluate_volume(target, prediction))
            results[validation_key(family, acceleration)] = {
                name: float(np.mean([metrics[name] for metrics in per_volume])) for name in VALIDATION_METRICS
            }
    finally:
        model.train(was_training)
    return results


def mean_metric(metrics: dict[str, dict[str, float]], name: str = "ssim") -> float:
    """The model-selection criterion: the mean of ``name`` (``config.select``: SSIM by default, or PSNR)
    over every (mask, R)."""
    return float(np.mean([entry[name] for entry in metrics.values()]))


class TrainingForward(nn.Module):
    """The forward pass of one training step, and the module DDP wraps (DDP syncs gradients only through
    its wrapped ``forward``, so the deep-supervision path must be that forward).

    ``(masked_kspace (B, C, H, W, 2), mask (B, 1, 1, W, 1), sens (B, C, H, W, 2)) -> (images, maps)``:
    ``images`` the supervised outputs, each ``(B, H, W, 2)`` (vSHARP: every ADMM step, seed 004 eq. 5;
    the others: the final image), ``maps (B, C, H, W, 2)`` the coil maps the reconstruction used — the
    SMP-refined ones with ``--smp`` — which the k-space term projects with (seed 004 fig. 2: ``y_hat``
    comes from the SMP's maps).
    """

    def __init__(self, model: nn.Module, deep_supervision: bool) -> None:
        super().__init__()
        self.model = model
        self.deep_supervision = deep_supervision

    def forward(
        self, masked_kspace: torch.Tensor, mask: torch.Tensor, sens: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        recon: nn.Module = self.model
        maps = sens
        if isinstance(self.model, SensitivityRefinedRecon):
            recon = self.model.recon
            maps = self.model.smp(sens)
        if self.deep_supervision:
            images: list[torch.Tensor] = recon.unroll_outputs(masked_kspace, mask, maps)  # type: ignore[operator]
        else:
            images = [recon(masked_kspace, mask, maps)]
        return images, maps


def training_loss(
    step_module: nn.Module, loss: DualDomainLoss, batch: Batch
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The dual-domain loss of one batch through ``step_module`` (a :class:`TrainingForward`, maybe in
    DDP). Several outputs get seed 004 eq. 5's weights ``10^((j - T) / (T - 1))``
    (:func:`kadapt.nn.losses.unrolled_step_weights`, what ``VSharp2D.step_weights`` returns)."""
    images, maps = step_module(batch.masked_kspace, batch.mask, batch.sens)
    terms = loss.terms(images, batch.target, kspace=batch.masked_kspace, sens=maps, mask=batch.mask)
    return terms["total"], terms


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A trainer checkpoint (tensors on the CPU, ``weights_only``); InvalidStateError when missing."""
    if not path.is_file():
        raise InvalidStateError(f"no checkpoint at {path} to resume from")
    checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=not enabled,
    )


def train_recon(
    config: TrainConfig,
    *,
    show_progress: bool = True,
    console: Console | None = None,
    context: DistributedContext | None = None,
) -> TrainResult:
    """Train ``config.model`` on the train split, validate each epoch, export the best as a bundle.

    ``context`` defaults to what torchrun put in the environment (:func:`context_from_environment`): with
    several ranks the process group is joined here (and destroyed at the end if this call created it),
    and every rank returns the same :class:`TrainResult` (rank 0 wrote the bundle).

    Raises :class:`InvalidStateError` if the bundle version exists already, if ``config.runs`` holds a
    checkpoint and ``resume`` is off, or if ``resume`` is on and there is none.
    """
    started = time.perf_counter()
    console = console or Console(stderr=True)
    context = context or context_from_environment()
    torch.set_num_threads(torch_threads(context))
    if config.out.exists():
        raise InvalidStateError(f"bundle {config.out} exists already; versions are immutable")
    last_path = config.runs / LAST_CHECKPOINT
    if last_path.exists() and not config.resume:
        raise InvalidStateError(f"{last_path} exists: pass --resume to continue it, or another --runs")
    # Every rank passes the checks above before the group forms, so rank 0's writes cannot trip them.
    device, owns_group = start_distributed(context, config.device)
    try:
        result = _train(config, context, device, console, show_progress and context.is_main, started)
    except BaseException:
        stop_distributed(owns_group, failed=True)
        raise
    barrier(context, device)  # no rank tears the group down while another still talks to it
    stop_distributed(owns_group)
    return result


def _train(
    config: TrainConfig,
    context: DistributedContext,
    device: torch.device,
    console: Console,
    show_progress: bool,
    started: float,
) -> TrainResult:
    last_path, best_path = config.runs / LAST_CHECKPOINT, config.runs / BEST_CHECKPOINT
    manifest = load_manifest(config.data)
    train_records = manifest.volumes_in("train")
    if not train_records:
        raise InvalidInputError(f"dataset {config.data} has no train volume")
    num_acs = config.num_acs or default_num_acs(train_records[0].width)
    check_budgets(train_records[0].width, config.accelerations, num_acs)
    train_set = SliceDataset(config.data, "train", num_acs)
    val_set = SliceDataset(config.data, "val", num_acs, config.val_slices)
    if val_set.geometry != train_set.geometry:
        raise InvalidInputError(f"val geometry {val_set.geometry} differs from train {train_set.geometry}")
    coils, height, width = train_set.geometry
    policies = prepare_policies(
        config.policies, train_set, val_set, config.accelerations, augment=config.augment
    )

    # Parameter initialisation draws from torch's default generator: fork it so the seed stays local.
    # The same seed on every rank gives identical parameters (DDP broadcasts rank 0's anyway).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model, config.model_params, config.smp_params if config.smp else None)
        model = model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss = build_loss(config.loss_preset, config.loss_weights)
    rng = rank_generator(config.seed, context.rank)
    augment_rng = np.random.default_rng([config.seed, context.rank, 1])  # flips; not checkpointed
    epoch, step, best_score, best_epoch = 0, 0, -math.inf, 0
    best_metrics: dict[str, dict[str, float]] = {}
    init_record = warm_start(model, config.init_from, load=not config.resume) if config.init_from else None
    if config.resume:
        checkpoint = load_checkpoint(last_path)
        if checkpoint["model_kind"] != config.model:
            raise InvalidInputError(
                f"{last_path} holds a {checkpoint['model_kind']!r} model, not {config.model!r}"
            )
        if bool(checkpoint.get("smp", False)) != config.smp:
            raise InvalidInputError(
                f"{last_path} was trained with smp={bool(checkpoint.get('smp', False))}, not smp={config.smp}"
            )
        if not same_policies(checkpoint.get("policies"), policies.records):
            raise InvalidInputError(
                f"{last_path} was trained on other --policy bundles than {config.policies}"
            )
        model.load_state_dict(checkpoint["model"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        epoch, step = int(checkpoint["epoch"]), int(checkpoint["step"])
        # Runs written before ``select`` existed saved their (SSIM) score as "best_ssim".
        best_score = float(checkpoint.get("best_score", checkpoint.get("best_ssim", -math.inf)))
        best_epoch = int(checkpoint["best_epoch"])
        best_metrics = checkpoint["best_metrics"]
        states = checkpoint.get("mask_rngs") or [checkpoint["mask_rng"]]
        rng = restore_rank_generator(states, config.seed, context, step)
    step_module = wrap_model(TrainingForward(model, config.model == "vsharp"), context, device)
    sampler = MaskSampler(config.masks, config.accelerations, width, num_acs, rng, policies.train)
    fixed_masks = validation_masks(config.masks, config.accelerations, width, num_acs, config.seed)
    fixed_masks.update(policies.validation)
    writer: SummaryWriter | None = None
    if context.is_main:
        config.runs.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(log_dir=str(config.runs / "tensorboard"))
    first_epoch = epoch + 1
    try:
        with _progress(console, show_progress) as progress:
            total = max(0, config.epochs - epoch) * config.steps_per_epoch
            task = progress.add_task(f"train {config.model}", total=total, status="")
            for epoch in range(first_epoch, config.epochs + 1):  # epoch outlives the loop
                model.train()
                for _ in range(config.steps_per_epoch):
                    family, acceleration, items, masks = draw_batch(
                        train_set, sampler, config.batch_size, rng, augment_rng if config.augment else None
                    )
                    batch = make_batch(items, masks).to(device)
                    total_loss, terms = training_loss(step_module, loss, batch)
                    if not torch.isfinite(total_loss):
                        raise InvalidStateError(
                            f"loss became {float(total_loss)} at step {step} ({family}, R={acceleration}, "
                            f"rank {context.rank})"
                        )
                    optimiser.zero_grad(set_to_none=True)
                    total_loss.backward()  # type: ignore[no-untyped-call]
                    for group in optimiser.param_groups:
                        group["lr"] = learning_rate(config, step)
                    optimiser.step()
                    step += 1
                    if writer is not None:  # rank 0's own batch terms
                        for name, term in terms.items():
                            writer.add_scalar(f"train/{name}", float(term.detach()), step)
                    progress.update(
                        task, advance=1, status=f"epoch {epoch} loss {float(total_loss.detach()):.4f}"
                    )
                rng_states = gather_objects(rng.bit_generator.state, context)
                if writer is not None:
                    metrics = validate(model, val_set, fixed_masks, device)
                    score = mean_metric(metrics, config.select)
                    for key, entry in metrics.items():
                        for name, value in entry.items():
                            writer.add_scalar(f"val/{key}/{name}", value, epoch)
                    writer.add_scalar("val/mean_ssim", mean_metric(metrics, "ssim"), epoch)
                    writer.add_scalar("val/mean_psnr", mean_metric(metrics, "psnr"), epoch)
                    if score > best_score:
                        best_score, best_epoch, best_metrics = score, epoch, metrics
                        torch.save(
                            {"model": model.state_dict(), "epoch": epoch, "metrics": metrics}, best_path
                        )
                    torch.save(
                        {
                            "model_kind": config.model,
                            "smp": config.smp,
                            "model": model.state_dict(),
                            "optimiser": optimiser.state_dict(),
                            "epoch": epoch,
                            "step": step,
                            "best_score": best_score,
                            "best_epoch": best_epoch,
                            "best_metrics": best_metrics,
                            "mask_rng": rng_states[0],
                            "mask_rngs": rng_states,
                            "policies": policies.records,
                        },
                        last_path,
                    )
                    progress.update(
                        task, status=f"epoch {epoch} val {config.select} {score:.4f} (best {best_score:.4f})"
                    )
                barrier(context, device)  # the other ranks wait for rank 0's validation and checkpoints
    finally:
        if writer is not None:
            writer.close()
    summary: tuple[Bundle, int, float, dict[str, dict[str, float]]] | None = None
    if context.is_main:
        best = load_checkpoint(best_path)
        model.load_state_dict(best["model"])
        example_item = val_set.slices[0]
        first_mask = next(iter(fixed_masks.values()))  # (W,) or a policy's (val slices, W)
        example = make_batch([example_item], first_mask.reshape(-1, width)[:1])
        training = {
            "data": config.data.resolve().name,
            "dataset_seed": manifest.seed,
            "train_slices": len(train_set),
            "val_slices": len(val_set),
            "masks": list(config.masks),
            "policies": policies.records,
            "accelerations": list(config.accelerations),
            "num_acs": num_acs,
            "steps": step,
            "epochs": epoch,
            "best_epoch": best_epoch,
            "selected_by": f"mean val {config.select}",
            "batch_size": config.batch_size,
            "world_size": context.world_size,
            "lr": config.lr,
            "lr_schedule": config.lr_schedule,
            "augment": config.augment,
            "seed": config.seed,
            "quick": config.quick,
            "loss": {"preset": config.loss_preset, **{k: float(v) for k, v in loss.weights.items()}},
            "model": config.model_params,
            "smp": config.smp,
            "smp_model": config.smp_params if config.smp else None,
            "initialised_from": init_record,
        }
        bundle = write_recon_bundle(
            model.cpu(),
            config,
            geometry=(coils, height, width),
            num_acs=num_acs,
            example=example,
            training=training,
            validation=best_metrics,
        )
        summary = (bundle, best_epoch, best_score, best_metrics)
    # The other ranks wait here while rank 0 exports, then report what it wrote.
    bundle, best_epoch, best_score, best_metrics = broadcast_from_main(summary, context)
    return TrainResult(
        bundle=bundle,
        first_epoch=first_epoch,
        epochs_completed=epoch,
        global_step=step,
        best_epoch=best_epoch,
        best_score=best_score,
        validation=best_metrics,
        seconds=time.perf_counter() - started,
        rank=context.rank,
    )
