"""``kadapt learn-pattern diffusion``: score network, seed 003 pattern over the R list, bundle or artefact.

The run:

1. the train split's slices at the score network's size (:func:`load_diffusion_slices`: central
   ``size x size`` of the k-space, SENSE image scaled to ``max |x| = 1``; the coil maps come from the
   central ``maps_acs = max(4, size // 16)`` lines of the fully sampled data, like a calibration pre-scan,
   so every compared pattern -- also one with a smaller ``num_acs`` -- sees the same maps);
2. the score network: trained (:func:`train_score`, EDM loss, EMA) and saved as ``RUNS/score.pt``, or loaded
   from ``--score``;
3. one logit vector learned over the R list (as ``kadapt train sampler --method loupe`` does: each step
   draws one R from the generator and samples that R's budget with the shared logits, seed 003 eq. 14-17
   via :func:`kadapt.trainer.diffusion.pattern_step`), so one score vector serves every R;
4. validation on the val split: the served pattern at each R and the ``centre-only`` / ``equispaced``
   masks of the same budget, zero-filled SENSE (``A^H y`` with the maps) against the fully sampled SENSE
   magnitude, fastMRI volume metrics over the val slices (a cheap check; the task bench runs DPS);
5. ``--dim 1d``: a ``fixed-mask`` bundle (``mask.npy`` = the line logits ``(W,)``). ``--dim 2d``: point
   patterns ``(H, W)`` cannot be served -- a ``fixed-mask`` bundle holds line scores ``(W,)`` and a
   Cartesian scan acquires whole lines (docs/sampler.md, "Policies") -- so the logits are written as the
   artefact ``RUNS/point-scores.npy`` with ``RUNS/point-scores.json`` (R list, ``num_acs``, size, score
   network) for the task bench, and no bundle.

``num_acs`` default ``max(1, size // 32)`` (2 at 64: R = 16 then leaves 2 picks of 4 lines).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import JsonValue

from kadapt.bundles import Bundle
from kadapt.data.build import code_version
from kadapt.errors import InvalidInputError, NotFoundError
from kadapt.kspace.coils import sense_combine
from kadapt.kspace.fft import ifft2c
from kadapt.masks import make_mask
from kadapt.metrics import evaluate_volume
from kadapt.nn.score import EDMDenoiser, ScoreNetConfig, load_denoiser, save_denoiser
from kadapt.trainer.config import check_pattern_args
from kadapt.trainer.diffusion import PatternConfig, ScoreTrainConfig, pattern_step, train_score
from kadapt.trainer.diffusion_data import DiffusionSlice, load_diffusion_slices, stack_images
from kadapt.trainer.diffusion_pattern import BernoulliPattern, PatternKind, served_pattern
from kadapt.trainer.population import served_lines, write_fixed_mask_bundle

__all__ = [
    "DIMS",
    "POINT_SCORES_FILE",
    "SCORE_FILE",
    "DiffusionRunResult",
    "DiffusionRunSettings",
    "PointScores",
    "default_diffusion_num_acs",
    "learn_shared_pattern",
    "load_point_scores",
    "maps_acs",
    "run_diffusion_pattern",
    "validate_pattern",
]

DIMS = ("1d", "2d")
SCORE_FILE = "score.pt"
POINT_SCORES_FILE = "point-scores.npy"
SCORE_STEPS, QUICK_SCORE_STEPS = 1200, 2
PATTERN_STEPS, QUICK_PATTERN_STEPS = 300, 2
PATTERN_LR = 1e-2  # seed 003 section 4 (PatternConfig's default)
QUICK_NETWORK = ScoreNetConfig(base_channels=8, levels=2, embedding_dim=16, groups=4)
#: ``--quick``: train and val slices.
QUICK_SLICES = (4, 2)

Progress = Callable[[str], None]


def default_diffusion_num_acs(size: int) -> int:
    return max(1, size // 32)


def maps_acs(size: int) -> int:
    """ACS lines the coil maps are estimated from (module docstring): ``max(4, size // 16)``."""
    return max(4, size // 16)


@dataclass(frozen=True)
class DiffusionRunSettings:
    """One ``kadapt learn-pattern diffusion`` run; ``score`` a saved network (None: train one)."""

    data: Path
    accelerations: tuple[float, ...]
    out: Path
    size: int = 64
    dim: str = "1d"
    num_acs: int | None = None
    score: Path | None = None
    runs: Path | None = None
    quick: bool = False
    seed: int = 0
    score_steps: int | None = None
    pattern_steps: int | None = None

    def check(self) -> None:
        if self.dim not in DIMS:
            raise InvalidInputError(f"--dim {self.dim!r} must be one of {', '.join(DIMS)}")
        if self.size < 8 or self.size % 4:
            raise InvalidInputError(f"--size {self.size} must be a multiple of 4, at least 8")
        check_pattern_args(self.accelerations, self.num_acs, self.out)
        if self.score is not None and not self.score.is_file():
            raise NotFoundError(f"--score {self.score}: no such file")

    @property
    def runs_dir(self) -> Path:
        return self.runs or Path("runs") / self.out.parent.name / self.out.name


@dataclass(frozen=True)
class DiffusionRunResult:
    """``bundle`` for 1d (None for 2d), ``artefact`` the point scores file for 2d, ``score`` the network."""

    bundle: Bundle | None
    artefact: Path | None
    score: Path
    seconds: float


@dataclass(frozen=True)
class PointScores:
    """A ``--dim 2d`` artefact: logits ``(H, W)`` and what they were learned for."""

    scores: NDArray[np.float32]
    num_acs: int
    accelerations: tuple[float, ...]
    score_network: Path
    maps_acs: int


def load_point_scores(path: Path) -> PointScores:
    """Read ``point-scores.npy`` and its ``.json`` sidecar (:class:`NotFoundError`,
    :class:`InvalidInputError`)."""
    sidecar = Path(path).with_suffix(".json")
    if not Path(path).is_file() or not sidecar.is_file():
        raise NotFoundError(f"--points {path}: needs {Path(path).name} and {sidecar.name}")
    scores = np.load(path, allow_pickle=False)
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    if scores.ndim != 2 or not np.all(np.isfinite(scores)):
        raise InvalidInputError(f"--points {path}: not finite (H, W) scores, shape {scores.shape}")
    return PointScores(
        scores.astype(np.float32),
        int(meta["num_acs"]),
        tuple(float(r) for r in meta["accelerations"]),
        Path(meta["score_network"]),
        int(meta["maps_acs"]),
    )


def learn_shared_pattern(
    denoiser: EDMDenoiser,
    slices: list[DiffusionSlice],
    kind: PatternKind,
    accelerations: tuple[float, ...],
    num_acs: int,
    steps: int,
    generator: torch.Generator,
    on_step: Callable[[int, float, float], None] | None = None,
) -> NDArray[np.float32]:
    """Seed 003 eq. 15 with one logit tensor shared by the R list: each step draws an R (``generator``)
    and takes :func:`pattern_step` with that R's budget; single-coil ``A = P F`` (appendix B.3), batch 1,
    Adam 1e-2, items in epochs of a random order. Returns the logits, ``(W,)`` or ``(H, W)``."""
    images = stack_images(slices)
    height, width = images.shape[-2:]
    patterns = [BernoulliPattern(kind, height, width, r, num_acs) for r in accelerations]
    shared = patterns[0].logits
    for pattern in patterns[1:]:
        pattern.logits = shared
    ones = torch.zeros((1, 1, height, width, 2), dtype=images.dtype)
    ones[..., 0] = 1.0
    for parameter in denoiser.parameters():
        parameter.requires_grad_(False)
    denoiser.eval()
    optimiser = torch.optim.Adam([shared], lr=PATTERN_LR)
    order = torch.empty(0, dtype=torch.long)
    for step in range(steps):
        if order.numel() == 0:
            order = torch.randperm(images.shape[0], generator=generator)
        index, order = order[:1], order[1:]
        choice = int(torch.randint(0, len(patterns), (1,), generator=generator))
        config = PatternConfig(acceleration=accelerations[choice], num_acs=num_acs, kind=kind)
        loss = pattern_step(denoiser, patterns[choice], optimiser, images[index], ones, config, generator)
        if on_step is not None:
            on_step(step, accelerations[choice], loss)
    return patterns[0].scores()


def validate_pattern(
    scores: NDArray[np.float32],
    kind: PatternKind,
    slices: list[DiffusionSlice],
    accelerations: tuple[float, ...],
    num_acs: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    """``{"R4": metrics, "equispaced/R4": ..., "centre-only/R4": ...}`` of zero-filled SENSE on ``slices``
    (SSIM / PSNR / NMSE over them as one volume); baselines only for line patterns."""
    reference = np.abs(np.stack([item.image for item in slices]))
    width = reference.shape[-1]
    results: dict[str, dict[str, float]] = {}
    for acceleration in accelerations:
        masks = {f"R{acceleration:g}": served_pattern(scores, kind, num_acs, acceleration)}
        if kind == "lines":
            for family in ("centre-only", "equispaced"):
                rng = np.random.default_rng(seed)
                masks[f"{family}/R{acceleration:g}"] = np.asarray(
                    make_mask(family, width=width, acceleration=acceleration, num_acs=num_acs, rng=rng),
                    dtype=bool,
                ).reshape(width)
        for key, mask in masks.items():
            images = np.stack(
                [np.abs(sense_combine(ifft2c(item.kspace * mask), item.sens)) for item in slices]
            )
            metrics = evaluate_volume(reference, images)
            results[key] = {name: metrics[name] for name in ("ssim", "psnr", "nmse")}
    return results


def _denoiser(
    settings: DiffusionRunSettings, slices: list[DiffusionSlice], progress: Progress
) -> tuple[EDMDenoiser, Path, dict[str, JsonValue]]:
    if settings.score is not None:
        denoiser = load_denoiser(settings.score)
        if denoiser.config.channels != 2:
            raise InvalidInputError(f"--score {settings.score}: {denoiser.config.channels} channels, need 2")
        return denoiser, settings.score.resolve(), {"trained_here": False, "path": str(settings.score)}
    steps = settings.score_steps or (QUICK_SCORE_STEPS if settings.quick else SCORE_STEPS)
    config = ScoreTrainConfig(steps=steps)
    if settings.quick:
        config = replace(config, batch_size=2, network=QUICK_NETWORK)
    progress(f"training the score network ({steps} steps on {len(slices)} slices)")
    generator = torch.Generator().manual_seed(settings.seed)

    def step_done(step: int, loss: float) -> None:
        if step % 100 == 0 or step == steps - 1:
            progress(f"score step {step + 1}/{steps}: loss {loss:.4f}")

    denoiser = train_score(stack_images(slices), config, generator, on_step=step_done)
    path = settings.runs_dir / SCORE_FILE
    save_denoiser(denoiser, path)
    record: dict[str, JsonValue] = {"trained_here": True, "path": str(path.resolve()), "steps": steps}
    return denoiser, path.resolve(), record


def run_diffusion_pattern(
    settings: DiffusionRunSettings, progress: Progress | None = None
) -> DiffusionRunResult:
    """Run ``kadapt learn-pattern diffusion`` (module docstring)."""
    tick = progress or (lambda _message: None)
    settings.check()
    started = time.perf_counter()
    num_acs = settings.num_acs or default_diffusion_num_acs(settings.size)
    for acceleration in settings.accelerations:
        budget = round(settings.size / acceleration)
        if num_acs >= budget:
            raise InvalidInputError(
                f"--num-acs {num_acs} leaves no line to pick at R {acceleration:g} (size {settings.size}: "
                f"{budget} lines in all); use --num-acs < {budget} or a larger --size"
            )
    train_limit, _ = QUICK_SLICES if settings.quick else (None, None)
    slices = load_diffusion_slices(
        settings.data, "train", num_acs=maps_acs(settings.size), size=settings.size, max_slices=train_limit
    )
    denoiser, score_path, score_record = _denoiser(settings, slices, tick)
    kind: PatternKind = "lines" if settings.dim == "1d" else "points"
    steps = settings.pattern_steps or (QUICK_PATTERN_STEPS if settings.quick else PATTERN_STEPS)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    losses: list[float] = []

    def step_done(step: int, acceleration: float, loss: float) -> None:
        losses.append(loss)
        if step % 50 == 0 or step == steps - 1:
            tick(f"pattern step {step + 1}/{steps} (R {acceleration:g}): loss {loss:.3f}")

    scores = learn_shared_pattern(
        denoiser, slices, kind, settings.accelerations, num_acs, steps, generator, step_done
    )
    _, val_limit = QUICK_SLICES if settings.quick else (None, None)
    val = load_diffusion_slices(
        settings.data, "val", num_acs=maps_acs(settings.size), size=settings.size, max_slices=val_limit
    )
    validation = validate_pattern(scores, kind, val, settings.accelerations, num_acs, settings.seed)
    tick(
        "validation (val, zero-filled SENSE): "
        + ", ".join(f"{k} SSIM {v['ssim']:.4f}" for k, v in validation.items())
    )
    training: dict[str, Any] = {
        "method": "diffusion",
        "kind": kind,
        "data": str(settings.data),
        "size": settings.size,
        "maps_acs": maps_acs(settings.size),
        "train_slices": len(slices),
        "accelerations": [float(r) for r in settings.accelerations],
        "num_acs": num_acs,
        "pattern_steps": steps,
        "loss_first_last_50": [float(np.mean(losses[:50])), float(np.mean(losses[-50:]))],
        "score_network": score_record,
        "objective": "seed 003 eq. 15, one-step posterior mean (eq. 14), single-coil A = P F (appendix B.3), "
        "one logit vector shared by the R list (one R drawn per step)",
        "seed": settings.seed,
        "quick": settings.quick,
    }
    if kind == "points":
        artefact = settings.runs_dir / POINT_SCORES_FILE
        artefact.parent.mkdir(parents=True, exist_ok=True)
        np.save(artefact, scores, allow_pickle=False)
        served = {
            f"R{r:g}": int(served_pattern(scores, "points", num_acs, r).sum()) for r in settings.accelerations
        }
        meta = {
            **training,
            "score_network": str(score_path),
            "served_points": served,
            "validation": validation,
        }
        artefact.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return DiffusionRunResult(None, artefact, score_path, time.perf_counter() - started)
    training["description"] = (
        f"diffusion-prior line pattern (seed 003 eq. 14-17) at {settings.size}x{settings.size}, learned over "
        f"R {', '.join(f'{r:g}' for r in settings.accelerations)}; top-k of the logits at any R"
    )
    training["score_network"] = {**score_record, "path": str(score_path)}
    training["served_lines"] = served_lines(scores, num_acs, settings.accelerations)
    bundle = write_fixed_mask_bundle(
        scores, settings.out.parent.parent, name=settings.out.parent.name, version=settings.out.name,
        accelerations=settings.accelerations, num_acs=num_acs, training=training,
        validation={key: dict(values) for key, values in validation.items()},
        code_version=code_version(),
    )  # fmt: skip
    return DiffusionRunResult(bundle, None, score_path, time.perf_counter() - started)
