"""Mask-backward labels (seed 000 Alg. 1, with the label parts of Alg. 2) for multi-coil data.

Per batch of training slices, seed 000 Alg. 1 treats the masks as learnable weights ``M = sigmoid(xi)``
(remark 2), initialised ``xi = +0.1`` on the current mask's lines and ``-0.1`` elsewhere (remark 3), and
takes ``T`` joint RMSprop steps on ``xi`` (lr 5e-3) and a co-trained reconstructor (lr 5e-4) on eq. 5::

    NRMSE(|U(A^H M_bin y)|, |x|) + alpha ||sigmoid(xi)||_1 + lambda BCE(sigmoid(xi), M_current)

where ``M_bin`` is the binarised mask the reconstructor sees (Alg. 1 step 3) with the gradient passed
straight through to ``sigmoid(xi)`` (section 2.2, [BLC13]); multi-coil replaces the IFFT by the SENSE
adjoint ``A^H`` with the ACS maps (remark 6). After ``T`` steps the budget is applied and the mask
binarised (Alg. 1 step 8).

Choices where the paper is silent or does not apply, and why:

- Binarisation: the exact budget by top-k of ``sigmoid(xi)`` among the non-ACS lines, ACS always kept,
  in every step (not a 0.5 threshold of eq. 7's rescaled mask): labels and reconstructor inputs then have
  exactly ``line_budget`` lines, as every kadapt mask does. Eq. 7 is monotone per item, so top-k of the
  rescaled mask is the same mask.
- Consistency term: there is no MNet yet when labels are precomputed, so ``lambda`` (5e-4, section 3.1)
  ties the refined mask to the slice's current mask, the one the label would replace (``start_masks``:
  pass MNet's outputs there to run Alg. 2 step 6 literally).
- Acceptance (Alg. 2 step 7): per slice, not per batch -- a refined mask becomes the slice's label only
  if its NRMSE under the updated reconstructor ``U~`` is below both the current mask's under ``U~`` and a
  random (vd-random, same budget) mask's under the warmed-up ``U_0``; the reconstructor keeps ``U~``
  (step 9) when the batch means satisfy the same condition, else it reverts (step 11).
- Alpha scale: the default grid and start are seed 000's times :data:`ALPHA_SCALE` (100), measured to
  put the sparsity term on the scale of kadapt's per-line gradients (the constant's comment).
- Alpha adaptation (section 3.1): each batch starts at the grid value nearest ``alpha_start``; a
  batch whose refined masks are degenerate (repeated for more than half the batch) or unchanged is run
  again with the next larger alpha if its masks held more lines than the budget before the budget
  control (``sigmoid(xi) >= 0.5``), the next smaller if fewer, until the grid ends.
- Degenerate input (remark 5): when more than half of a batch's current masks repeat, mask-backward
  starts from fresh random masks instead (a restart, counted in the metrics).
- Warm-up: without a given ``recon`` a :class:`UNetRecon` is built (seeded from ``rng``) and pre-trained
  on vd-random masks (section 2.2: "a warmed-up reconstructor U_0") by RMSprop, whose state the
  co-training then continues (one optimiser for U, as in one training run; a fresh RMSprop's first steps
  are 10 x lr and undid the warm-up within T steps). A given ``recon`` is co-trained in place.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from kadapt.errors import InvalidInputError
from kadapt.masks import line_budget, make_mask
from kadapt.nn.unet import UNetRecon
from kadapt.trainer.labels.refine import (
    DEFAULT_ALPHA_START,
    RANDOM_FAMILY,
    alpha_grid,
    check_recon_masks_input,
    degenerate,
    mask_losses,
    next_alpha_index,
    refine_masks,
    stack_slices,
    warm_up,
)
from kadapt.trainer.labels.scoring import (
    MaskLoss,
    Progress,
    SliceSource,
    ZeroFilledSense,
    check_start_masks,
    describe_reconstructor,
    slice_identity,
    start_description,
)
from kadapt.trainer.labels.store import LabelSet


def mask_backward_settings(
    dataset: SliceSource,
    *,
    acceleration: float,
    num_acs: int,
    recon: nn.Module | None = None,
    iterations: int,
    alphas: Sequence[float] | None,
    batch_size: int,
    rng: np.random.Generator,
    alpha_start: float = DEFAULT_ALPHA_START,
    consistency: float = 5e-4,
    mask_lr: float = 5e-3,
    recon_lr: float = 5e-4,
    warmup_steps: int | None = None,
    warmup_lr: float = 5e-4,
    epochs: int = 1,
    unet_chans: int = 32,
    unet_pools: int = 4,
    start_masks: NDArray[np.bool_] | None = None,
) -> dict[str, Any]:
    """The settings :func:`generate_mask_backward` records for these arguments (its cache key)."""
    _, _, width, fingerprint = slice_identity(dataset)
    reconstructor = (
        {"module": "UNetRecon", "chans": unet_chans, "num_pool_layers": unet_pools, "init": "rng"}
        if recon is None
        else describe_reconstructor(recon)
    )
    return {
        "method": "mask-backward",
        "acceleration": float(acceleration),
        "num_acs": int(num_acs),
        "budget": line_budget(width, acceleration, num_acs),
        "iterations": int(iterations),
        "alphas": list(alpha_grid(alphas, acceleration)),
        "alpha_start": float(alpha_start),
        "batch_size": int(batch_size),
        "consistency": float(consistency),
        "mask_lr": float(mask_lr),
        "recon_lr": float(recon_lr),
        "optimiser": "RMSprop (recon: one state from warm-up on)",
        "loss": "nrmse",
        "warmup_steps": int(100 if warmup_steps is None and recon is None else warmup_steps or 0),
        "warmup_lr": float(warmup_lr),
        "epochs": int(epochs),
        "random_family": RANDOM_FAMILY,
        "start": start_description(start_masks),
        "reconstructor": reconstructor,
        "rng_state": rng.bit_generator.state,
        "data": fingerprint,
    }


def generate_mask_backward(
    dataset: SliceSource,
    *,
    acceleration: float,
    num_acs: int,
    recon: nn.Module | None = None,
    iterations: int = 20,
    alphas: Sequence[float] | None = None,
    batch_size: int = 8,
    rng: np.random.Generator,
    progress: Progress | None = None,
    alpha_start: float = DEFAULT_ALPHA_START,
    consistency: float = 5e-4,
    mask_lr: float = 5e-3,
    recon_lr: float = 5e-4,
    warmup_steps: int | None = None,
    warmup_lr: float = 5e-4,
    epochs: int = 1,
    unet_chans: int = 32,
    unet_pools: int = 4,
    start_masks: NDArray[np.bool_] | None = None,
) -> LabelSet:
    """Mask-backward labels (seed 000 Alg. 1 + Alg. 2 steps 4-11) for every slice: masks ``(N, W)``.

    ``recon`` follows the ReconModel convention (``(B, C, H, W, 2), (B, 1, 1, W, 1), (B, C, H, W, 2) ->
    (B, H, W, 2)``) and is co-trained in place; ``None`` builds and warms up a :class:`UNetRecon`.
    ``iterations`` is Alg. 1's ``T``; ``alphas`` the grid (default :func:`default_alpha_grid`); slices go
    in shuffled batches of ``batch_size`` for ``epochs`` passes, each pass starting from the labels so
    far (first: ``start_masks (N, W)`` or vd-random masks). ``warmup_steps`` defaults to 100 without a
    ``recon``, 0 with one. ``progress(done, total)`` after each batch. Module docstring: the choices.
    """
    grid = alpha_grid(alphas, acceleration)
    if iterations < 1 or batch_size < 1 or epochs < 1 or not grid or min(grid) < 0 or not alpha_start > 0:
        raise InvalidInputError(
            f"mask-backward needs iterations, batch_size, epochs >= 1, alphas >= 0 and alpha_start > 0; got "
            f"iterations={iterations}, batch_size={batch_size}, epochs={epochs}, alphas={grid}, "
            f"alpha_start={alpha_start}"
        )
    settings = mask_backward_settings(
        dataset,
        acceleration=acceleration,
        num_acs=num_acs,
        recon=recon,
        iterations=iterations,
        alphas=grid,
        batch_size=batch_size,
        rng=rng,
        alpha_start=alpha_start,
        consistency=consistency,
        mask_lr=mask_lr,
        recon_lr=recon_lr,
        warmup_steps=warmup_steps,
        warmup_lr=warmup_lr,
        epochs=epochs,
        unet_chans=unet_chans,
        unet_pools=unet_pools,
        start_masks=start_masks,
    )
    began = time.perf_counter()
    volumes, _, width, _ = slice_identity(dataset, fingerprint=False)
    count, budget = len(volumes), line_budget(width, acceleration, num_acs)
    if recon is None:
        with torch.random.fork_rng(devices=[]):  # a local seed for the initialisation, no global seeding
            torch.manual_seed(int(rng.integers(2**62)))
            recon = UNetRecon(chans=unet_chans, num_pool_layers=unet_pools)
    optimiser_state = warm_up(
        recon,
        dataset,
        steps=settings["warmup_steps"],
        batch_size=batch_size,
        acceleration=acceleration,
        num_acs=num_acs,
        lr=warmup_lr,
        rng=rng,
    )
    initial = copy.deepcopy(recon).eval()  # U_0: judges the random masks (section 2.2)
    if start_masks is None:
        starts = make_mask(
            RANDOM_FAMILY, width=width, acceleration=acceleration, num_acs=num_acs, rng=rng, batch=count
        )
    else:
        starts = check_start_masks(start_masks, count, width, acceleration, num_acs)
    check_recon_masks_input(initial, stack_slices(dataset, [0]), starts[:1])
    labels = starts.copy()
    accepted = np.zeros(count, dtype=np.bool_)
    # The numbers of each slice's last acceptance decision (Alg. 2 step 7), kept for inspection.
    decision = {name: np.full(count, np.nan) for name in ("refined", "current", "random")}
    start_index = int(
        np.argmin([abs(math.log(alpha / alpha_start)) if alpha > 0 else math.inf for alpha in grid])
    )
    counters = {"batches": 0, "restarts": 0, "alpha_retries": 0, "recon_updates": 0, "failed_batches": 0}
    alphas_used: list[float] = []
    total_batches = epochs * math.ceil(count / batch_size)
    for _ in range(epochs):
        order = rng.permutation(count)
        for first in range(0, count, batch_size):
            indices = order[first : first + batch_size]
            batch = stack_slices(dataset, indices.tolist())
            current = labels[indices]
            initial_masks = current
            if degenerate(current):  # remark 5: restart from random masks
                counters["restarts"] += 1
                initial_masks = make_mask(
                    RANDOM_FAMILY,
                    width=width,
                    acceleration=acceleration,
                    num_acs=num_acs,
                    rng=rng,
                    batch=len(indices),
                )
            index = start_index
            while True:
                refined = refine_masks(
                    recon,
                    batch,
                    initial_masks,
                    current,
                    num_acs=num_acs,
                    budget=budget,
                    iterations=iterations,
                    alpha=grid[index],
                    consistency=consistency,
                    mask_lr=mask_lr,
                    recon_lr=recon_lr,
                    recon_optimiser=optimiser_state,
                )
                failed = degenerate(refined.masks) or bool(np.array_equal(refined.masks, initial_masks))
                moved = (
                    next_alpha_index(index, len(grid), refined.line_ratio, budget / width) if failed else None
                )
                if moved is None:
                    break
                index = moved
                counters["alpha_retries"] += 1
            counters["failed_batches"] += int(failed)
            alphas_used.append(grid[index])
            random_masks = make_mask(
                RANDOM_FAMILY,
                width=width,
                acceleration=acceleration,
                num_acs=num_acs,
                rng=rng,
                batch=len(indices),
            )
            refined_loss = mask_losses(refined.recon, batch, refined.masks)
            current_loss = mask_losses(refined.recon, batch, current)
            random_loss = mask_losses(initial, batch, random_masks)
            # Alg. 2 step 7, per slice: the label must beat both the current and the random mask.
            better = refined_loss < np.minimum(current_loss, random_loss)
            labels[indices[better]] = refined.masks[better]
            accepted[indices[better]] = True
            for name, values in (
                ("refined", refined_loss),
                ("current", current_loss),
                ("random", random_loss),
            ):
                decision[name][indices] = values
            if refined_loss.mean() < min(current_loss.mean(), random_loss.mean()):  # steps 9 / 11
                recon.load_state_dict(refined.recon.state_dict())
                optimiser_state = refined.recon_optimiser
                counters["recon_updates"] += 1
            counters["batches"] += 1
            if progress is not None:
                progress(counters["batches"], total_batches)
    per_slice = {
        "accepted": accepted,
        **{f"decision_{name}_loss": values for name, values in decision.items()},
    }
    return _label_set(
        dataset, recon, initial, labels, starts, per_slice, settings, counters, alphas_used, rng, began
    )


def _label_set(
    dataset: SliceSource,
    recon: nn.Module,
    initial: nn.Module,
    labels: NDArray[np.bool_],
    starts: NDArray[np.bool_],
    per_slice: dict[str, NDArray[Any]],
    settings: dict[str, Any],
    counters: dict[str, int],
    alphas_used: list[float],
    rng: np.random.Generator,
    began: float,
) -> LabelSet:
    """Score labels and starts with the final co-trained reconstructor (and zero-filled SENSE, a fixed
    yardstick), random masks with ``U_0``, and pack everything into a :class:`LabelSet`."""
    volumes, slices, width, _ = slice_identity(dataset, fingerprint=False)
    acceleration, num_acs = settings["acceleration"], settings["num_acs"]
    randoms = make_mask(
        RANDOM_FAMILY, width=width, acceleration=acceleration, num_acs=num_acs, rng=rng, batch=len(volumes)
    )
    recon.eval()
    label_loss, start_loss, random_loss = (np.zeros(len(volumes)) for _ in range(3))
    for first in range(0, len(volumes), settings["batch_size"]):
        chunk = list(range(first, min(first + settings["batch_size"], len(volumes))))
        batch = stack_slices(dataset, chunk)
        label_loss[chunk] = mask_losses(recon, batch, labels[chunk])
        start_loss[chunk] = mask_losses(recon, batch, starts[chunk])
        random_loss[chunk] = mask_losses(initial, batch, randoms[chunk])
    zero_filled = np.array(
        [
            MaskLoss(item, ZeroFilledSense(), {"nrmse": 1.0}, 2).losses(np.stack([labels[i], starts[i]]))
            for i, item in enumerate(dataset.slices)
        ]
    )
    zf_label, zf_start = zero_filled[:, 0], zero_filled[:, 1]
    metrics = {
        "mean_label_loss": float(label_loss.mean()),
        "mean_start_loss": float(start_loss.mean()),
        "mean_random_loss_u0": float(random_loss.mean()),
        "zero_filled_nrmse_label": float(zf_label.mean()),
        "zero_filled_nrmse_start": float(zf_start.mean()),
        "accepted_fraction": float(per_slice["accepted"].mean()),
        "distinct_masks": int(np.unique(labels, axis=0).shape[0]),
        "alphas_used": sorted({float(alpha) for alpha in alphas_used}),
        "seconds": time.perf_counter() - began,
        **counters,
    }
    return LabelSet(
        method="mask-backward",
        acceleration=float(acceleration),
        num_acs=int(num_acs),
        width=width,
        masks=labels,
        volumes=volumes,
        slices=slices,
        settings=settings,
        metrics=metrics,
        per_slice={
            "label_loss": label_loss,
            "start_loss": start_loss,
            "random_loss": random_loss,
            **per_slice,
        },
    )


__all__ = ["generate_mask_backward", "mask_backward_settings"]
