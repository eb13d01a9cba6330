"""``kadapt learn-pattern igs | diffusion``: population line patterns (seed 002 IGS, seed 003 diffusion prior)
written as ``fixed-mask`` bundles the sampler serves as policies and as a scan's fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kadapt.cli.common import console, extra_accelerations, fail
from kadapt.errors import KadaptError

learn_app = typer.Typer(no_args_is_help=True, help="Learn population sampling patterns (fixed-mask bundles).")


@learn_app.command("igs", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def learn_igs_command(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help="task dataset (kadapt data build --task ...)")],
    task: Annotated[str, typer.Option(help="segmentation | classification | reconstruction")],
    loss: Annotated[str, typer.Option(help="dice | cross-entropy | l1 | ssim (must fit --task)")],
    accelerations: Annotated[list[float], typer.Option("--R", help="accelerations, e.g. --R 4 8 16")],
    out: Annotated[Path, typer.Option(help="bundle to write: REPOSITORY/NAME/VERSION (serves every --R)")],
    num_acs: Annotated[
        int | None, typer.Option(help="ACS lines, counted in R (default max(1, W // 32))")
    ] = None,
    recon: Annotated[
        str, typer.Option(help="reconstruction in the loop: zero-filled | recon bundle REPO/NAME/VERSION")
    ] = "zero-filled",
    task_model: Annotated[
        Path | None, typer.Option(help="a saved task model (RUNS/task-model.pt); default: train one")
    ] = None,
    runs: Annotated[Path | None, typer.Option(help="run directory (default runs/NAME/VERSION)")] = None,
    quick: Annotated[bool, typer.Option(help="tiny task model, 4 train slices (tests)")] = False,
    seed: Annotated[int, typer.Option(help="seed of the task model and its batches")] = 0,
    train_steps: Annotated[int | None, typer.Option(min=1, help="task-model training steps")] = None,
) -> None:
    """IGS (seed 002 Alg. 1): train the task model on fully sampled train slices (unless given), pick lines
    on the train split, validate on val, write the fixed-mask bundle."""
    from kadapt.trainer.pattern_igs import IgsRunSettings, run_igs_pattern

    extra = extra_accelerations(ctx)
    settings = IgsRunSettings(
        data=data, task=task, loss=loss, accelerations=tuple(accelerations) + tuple(extra), out=out,
        num_acs=num_acs, recon=recon, task_model=task_model, runs=runs, quick=quick, seed=seed,
        train_steps=train_steps,
    )  # fmt: skip
    try:
        result = run_igs_pattern(settings, progress=console.print)
    except KadaptError as error:
        raise fail(error) from error
    summary = ", ".join(
        f"{key} " + " ".join(f"{name} {value:.4f}" for name, value in metrics.items())
        for key, metrics in result.validation.items()
    )
    console.print(f"validation (val split): {summary}")
    model = f"; task model {result.task_model}" if result.task_model is not None else ""
    console.print(f"wrote {result.bundle.path} in {result.seconds:.1f} s{model}")


@learn_app.command("diffusion", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def learn_diffusion_command(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help="dataset directory (kadapt data build)")],
    accelerations: Annotated[list[float], typer.Option("--R", help="accelerations, e.g. --R 4 8 16")],
    out: Annotated[Path, typer.Option(help="REPOSITORY/NAME/VERSION (1d: the bundle; 2d: names the run)")],
    size: Annotated[int, typer.Option(help="matrix of the score network (central k-space crop)")] = 64,
    dim: Annotated[str, typer.Option(help="1d (lines, a bundle) | 2d (points, an artefact file)")] = "1d",
    num_acs: Annotated[
        int | None, typer.Option(help="ACS lines, counted in R (default max(1, size // 32))")
    ] = None,
    score: Annotated[Path | None, typer.Option(help="a saved score network (default: train one)")] = None,
    runs: Annotated[Path | None, typer.Option(help="run directory (default runs/NAME/VERSION)")] = None,
    quick: Annotated[bool, typer.Option(help="tiny network, a few steps (tests)")] = False,
    seed: Annotated[int, typer.Option(help="seed of the network, the pattern and their batches")] = 0,
    score_steps: Annotated[int | None, typer.Option(min=1, help="score-network training steps")] = None,
    pattern_steps: Annotated[int | None, typer.Option(min=1, help="pattern-learning steps")] = None,
) -> None:
    """Diffusion-prior pattern (seed 003): train (or load) the score network, learn one logit vector over the
    --R list; 1d writes a fixed-mask bundle, 2d the point scores as RUNS/point-scores.npy (the sampler
    serves line patterns only)."""
    from kadapt.trainer.pattern_diffusion import DiffusionRunSettings, run_diffusion_pattern

    extra = extra_accelerations(ctx)
    settings = DiffusionRunSettings(
        data=data, accelerations=tuple(accelerations) + tuple(extra), out=out, size=size, dim=dim,
        num_acs=num_acs, score=score, runs=runs, quick=quick, seed=seed, score_steps=score_steps,
        pattern_steps=pattern_steps,
    )  # fmt: skip
    try:
        result = run_diffusion_pattern(settings, progress=console.print)
    except KadaptError as error:
        raise fail(error) from error
    if result.bundle is not None:
        console.print(f"wrote {result.bundle.path} in {result.seconds:.1f} s; score network {result.score}")
    else:
        console.print(
            f"wrote the 2D point scores to {result.artefact} (no bundle: the sampler serves line patterns "
            f"only) in {result.seconds:.1f} s; score network {result.score}"
        )
