"""Iterative gradient sampling (seed 002 Alg. 1, eq. 9): the line order and the one score vector it serves.

Each round relaxes the current binary pattern ``w (W,)`` to a float tensor with ``requires_grad``, runs the
frozen pipeline (:func:`kadapt.trainer.igs.pipeline.run_pipeline`) over the whole training set in
mini-batches and accumulates ``dL/dw`` of the dataset-mean task loss (each batch's mean loss weighted by its
size, so the batch size does not change the sum); then eq. 9 adds the free line with the most negative
accumulated gradient (:func:`next_line`; exact ties go to the line nearest the centre ``W // 2``, then the
lower ky: deterministic). Gradients only flow to the mask (``torch.autograd.grad``); the models' own
parameters are never touched.

Start (Alg. 1 lines 1-2): the paper starts from the single centre line ``w[N/2] = 1`` because the gradient
of the null pattern is zero. kadapt's served patterns always hold the centred ACS block
(:func:`kadapt.masks.acs_mask`, which contains ``W // 2``), so IGS starts from that block; with
``num_acs = 1`` this is exactly Alg. 1's start. Acceleration counts the ACS lines (``round(W / R)`` lines in
all), so R's pattern is the ACS block plus the first ``round(W / R) - num_acs`` picks.

One run serves every R: Alg. 1 is sequential, so its run to ``N_s`` lines passes through the pattern of
every smaller budget. :func:`igs_scores` turns the order into distinct scores (ACS first, then the picks in
order, then the never-picked lines by the last round's gradient, most negative first -- what the next
round would most likely pick, used only when the sampler must serve more lines than were picked, e.g.
after acquired lines); the sampler's top-k of them (:func:`kadapt.bundles.sampler_masks.served_fixed_plan`)
is the IGS pattern at every budget reached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import JsonValue

from kadapt.errors import InvalidInputError
from kadapt.masks import acs_mask, line_budget
from kadapt.trainer.igs.pipeline import (
    TASK_OF_LOSS,
    Reconstructor,
    TaskModel,
    batches,
    check_frozen,
    run_pipeline,
    task_loss,
    zero_filled_rss,
)

__all__ = ["IgsHistory", "accumulated_gradient", "igs_scores", "learn_igs", "next_line"]


@dataclass(frozen=True, eq=False)
class IgsHistory:
    """What an IGS run did: ``order`` the picked ky lines (ACS excluded), and per round ``losses`` (the
    dataset-mean task loss of the pattern before that round's pick) and ``gradients`` (the accumulated
    ``dL/dw``, ``(W,)`` float64)."""

    width: int
    num_acs: int
    loss: str
    samples: int
    order: tuple[int, ...]
    losses: tuple[float, ...]
    gradients: tuple[NDArray[np.float64], ...] = field(repr=False)

    def pattern(self, lines: int) -> NDArray[np.bool_]:
        """The ``(W,)`` pattern of ``lines`` lines in all: ACS plus the first ``lines - num_acs`` picks."""
        extra = lines - self.num_acs
        if not 0 <= extra <= len(self.order):
            raise InvalidInputError(
                f"an IGS run of {len(self.order)} picks after {self.num_acs} ACS lines has no {lines}-line "
                "pattern"
            )
        mask = acs_mask(self.width, self.num_acs)
        mask[list(self.order[:extra])] = True
        return mask

    def summary(self) -> dict[str, JsonValue]:
        """The manifest part: order, per-round losses, sample count (gradients left out)."""
        return {
            "order": [int(line) for line in self.order],
            "round_losses": [float(value) for value in self.losses],
            "train_samples": self.samples,
        }


def _require_reiterable(samples: Iterable[Any]) -> None:
    if iter(samples) is samples:
        raise InvalidInputError(
            "IGS passes over the training set once per round: give a re-iterable collection (a list, a "
            "dataset object), not a one-shot iterator or generator"
        )


def accumulated_gradient(
    samples: Iterable[tuple[Any, Any, Any]],
    pattern: NDArray[np.bool_],
    loss: str,
    *,
    task_model: TaskModel | None = None,
    recon: Reconstructor = zero_filled_rss,
    batch_size: int = 8,
) -> tuple[NDArray[np.float64], float, int]:
    """``(dL/dw (W,) float64, L, n)``: the gradient of the dataset-mean task loss ``L`` w.r.t. the relaxed
    line mask at the binary ``pattern (W,)``, over the ``n`` items of ``samples`` (seed 002 Alg. 1 lines
    4-7, accumulated over mini-batches of ``batch_size``)."""
    if loss not in TASK_OF_LOSS:
        raise InvalidInputError(f"unknown IGS task loss {loss!r}; use one of {sorted(TASK_OF_LOSS)}")
    weights = np.asarray(pattern, dtype=np.bool_)
    total = np.zeros(weights.shape[0], dtype=np.float64)
    loss_sum = 0.0
    count = 0
    for batch in batches(samples, batch_size):
        mask = torch.tensor(weights, dtype=torch.float32, requires_grad=True)
        _, prediction = run_pipeline(batch, mask, recon, task_model)
        value = task_loss(loss, prediction, batch) * batch.size
        (gradient,) = torch.autograd.grad(value, mask)
        total += gradient.detach().to(torch.float64).numpy()
        loss_sum += float(value.detach())
        count += batch.size
    if count == 0:
        raise InvalidInputError("IGS needs at least one training sample")
    return total / count, loss_sum / count, count


def next_line(gradient: NDArray[np.floating[Any]], pattern: NDArray[np.bool_]) -> int:
    """Seed 002 eq. 9: the free line (``pattern`` False) with the most negative ``gradient (W,)``; exact
    ties go to the line nearest ``W // 2``, then the lower ky. :class:`InvalidInputError` if none is free
    or the gradient is not finite on the free lines."""
    values = np.asarray(gradient, dtype=np.float64)
    taken = np.asarray(pattern, dtype=np.bool_)
    if values.shape != taken.shape or values.ndim != 1:
        raise InvalidInputError(f"gradient {values.shape} and pattern {taken.shape} must both be (W,)")
    free = np.flatnonzero(~taken)
    if free.size == 0:
        raise InvalidInputError("no free line left to pick")
    if not np.all(np.isfinite(values[free])):
        raise InvalidInputError("the accumulated mask gradient is not finite on the free lines")
    width = values.shape[0]
    order = np.lexsort((free, np.abs(free - width // 2), values[free]))
    return int(free[order[0]])


def igs_scores(
    order: Sequence[int], width: int, num_acs: int, last_gradient: NDArray[np.floating[Any]] | None = None
) -> NDArray[np.float32]:
    """Distinct scores ``(W,)`` float32 in ``(0, 1]``: ACS lines highest, then ``order`` in pick order,
    then the other lines by ``last_gradient`` ascending (ties as :func:`next_line`; by distance to the
    centre when ``None``). The served top-k at any budget up to ``num_acs + len(order)`` is the IGS
    pattern of that budget."""
    acs = acs_mask(width, num_acs)
    picked = [int(line) for line in order]
    if len(set(picked)) != len(picked) or any(not 0 <= ky < width or acs[ky] for ky in picked):
        raise InvalidInputError(
            f"an IGS order must hold distinct non-ACS lines in [0, {width}), got {picked}"
        )
    rest = np.setdiff1d(np.flatnonzero(~acs), picked)
    keys = np.zeros(width) if last_gradient is None else np.asarray(last_gradient, dtype=np.float64)
    rest = rest[np.lexsort((rest, np.abs(rest - width // 2), keys[rest]))]
    ranking = [*np.flatnonzero(acs).tolist(), *picked, *rest.tolist()]
    scores = np.empty(width, dtype=np.float32)
    scores[ranking] = np.arange(width, 0, -1, dtype=np.float32) / width
    return scores


def learn_igs(
    samples: Iterable[tuple[Any, Any, Any]],
    loss: str,
    *,
    accelerations: Sequence[float],
    num_acs: int,
    task_model: TaskModel | None = None,
    recon: Reconstructor = zero_filled_rss,
    batch_size: int = 8,
    picks: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[NDArray[np.float32], IgsHistory]:
    """Run IGS (seed 002 Alg. 1) on ``samples`` and return ``(scores (W,) float32, history)``.

    ``samples``: a re-iterable collection of ``(kspace (C, H, W), target (H, W), label)``
    (:class:`kadapt.trainer.igs.pipeline.TaskSample`), passed over once per round in its own order;
    ``loss``: a :data:`TASK_OF_LOSS` name; ``task_model``: the frozen model (eval mode; required for
    ``dice`` and ``cross-entropy``); ``recon``: the frozen reconstruction (zero-filled RSS by default).
    ``picks``: lines added after the ACS block, by default enough for the smallest R of
    ``accelerations`` (``round(W / R) - num_acs``). ``progress`` gets one message per round.
    """
    _require_reiterable(samples)
    if loss not in TASK_OF_LOSS:
        raise InvalidInputError(f"unknown IGS task loss {loss!r}; use one of {sorted(TASK_OF_LOSS)}")
    if task_model is None and TASK_OF_LOSS[loss] != "reconstruction":
        raise InvalidInputError(f"the {loss!r} loss ({TASK_OF_LOSS[loss]}) needs a frozen task model")
    check_frozen(task_model, recon)
    if not accelerations:
        raise InvalidInputError("IGS needs at least one acceleration")
    first = next(iter(samples), None)
    if first is None:
        raise InvalidInputError("IGS needs at least one training sample")
    width = int(np.shape(first[0])[-1])
    budget = max(line_budget(width, r, num_acs) for r in accelerations)
    rounds = budget - num_acs if picks is None else picks
    if not 0 <= rounds <= width - num_acs:
        raise InvalidInputError(f"cannot pick {rounds} lines: {width - num_acs} are free (W={width})")
    pattern = acs_mask(width, num_acs)
    order: list[int] = []
    losses: list[float] = []
    gradients: list[NDArray[np.float64]] = []
    count = 0
    for step in range(rounds):
        gradient, mean_loss, count = accumulated_gradient(
            samples, pattern, loss, task_model=task_model, recon=recon, batch_size=batch_size
        )
        line = next_line(gradient, pattern)
        pattern[line] = True
        order.append(line)
        losses.append(mean_loss)
        gradients.append(gradient)
        if progress is not None:
            progress(f"igs {loss}: round {step + 1}/{rounds}: ky {line}, loss {mean_loss:.5f}")
    if rounds == 0:
        count = sum(1 for _ in samples)
    history = IgsHistory(width, num_acs, loss, count, tuple(order), tuple(losses), tuple(gradients))
    scores = igs_scores(order, width, num_acs, gradients[-1] if gradients else None)
    return scores, history
