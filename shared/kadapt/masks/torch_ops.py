"""Learned-sampler mechanics in torch: LOUPE rescaling, deterministic top-k planning and the
straight-through binarisers used in training (handbook science.md, "Sampling-mask mechanics").

Never imported by ``kadapt.masks`` itself: torch stays out of the gateway. Randomness comes in as an
explicit ``torch.Generator`` living on the input's device. Serving uses :func:`topk_plan` only (no
stochastic binarisation); it avoids data-dependent Python control flow when ``validate=False`` or while
torch traces / exports, so it can sit inside an exported graph.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor

from kadapt.errors import InvalidAccelerationError, InvalidInputError
from kadapt.masks.geometry import as_count
from kadapt.masks.mechanics import budget_split, check_sparsity

__all__ = [
    "StraightThroughIdentity",
    "budget_split",
    "gumbel_straight_through",
    "loupe_rescale",
    "stochastic_threshold_binarise",
    "straight_through_binarise",
    "topk_plan",
]


def loupe_rescale(probabilities: Tensor, sparsity: float | Tensor, *, free: Tensor | None = None) -> Tensor:
    """Rescale probabilities ``(..., W)`` so each item's mean over the last dim equals ``sparsity``.

    The torch twin of :func:`kadapt.masks.mechanics.loupe_rescale` (seed 000 eq. 7, seed 003 eq. 16,
    seed 004 Alg. A1), differentiable: ``p * s / p_mean`` if ``p_mean >= s`` else
    ``1 - (1 - p) * (1 - s) / (1 - p_mean)``. ``sparsity`` is a float in ``[0, 1]`` or a tensor ``(...)``
    (one per item, not range-checked to avoid a device sync). With ``free`` ``(..., W)`` bool the mean
    runs over the free lines and the other lines come out 0. Returns a tensor ``(..., W)``.
    """
    p = probabilities
    if isinstance(sparsity, Tensor):
        s = sparsity.to(dtype=p.dtype, device=p.device)
        s = s.unsqueeze(-1) if s.dim() > 0 else s
    else:
        s = torch.as_tensor(float(check_sparsity(sparsity)), dtype=p.dtype, device=p.device)
    weight = torch.ones_like(p) if free is None else free.to(dtype=p.dtype)
    if weight.shape != p.shape:
        raise InvalidInputError(f"free has shape {tuple(weight.shape)}, probabilities {tuple(p.shape)}")
    p = p * weight
    count = weight.sum(dim=-1, keepdim=True).clamp_min(1.0)
    p_mean = p.sum(dim=-1, keepdim=True) / count
    tiny = torch.finfo(p.dtype).tiny
    # Guarded denominators keep the unused branch finite, so torch.where passes no NaN gradients.
    down = p * (s / p_mean.clamp_min(tiny))
    up = 1.0 - (1.0 - p) * ((1.0 - s) / (1.0 - p_mean).clamp_min(tiny))
    return torch.where(p_mean >= s, down, up).clamp(0.0, 1.0) * weight


def _tracing() -> bool:
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling())  # type: ignore[attr-defined,no-untyped-call]


def topk_plan(scores: Tensor, acquired: Tensor, budget: int, *, validate: bool = True) -> Tensor:
    """Serving binarisation: ``acquired`` plus the top ``budget - |acquired|`` scores among free lines.

    ``scores`` ``(..., W)``, ``acquired`` ``(..., W)`` bool, ``budget`` the lines every item ends with.
    Returns a bool tensor ``(..., W)`` with exactly ``budget`` lines per item, the same as
    :func:`kadapt.masks.mechanics.topk_plan`: ties go to the lower index, NaN scores rank below every
    number. Raises InvalidAccelerationError if ``budget > W`` or (when validating
    eagerly) an item already holds more than ``budget`` lines.
    """
    if scores.shape != acquired.shape or scores.dim() < 1:
        raise InvalidInputError(
            f"scores {tuple(scores.shape)} and acquired {tuple(acquired.shape)} must share one (..., W) shape"
        )
    width = scores.shape[-1]
    lines = as_count(budget, "budget")
    if lines > width:
        raise InvalidAccelerationError(f"budget={lines} lines exceeds W={width}", budget=lines, width=width)
    taken = acquired.to(torch.bool)
    already = taken.sum(dim=-1)
    if validate and not _tracing() and bool((already > lines).any()):
        worst = int(already.max())
        raise InvalidAccelerationError(
            f"an item already holds {worst} lines, more than budget={lines} (W={width})",
            budget=lines,
            acquired=worst,
        )
    # Rank of each free line among the free lines: how many free lines beat it (higher score, or an
    # equal score at a lower index). Pairwise comparisons, O(W^2) per item, instead of a stable sort:
    # deterministic, and exportable to ONNX (aten.sort with stable=True is not).
    values = torch.where(torch.isnan(scores), torch.full_like(scores, float("-inf")), scores)
    free = ~taken
    other, this = values.unsqueeze(-2), values.unsqueeze(-1)  # (..., 1, W) other j, (..., W, 1) line i
    index = torch.arange(width, device=scores.device)
    earlier = index.unsqueeze(0) < index.unsqueeze(1)  # (W, W): j < i
    beats = ((other > this) | ((other == this) & earlier)) & free.unsqueeze(-2)
    rank = beats.sum(dim=-1)
    return taken | (free & (rank < (lines - already).unsqueeze(-1)))


class StraightThroughIdentity(torch.autograd.Function):
    """Hard threshold forward, identity backward (seed 000: binarise at 0.5, gradient passed through).

    ``StraightThroughIdentity.apply(probabilities, threshold)`` -> ``1[p >= threshold]`` in p's dtype.
    """

    @staticmethod
    def forward(ctx: Any, *args: Any, **kwargs: Any) -> Tensor:
        probabilities, threshold = cast(Tensor, args[0]), float(args[1])
        return (probabilities >= threshold).to(probabilities.dtype)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Any) -> Any:
        return grad_outputs[0], None


def straight_through_binarise(probabilities: Tensor, threshold: float = 0.5) -> Tensor:
    """``1[p >= threshold]`` ``(..., W)`` with an identity gradient (seed 000)."""
    return cast(Tensor, StraightThroughIdentity.apply(probabilities, threshold))  # type: ignore[no-untyped-call]


class _StochasticThreshold(torch.autograd.Function):
    """Seed 004 Alg. A2 / A3: forward ``1[p > u]``, backward the derivative of ``sigmoid(slope (p - u))``."""

    @staticmethod
    def forward(ctx: Any, *args: Any, **kwargs: Any) -> Tensor:
        probabilities, uniform, slope = cast(Tensor, args[0]), cast(Tensor, args[1]), float(args[2])
        ctx.save_for_backward(probabilities, uniform)
        ctx.slope = slope
        return (probabilities > uniform).to(probabilities.dtype)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Any) -> Any:
        probabilities, uniform = ctx.saved_tensors
        sigmoid = torch.sigmoid(ctx.slope * (probabilities - uniform))
        # Alg. A3: slope * exp(-slope z) / (1 + exp(-slope z))^2 = slope * sigmoid * (1 - sigmoid).
        return grad_outputs[0] * ctx.slope * sigmoid * (1.0 - sigmoid), None, None


def stochastic_threshold_binarise(
    probabilities: Tensor, generator: torch.Generator, slope: float = 10.0
) -> Tensor:
    """Training binariser of seed 004: ``1[p > u]``, ``u ~ U(0, 1)`` drawn from ``generator``, with the
    slope-``slope`` sigmoid surrogate gradient. ``probabilities`` ``(..., W)`` -> ``(..., W)`` 0/1."""
    uniform = torch.rand(
        probabilities.shape, generator=generator, dtype=probabilities.dtype, device=probabilities.device
    )
    return cast(Tensor, _StochasticThreshold.apply(probabilities, uniform, slope))  # type: ignore[no-untyped-call]


def gumbel_straight_through(logits: Tensor, generator: torch.Generator, tau: float = 1.0) -> Tensor:
    """Gumbel straight-through Bernoulli sample of seed 003 eq. 17: ``1[y >= 0.5]`` forward, ``dy`` backward.

    ``logits`` ``(..., W)`` are ``log(p / (1 - p))`` (``torch.logit(p)`` of rescaled probabilities);
    ``y = sigmoid((logits + g1 - g2) / tau)`` is eq. 17's ratio written stably, and ``g1 - g2`` of two
    Gumbel(0, 1) draws is one Logistic(0, 1) draw ``log u - log(1 - u)``. Returns ``(..., W)`` 0/1.
    """
    if not tau > 0:
        raise InvalidInputError(f"tau must be > 0, got {tau}", tau=repr(tau))
    uniform = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    uniform = uniform.clamp_min(torch.finfo(logits.dtype).tiny)
    soft = torch.sigmoid((logits + torch.log(uniform) - torch.log1p(-uniform)) / tau)
    return straight_through_binarise(soft, 0.5)
