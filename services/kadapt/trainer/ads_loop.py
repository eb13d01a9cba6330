"""``kadapt train ads``: train, validate each epoch, checkpoint, resume, export the best (docs/trainer.md).

The runs directory (``config.runs``) holds ``last.pt`` (recon ``model`` and ``sampler`` weights, optimiser,
step, best score, the numpy and torch generator states: what ``--resume`` continues from), ``best.pt``
(the weights with the best mean validation SSIM) and ``tensorboard/``. A checkpoint's ``model`` entry is
the reconstruction (:class:`DynamicRecon`, VSharpDynamic + SMP) alone, so ``--init-from`` of any run
(family pre-training, ads, opt) starts another sampler's fine-tune from it.

Per step: a batch of slices, one R from ``--R`` and the masks of the sampler spec -- ADS cascade rounds
with stochastic straight-through binarisation, the Opt pattern likewise, or a fresh draw of one of the
families -- then seed 004 eq. 5 on every unrolled step. Validation on the val split at every R with the
served masks (ADS / Opt: top-k; families: fixed seeds), mean SSIM on the centre 2/3 crop of H and W.
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

from kadapt.bundles import Bundle
from kadapt.data.cine import load_cine_manifest
from kadapt.data.manifest import MANIFEST_NAME
from kadapt.errors import InvalidInputError, InvalidStateError
from kadapt.metrics import evaluate_volume
from kadapt.nn.ads import ADSSampler
from kadapt.nn.losses import complex_magnitude
from kadapt.trainer.ads_bundle import write_ads_bundles
from kadapt.trainer.ads_config import AdsTrainConfig
from kadapt.trainer.ads_data import (
    CineDataset,
    apply_mask,
    centre_crop,
    family_masks,
    fixed_family_masks,
    make_cine_batch,
)
from kadapt.trainer.ads_model import AdsTrainingModel, FramePattern, build_recon, training_step_loss
from kadapt.trainer.config import build_loss
from kadapt.trainer.loop import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint, mean_metric, validation_key
from kadapt.trainer.loop import _progress as progress_bar
from kadapt.trainer.warm_start import warm_start

Metrics = dict[str, dict[str, float]]
DEFAULT_NUM_ACS = 4


@dataclass(frozen=True)
class AdsTrainResult:
    """What a run did: the recon bundle, the ADS bundle (``ads`` only), steps, the best epoch and its
    validation metrics, and the measured seconds per optimiser step of this invocation."""

    bundle: Bundle
    sampler_bundle: Bundle | None
    first_epoch: int
    epochs_completed: int
    global_step: int
    best_epoch: int
    best_score: float
    validation: Metrics
    seconds_per_step: float
    seconds: float


def dataset_num_acs(root: Path) -> int:
    """``num_acs`` of a cine dataset's ``manifest.json`` (C1), 4 (seed 004's 4 %) when it gives none."""
    if not (root / MANIFEST_NAME).is_file():
        return DEFAULT_NUM_ACS
    return int(load_cine_manifest(root).num_acs)


def build_training_model(
    config: AdsTrainConfig, geometry: tuple[int, int, int, int], num_acs: int
) -> AdsTrainingModel:
    """The reconstruction and the sampler of ``config.sampler``, initialised from ``config.seed``."""
    frames, _coils, height, width = geometry
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        recon = build_recon(config.model_params, config.smp_params)
        sampler: ADSSampler | FramePattern | None = None
        if config.sampler == "ads":
            try:
                sampler = ADSSampler(
                    frames, height, width, cascades=config.cascades, pattern=config.pattern, dim=config.dim,
                    **config.sampler_params,
                )  # fmt: skip
            except TypeError as error:
                raise InvalidInputError(
                    f"bad sampler hyper-parameters {config.sampler_params}: {error}"
                ) from error
        elif config.sampler == "opt":
            sampler = FramePattern(
                frames, width, unified=config.pattern == "unified",
                generator=torch.Generator().manual_seed(config.seed), **config.opt_params,
            )  # fmt: skip
    return AdsTrainingModel(recon, sampler, num_acs)


def validate(
    model: AdsTrainingModel,
    config: AdsTrainConfig,
    dataset: CineDataset,
    fixed: dict[tuple[str, float], np.ndarray],
    device: torch.device,
) -> Metrics:
    """Mean over the val slices of the fastMRI metrics (frames as the volume's slices, data range its
    maximum) on the centre 2/3 crop, per (sampler, R); served masks (top-k, fixed family seeds).

    Slices go through in batches of ``config.batch_size``: PyTorch runs a batch-1 3D convolution of this
    size on its slow native path (mkldnn only above 20480 N*C*D*H or with N > 1), ~2.5x slower per item."""
    was_training = model.training
    model.eval()
    sources = list(config.families) if not config.learned else [config.sampler]
    frames, width = dataset.geometry[0], dataset.geometry[3]
    results: Metrics = {}
    try:
        for source in sources:
            for acceleration in config.accelerations:
                per_slice: list[dict[str, float]] = []
                for start in range(0, len(dataset), config.batch_size):
                    chunk = dataset.slices[start : start + config.batch_size]
                    batch = make_cine_batch(chunk).to(device)
                    with torch.no_grad():
                        if config.learned:
                            mask = model.learned_masks(batch, acceleration, train=False, generator=None)
                        else:
                            rows = np.broadcast_to(fixed[(source, acceleration)], (len(chunk), frames, width))
                            mask = torch.from_numpy(rows.astype(np.float32)).to(device)
                        image = model.recon(apply_mask(batch.kspace, mask), mask, batch.sens)
                    predictions = centre_crop(complex_magnitude(image).cpu().numpy())
                    targets = centre_crop(batch.target.cpu().numpy())
                    for target, prediction in zip(targets, predictions, strict=True):
                        metrics = evaluate_volume(target, prediction)
                        per_slice.append({k: metrics[k] for k in ("ssim", "psnr", "nmse")})
                results[validation_key(source, acceleration)] = {
                    name: float(np.mean([entry[name] for entry in per_slice])) for name in per_slice[0]
                }
    finally:
        model.train(was_training)
    return results


def _batch_masks(
    model: AdsTrainingModel,
    config: AdsTrainConfig,
    batch: Any,
    acceleration: float,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> torch.Tensor:
    if config.learned:
        return model.learned_masks(batch, acceleration, train=True, generator=generator)
    size, frames, _c, _h, width = batch.kspace.shape[:5]
    family = config.families[int(rng.integers(len(config.families)))]
    drawn = family_masks(family, size, frames, width, acceleration, model.num_acs, rng)
    return torch.from_numpy(drawn.astype(np.float32)).to(batch.kspace.device)


def train_ads(
    config: AdsTrainConfig, *, show_progress: bool = True, console: Console | None = None
) -> AdsTrainResult:
    """Train ``config``'s sampler spec with VSharpDynamic + SMP, validate each epoch, export the best.

    Raises :class:`InvalidStateError` when a bundle version exists already, when ``config.runs`` holds a
    checkpoint and ``resume`` is off (or none and it is on), or when the loss stops being finite.
    """
    started = time.perf_counter()
    console = console or Console(stderr=True)
    for path in (config.out, config.sampler_out if config.sampler == "ads" else None):
        if path is not None and path.exists():
            raise InvalidStateError(f"bundle {path} exists already; versions are immutable")
    last_path, best_path = config.runs / LAST_CHECKPOINT, config.runs / BEST_CHECKPOINT
    if last_path.exists() and not config.resume:
        raise InvalidStateError(f"{last_path} exists: pass --resume to continue it, or another --runs")
    device = torch.device(config.device)
    num_acs = config.num_acs or dataset_num_acs(config.data)
    train_set = CineDataset(config.data, "train", num_acs)
    val_set = CineDataset(config.data, "val", num_acs, config.val_slices)
    if val_set.geometry != train_set.geometry:
        raise InvalidInputError(f"val geometry {val_set.geometry} differs from train {train_set.geometry}")
    frames, _coils, _height, width = train_set.geometry
    model = build_training_model(config, train_set.geometry, num_acs).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss = build_loss("seed004", config.loss_weights)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    step, epoch, best_score, best_epoch = 0, 0, -math.inf, 0
    best_metrics: Metrics = {}
    init_record = (
        warm_start(model.recon, config.init_from, load=not config.resume) if config.init_from else None
    )
    if config.resume:
        checkpoint = load_checkpoint(last_path)
        if checkpoint.get("sampler_spec") != config.sampler:
            raise InvalidInputError(f"{last_path} trained --sampler {checkpoint.get('sampler_spec')!r}")
        model.recon.load_state_dict(checkpoint["model"])
        if model.sampler is not None:
            model.sampler.load_state_dict(checkpoint["sampler"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        step, epoch = int(checkpoint["step"]), int(checkpoint["epoch"])
        best_score, best_epoch = float(checkpoint["best_score"]), int(checkpoint["best_epoch"])
        best_metrics = checkpoint["best_metrics"]
        rng.bit_generator.state = checkpoint["rng"]
        generator.set_state(checkpoint["generator"])
    fixed = fixed_family_masks(config.families, config.accelerations, frames, width, num_acs, config.seed)
    config.runs.mkdir(parents=True, exist_ok=True)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(config.runs / "tensorboard"))
    first_epoch, first_step, step_seconds = epoch + 1, step, 0.0
    try:
        with progress_bar(console, show_progress) as progress:
            task = progress.add_task(f"train ads ({config.sampler})", total=config.steps - step, status="")
            for epoch in range(first_epoch, config.epochs + 1):
                model.train()
                for _ in range(min(config.steps_per_epoch, config.steps - step)):
                    tick = time.perf_counter()
                    picks = rng.choice(
                        len(train_set), size=config.batch_size, replace=len(train_set) < config.batch_size
                    )
                    acceleration = config.accelerations[int(rng.integers(len(config.accelerations)))]
                    batch = make_cine_batch([train_set.slices[int(i)] for i in picks]).to(device)
                    mask = _batch_masks(model, config, batch, acceleration, rng, generator)
                    terms = training_step_loss(model, loss, batch, mask)
                    if not torch.isfinite(terms["total"]):
                        raise InvalidStateError(
                            f"loss became {float(terms['total'])} at step {step} (R={acceleration})"
                        )
                    optimiser.zero_grad(set_to_none=True)
                    terms["total"].backward()  # type: ignore[no-untyped-call]
                    optimiser.step()
                    step += 1
                    step_seconds += time.perf_counter() - tick
                    for name, term in terms.items():
                        writer.add_scalar(f"train/{name}", float(term.detach()), step)
                    writer.add_scalar("train/lines_per_frame", float(mask.detach().sum(-1).mean()), step)
                    progress.update(
                        task, advance=1, status=f"epoch {epoch} loss {float(terms['total'].detach()):.4f}"
                    )
                metrics = validate(model, config, val_set, fixed, device)
                score = mean_metric(metrics, "ssim")
                for key, entry in metrics.items():
                    for name, value in entry.items():
                        writer.add_scalar(f"val/{key}/{name}", value, epoch)
                writer.add_scalar("val/mean_ssim", score, epoch)
                state = {"model": model.recon.state_dict(), "sampler": _sampler_state(model), "epoch": epoch}
                if score > best_score:
                    best_score, best_epoch, best_metrics = score, epoch, metrics
                    torch.save({**state, "metrics": metrics}, best_path)
                torch.save(
                    {
                        **state, "sampler_spec": config.sampler, "optimiser": optimiser.state_dict(),
                        "step": step, "best_score": best_score, "best_epoch": best_epoch,
                        "best_metrics": best_metrics, "rng": rng.bit_generator.state,
                        "generator": generator.get_state(),
                    },
                    last_path,
                )  # fmt: skip
                progress.update(task, status=f"epoch {epoch} val ssim {score:.4f} (best {best_score:.4f})")
    finally:
        writer.close()
    best = load_checkpoint(best_path)
    model.recon.load_state_dict(best["model"])
    if model.sampler is not None:
        model.sampler.load_state_dict(best["sampler"])
    done = step - first_step
    seconds_per_step = step_seconds / done if done else float("nan")
    training = {
        "data": config.data.resolve().name,
        "sampler": config.sampler,
        "families": list(config.families),
        "accelerations": list(config.accelerations),
        "num_acs": num_acs,
        "frames": frames,
        "steps": step,
        "epochs": epoch,
        "best_epoch": best_epoch,
        "selected_by": "mean val ssim (centre 2/3 crop)",
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
        "quick": config.quick,
        "seconds_per_step": seconds_per_step if done else None,
        "loss": {k: float(v) for k, v in loss.weights.items()},
        "model": config.model_params,
        "smp_model": config.smp_params,
        "initialised_from": init_record,
    }
    recon_bundle, sampler_bundle = write_ads_bundles(
        model.cpu(), config, train_set.geometry, val_set.slices[0], num_acs, training, best_metrics
    )
    return AdsTrainResult(
        bundle=recon_bundle,
        sampler_bundle=sampler_bundle,
        first_epoch=first_epoch,
        epochs_completed=epoch,
        global_step=step,
        best_epoch=best_epoch,
        best_score=best_score,
        validation=best_metrics,
        seconds_per_step=seconds_per_step,
        seconds=time.perf_counter() - started,
    )


def _sampler_state(model: AdsTrainingModel) -> dict[str, Any] | None:
    return model.sampler.state_dict() if model.sampler is not None else None
