"""ICD labels (seed 001, SUNO): per-slice iterative coordinate descent of line positions.

Seed 001 section 2.2 trains MNet on "pre-generated reference mask[s] by the ICD sampling optimization
algorithm [21]" (SUNO). For one training slice and a fixed reconstructor ``f``, ICD starts from a mask at
the budget and visits the acquired non-ACS lines one at a time; each visited line may move to any free
line, and the move with the lowest loss ``L(|f(A^H M y)|, |x|)`` is taken if it lowers the loss. A sweep
visits every line once (in a random order from the explicit generator); ``sweeps`` sweeps, or fewer when
one makes no move. The budget is exact at every step (a move swaps one line), the ACS block never moves,
and the loss never increases: each step keeps the current mask unless a candidate is strictly better.

Cost: a visited line has ``W - budget`` candidates, so a sweep needs ``(budget - num_acs) x (W - budget)``
reconstructions per slice; they are evaluated ``candidates_batch`` at a time in one batched call of the
reconstructor. The default reconstructor, zero-filled SENSE with the ACS maps (:class:`ZeroFilledSense`),
is linear in the mask, ``A^H M y = sum_j m_j B_j`` with ``B_j`` the coil-combined image of line ``j``
alone, so its candidates cost one image addition each (``base - B_removed + B_added``) instead of a
reconstruction. Any other reconstructor ``reconstruct(masked_kspace, mask, sens) -> image`` (the
:class:`kadapt.nn.modl.ReconModel` convention: ``(K, C, H, W, 2), (K, 1, 1, W, 1), (K, C, H, W, 2) ->
(K, H, W, 2)``, e.g. a trained :class:`kadapt.nn.unet.UNetRecon`) goes through the batched path.

Losses (handbook science.md: "NRMSE, 1-SSIM, NMAE, HFEN mix") compare magnitudes with the slice's RSS
target, per candidate: ``nrmse`` (seed 001 eq. 8), ``ssim`` (``1 - SSIM``, fastMRI's), ``nmae``,
``hfen`` (LoG, sigma 1.5); a mapping ``{name: weight}`` mixes them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import InvalidInputError
from kadapt.masks import acs_lines, line_budget, make_mask
from kadapt.trainer.labels.scoring import (
    MaskLoss,
    Progress,
    Reconstructor,
    SliceSource,
    ZeroFilledSense,
    check_start_masks,
    describe_reconstructor,
    loss_weights,
    slice_identity,
    start_description,
)
from kadapt.trainer.labels.store import LabelSet

#: Relative improvement a move must make to be taken (above float32 rounding of the loss).
IMPROVEMENT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class DescentResult:
    """One slice's ICD: the final ``mask (W,)``, ``losses`` after 0, 1, ... sweeps (non-increasing; the
    first is the start mask's), ``moves`` taken and candidate ``evaluations``."""

    mask: NDArray[np.bool_]
    losses: list[float]
    moves: int
    evaluations: int


def coordinate_descent(
    objective: MaskLoss, start: NDArray[np.bool_], *, num_acs: int, sweeps: int, rng: np.random.Generator
) -> DescentResult:
    """ICD on one slice from ``start (W,)`` (budget and ACS as given; both are kept).

    Each sweep visits the acquired non-ACS lines of the sweep's start in a random order; the visited line
    moves to the free line of lowest loss if that is strictly below the current loss. Stops after
    ``sweeps`` sweeps or a sweep without a move.
    """
    mask = np.asarray(start, dtype=np.bool_).copy()
    acs = np.zeros(mask.size, dtype=np.bool_)
    acs[acs_lines(mask.size, num_acs)] = True
    loss = float(objective.losses(mask[None])[0])
    history = [loss]
    moves = 0
    for _ in range(sweeps):
        moved = False
        for line in rng.permutation(np.flatnonzero(mask & ~acs)):
            free = np.flatnonzero(~mask)
            if free.size == 0:
                break
            candidate_losses = objective.move_losses(mask, int(line), free)
            best = int(np.argmin(candidate_losses))
            # Strictly better beyond float32 rounding, so the loss never rises and no move cycles on noise.
            if candidate_losses[best] < loss - IMPROVEMENT_TOLERANCE * abs(loss):
                mask[line] = False
                mask[free[best]] = True
                loss = float(candidate_losses[best])
                moves += 1
                moved = True
        history.append(loss)
        if not moved:
            break
    return DescentResult(mask, history, moves, objective.evaluations)


def icd_settings(
    dataset: SliceSource,
    *,
    acceleration: float,
    num_acs: int,
    reconstruct: Reconstructor | None = None,
    loss: str | Mapping[str, float] = "nrmse",
    sweeps: int,
    candidates_batch: int,
    rng: np.random.Generator,
    start_masks: NDArray[np.bool_] | None = None,
) -> dict[str, Any]:
    """The settings :func:`generate_icd` records for these arguments (the cache key): call it with a
    generator in the state ``generate_icd`` will get it."""
    _, _, width, fingerprint = slice_identity(dataset)
    return {
        "method": "icd",
        "acceleration": float(acceleration),
        "num_acs": int(num_acs),
        "budget": line_budget(width, acceleration, num_acs),
        "loss": loss_weights(loss),
        "sweeps": int(sweeps),
        "candidates_batch": int(candidates_batch),
        "start": start_description(start_masks),
        "reconstructor": describe_reconstructor(reconstruct or ZeroFilledSense()),
        "rng_state": rng.bit_generator.state,
        "data": fingerprint,
    }


def generate_icd(
    dataset: SliceSource,
    *,
    acceleration: float,
    num_acs: int,
    reconstruct: Reconstructor | None = None,
    loss: str | Mapping[str, float] = "nrmse",
    sweeps: int = 2,
    candidates_batch: int = 64,
    rng: np.random.Generator,
    progress: Progress | None = None,
    start_masks: NDArray[np.bool_] | None = None,
) -> LabelSet:
    """ICD labels (seed 001 / SUNO) for every slice of ``dataset``: one mask ``(W,)`` per slice.

    ``reconstruct`` (default :class:`ZeroFilledSense`) maps ``(K, C, H, W, 2), (K, 1, 1, W, 1),
    (K, C, H, W, 2)`` to images ``(K, H, W, 2)`` and is never trained; ``loss`` a name in
    :data:`LOSS_NAMES` or a ``{name: weight}`` mix; ``sweeps`` the passes over a slice's lines;
    ``candidates_batch`` the candidate masks per reconstructor call. Each slice starts from
    ``start_masks[i]`` (``(N, W)``) or a vd-random mask at the budget drawn from ``rng`` (which also
    orders the visits). ``progress(done, total)`` after each slice.
    """
    if sweeps < 1 or candidates_batch < 1:
        raise InvalidInputError(
            f"ICD needs sweeps >= 1 and candidates_batch >= 1, got {sweeps}, {candidates_batch}"
        )
    weights = loss_weights(loss)
    reconstructor: Reconstructor = reconstruct or ZeroFilledSense()
    settings = icd_settings(
        dataset,
        acceleration=acceleration,
        num_acs=num_acs,
        reconstruct=reconstructor,
        loss=weights,
        sweeps=sweeps,
        candidates_batch=candidates_batch,
        rng=rng,
        start_masks=start_masks,
    )
    volumes, slices, width, _ = slice_identity(dataset, fingerprint=False)
    items = list(dataset.slices)
    if start_masks is None:
        starts = make_mask(
            "vd-random", width=width, acceleration=acceleration, num_acs=num_acs, rng=rng, batch=len(items)
        )
    else:
        starts = check_start_masks(start_masks, len(items), width, acceleration, num_acs)
    began = time.perf_counter()
    results: list[DescentResult] = []
    for index, item in enumerate(items):
        objective = MaskLoss(item, reconstructor, weights, candidates_batch)
        results.append(coordinate_descent(objective, starts[index], num_acs=num_acs, sweeps=sweeps, rng=rng))
        if progress is not None:
            progress(index + 1, len(items))
    masks = np.stack([result.mask for result in results])
    start_loss = np.array([result.losses[0] for result in results])
    label_loss = np.array([result.losses[-1] for result in results])
    per_sweep = [
        float(np.mean([result.losses[min(sweep, len(result.losses) - 1)] for result in results]))
        for sweep in range(sweeps + 1)
    ]
    metrics = {
        "mean_start_loss": float(start_loss.mean()),
        "mean_label_loss": float(label_loss.mean()),
        "relative_improvement": float(1.0 - label_loss.mean() / start_loss.mean()),
        "loss_per_sweep": per_sweep,
        "mean_moves": float(np.mean([result.moves for result in results])),
        "evaluations": int(sum(result.evaluations for result in results)),
        "changed_fraction": float(np.mean(np.any(masks != starts, axis=1))),
        "distinct_masks": int(np.unique(masks, axis=0).shape[0]),
        "seconds": time.perf_counter() - began,
    }
    return LabelSet(
        method="icd",
        acceleration=float(acceleration),
        num_acs=int(num_acs),
        width=width,
        masks=masks,
        volumes=volumes,
        slices=slices,
        settings=settings,
        metrics=metrics,
        per_slice={"start_loss": start_loss, "label_loss": label_loss},
    )


__all__ = ["IMPROVEMENT_TOLERANCE", "DescentResult", "coordinate_descent", "generate_icd", "icd_settings"]
