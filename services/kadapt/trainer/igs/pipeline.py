"""The frozen task pipeline IGS differentiates: line mask -> masked k-space -> reconstruction -> task model
-> task loss (seed 002 Alg. 1 lines 4-6, eq. 6; losses eq. 2-5).

Data interface (deliberately small, so any task dataset plugs in): an iterable of :class:`TaskSample`
(or plain 3-tuples) ``(kspace (C, H, W) complex64, target (H, W) float, label)`` with fastMRI's layout
(readout kx along H, phase encode ky along W, the axis lines are chosen along). ``target`` is the fully
sampled reference magnitude (used by the reconstruction losses); ``label`` is ``None`` for
reconstruction, an integer class map ``(H, W)`` for segmentation, an ``int`` class for classification.

- :func:`zero_filled_rss` is the default reconstruction: root-sum-of-squares of the zero-filled coil
  images (seed 002's ``F^-1(F(X) w)``, eq. 6, per coil). Any frozen callable
  ``(masked_kspace (B, C, H, W) complex64, mask (W,) float) -> (B, H, W) float`` can replace it, e.g. a
  learned reconstruction through :class:`kadapt.trainer.igs.recon.LearnedRecon`.
- The task model is a frozen callable ``image (B, H, W) -> prediction``: segmentation logits
  ``(B, K, H, W)``, class logits ``(B, K)``; for the reconstruction losses ``None`` (identity).
- :data:`TASK_OF_LOSS` maps the loss names ``l1``, ``ssim`` (reconstruction, eq. 4-5, from
  :mod:`kadapt.nn.losses`), ``dice`` (soft Dice with +1 smoothing, eq. 2, over the foreground classes)
  and ``cross-entropy`` (eq. 3) to their task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.nn import functional

from kadapt.errors import InvalidInputError
from kadapt.kspace.torch_fft import ifft2c
from kadapt.nn.losses import l1, ssim_loss

__all__ = [
    "TASK_OF_LOSS",
    "Reconstructor",
    "TaskBatch",
    "TaskModel",
    "TaskSample",
    "batches",
    "check_frozen",
    "collate",
    "run_pipeline",
    "soft_dice_loss",
    "task_loss",
    "zero_filled_rss",
]

#: Loss name -> task (seed 002 section II-B).
TASK_OF_LOSS: dict[str, str] = {
    "l1": "reconstruction",
    "ssim": "reconstruction",
    "dice": "segmentation",
    "cross-entropy": "classification",
}

#: Soft Dice smoothing, seed 002 eq. 2's "+ 1".
DICE_SMOOTH = 1.0

TaskLabel = int | NDArray[np.integer[Any]] | None
Reconstructor = Callable[[Tensor, Tensor], Tensor]
TaskModel = Callable[[Tensor], Tensor]


class TaskSample(NamedTuple):
    """One training / validation item: ``kspace (C, H, W)`` complex, ``target (H, W)`` the fully sampled
    reference magnitude, ``label`` (``None`` | class map ``(H, W)`` | class ``int``)."""

    kspace: NDArray[np.complexfloating[Any, Any]]
    target: NDArray[np.floating[Any]]
    label: TaskLabel


@dataclass(frozen=True)
class TaskBatch:
    """Collated items: ``kspace (B, C, H, W)`` complex64, ``target (B, H, W)`` float32, ``label``
    ``None`` | ``(B, H, W)`` int64 | ``(B,)`` int64."""

    kspace: Tensor
    target: Tensor
    label: Tensor | None

    @property
    def size(self) -> int:
        return int(self.kspace.shape[0])


def collate(items: Sequence[tuple[Any, Any, Any]]) -> TaskBatch:
    """Stack ``(kspace, target, label)`` items of one geometry into a :class:`TaskBatch`.

    :class:`InvalidInputError` on mixed shapes, a target that is not ``(H, W)``, or mixed label kinds.
    """
    if not items:
        raise InvalidInputError("cannot collate an empty batch")
    kspaces = [np.asarray(item[0]) for item in items]
    shape = kspaces[0].shape
    if len(shape) != 3 or any(k.shape != shape for k in kspaces):
        raise InvalidInputError(
            f"task samples need k-space (C, H, W) of one shape, got {sorted({k.shape for k in kspaces})}"
        )
    targets = [np.asarray(item[1], dtype=np.float32) for item in items]
    if any(t.shape != shape[1:] for t in targets):
        raise InvalidInputError(
            f"task targets must be (H, W) = {shape[1:]}, got {[t.shape for t in targets]}"
        )
    kspace = torch.from_numpy(np.stack(kspaces).astype(np.complex64))
    target = torch.from_numpy(np.stack(targets))
    labels = [item[2] for item in items]
    if all(label is None for label in labels):
        return TaskBatch(kspace, target, None)
    if any(label is None for label in labels):
        raise InvalidInputError("a batch mixes labelled and unlabelled task samples")
    arrays = [np.asarray(label) for label in labels]
    if not all(np.issubdtype(a.dtype, np.integer) for a in arrays):
        raise InvalidInputError(f"task labels must be integers, got {sorted({str(a.dtype) for a in arrays})}")
    if all(a.ndim == 0 for a in arrays) or all(a.shape == shape[1:] for a in arrays):
        return TaskBatch(kspace, target, torch.from_numpy(np.stack(arrays).astype(np.int64)))
    raise InvalidInputError(
        f"task labels must all be class ints or all (H, W) = {shape[1:]} maps, "
        f"got {[a.shape for a in arrays]}"
    )


def batches(samples: Iterable[tuple[Any, Any, Any]], batch_size: int) -> Iterator[TaskBatch]:
    """Collated consecutive mini-batches of ``samples`` in their order (the last one may be smaller)."""
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    pending: list[tuple[Any, Any, Any]] = []
    for item in samples:
        pending.append(item)
        if len(pending) == batch_size:
            yield collate(pending)
            pending = []
    if pending:
        yield collate(pending)


def zero_filled_rss(masked_kspace: Tensor, mask: Tensor) -> Tensor:
    """Root-sum-of-squares of the zero-filled coil images: ``(B, C, H, W)`` complex -> ``(B, H, W)``.

    ``mask`` is unused (the k-space is already masked); it is part of the :data:`Reconstructor`
    signature. The square root sees only positive values, so exactly-zero pixels get a zero (not NaN)
    gradient (as :func:`kadapt.nn.losses.complex_magnitude`).
    """
    del mask
    if not masked_kspace.is_complex() or masked_kspace.ndim != 4:
        raise InvalidInputError(
            f"zero_filled_rss needs complex k-space (B, C, H, W), got {masked_kspace.dtype} "
            f"{tuple(masked_kspace.shape)}"
        )
    images = ifft2c(masked_kspace)
    power = (images.real.square() + images.imag.square()).sum(dim=1)
    positive = power > 0
    safe = torch.where(positive, power, torch.ones_like(power))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(power))


def check_frozen(*models: object) -> None:
    """Refuse a :class:`torch.nn.Module` in training mode: IGS and validation need frozen models (batch
    norm or dropout in training mode would make the mask gradient depend on the batch)."""
    for model in models:
        if isinstance(model, nn.Module) and model.training:
            raise InvalidInputError(
                f"{type(model).__name__} is in training mode; call .eval() on the frozen task model / recon"
            )


def run_pipeline(
    batch: TaskBatch, mask: Tensor, recon: Reconstructor, task_model: TaskModel | None
) -> tuple[Tensor, Tensor]:
    """``(image (B, H, W), prediction)`` of the batch's k-space masked by the line mask ``mask (W,)``
    (float, may require grad): ``k * m`` broadcast over coils and readout (eq. 6), then ``recon``, then
    ``task_model`` (identity when ``None``)."""
    if mask.ndim != 1 or mask.shape[0] != batch.kspace.shape[-1]:
        raise InvalidInputError(
            f"the line mask must be (W,) = ({batch.kspace.shape[-1]},), got {tuple(mask.shape)}"
        )
    # + 0.0 turns -0.0 into 0.0, so unacquired samples leak no sign (science.md, fastMRI traps).
    masked = batch.kspace * mask.to(batch.kspace.real.dtype) + 0.0
    image = recon(masked, mask)
    prediction = image if task_model is None else task_model(image)
    return image, prediction


def soft_dice_loss(logits: Tensor, labels: Tensor, smooth: float = DICE_SMOOTH) -> Tensor:
    """Seed 002 eq. 2 ``1 - (2 sum(Y P) + 1) / (sum Y + sum P + 1)`` per item and foreground class
    (``1 .. K-1``; softmax probabilities ``P`` of ``logits (B, K, H, W)``, one-hot ``Y`` of
    ``labels (B, H, W)``), mean over classes and items -> scalar."""
    if logits.ndim != 4 or logits.shape[1] < 2:
        raise InvalidInputError(f"soft Dice needs logits (B, K >= 2, H, W), got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise InvalidInputError(
            f"soft Dice labels must be (B, H, W) = {(logits.shape[0], *logits.shape[2:])}, "
            f"got {tuple(labels.shape)}"
        )
    probabilities = logits.softmax(dim=1)[:, 1:]
    onehot = functional.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probabilities.dtype)
    overlap = (probabilities * onehot).sum(dim=(2, 3))
    total = probabilities.sum(dim=(2, 3)) + onehot.sum(dim=(2, 3))
    return 1.0 - ((2.0 * overlap + smooth) / (total + smooth)).mean()


def task_loss(name: str, prediction: Tensor, batch: TaskBatch) -> Tensor:
    """The batch-mean task loss ``name`` (:data:`TASK_OF_LOSS`) of ``prediction`` -> scalar.

    ``l1`` / ``ssim``: prediction ``(B, H, W)`` against ``batch.target`` (SSIM's data range: each
    target's maximum; ``1 - SSIM`` has eq. 5's gradient); ``dice``: logits ``(B, K, H, W)`` against the
    class maps; ``cross-entropy``: logits ``(B, K)`` against the class ints.
    """
    if name not in TASK_OF_LOSS:
        raise InvalidInputError(f"unknown IGS task loss {name!r}; use one of {sorted(TASK_OF_LOSS)}")
    if name == "l1":
        return l1(prediction, batch.target)
    if name == "ssim":
        return ssim_loss(prediction, batch.target)
    label = batch.label
    if name == "dice":
        if label is None or label.ndim != 3:
            raise InvalidInputError("the dice loss needs (H, W) class maps as task labels")
        return soft_dice_loss(prediction, label)
    if label is None or label.ndim != 1:
        raise InvalidInputError("the cross-entropy loss needs class ints as task labels")
    if prediction.ndim != 2:
        raise InvalidInputError(f"cross-entropy needs class logits (B, K), got {tuple(prediction.shape)}")
    return functional.cross_entropy(prediction, label)
