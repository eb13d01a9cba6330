"""What ``kadapt train ads`` optimises: the dynamic reconstruction with its mask source, and the loss.

:class:`DynamicRecon` is vSHARP 2D+t refining the ACS maps with the SMP (seed 004 sections 2.2 and 2.4),
the module the dynamic ``vsharp`` bundle exports. :class:`FramePattern` is the learned non-adaptive
"Opt" pattern (seed 004 appendix B: LOUPE logits ``(T, W)``, rescaled and binarised like ADS).
:class:`AdsTrainingModel` joins a reconstruction with its sampler (``ads`` cascade, ``opt`` pattern, or
none when masks come from families) so one state dict / optimiser covers the run. :func:`dynamic_loss`
is seed 004 eq. 5 with frames folded into the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kadapt.errors import InvalidInputError
from kadapt.masks import acs_mask, line_budget
from kadapt.masks.mechanics import budget_split, sparsity_for
from kadapt.masks.torch_ops import loupe_rescale, stochastic_threshold_binarise, topk_plan
from kadapt.nn.ads import ADSSampler
from kadapt.nn.losses import DualDomainLoss
from kadapt.nn.smp import SensitivityMapPredictor
from kadapt.nn.vsharp_dynamic import VSharpDynamic
from kadapt.trainer.ads_data import CineBatch, apply_mask


class DynamicRecon(nn.Module):
    """``masked_kspace (B, T, C, H, W, 2), mask (B, T, W), sens (B, C, H, W, 2) -> image (B, T, H, W, 2)``:
    the SMP refines the (static, frame-averaged ACS) maps, VSharpDynamic reconstructs with them."""

    def __init__(self, recon: VSharpDynamic, smp: SensitivityMapPredictor) -> None:
        super().__init__()
        self.recon = recon
        self.smp = smp

    def forward(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> Tensor:
        image: Tensor = self.recon(masked_kspace, mask, self.smp(sens))
        return image

    def unroll(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> tuple[list[Tensor], Tensor]:
        """Every unrolled step's image ``(B, T, H, W, 2)`` (deep supervision) and the refined maps."""
        maps = self.smp(sens)
        steps: list[Tensor] = self.recon.unroll_outputs(masked_kspace, mask, maps)
        return steps, maps


def build_recon(model_params: dict[str, Any], smp_params: dict[str, Any]) -> DynamicRecon:
    """:class:`DynamicRecon` from the config's ``model`` and ``smp`` sections."""
    try:
        return DynamicRecon(VSharpDynamic(**model_params), SensitivityMapPredictor(**smp_params))
    except TypeError as error:
        raise InvalidInputError(f"bad model / smp hyper-parameters: {error}") from error


class FramePattern(nn.Module):
    """LOUPE line logits per frame ``(T, W)`` (``unified``: one row ``(1, W)`` shared by every frame).

    Training masks rescale ``sigmoid(slope * logits)`` over the free lines to the budget (seed 004 Alg.
    A1) and binarise with the slope-``threshold_slope`` stochastic straight-through rule (Alg. A2 / A3),
    as the ADS cascade does; served masks are the exact top-k per frame (:meth:`scores`).
    """

    def __init__(
        self,
        frames: int,
        width: int,
        *,
        unified: bool,
        generator: torch.Generator,
        slope: float = 5.0,
        threshold_slope: float = 10.0,
    ) -> None:
        super().__init__()
        self.frames, self.width = frames, width
        self.slope, self.threshold_slope = float(slope), float(threshold_slope)
        rows = 1 if unified else frames
        uniform = torch.rand(rows, width, generator=generator) * 0.9 + 0.05
        self.logits = nn.Parameter(torch.logit(uniform) / self.slope)

    def scores(self) -> Tensor:
        """Served scores ``(T, W)``: ``slope * logits`` (monotone in the probabilities)."""
        return (self.slope * self.logits).expand(self.frames, self.width)

    def masks(
        self, batch: int, acceleration: float, num_acs: int, *, train: bool, generator: torch.Generator | None
    ) -> Tensor:
        """``(B, T, W)`` float 0/1 masks with exactly (eval) or in expectation (train) ``round(W / R)`` lines
        per frame, the ACS block always in."""
        budget = line_budget(self.width, acceleration, num_acs)
        acs = torch.from_numpy(acs_mask(self.width, num_acs)).to(self.logits.device)
        acquired = acs.expand(batch, self.frames, self.width)
        if not train:
            served = self.scores().detach().expand(batch, self.frames, self.width)
            return topk_plan(served, acquired, budget).to(self.logits.dtype)
        if generator is None:
            raise InvalidInputError("training masks need a torch.Generator")
        free = ~acquired
        probabilities = torch.sigmoid(self.scores()).expand(batch, self.frames, self.width)
        rescaled = loupe_rescale(probabilities, sparsity_for(budget, num_acs, self.width), free=free)
        bits = stochastic_threshold_binarise(rescaled, generator, self.threshold_slope)
        return torch.where(acquired, torch.ones_like(bits), bits * free.to(bits.dtype))


class AdsTrainingModel(nn.Module):
    """The reconstruction plus its learned sampler (``ads`` / ``opt``; ``None`` for mask families)."""

    def __init__(self, recon: DynamicRecon, sampler: ADSSampler | FramePattern | None, num_acs: int) -> None:
        super().__init__()
        self.recon = recon
        self.sampler = sampler
        self.num_acs = num_acs

    def learned_masks(
        self, batch: CineBatch, acceleration: float, *, train: bool, generator: torch.Generator | None
    ) -> Tensor:
        """The sampler's masks ``(B, T, W)`` for ``batch`` at R (ADS: after its last cascade)."""
        size = batch.kspace.shape[0]
        if isinstance(self.sampler, FramePattern):
            return self.sampler.masks(size, acceleration, self.num_acs, train=train, generator=generator)
        if not isinstance(self.sampler, ADSSampler):
            raise InvalidInputError("this run has no learned sampler; its masks come from families")
        rounds = self.ads_masks(batch, acceleration, train=train, generator=generator)
        return rounds[-1]

    def ads_masks(
        self, batch: CineBatch, acceleration: float, *, train: bool, generator: torch.Generator | None
    ) -> list[Tensor]:
        """The ADS cascade's masks after each round, from ACS-only initial masks (seed 004 Alg. A1): the
        ``round(W / R) - num_acs`` new lines per frame split by :func:`budget_split` over the cascades."""
        if not isinstance(self.sampler, ADSSampler):
            raise InvalidInputError("ads_masks needs an ADS sampler")
        size, frames, _coils, _height, width = batch.kspace.shape[:5]
        budget = line_budget(width, acceleration, self.num_acs)
        new_lines = budget_split(budget - self.num_acs, self.sampler.cascades)
        acs = torch.from_numpy(acs_mask(width, self.num_acs)).to(batch.kspace)
        initial = acs.expand(size, frames, width).contiguous()
        masks: list[Tensor] = self.sampler(
            batch.kspace, initial, batch.sens, new_lines, train=train, generator=generator
        )
        return masks


def dynamic_loss(
    loss: DualDomainLoss,
    steps: list[Tensor],
    maps: Tensor,
    masked_kspace: Tensor,
    mask: Tensor,
    target: Tensor,
) -> dict[str, Tensor]:
    """Seed 004 eq. 5 on 2D+t: ``loss.terms`` with the frames folded into the batch.

    ``steps`` every unrolled image ``(B, T, H, W, 2)`` (weights ``10^((j - T) / (T - 1))``), ``maps``
    ``(B, C, H, W, 2)`` the SMP's maps (repeated over frames for the k-space term), ``masked_kspace``
    ``(B, T, C, H, W, 2)``, ``mask`` ``(B, T, W)``, ``target`` RSS ``(B, T, H, W)``. SSIM's data range is
    each case's maximum over all its frames (the volume-level range of the metrics).
    """
    size, frames = target.shape[:2]
    folded = [step.flatten(0, 1) for step in steps]
    maps_folded = maps.unsqueeze(1).expand(size, frames, *maps.shape[1:]).flatten(0, 1)
    mask_folded = mask.flatten(0, 1)[:, None, None, :, None]
    data_range = target.detach().flatten(1).amax(dim=1).repeat_interleave(frames)
    return loss.terms(
        folded,
        target.flatten(0, 1),
        kspace=masked_kspace.flatten(0, 1),
        sens=maps_folded,
        mask=mask_folded,
        data_range=data_range,
    )


def training_step_loss(
    model: AdsTrainingModel, loss: DualDomainLoss, batch: CineBatch, mask: Tensor
) -> dict[str, Tensor]:
    """The loss terms of one batch reconstructed from ``mask (B, T, W)`` (float; carries the sampler's
    straight-through gradient when learned)."""
    masked = apply_mask(batch.kspace, mask)
    steps, maps = model.recon.unroll(masked, mask, batch.sens)
    return dynamic_loss(loss, steps, maps, masked, mask, batch.target)
