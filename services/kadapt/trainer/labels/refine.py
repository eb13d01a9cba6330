"""Seed 000 Alg. 1 on one batch (mask-backward proper) and the pieces around it: the alpha grid, the
degeneracy test of remark 5, the warm-up of ``U_0``, and mask scoring with a learned reconstructor.
:mod:`kadapt.trainer.labels.mask_backward` runs it over a dataset (module docstring there: the choices).

Batches are :class:`SliceBatch` tensors in torch's real layout; masks are ``(B, W)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from kadapt.errors import InvalidInputError
from kadapt.masks import acs_lines, make_mask
from kadapt.masks.torch_ops import topk_plan
from kadapt.nn.losses import complex_magnitude
from kadapt.trainer.labels.scoring import SliceSource

#: Seed 000 section 3.1 alpha grids: 10^-5.7 .. 10^-3.9 at 4x, 10^-5.01 .. 10^-3.61 at 8x, step 10^0.2,
#: and its common starting value alpha_0 = 2e-5.
ALPHA_GRID_4X = tuple(10.0 ** (-5.7 + 0.2 * step) for step in range(10))
ALPHA_GRID_8X = tuple(10.0 ** (-5.01 + 0.2 * step) for step in range(8))
SEED000_ALPHA_START = 2e-5
#: kadapt's default grids are seed 000's times this. Alpha only acts through ``alpha * sigmoid'(xi)``
#: against the per-line NRMSE gradient, which is far larger on kadapt's data (128 x 128, 8 coils, RSS
#: target: median |dNRMSE/dM_j| 6e-4 over free lines at R = 4) than seed 000's alpha_0 / 4 = 5e-6; with
#: the paper's values the sparsity term never moves a line and labels came out no better than their
#: vd-random starts (docs/trainer.md, "Sampler labels").
ALPHA_SCALE = 100.0
DEFAULT_ALPHA_START = SEED000_ALPHA_START * ALPHA_SCALE
RANDOM_FAMILY = "vd-random"


def default_alpha_grid(acceleration: float) -> tuple[float, ...]:
    """Seed 000's grid for the nearer of its two accelerations (4x below R = 6, else 8x), times
    :data:`ALPHA_SCALE`."""
    grid = ALPHA_GRID_4X if acceleration < 6.0 else ALPHA_GRID_8X
    return tuple(alpha * ALPHA_SCALE for alpha in grid)


def alpha_grid(alphas: Sequence[float] | None, acceleration: float) -> tuple[float, ...]:
    """The sorted grid: ``alphas``, or :func:`default_alpha_grid` for ``None``."""
    return tuple(sorted(float(alpha) for alpha in (alphas or default_alpha_grid(acceleration))))


def degenerate(masks: NDArray[np.bool_]) -> bool:
    """Seed 000 remark 5: ``masks (B, W)`` are degenerate when more than half of the items repeat another
    item's mask (all-identical batches included; a batch of one never is)."""
    _, inverse, counts = np.unique(masks, axis=0, return_inverse=True, return_counts=True)
    repeated = int((counts[np.asarray(inverse).reshape(-1)] > 1).sum())
    return bool(repeated > masks.shape[0] / 2)


def next_alpha_index(index: int, grid_size: int, line_ratio: float, target_ratio: float) -> int | None:
    """Section 3.1: a failed batch whose pre-budget masks sampled more than the target moves to a larger
    alpha (stronger sparsity), fewer to a smaller one; ``None`` at the grid's end or when on target."""
    if math.isclose(line_ratio, target_ratio, rel_tol=0.0, abs_tol=1e-12):
        return None
    step = 1 if line_ratio > target_ratio else -1
    moved = index + step
    return moved if 0 <= moved < grid_size else None


@dataclass(frozen=True)
class SliceBatch:
    """Stacked slices: ``kspace``/``sens`` ``(B, C, H, W, 2)``, magnitude ``target (B, H, W)``."""

    kspace: Tensor
    sens: Tensor
    target: Tensor


def stack_slices(dataset: SliceSource, indices: Sequence[int]) -> SliceBatch:
    items = [dataset.slices[index] for index in indices]

    def real(arrays: list[NDArray[np.complex64]]) -> Tensor:
        return torch.view_as_real(torch.from_numpy(np.stack(arrays).astype(np.complex64))).float()

    target = torch.from_numpy(np.stack([np.abs(item.target) for item in items]).astype(np.float32))
    return SliceBatch(real([item.kspace for item in items]), real([item.sens for item in items]), target)


def reconstruct_masked(recon: nn.Module, batch: SliceBatch, masks: Tensor) -> Tensor:
    """Magnitudes ``(B, H, W)`` of ``recon`` on ``masks (B, W)`` float (0/1, maybe carrying gradients)."""
    line_mask = masks[:, None, None, :, None]
    masked = batch.kspace * line_mask + 0.0  # + 0.0: no signed zeros (science.md, fastMRI traps)
    return complex_magnitude(recon(masked, line_mask, batch.sens))


def reconstruct_straight_through(recon: nn.Module, batch: SliceBatch, masks: Tensor) -> Tensor:
    """Magnitudes ``(B, H, W)`` with the mask ``(B, W)`` applied by the reconstructor alone.

    The fully sampled k-space goes in with the straight-through mask: a reconstructor that masks its input
    (``A^H`` = ``sense_adjoint``, ``sense_normal``: UNetRecon, MoDL) computes ``M * y`` once, which is the
    same forward value as ``M * (M * y)`` but keeps ``d/dM_j = y_j * ...`` alive on the lines not taken
    (the double product has zero derivative there, which would freeze every free line's weight).
    :func:`check_recon_masks_input` guards the assumption.
    """
    return complex_magnitude(recon(batch.kspace, masks[:, None, None, :, None], batch.sens))


def check_recon_masks_input(recon: nn.Module, batch: SliceBatch, masks: NDArray[np.bool_]) -> None:
    """InvalidInputError unless ``recon`` gives the same image for ``(M y, M)`` and ``(y, M)``:
    mask-backward feeds it unmasked k-space (:func:`reconstruct_straight_through`)."""
    line_mask = torch.from_numpy(masks.astype(np.float32))
    with torch.no_grad():
        masked = reconstruct_masked(recon, batch, line_mask)
        unmasked = reconstruct_straight_through(recon, batch, line_mask)
    difference = float((masked - unmasked).abs().max())
    if difference > 1e-4 * float(masked.abs().max()) + 1e-12:
        raise InvalidInputError(
            f"mask-backward needs a reconstructor that applies its mask to the k-space it gets "
            f"({type(recon).__name__} differs by {difference:.3g} between masked and unmasked input)"
        )


def nrmse_items(prediction: Tensor, target: Tensor) -> Tensor:
    """Seed 001 eq. 8 per item: ``(B, H, W)`` magnitudes -> ``(B,)``."""
    error = torch.linalg.vector_norm((prediction - target).flatten(1), dim=1)
    ratio: Tensor = error / torch.linalg.vector_norm(target.flatten(1), dim=1)
    return ratio


def mask_losses(recon: nn.Module, batch: SliceBatch, masks: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``-Q(M, U, x)`` of seed 000 section 2.2 (the NRMSE) for each mask ``(B, W)`` -> ``(B,)``, no grad."""
    with torch.no_grad():
        magnitude = reconstruct_masked(recon, batch, torch.from_numpy(masks.astype(np.float32)))
        return nrmse_items(magnitude, batch.target).double().numpy()


@dataclass(frozen=True)
class Refinement:
    """Alg. 1's output for one batch: ``masks (B, W)`` after budget control, the trained reconstructor
    copy ``U~``, and the pre-budget line ratio ``mean(#{sigmoid(xi) >= 0.5} / W)`` (ACS counted)."""

    masks: NDArray[np.bool_]
    recon: nn.Module
    line_ratio: float
    recon_optimiser: dict[str, Any]


def refine_masks(
    recon: nn.Module,
    batch: SliceBatch,
    start: NDArray[np.bool_],
    current: NDArray[np.bool_],
    *,
    num_acs: int,
    budget: int,
    iterations: int,
    alpha: float,
    consistency: float,
    mask_lr: float,
    recon_lr: float,
    recon_optimiser: dict[str, Any] | None = None,
) -> Refinement:
    """Seed 000 Alg. 1 on a batch: ``start``/``current`` ``(B, W)`` bool; ``recon`` is copied, not changed."""
    trial = copy.deepcopy(recon).train()
    width = start.shape[1]
    acs = torch.zeros(start.shape, dtype=torch.bool)
    acs[:, torch.from_numpy(acs_lines(width, num_acs))] = True
    free = (~acs).float()
    # Remark 3: xi_0 = +0.1 on the lines of the initial mask, -0.1 elsewhere.
    xi = torch.where(torch.from_numpy(start), 0.1, -0.1).requires_grad_(True)
    labels = torch.from_numpy(current.astype(np.float32))
    mask_optimiser = torch.optim.RMSprop([xi], lr=mask_lr)
    recon_steps = torch.optim.RMSprop(trial.parameters(), lr=recon_lr)
    if recon_optimiser is not None:
        # One RMSprop for U across warm-up and batches (its running averages carry over): a fresh one
        # takes first steps of 10 x lr, which wrecked a warmed-up U-Net within T = 20 steps.
        recon_steps.load_state_dict(copy.deepcopy(recon_optimiser))
        for group in recon_steps.param_groups:
            group["lr"] = recon_lr
    for _ in range(iterations):
        probability = torch.sigmoid(xi)
        hard = topk_plan(probability.detach(), acs, budget).float()
        # Straight-through (seed 000 section 2.2): forward the exact-budget binary mask, backward identity.
        binary = torch.where(acs, torch.ones_like(hard), hard + probability - probability.detach())
        fidelity = nrmse_items(reconstruct_straight_through(trial, batch, binary), batch.target).sum()
        sparsity = alpha * (probability * free).sum()
        agreement = (
            nn.functional.binary_cross_entropy(probability, labels, reduction="none").mean(dim=1).sum()
        )
        loss = fidelity + sparsity + consistency * agreement
        mask_optimiser.zero_grad()
        recon_steps.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        mask_optimiser.step()
        recon_steps.step()
    with torch.no_grad():
        probability = torch.sigmoid(xi)
        masks = topk_plan(probability, acs, budget).numpy()
        line_ratio = float(((probability >= 0.5) | acs).float().mean())
    return Refinement(masks, trial, line_ratio, copy.deepcopy(recon_steps.state_dict()))


def warm_up(
    recon: nn.Module,
    dataset: SliceSource,
    *,
    steps: int,
    batch_size: int,
    acceleration: float,
    num_acs: int,
    lr: float,
    rng: np.random.Generator,
) -> dict[str, Any] | None:
    """Section 2.2's ``U_0``: ``steps`` RMSprop steps of NRMSE on vd-random masks (in place). Returns the
    optimiser's state, which the co-training continues from (``None`` for no steps)."""
    if steps == 0:
        return None
    width = dataset.slices[0].kspace.shape[-1]
    optimiser = torch.optim.RMSprop(recon.parameters(), lr=lr)
    recon.train()
    for _ in range(steps):
        indices = rng.choice(len(dataset.slices), size=min(batch_size, len(dataset.slices)), replace=False)
        masks = make_mask(
            RANDOM_FAMILY,
            width=width,
            acceleration=acceleration,
            num_acs=num_acs,
            rng=rng,
            batch=len(indices),
        )
        batch = stack_slices(dataset, indices.tolist())
        loss = nrmse_items(
            reconstruct_masked(recon, batch, torch.from_numpy(masks.astype(np.float32))), batch.target
        )
        optimiser.zero_grad()
        loss.mean().backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    return copy.deepcopy(optimiser.state_dict())


__all__ = [
    "ALPHA_GRID_4X",
    "ALPHA_GRID_8X",
    "ALPHA_SCALE",
    "DEFAULT_ALPHA_START",
    "RANDOM_FAMILY",
    "SEED000_ALPHA_START",
    "Refinement",
    "SliceBatch",
    "alpha_grid",
    "check_recon_masks_input",
    "default_alpha_grid",
    "degenerate",
    "mask_losses",
    "next_alpha_index",
    "nrmse_items",
    "reconstruct_masked",
    "reconstruct_straight_through",
    "refine_masks",
    "stack_slices",
    "warm_up",
]
