"""Seed 003's sampling-pattern distribution and its one-step posterior-mean objective (eq. 14-17).

- :class:`BernoulliPattern`: one logit ``theta`` per ky line (``kind="lines"``, shape ``(W,)``, the
  paper's "2D" patterns) or per k-space point (``kind="points"``, ``(H, W)``, the paper's "3D"
  patterns); ``theta = 0`` at the start (section 4). ``sigmoid(theta)`` over the free locations is
  LOUPE-rescaled to the budget's mean (eq. 16), sampled with the Gumbel straight-through estimator
  (eq. 17, temperature ``tau``), and the central ACS block (lines, or a ``num_acs x num_acs`` square of
  points) is always sampled (section 4: "a central 16-pixel wide region that is always fully sampled").
  The budget counts the ACS (architecture.md section 3): the expected number of sampled locations is
  exactly ``round(W / R)`` lines or ``round(H W / R)`` points; the served pattern (:meth:`served_mask`)
  is the deterministic top-k of the logits, exact for every R.
- :func:`posterior_mean`: eq. 14, ``x_t + sigma^2 s(x_t) - gamma grad_{x_t} ||A(x0_hat) - y||^2`` with
  ``x0_hat = x_t + sigma^2 s(x_t)`` (eq. 7, the EDM denoiser's output), kept differentiable
  (``create_graph``) so eq. 15's loss reaches the pattern logits through the likelihood gradient.
- :func:`measure`: the operator ``A(x) = M F S x`` (eq. 10) on the network's ``(B, 2, H, W)`` layout.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from kadapt.errors import InvalidInputError
from kadapt.masks import acs_mask, acs_square, line_budget, point_budget
from kadapt.masks.mechanics import sparsity_for
from kadapt.masks.mechanics import topk_plan as numpy_topk_plan
from kadapt.masks.torch_ops import gumbel_straight_through, loupe_rescale
from kadapt.nn.physics import sense_forward
from kadapt.nn.score import EDMDenoiser
from kadapt.nn.unet import channels_last_to_image

__all__ = ["BernoulliPattern", "PatternKind", "measure", "posterior_mean", "served_pattern"]

PatternKind = Literal["lines", "points"]
_PROBABILITY_EPS = 1e-6


class BernoulliPattern(nn.Module):
    """Seed 003 section 3.2's pattern distribution over a ``height x width`` k-space at acceleration R.

    ``logits`` is ``(W,)`` for lines, ``(H, W)`` for points, zero-initialised. ``budget`` is the number of
    sampled lines / points, ACS included; ``acs`` the bool ACS pattern of the same shape."""

    def __init__(self, kind: PatternKind, height: int, width: int, acceleration: float, num_acs: int) -> None:
        super().__init__()
        self.kind: PatternKind = kind
        self.height, self.width = height, width
        if kind == "lines":
            self.budget = line_budget(width, acceleration, num_acs)
            acs = torch.from_numpy(acs_mask(width, num_acs))
        elif kind == "points":
            self.budget = point_budget(height, width, acceleration, num_acs)
            acs = torch.from_numpy(acs_square(height, width, num_acs))
        else:
            raise InvalidInputError(f"unknown pattern kind {kind!r}; use 'lines' or 'points'")
        self.acceleration = float(acceleration)
        self.num_acs = num_acs
        self.register_buffer("acs", acs)
        self.logits = nn.Parameter(torch.zeros(acs.shape))

    @property
    def acs_pattern(self) -> Tensor:
        """The ACS pattern, bool, shaped like :attr:`logits`."""
        acs = self.acs
        if not isinstance(acs, Tensor):  # registered buffer; narrows nn.Module's attribute type
            raise InvalidInputError("pattern has no ACS buffer")
        return acs

    def probabilities(self) -> Tensor:
        """eq. 16: ``sigmoid(theta)`` LOUPE-rescaled over the free locations to the mean that yields
        ``budget - |ACS|`` new locations in expectation; ACS locations 1. Shaped like :attr:`logits`."""
        acs = self.acs_pattern.reshape(-1)
        count = acs.numel()
        sparsity = sparsity_for(self.budget, int(acs.sum()), count)
        rescaled = loupe_rescale(torch.sigmoid(self.logits.reshape(-1)), sparsity, free=~acs)
        return torch.where(acs, torch.ones_like(rescaled), rescaled).reshape(self.logits.shape)

    def sample(self, batch: int, generator: torch.Generator, tau: float = 1.0) -> Tensor:
        """``batch`` binary patterns (eq. 17, Gumbel straight-through, gradients to :attr:`logits`) as a
        physics mask: ``(B, 1, 1, W, 1)`` for lines, ``(B, 1, H, W, 1)`` for points; ACS always 1."""
        probabilities = self.probabilities().clamp(_PROBABILITY_EPS, 1.0 - _PROBABILITY_EPS)
        logits = torch.logit(probabilities).expand(batch, *probabilities.shape)
        bits = gumbel_straight_through(logits, generator, tau)
        bits = torch.where(self.acs_pattern, torch.ones_like(bits), bits)
        if self.kind == "lines":
            return bits[:, None, None, :, None]
        return bits[:, None, :, :, None]

    def scores(self) -> NDArray[np.float32]:
        """The served scores: the logits, ``(W,)`` or ``(H, W)`` float32 (eq. 16 is monotone in them)."""
        values: NDArray[np.float32] = self.logits.detach().cpu().numpy().astype(np.float32)
        return values

    def served_mask(self, acceleration: float | None = None) -> NDArray[np.bool_]:
        """The deterministic pattern: ACS plus the top-scored free locations, exactly the budget at
        ``acceleration`` (default the trained R). ``(W,)`` or ``(H, W)`` bool."""
        return served_pattern(self.scores(), self.kind, self.num_acs, acceleration or self.acceleration)


def served_pattern(
    scores: NDArray[np.floating], kind: PatternKind, num_acs: int, acceleration: float
) -> NDArray[np.bool_]:
    """ACS plus the top-scored free locations of ``scores`` (``(W,)`` lines, ``(H, W)`` points), exactly
    ``round(W / R)`` lines or ``round(H W / R)`` points (ties to the lower flat index)."""
    values = np.asarray(scores, dtype=np.float64)
    if kind == "lines" and values.ndim == 1:
        acs = acs_mask(values.shape[0], num_acs)
        budget = line_budget(values.shape[0], acceleration, num_acs)
    elif kind == "points" and values.ndim == 2:
        acs = acs_square(values.shape[0], values.shape[1], num_acs)
        budget = point_budget(values.shape[0], values.shape[1], acceleration, num_acs)
    else:
        raise InvalidInputError(f"{kind} scores of shape {values.shape}: lines need (W,), points (H, W)")
    chosen = numpy_topk_plan(values.reshape(-1), acs.reshape(-1), budget)
    return chosen.reshape(values.shape)


def measure(image: Tensor, sens: Tensor, mask: Tensor) -> Tensor:
    """``A x = M F S x`` (seed 003 eq. 10): ``image (B, 2, H, W)``, ``sens (B or 1, C, H, W, 2)``, ``mask``
    ``(B, 1, 1 or H, W, 1)`` -> k-space ``(B, C, H, W, 2)``. Single-coil ``A = M F`` is ``sens`` of ones."""
    physics_image = channels_last_to_image(image)
    maps = sens.expand(image.shape[0], *sens.shape[1:])
    return sense_forward(physics_image, maps, mask)


def posterior_mean(
    denoiser: EDMDenoiser,
    noisy: Tensor,
    sigma: Tensor,
    measurement: Tensor,
    sens: Tensor,
    mask: Tensor,
    gamma: float,
    *,
    create_graph: bool = True,
) -> Tensor:
    """Seed 003 eq. 14: ``x_t + sigma^2 s(x_t) - gamma grad_{x_t} ||A(x0_hat) - y||^2`` ``(B, 2, H, W)``.

    ``noisy`` is ``x_t (B, 2, H, W)`` (it must require grad), ``sigma (B, 1, 1, 1)``, ``measurement`` ``y``
    ``(B, C, H, W, 2)``; ``x0_hat = x_t + sigma^2 s(x_t)`` (eq. 7) is the denoiser's output. The gradient is
    of the summed squared residual over the batch, i.e. per item (items are independent). With
    ``create_graph`` the result is differentiable in ``mask`` (and ``y``), through the gradient too."""
    if not noisy.requires_grad:
        raise InvalidInputError("posterior_mean needs x_t with requires_grad (the likelihood is a gradient)")
    denoised = denoiser(noisy, sigma)  # eq. 7: x_t + sigma^2 s(x_t)
    residual = measure(denoised, sens, mask) - measurement
    (likelihood,) = torch.autograd.grad((residual**2).sum(), noisy, create_graph=create_graph)
    estimate: Tensor = denoised - gamma * likelihood  # eq. 14
    return estimate
