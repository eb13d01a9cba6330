"""``kadapt train recon | ads | sampler | labels``: offline training commands that write model bundles."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kadapt.cli.common import console, extra_accelerations, fail, progress_bar
from kadapt.errors import KadaptError

if TYPE_CHECKING:
    from rich.progress import TaskID

train_app = typer.Typer(no_args_is_help=True, help="Offline training: writes model bundles.")


@train_app.command("recon", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train_recon_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="unet | modl | vsharp")],
    data: Annotated[Path, typer.Option(help="dataset directory (kadapt data build)")],
    out: Annotated[Path, typer.Option(help="bundle to write: REPOSITORY/NAME/VERSION")],
    accelerations: Annotated[list[float], typer.Option("--R", help="accelerations, e.g. --R 4 8")],
    masks: Annotated[
        str | None,
        typer.Option(
            help="comma-separated 1D mask families (default vd-random,equispaced; none with --policy)"
        ),
    ] = None,
    policy: Annotated[
        list[Path] | None,
        typer.Option(help="sampler bundle REPO/NAME/VERSION (mnet / fixed-mask) whose plans to train on"),
    ] = None,
    quick: Annotated[bool, typer.Option(help="a few steps with tiny models (tests)")] = False,
    config: Annotated[
        Path | None, typer.Option(help="YAML or TOML config (default: the model's own YAML)")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="override the config's epochs")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="override steps per epoch")] = None,
    batch_size: Annotated[int | None, typer.Option(help="override the batch size")] = None,
    lr: Annotated[float | None, typer.Option(help="override the learning rate")] = None,
    num_acs: Annotated[int | None, typer.Option(help="ACS lines (default W // 16)")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    runs: Annotated[
        Path | None, typer.Option(help="checkpoints + TensorBoard (default runs/NAME/VERSION)")
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from RUNS/last.pt")] = False,
    init: Annotated[
        Path | None, typer.Option(help="start from this checkpoint's weights (best.pt / last.pt)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of masks, batches and initialisation")] = 0,
    smp: Annotated[bool, typer.Option(help="refine the ACS maps with the SMP inside the model")] = False,
    select: Annotated[
        str | None,
        typer.Option(help="validation metric whose mean picks the exported epoch: ssim | psnr (config)"),
    ] = None,
) -> None:
    """Train a reconstruction model on the train split, validate on val, export the best as a bundle.

    --policy BUNDLE (repeatable) trains on the masks a sampler bundle serves for each slice (post-training
    on MNet masks); with --masks too, every batch draws its source among families and policies.

    Several processes / GPUs: torchrun --standalone --nproc_per_node N -m kadapt.cli.main train recon ...
    """
    from kadapt.trainer.config import make_config
    from kadapt.trainer.loop import train_recon

    extra = extra_accelerations(ctx)
    if masks is None:
        masks = "" if policy else "vd-random,equispaced"
    try:
        settings = make_config(
            model,
            data,
            tuple(accelerations) + tuple(extra),
            tuple(name.strip() for name in masks.split(",") if name.strip()),
            out,
            runs=runs,
            quick=quick,
            config_file=config,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            batch_size=batch_size,
            lr=lr,
            num_acs=num_acs,
            device=device,
            resume=resume,
            init_from=init,
            seed=seed,
            smp=smp,
            policies=tuple(policy) if policy else None,
            select=select,
        )
        result = train_recon(settings, console=console)
    except KadaptError as error:
        raise fail(error) from error
    if result.rank != 0:  # under torchrun rank 0 reports
        return
    console.print(
        f"wrote {result.bundle.path} (epochs {result.first_epoch}..{result.epochs_completed}, best epoch "
        f"{result.best_epoch}, mean val {settings.select} {result.best_score:.4f}) in {result.seconds:.1f} s"
    )


@train_app.command("ads", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train_ads_command(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help="cine dataset directory (kadapt data build --frames T)")],
    sampler: Annotated[str, typer.Option(help="ads | opt | comma-separated 1D / kt mask families")],
    out: Annotated[Path, typer.Option(help="recon bundle REPOSITORY/NAME/VERSION (ads: + NAME-sampler)")],
    accelerations: Annotated[
        list[float] | None, typer.Option("--R", help="accelerations (default 4 6 8)")
    ] = None,
    pattern: Annotated[str, typer.Option(help="frame-specific | unified (ads, opt)")] = "frame-specific",
    dim: Annotated[str, typer.Option(help="1d (line masks)")] = "1d",
    cascades: Annotated[int, typer.Option(help="ADS cascades (plan rounds)")] = 2,
    init: Annotated[str, typer.Option(help="initial mask of the ADS cascade: acs")] = "acs",
    init_from: Annotated[
        Path | None, typer.Option(help="start the recon from this checkpoint (another run's best.pt)")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="optimiser steps in total (config: training.steps)")
    ] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="steps between validations")] = None,
    batch_size: Annotated[int | None, typer.Option(help="override the batch size")] = None,
    lr: Annotated[float | None, typer.Option(help="override the learning rate")] = None,
    num_acs: Annotated[int | None, typer.Option(help="ACS lines (default: the dataset's)")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML or TOML config (default configs/ads.yaml)")
    ] = None,
    quick: Annotated[bool, typer.Option(help="a few steps with tiny models (tests)")] = False,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    runs: Annotated[
        Path | None, typer.Option(help="checkpoints + TensorBoard (default runs/NAME/VERSION)")
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from RUNS/last.pt")] = False,
    seed: Annotated[int, typer.Option(help="seed of batches, masks and initialisation")] = 0,
) -> None:
    """Train vSHARP 2D+t + SMP on cine data with the ADS cascade (end to end), a learned non-adaptive
    pattern (opt) or mask families; validate at every R, export the best as bundles (seed 004)."""
    from kadapt.trainer.ads_config import make_ads_config
    from kadapt.trainer.ads_loop import train_ads

    given = tuple(accelerations or ()) + tuple(extra_accelerations(ctx))
    try:
        settings = make_ads_config(
            data, sampler, out, accelerations=given or (4.0, 6.0, 8.0), pattern=pattern, dim=dim,
            cascades=cascades, init=init, init_from=init_from, steps=steps, steps_per_epoch=steps_per_epoch,
            batch_size=batch_size, lr=lr, num_acs=num_acs, runs=runs, resume=resume, config_file=config,
            quick=quick, device=device, seed=seed,
        )  # fmt: skip
        result = train_ads(settings, console=console)
    except KadaptError as error:
        raise fail(error) from error
    wrote = f"{result.bundle.path}" + (f" and {result.sampler_bundle.path}" if result.sampler_bundle else "")
    console.print(
        f"wrote {wrote} (steps {result.global_step}, best epoch {result.best_epoch}, mean val SSIM "
        f"{result.best_score:.4f}, {result.seconds_per_step:.2f} s/step) in {result.seconds:.1f} s"
    )


@train_app.command("sampler", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train_sampler_command(
    ctx: typer.Context,
    method: Annotated[str, typer.Option(help="mnet | loupe | energy-density")],
    data: Annotated[Path, typer.Option(help="dataset directory (kadapt data build)")],
    out: Annotated[Path, typer.Option(help="bundle to write: REPOSITORY/NAME/VERSION (serves every --R)")],
    accelerations: Annotated[list[float], typer.Option("--R", help="accelerations, e.g. --R 4 8")],
    labels: Annotated[str | None, typer.Option(help="mnet: mask-backward | icd")] = None,
    label_cache: Annotated[Path | None, typer.Option(help="mnet: label cache (read, or written)")] = None,
    recon: Annotated[str, typer.Option(help="'unet' (co-trained) or a recon bundle REPO/NAME/VER")] = "unet",
    num_acs: Annotated[int | None, typer.Option(help="ACS lines (default W // 16)")] = None,
    quick: Annotated[bool, typer.Option(help="a few steps with tiny models (tests)")] = False,
    config: Annotated[Path | None, typer.Option(help="YAML or TOML config (default: the method's)")] = None,
    epochs: Annotated[int | None, typer.Option(help="override the config's epochs")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="override steps per epoch")] = None,
    batch_size: Annotated[int | None, typer.Option(help="override the batch size")] = None,
    fallback: Annotated[str | None, typer.Option(help="mnet: policy served when it cannot answer")] = None,
    runs: Annotated[
        Path | None, typer.Option(help="checkpoints + TensorBoard (default runs/NAME/VERSION)")
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from RUNS/last.pt")] = False,
    seed: Annotated[int, typer.Option(help="seed of batches, masks and initialisation")] = 0,
) -> None:
    """Train a sampler (MNet from labels, LOUPE) or compute the energy-density mask; write its bundle."""
    from kadapt.trainer.sampler_config import make_sampler_config
    from kadapt.trainer.sampler_train import train_sampler

    extra = extra_accelerations(ctx)
    try:
        settings = make_sampler_config(
            method, data, tuple(accelerations) + tuple(extra), out, labels=labels, label_cache=label_cache,
            recon=recon, runs=runs, quick=quick, config_file=config, epochs=epochs,
            steps_per_epoch=steps_per_epoch, batch_size=batch_size, num_acs=num_acs, fallback=fallback,
            resume=resume, seed=seed,
        )  # fmt: skip
        result = train_sampler(settings, console=console)
    except KadaptError as error:
        raise fail(error) from error
    console.print(
        f"wrote {result.bundle.path} ({result.method}, epochs {result.first_epoch}.."
        f"{result.epochs_completed}, best epoch {result.best_epoch}, mean val SSIM of the served plans "
        f"{result.best_score:.4f}) in {result.seconds:.1f} s"
    )


@train_app.command("labels", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train_labels_command(
    ctx: typer.Context,
    method: Annotated[str, typer.Option(help="mask-backward (seed 000 Alg. 1) | icd (seed 001, SUNO)")],
    data: Annotated[Path, typer.Option(help="dataset directory (kadapt data build)")],
    accelerations: Annotated[list[float], typer.Option("--R", help="accelerations, e.g. --R 4 8")],
    cache: Annotated[Path, typer.Option(help="label cache directory (CACHE/SPLIT/<method>-R<R>-...h5)")],
    split: Annotated[str, typer.Option(help="split whose slices get labels")] = "train",
    num_acs: Annotated[int | None, typer.Option(help="ACS lines (default W // 16)")] = None,
    quick: Annotated[bool, typer.Option(help="CI-sized: 4 slices, few steps, tiny U-Net")] = False,
    loss: Annotated[str, typer.Option(help="icd: nrmse | ssim | nmae | hfen")] = "nrmse",
    max_slices: Annotated[int | None, typer.Option(help="label at most this many slices")] = None,
    seed: Annotated[int, typer.Option(help="seed of start masks, batches and initialisation")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads (default: torch's)")] = None,
) -> None:
    """Generate (or find in the cache) one binary line mask per slice of a split, for each R."""
    import torch

    from kadapt.trainer.labels import QUICK_SLICES, label_dataset, make_labels

    extra = extra_accelerations(ctx)
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    try:
        dataset = label_dataset(data, split, num_acs, max_slices or (QUICK_SLICES if quick else None))
        for acceleration in tuple(accelerations) + tuple(extra):
            with progress_bar() as progress:
                task = progress.add_task(f"{method} labels R={acceleration:g}", total=None)

                def advance(done: int, total: int, task: TaskID = task) -> None:
                    progress.update(task, completed=done, total=total)

                run = make_labels(
                    method, dataset, split=split, acceleration=acceleration, num_acs=dataset.num_acs,
                    cache_dir=cache, seed=seed, quick=quick,
                    overrides={"loss": loss} if method == "icd" else None, progress=advance,
                )  # fmt: skip
            typer.echo(run.summary())
    except KadaptError as error:
        raise fail(error) from error
