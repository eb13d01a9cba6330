"""Downstream task models for IGS (seed 002 section III-B/C) and their small training function.

- :class:`TaskSegmenter`: fastMRI's U-Net (:class:`kadapt.nn.unet.UNet`, 1 input channel, ``K`` class
  logits); seed 002 segments with a U-Net.
- :class:`TaskClassifier`: a small CNN (conv 3x3 + LeakyReLU + 2x2 average pooling per level, then global
  average and max pooling, one linear layer) in place of seed 002's ResNet-18, at a size two CPU cores train.

Both take magnitude images ``(B, H, W)`` and standardise each image (zero mean, unit standard deviation, as
seed 002 normalises its scans), so one model sees fully sampled and undersampled images on one scale.

:func:`train_task_model` follows seed 002's protocol: Adam (lr 1e-3, betas 0.9 / 0.999, batch 8) on the
fully sampled images -- the pipeline's reconstruction with every line, so training and IGS see the same
kind of image -- or, with ``mask``, fine-tuning on one learned pattern. Batches are drawn from an explicit
``torch.Generator``; initial weights from :func:`make_segmenter` / :func:`make_classifier`'s ``seed``
(a forked RNG, no global seeding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from kadapt.errors import InvalidInputError
from kadapt.nn.unet import UNet
from kadapt.trainer.igs.pipeline import Reconstructor, collate, run_pipeline, task_loss, zero_filled_rss

__all__ = [
    "TaskClassifier",
    "TaskSegmenter",
    "make_classifier",
    "make_segmenter",
    "standardise",
    "train_task_model",
]

_EPS = 1e-6


def standardise(image: Tensor) -> Tensor:
    """``(B, H, W)`` -> ``(B, 1, H, W)``, each image shifted to zero mean and scaled to unit std."""
    if image.ndim != 3 or not image.is_floating_point():
        raise InvalidInputError(
            f"task models take real images (B, H, W), got {image.dtype} {tuple(image.shape)}"
        )
    mean = image.mean(dim=(1, 2), keepdim=True)
    std = image.std(dim=(1, 2), keepdim=True)
    return ((image - mean) / (std + _EPS)).unsqueeze(1)


class TaskSegmenter(nn.Module):
    """U-Net segmenter: image ``(B, H, W)`` -> class logits ``(B, K, H, W)`` (class 0 the background)."""

    def __init__(self, num_classes: int, chans: int = 16, num_pool_layers: int = 3) -> None:
        super().__init__()
        if num_classes < 2:
            raise InvalidInputError(
                f"a segmenter needs >= 2 classes (background included), got {num_classes}"
            )
        self.num_classes = num_classes
        self.unet = UNet(1, num_classes, chans=chans, num_pool_layers=num_pool_layers)

    def forward(self, image: Tensor) -> Tensor:
        """``(B, H, W) -> (B, K, H, W)``."""
        logits: Tensor = self.unet(standardise(image))
        return logits


class TaskClassifier(nn.Module):
    """Small CNN classifier: image ``(B, H, W)`` -> class logits ``(B, K)``.

    ``num_pool_layers`` levels of conv 3x3 (``chans`` doubling per level) + LeakyReLU 0.2 + 2x2 average
    pooling; global average and max pooling (a small lesion survives the max) concatenated; linear head.
    """

    def __init__(self, num_classes: int = 2, chans: int = 16, num_pool_layers: int = 3) -> None:
        super().__init__()
        if num_classes < 2 or chans < 1 or num_pool_layers < 1:
            raise InvalidInputError(
                f"TaskClassifier needs num_classes >= 2, chans >= 1, num_pool_layers >= 1; got "
                f"{num_classes}, {chans}, {num_pool_layers}"
            )
        layers: list[nn.Module] = []
        width, previous = chans, 1
        for _ in range(num_pool_layers):
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.LeakyReLU(0.2), nn.AvgPool2d(2)]
            previous, width = width, width * 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * previous, num_classes)
        self.num_classes = num_classes

    def forward(self, image: Tensor) -> Tensor:
        """``(B, H, W) -> (B, K)``."""
        features = self.features(standardise(image))
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        logits: Tensor = self.head(pooled)
        return logits


def make_segmenter(num_classes: int, seed: int, **params: Any) -> TaskSegmenter:
    """A :class:`TaskSegmenter` initialised from ``seed`` (forked RNG; ``params`` to its constructor)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TaskSegmenter(num_classes, **params)


def make_classifier(num_classes: int, seed: int, **params: Any) -> TaskClassifier:
    """A :class:`TaskClassifier` initialised from ``seed`` (forked RNG; ``params`` to its constructor)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TaskClassifier(num_classes, **params)


def train_task_model(
    model: nn.Module,
    samples: Sequence[tuple[Any, Any, Any]],
    loss: str,
    *,
    steps: int,
    generator: torch.Generator,
    batch_size: int = 8,
    lr: float = 1e-3,
    mask: NDArray[np.bool_] | None = None,
    recon: Reconstructor = zero_filled_rss,
) -> list[float]:
    """Train ``model`` for ``steps`` Adam steps on ``loss`` (``dice`` / ``cross-entropy`` /
    ``l1`` / ``ssim``) and return the per-step batch losses; the model is left in eval mode.

    Inputs are ``recon`` of the k-space under ``mask (W,)`` -- all lines (fully sampled, seed 002's first
    stage) when ``None``, one learned pattern for seed 002's fine-tuning. Batches: successive slices of
    random permutations of ``samples`` drawn with ``generator``.
    """
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise InvalidInputError(
            f"training needs steps, batch_size >= 1 and lr > 0; got {steps}, {batch_size}, {lr}"
        )
    if not samples:
        raise InvalidInputError("training needs at least one sample")
    width = int(np.shape(samples[0][0])[-1])
    lines = np.ones(width, dtype=np.bool_) if mask is None else np.asarray(mask, dtype=np.bool_)
    if lines.shape != (width,):
        raise InvalidInputError(f"the training mask must be (W,) = ({width},), got {lines.shape}")
    weights = torch.from_numpy(lines.astype(np.float32))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    model.train()
    history: list[float] = []
    queue: list[int] = []
    size = min(batch_size, len(samples))
    for _ in range(steps):
        while len(queue) < size:
            queue += torch.randperm(len(samples), generator=generator).tolist()
        chosen, queue = queue[:size], queue[size:]
        batch = collate([samples[i] for i in chosen])
        _, prediction = run_pipeline(batch, weights, recon, model)
        value = task_loss(loss, prediction, batch)
        optimiser.zero_grad(set_to_none=True)
        value.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        history.append(float(value.detach()))
    model.eval()
    return history
