"""The learned samplers' training steps and validation: MNet from label masks, LOUPE line logits.

- :class:`MNetLearner` alternates seed 001's two updates (eq. 3, then eq. 2) on each batch: the
  co-trained reconstruction ``f`` on the masks MNet currently plans, then ``sampler_updates`` MNet
  steps on ``BCE(MNet(z), M_label) + lambda * NRMSE(f(A^H M_hat y), x)`` with ``M_hat`` the top-k plan
  at the budget, differentiated straight through (identity to the sigmoid). Seed 000 Alg. 2's
  structure with precomputed labels: a reconstruction warmed up on variable-density random masks
  first (U_0), several MNet updates per label batch (``c``), RMSprop for MNet.
- :class:`LoupeLearner`: LOUPE's joint update of the line logits and the co-trained reconstruction on
  the reconstruction loss alone (seed 000 baseline, :class:`kadapt.trainer.population.LoupeLines`).

Both plan exactly what the sampler serves (:meth:`plan`), and :func:`validate_plans` scores those plans
with the same reconstruction on the validation split, volume by volume (fastMRI metrics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.nn import functional

from kadapt.errors import InvalidInputError
from kadapt.kspace.preprocess import acs_start
from kadapt.masks import acs_mask, line_budget, make_mask
from kadapt.masks.mechanics import topk_plan
from kadapt.masks.torch_ops import topk_plan as torch_topk_plan
from kadapt.metrics import evaluate_volume
from kadapt.nn.losses import complex_magnitude, nrmse
from kadapt.nn.mnet import MNet
from kadapt.trainer.data import Batch, PreparedSlice, SliceDataset, make_batch
from kadapt.trainer.population import LoupeLines, served_fixed_plan

VALIDATION_METRICS = ("psnr", "ssim", "nmse")
BASELINE_FAMILY = "vd-random"
PlanFunction = Callable[[Sequence[PreparedSlice], float], NDArray[np.bool_]]


def acs_block(kspace: Tensor, num_acs: int) -> Tensor:
    """The MNet input ``(B, C, H, num_acs, 2)``: the centred ACS columns of ``kspace (B, C, H, W, 2)``."""
    start = acs_start(kspace.shape[-2], num_acs)
    return kspace[:, :, :, start : start + num_acs, :]


def label_bce(logits: Tensor, labels: Tensor, num_acs: int) -> Tensor:
    """Seed 001 eq. 4, ``phi(a, M)``, over the free lines only: ``logits (B, W)``, ``labels (B, W)`` 0/1.

    The ACS lines are in every label and every plan, so they carry no information and are left out of
    the mean (their logits get no gradient); the mean runs over the ``W - num_acs`` free lines per item.
    """
    if logits.shape != labels.shape or logits.ndim != 2:
        raise InvalidInputError(
            f"label_bce needs logits and labels (B, W), got {logits.shape}, {labels.shape}"
        )
    free = torch.from_numpy(~acs_mask(logits.shape[1], num_acs)).to(logits.device)
    per_line = functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    return per_line[:, free].mean()


def straight_through_plan(logits: Tensor, num_acs: int, budget: int) -> Tensor:
    """Masks ``(B, W)`` float: forward the served top-``budget`` plan of ``logits (B, W)`` (ACS kept,
    exact budget), backward the identity to ``sigmoid(logits)`` on the free lines (seed 001 section 2.2's
    straight-through estimator; the ACS lines are fixed and get no gradient)."""
    width = logits.shape[1]
    acs = torch.from_numpy(acs_mask(width, num_acs)).to(logits.device).expand_as(logits)
    hard = torch_topk_plan(logits.detach(), acs, budget).to(logits.dtype)
    soft = torch.sigmoid(logits) * (~acs).to(logits.dtype)
    return hard + soft - soft.detach()


def reconstruct(recon: nn.Module, batch: Batch, masks: Tensor) -> Tensor:
    """``recon`` on ``batch`` (fully sampled k-space) under line ``masks (B, W)`` -> image ``(B, H, W, 2)``;
    gradients reach the masks through both the masked k-space and the mask input."""
    line_mask = masks[:, None, None, :, None]
    image: Tensor = recon(batch.masked_kspace * line_mask + 0.0, line_mask, batch.sens)
    return image


def recon_nrmse(image: Tensor, target: Tensor) -> Tensor:
    """Seed 001 eq. 2-3's ``||f(A^H M y) - x|| / ||x||`` on magnitudes ``(B, H, W)`` (the RSS target's
    phase is the SENSE phase attached in data prep, not data, so it is not asked for)."""
    return nrmse(complex_magnitude(image), complex_magnitude(target))


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No parameter gradients for ``module`` inside the block (the other model's update)."""
    flags = [parameter.requires_grad for parameter in module.parameters()]
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(module.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)


def full_batch(items: Sequence[PreparedSlice]) -> Batch:
    """``items`` with every line: k-space, maps and targets as tensors (masks are applied later)."""
    width = items[0].kspace.shape[-1]
    return make_batch(list(items), np.ones((len(items), width), dtype=np.bool_))


class SamplerLearner(Protocol):
    """What the loop drives: one update on a batch at R, the served plan, and the checkpointed state."""

    recon: nn.Module

    def train_step(
        self, items: Sequence[PreparedSlice], acceleration: float, labels: Tensor | None
    ) -> dict[str, float]: ...

    def plan(self, items: Sequence[PreparedSlice], acceleration: float) -> NDArray[np.bool_]: ...

    def warm_up(self, items: Sequence[PreparedSlice], masks: NDArray[np.bool_]) -> float: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: Mapping[str, Any]) -> None: ...


class _CoTrainedRecon:
    """The reconstruction half shared by both learners: trainable (co-trained) or frozen (a bundle)."""

    def __init__(self, recon: nn.Module, co_trained: bool, recon_lr: float) -> None:
        self.recon = recon
        self.co_trained = co_trained
        self.recon_optimiser = torch.optim.Adam(recon.parameters(), lr=recon_lr) if co_trained else None

    def recon_update(self, batch: Batch, masks: Tensor) -> float:
        """One Adam step of seed 001 eq. 3 on ``masks (B, W)`` (no-op for a frozen recon); the loss."""
        if self.recon_optimiser is None:
            return float("nan")
        self.recon.train()
        loss = recon_nrmse(reconstruct(self.recon, batch, masks.detach()), batch.target)
        self.recon_optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.recon_optimiser.step()
        return float(loss.detach())

    def warm_up(self, items: Sequence[PreparedSlice], masks: NDArray[np.bool_]) -> float:
        """Seed 000 Alg. 2's U_0: a recon step on variable-density random ``masks (B, W)``."""
        return self.recon_update(full_batch(items), torch.from_numpy(masks.astype(np.float32)))

    def _recon_state(self) -> dict[str, Any]:
        if self.recon_optimiser is None:
            return {}
        return {"recon": self.recon.state_dict(), "recon_optimiser": self.recon_optimiser.state_dict()}

    def _load_recon_state(self, state: Mapping[str, Any]) -> None:
        if self.recon_optimiser is not None:
            self.recon.load_state_dict(state["recon"])
            self.recon_optimiser.load_state_dict(state["recon_optimiser"])


class MNetLearner(_CoTrainedRecon):
    """MNet (``acs (B, C, H, A, 2) -> logits (B, W)``) trained from label masks with the recon term."""

    def __init__(
        self,
        mnet: MNet,
        recon: nn.Module,
        *,
        co_trained: bool,
        sampler_lr: float,
        recon_lr: float,
        recon_weight: float,
        sampler_updates: int,
    ) -> None:
        super().__init__(recon, co_trained, recon_lr)
        self.mnet = mnet
        self.num_acs = mnet.geometry.num_acs
        self.width = mnet.geometry.width
        # Seed 000 section 3.1 and seed 001 section 3.4 both train MNet with RMSprop.
        self.optimiser = torch.optim.RMSprop(mnet.parameters(), lr=sampler_lr)
        self.recon_weight = recon_weight
        self.sampler_updates = sampler_updates

    def train_step(
        self, items: Sequence[PreparedSlice], acceleration: float, labels: Tensor | None
    ) -> dict[str, float]:
        """Eq. 3 (recon on MNet's current plans), then ``sampler_updates`` x eq. 2; ``labels (B, W)``."""
        if labels is None:
            raise InvalidInputError("MNet training needs label masks for every batch")
        budget = line_budget(self.width, acceleration, self.num_acs)
        batch = full_batch(items)
        acs = acs_block(batch.masked_kspace, self.num_acs)
        self.mnet.eval()
        with torch.no_grad():
            current = straight_through_plan(self.mnet(acs), self.num_acs, budget)
        terms = {"recon_loss": self.recon_update(batch, current)}
        self.mnet.train()
        self.recon.eval()
        for _ in range(self.sampler_updates):
            with frozen(self.recon):
                logits = self.mnet(acs)
                bce = label_bce(logits, labels, self.num_acs)
                image = reconstruct(self.recon, batch, straight_through_plan(logits, self.num_acs, budget))
                recon_term = recon_nrmse(image, batch.target)
                loss = bce + self.recon_weight * recon_term
                self.optimiser.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
            self.optimiser.step()
        terms.update(
            bce=float(bce.detach()), recon_nrmse=float(recon_term.detach()), sampler_loss=float(loss.detach())
        )
        return terms

    def plan(self, items: Sequence[PreparedSlice], acceleration: float) -> NDArray[np.bool_]:
        """The sampler's MNet rule: ACS plus the top ``round(W / R) - A`` logits among the free lines
        (exact ties to the lower ky), per item -> ``(n, W)`` bool."""
        budget = line_budget(self.width, acceleration, self.num_acs)
        self.mnet.eval()
        with torch.no_grad():
            logits = self.mnet(acs_block(full_batch(items).masked_kspace, self.num_acs)).numpy()
        fixed = np.broadcast_to(acs_mask(self.width, self.num_acs), logits.shape)
        return np.asarray(topk_plan(logits, fixed, budget), dtype=np.bool_)

    def state(self) -> dict[str, Any]:
        return {
            "sampler": self.mnet.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            **self._recon_state(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.mnet.load_state_dict(state["sampler"])
        self.optimiser.load_state_dict(state["optimiser"])
        self._load_recon_state(state)


class LoupeLearner(_CoTrainedRecon):
    """LOUPE line logits and the reconstruction, updated jointly on the reconstruction loss."""

    def __init__(
        self,
        loupe: LoupeLines,
        recon: nn.Module,
        *,
        num_acs: int,
        co_trained: bool,
        sampler_lr: float,
        recon_lr: float,
        binariser: str,
        threshold_slope: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__(recon, co_trained, recon_lr)
        self.loupe = loupe
        self.num_acs = num_acs
        self.width = int(loupe.logits.shape[0])
        self.optimiser = torch.optim.Adam(loupe.parameters(), lr=sampler_lr)
        self.binariser = binariser
        self.threshold_slope = threshold_slope
        self.generator = generator

    def train_step(
        self, items: Sequence[PreparedSlice], acceleration: float, labels: Tensor | None
    ) -> dict[str, float]:
        """One joint step: masks sampled from the rescaled probabilities, ``NRMSE`` of the recon."""
        budget = line_budget(self.width, acceleration, self.num_acs)
        batch = full_batch(items)
        masks = self.loupe.sample_masks(
            len(items), self.num_acs, budget, binariser=self.binariser, generator=self.generator,
            threshold_slope=self.threshold_slope,
        )  # fmt: skip
        self.recon.train(self.co_trained)
        loss = recon_nrmse(reconstruct(self.recon, batch, masks), batch.target)
        self.optimiser.zero_grad(set_to_none=True)
        if self.recon_optimiser is not None:
            self.recon_optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimiser.step()
        if self.recon_optimiser is not None:
            self.recon_optimiser.step()
        return {"recon_nrmse": float(loss.detach()), "mean_lines": float(masks.detach().sum(dim=1).mean())}

    def plan(self, items: Sequence[PreparedSlice], acceleration: float) -> NDArray[np.bool_]:
        """The fixed-mask bundle's served plan (top-k of the line scores), the same for every item."""
        mask = served_fixed_plan(self.loupe.scores(), self.num_acs, acceleration)
        return np.broadcast_to(mask, (len(items), self.width)).copy()

    def state(self) -> dict[str, Any]:
        return {
            "sampler": self.loupe.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "generator": self.generator.get_state(),
            **self._recon_state(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.loupe.load_state_dict(state["sampler"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.generator.set_state(state["generator"])
        self._load_recon_state(state)


def plan_key(acceleration: float, family: str | None = None) -> str:
    """``"R4"`` (the sampler's own plans) or ``"vd-random/R4"`` (a baseline) in the metrics."""
    return f"R{acceleration:g}" if family is None else f"{family}/R{acceleration:g}"


def _plan_at(plan: PlanFunction, acceleration: float, items: Sequence[PreparedSlice]) -> NDArray[np.bool_]:
    return plan(items, acceleration)


def _same_mask(mask: NDArray[np.bool_], items: Sequence[PreparedSlice]) -> NDArray[np.bool_]:
    return np.broadcast_to(mask, (len(items), mask.shape[0])).copy()


def validate_plans(
    plan: PlanFunction,
    recon: nn.Module,
    dataset: SliceDataset,
    accelerations: Sequence[float],
    *,
    baseline_seed: int | None = None,
) -> dict[str, dict[str, float]]:
    """Volume-level fastMRI metrics of ``recon`` under ``plan(items, R) -> (n, W)`` masks, per R, averaged
    over the volumes of ``dataset`` (magnitudes times each slice's ACS scale, as the recon trainer does).

    With ``baseline_seed``, also a ``vd-random`` mask per R (one fixed draw) under the same recon, so the
    manifest shows what the learned plan adds.
    """
    num_acs, width = dataset.num_acs, dataset.geometry[2]
    plans: dict[str, Callable[[Sequence[PreparedSlice]], NDArray[np.bool_]]] = {}
    for index, acceleration in enumerate(accelerations):
        plans[plan_key(acceleration)] = partial(_plan_at, plan, acceleration)
        if baseline_seed is not None:
            rng = np.random.default_rng(np.random.SeedSequence(baseline_seed, spawn_key=(index,)))
            fixed = make_mask(
                BASELINE_FAMILY, width=width, acceleration=acceleration, num_acs=num_acs, rng=rng
            )
            plans[plan_key(acceleration, BASELINE_FAMILY)] = partial(
                _same_mask, np.asarray(fixed, dtype=np.bool_)
            )
    was_training = recon.training
    recon.eval()
    results: dict[str, dict[str, float]] = {}
    try:
        for key, make_plan in plans.items():
            per_volume: list[dict[str, float]] = []
            for indices in dataset.volumes.values():
                items = [dataset.slices[i] for i in indices]
                masks = make_plan(items)
                batch = full_batch(items)
                with torch.no_grad():
                    image = reconstruct(recon, batch, torch.from_numpy(masks.astype(np.float32)))
                scales = torch.tensor([item.scale for item in items]).view(-1, 1, 1)
                prediction = (complex_magnitude(image) * scales).numpy()
                target = (complex_magnitude(batch.target) * scales).numpy()
                per_volume.append(evaluate_volume(target, prediction))
            results[key] = {
                name: float(np.mean([m[name] for m in per_volume])) for name in VALIDATION_METRICS
            }
    finally:
        recon.train(was_training)
    return results


def selection_score(metrics: Mapping[str, Mapping[str, float]], accelerations: Sequence[float]) -> float:
    """The best-checkpoint criterion: mean SSIM of the sampler's own plans over every R."""
    return float(np.mean([metrics[plan_key(r)]["ssim"] for r in accelerations]))
