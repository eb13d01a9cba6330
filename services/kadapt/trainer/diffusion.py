"""Diffusion-prior pattern learning (seed 003, issue 8): the entry points a CLI and the bench call.

- :func:`train_score`: a small EDM score network (:mod:`kadapt.nn.score`) on the project's coil-combined
  complex images (:func:`kadapt.trainer.diffusion_data.load_diffusion_slices`, 64x64 on the CPU), EDM loss
  with ``ln sigma ~ N(-1.2, 1.2^2)``, Adam, random flips, an exponential moving average of the weights
  (seed 003 section 4 trains with EDM's defaults and an EMA).
- :func:`learn_diffusion_pattern`: seed 003 eq. 15 -- ``min_theta E ||x_0 - x~_0||^2`` with ``x~_0`` the
  one-step posterior mean of eq. 14 (:func:`kadapt.trainer.diffusion_pattern.posterior_mean`), the pattern
  drawn from :class:`~kadapt.trainer.diffusion_pattern.BernoulliPattern` (eq. 16-17), ``ln sigma ~
  N(-1.2, 1.2^2)`` (``q_t``, section 4), ``y = A x_0`` (``sigma_y = 0``), ``gamma = 1``, ``tau = 1``, batch 1,
  Adam lr 1e-2, logits from 0. Training uses the single-coil ``A = P F`` of appendix B.3 by default (the
  authors found it faster and better); ``operator="multi-coil"`` uses each slice's ``M F S``. Returns the
  served scores (the logits): ``(W,)`` for line patterns, ``(H, W)`` for point patterns.
- :func:`dps_recon`: Alg. 1 posterior sampling of multi-coil measurements (:mod:`.diffusion_dps`).

All randomness comes from the ``torch.Generator`` passed in. The score network is frozen while a pattern
is learned; only the logits get gradients (through the likelihood gradient, a second-order derivative of
the network -- seed 003 section 5's memory cost).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from kadapt.errors import InvalidInputError
from kadapt.nn.score import EDMDenoiser, ScoreNetConfig, edm_loss
from kadapt.trainer.diffusion_data import DiffusionSlice, stack_images, stack_measurement_inputs
from kadapt.trainer.diffusion_dps import dps_sample
from kadapt.trainer.diffusion_pattern import BernoulliPattern, PatternKind, measure, posterior_mean

__all__ = [
    "PatternConfig",
    "ScoreTrainConfig",
    "dps_recon",
    "learn_diffusion_pattern",
    "pattern_step",
    "train_score",
]

#: ``on_step(step, loss)`` progress callback.
StepCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class ScoreTrainConfig:
    """Score-network training: EDM loss (``p_mean``, ``p_std``), Adam ``lr``, ``steps`` of ``batch_size``
    images, weight EMA ``ema_decay`` (the returned network is the average), random flips."""

    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    p_mean: float = -1.2
    p_std: float = 1.2
    ema_decay: float = 0.999
    flips: bool = True
    network: ScoreNetConfig = field(default_factory=ScoreNetConfig)


@dataclass(frozen=True)
class PatternConfig:
    """Pattern learning (seed 003 section 4 defaults): ``kind`` lines or points, acceleration ``R`` and
    ``num_acs`` (ACS counted in the budget), ``steps`` Adam steps of ``batch_size`` images (an epoch is
    ``len(slices)`` steps at batch 1), ``lr``, likelihood step ``gamma``, Gumbel ``tau``, noise ``p_mean`` /
    ``p_std``, the training ``operator``."""

    acceleration: float
    num_acs: int
    kind: PatternKind = "lines"
    steps: int = 200
    batch_size: int = 1
    lr: float = 1e-2
    gamma: float = 1.0
    tau: float = 1.0
    p_mean: float = -1.2
    p_std: float = 1.2
    operator: str = "single-coil"


def _flip(images: Tensor, generator: torch.Generator) -> Tensor:
    flips = torch.rand((2,), generator=generator) < 0.5
    dims = [dim for dim, flip in zip((-2, -1), flips.tolist(), strict=True) if flip]
    return images.flip(dims) if dims else images


def train_score(
    images: Tensor,
    config: ScoreTrainConfig,
    generator: torch.Generator,
    *,
    on_step: StepCallback | None = None,
) -> EDMDenoiser:
    """Train an :class:`EDMDenoiser` on clean ``images (N, 2, H, W)`` (max magnitude about 1); returns the
    weight-averaged network in eval mode. Batches are drawn with replacement from ``generator``."""
    if images.ndim != 4 or images.shape[1] != config.network.channels or images.shape[0] < 1:
        raise InvalidInputError(f"train_score needs images (N, 2, H, W), got {tuple(images.shape)}")
    init_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):  # weight init from the generator, global state restored
        torch.manual_seed(init_seed)
        denoiser = EDMDenoiser(config.network)
    average = copy.deepcopy(denoiser)
    for parameter in average.parameters():
        parameter.requires_grad_(False)
    optimiser = torch.optim.Adam(denoiser.parameters(), lr=config.lr)
    denoiser.train()
    for step in range(config.steps):
        index = torch.randint(0, images.shape[0], (config.batch_size,), generator=generator)
        batch = images[index]
        if config.flips:
            batch = _flip(batch, generator)
        loss = edm_loss(denoiser, batch, generator, p_mean=config.p_mean, p_std=config.p_std)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        with torch.no_grad():
            for target, source in zip(average.parameters(), denoiser.parameters(), strict=True):
                target.lerp_(source, 1.0 - config.ema_decay)
        if on_step is not None:
            on_step(step, float(loss.detach()))
    return average.eval()


def _training_operator(slices: Sequence[DiffusionSlice], operator: str) -> tuple[Tensor, Tensor]:
    images = stack_images(slices)
    if operator == "single-coil":  # appendix B.3: A(x) = P F x, no coil maps during training
        ones = torch.zeros((1, 1, *images.shape[-2:], 2), dtype=images.dtype)
        ones[..., 0] = 1.0
        return images, ones
    if operator == "multi-coil":
        _, sens = stack_measurement_inputs(slices)
        return images, sens
    raise InvalidInputError(f"unknown training operator {operator!r}; use 'single-coil' or 'multi-coil'")


def pattern_step(
    denoiser: EDMDenoiser,
    pattern: BernoulliPattern,
    optimiser: torch.optim.Optimizer,
    clean: Tensor,
    sens: Tensor,
    config: PatternConfig,
    generator: torch.Generator,
) -> float:
    """One Adam step of seed 003 eq. 15 on ``clean (B, 2, H, W)`` with maps ``sens (B or 1, C, H, W, 2)``;
    returns the loss ``||x_0 - x~_0||^2`` summed over pixels, averaged over the batch."""
    batch = clean.shape[0]
    normal = torch.randn((batch, 1, 1, 1), generator=generator, dtype=clean.dtype)
    sigma = (normal * config.p_std + config.p_mean).exp()  # q_t: ln sigma ~ N(P_mean, P_std^2)
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
    noisy = (clean + sigma * noise).requires_grad_(True)  # x_t ~ p_t(x_t | x_0)
    mask = pattern.sample(batch, generator, config.tau)  # eq. 16-17
    measurement = measure(clean, sens, mask)  # y = A(x_0), sigma_y = 0
    estimate = posterior_mean(denoiser, noisy, sigma, measurement, sens, mask, config.gamma)  # eq. 14
    loss = (estimate - clean).pow(2).sum() / batch  # eq. 15
    optimiser.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    optimiser.step()
    return float(loss.detach())


def learn_diffusion_pattern(
    denoiser: EDMDenoiser,
    slices: Sequence[DiffusionSlice],
    config: PatternConfig,
    generator: torch.Generator,
    *,
    on_step: StepCallback | None = None,
) -> NDArray[np.float32]:
    """Learn a seed 003 pattern on the training ``slices``; returns the served scores (the logits), ``(W,)``
    for lines or ``(H, W)`` for points. Serve with ``served_pattern(scores, kind, num_acs, R)`` (or, for
    lines, as a ``fixed-mask`` bundle: :func:`kadapt.trainer.population.write_fixed_mask_bundle`). Items
    are visited in an order drawn from ``generator``, an epoch at a time."""
    if not slices:
        raise InvalidInputError("learn_diffusion_pattern needs at least one training slice")
    images, sens = _training_operator(slices, config.operator)
    height, width = images.shape[-2:]
    pattern = BernoulliPattern(config.kind, height, width, config.acceleration, config.num_acs)
    denoiser.eval()
    for parameter in denoiser.parameters():
        parameter.requires_grad_(False)
    optimiser = torch.optim.Adam(pattern.parameters(), lr=config.lr)
    order = torch.empty(0, dtype=torch.long)
    for step in range(config.steps):
        if order.numel() < config.batch_size:
            order = torch.cat((order, torch.randperm(images.shape[0], generator=generator)))
        index, order = order[: config.batch_size], order[config.batch_size :]
        maps = sens if sens.shape[0] == 1 else sens[index]
        loss = pattern_step(denoiser, pattern, optimiser, images[index], maps, config, generator)
        if on_step is not None:
            on_step(step, loss)
    return pattern.scores()


# DPS reconstruction (seed 003 Alg. 1): the evaluation entry point, defaults 100 steps, rho = 10.
dps_recon = dps_sample
