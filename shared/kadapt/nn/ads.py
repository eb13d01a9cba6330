"""Adaptive Dynamic Sampler (ADS, seed 004 section 2.3, Alg. A1-A5): a cascade of learned line planners
for cine MRI.

Cascade ``k`` sees the zero-filled SENSE image of the data acquired so far (``image (B, T, H, W, 2)``, the
ACS-estimated maps of the frame-averaged ACS, dynamic.md C2) and the mask acquired so far, and scores every
not-yet-acquired line. Each cascade is an encoder and an MLP (section 2.3):

- encoder: ``num_pool_layers`` (l_enc = 3) scales of one 3D conv 3x3x3 + InstanceNorm3d + ReLU, max-pooling
  (over H and W; T = 8 frames is short) between scales, as a U-Net encoder;
- pooling to a small feature vector (mean over H; W and, when frame-specific, T kept as features), so the
  MLP stays small enough to train on a CPU (the paper flattens the whole 512 x 246 image);
- MLP of ``mlp_layers`` (l_mlp = 3) linear layers, leaky ReLU 0.01 between them, to one logit per line and
  frame (frame-specific, Alg. A4) or per line (unified, Alg. A5: one row for all frames, T pooled first);
  ``dim="2d"`` scores every (ky, kx) point per frame instead;
- softplus, and acquired entries zeroed (Alg. A4 lines 14-17).

:meth:`ADSSampler.step_scores` is that scoring (scale-free: the image is divided by its mean magnitude) and
is what one exported cascade file computes. :meth:`ADSSampler.plan_step` turns scores into the next mask:
training rescales them over the free entries to the per-frame budget (LOUPE, Alg. A1) and binarises with
the slope-10 stochastic straight-through estimator (Alg. A2 / A3); evaluation takes the exact top-k per
frame (handbook "Sampling-mask mechanics": deterministic serving, every batch item its full budget).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional

from kadapt.errors import InvalidAccelerationError, InvalidInputError
from kadapt.masks.torch_ops import loupe_rescale, stochastic_threshold_binarise
from kadapt.nn.physics import complex_abs
from kadapt.nn.physics_dynamic import dynamic_sense_adjoint
from kadapt.nn.unet3d import ConvBlock3D, image_to_channels_3d

if TYPE_CHECKING:
    from kadapt.nn.ads_export import AdsExport

__all__ = ["ADSCascade", "ADSSampler", "export_ads_steps", "normalise_mean_magnitude", "top_new_per_frame"]

Pattern = Literal["frame-specific", "unified"]
Dim = Literal["1d", "2d"]

#: Added to the mean magnitude before dividing by it (an all-zero image stays all zero).
MAGNITUDE_EPS = 1e-8


def normalise_mean_magnitude(image: Tensor) -> Tensor:
    """``image (B, T, H, W, 2)`` divided by its per-item mean magnitude (+ eps): the encoder input is
    scale-free, so the gateway's numpy image needs no scaling convention."""
    magnitude = complex_abs(image, eps=1e-24).mean(dim=(1, 2, 3))
    return image / (magnitude + MAGNITUDE_EPS).reshape(-1, 1, 1, 1, 1)


class ADSCascade(nn.Module):
    """One cascade's encoder + MLP: image ``(B, T, H, W, 2)`` -> logits ``(B, rows, *line_shape)`` with
    ``rows`` = T (frame-specific) or 1 (unified) and ``line_shape`` ``(W,)`` (1d) or ``(H, W)`` (2d)."""

    def __init__(
        self,
        frames: int,
        height: int,
        width: int,
        pattern: Pattern,
        dim: Dim,
        chans: int,
        num_pool_layers: int,
        mlp_layers: int,
        mlp_hidden: int,
    ) -> None:
        super().__init__()
        self.pattern, self.dim = pattern, dim
        self.frames, self.height, self.width = frames, height, width
        layers: list[nn.Module] = []
        previous, widths = 2, chans
        for scale in range(num_pool_layers):
            if scale > 0:
                layers.append(nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2)))
            layers.append(ConvBlock3D(previous, widths, layers=1, negative_slope=0.0))
            previous, widths = widths, widths * 2
        self.encoder = nn.Sequential(*layers)
        reduced_width = width // 2 ** (num_pool_layers - 1)
        rows = frames if pattern == "frame-specific" else 1
        self.rows = rows
        features = previous * reduced_width * rows
        outputs = rows * (width if dim == "1d" else height * width)
        mlp: list[nn.Module] = []
        sizes = [features] + [mlp_hidden] * (mlp_layers - 1) + [outputs]
        for index, (size_in, size_out) in enumerate(itertools.pairwise(sizes)):
            if index > 0:
                mlp.append(nn.LeakyReLU(0.01))
            mlp.append(nn.Linear(size_in, size_out))
        self.mlp = nn.Sequential(*mlp)

    def forward(self, image: Tensor) -> Tensor:
        """``(B, T, H, W, 2)`` (normalised) -> logits ``(B, rows, W)`` or ``(B, rows, H, W)``."""
        features = self.encoder(image_to_channels_3d(image))  # (B, F, T, H', W')
        features = features.mean(dim=3)  # global pooling over H: (B, F, T, W')
        if self.rows == 1:
            features = features.mean(dim=2, keepdim=True)  # unified: pool T too
        logits: Tensor = self.mlp(features.flatten(1))
        line_shape = (self.width,) if self.dim == "1d" else (self.height, self.width)
        return logits.reshape(image.shape[0], self.rows, *line_shape)


class ADSSampler(nn.Module):
    """ADS with ``cascades`` (N) cascades for cine stacks ``frames`` x ``height`` x ``width`` (dynamic.md C2).

    Masks are float 0/1: ``(B, T, W)`` (``dim="1d"``, ky lines per frame) or ``(B, T, H, W)`` (``"2d"``).
    ``chans`` is the encoder's first width (doubled per scale), ``num_pool_layers`` its scales (l_enc),
    ``mlp_layers`` (l_mlp) and ``mlp_hidden`` the MLP's depth and width.
    """

    def __init__(
        self,
        frames: int,
        height: int,
        width: int,
        cascades: int = 2,
        pattern: Pattern = "frame-specific",
        dim: Dim = "1d",
        chans: int = 8,
        num_pool_layers: int = 3,
        mlp_layers: int = 3,
        mlp_hidden: int = 256,
    ) -> None:
        super().__init__()
        if pattern not in ("frame-specific", "unified") or dim not in ("1d", "2d"):
            raise InvalidInputError(f"ADS pattern {pattern!r} / dim {dim!r} unknown")
        if min(frames, height, width, cascades, chans, num_pool_layers, mlp_layers, mlp_hidden) < 1:
            raise InvalidInputError("ADSSampler sizes must all be >= 1")
        if min(height, width) < 2 ** (num_pool_layers - 1):
            raise InvalidInputError(
                f"H, W = {height}, {width} too small for {num_pool_layers} encoder scales"
            )
        self.frames, self.height, self.width = frames, height, width
        self.pattern: Pattern = pattern
        self.dim: Dim = dim
        self.cascade_steps = nn.ModuleList(
            ADSCascade(frames, height, width, pattern, dim, chans, num_pool_layers, mlp_layers, mlp_hidden)
            for _ in range(cascades)
        )

    @property
    def cascades(self) -> int:
        """N, the number of cascades (plan rounds)."""
        return len(self.cascade_steps)

    def mask_shape(self, batch: int) -> tuple[int, ...]:
        """``(B, T, W)`` (1d) or ``(B, T, H, W)`` (2d)."""
        tail = (self.width,) if self.dim == "1d" else (self.height, self.width)
        return (batch, self.frames, *tail)

    def _check(self, k: int, image: Tensor, mask: Tensor) -> None:
        if not 0 <= k < self.cascades:
            raise InvalidInputError(f"cascade {k} out of range 0..{self.cascades - 1}")
        expected_image = (image.shape[0], self.frames, self.height, self.width, 2)
        if tuple(image.shape) != expected_image or tuple(mask.shape) != self.mask_shape(image.shape[0]):
            raise InvalidInputError(
                f"ADS needs image {expected_image} and mask {self.mask_shape(image.shape[0])}, got "
                f"{tuple(image.shape)} and {tuple(mask.shape)}"
            )

    def step_scores(self, k: int, image: Tensor, mask: Tensor) -> Tensor:
        """Cascade ``k``'s non-negative scores, shape of ``mask``, zero on acquired entries (higher = acquire
        first; unified: one row repeated over T). ``image (B, T, H, W, 2)`` is the SENSE image so far."""
        self._check(k, image, mask)
        logits = self.cascade_steps[k](normalise_mean_magnitude(image))
        scores = functional.softplus(logits).expand(mask.shape)
        return scores * (1.0 - mask)

    def plan_step(
        self,
        k: int,
        image: Tensor,
        mask: Tensor,
        new_per_frame: int,
        *,
        train: bool,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Cascade ``k``: ``mask`` plus ``new_per_frame`` new entries per frame -> new mask (mask's shape).

        ``train``: LOUPE rescale of the scores over the free entries to mean ``new_per_frame / free`` (Alg.
        A1), stochastic slope-10 straight-through binarisation (Alg. A2 / A3, needs ``generator``), OR'd with
        ``mask``; differentiable, the expected count per frame is ``new_per_frame``. Otherwise exact top-k
        per frame among free entries (no gradient), the same entries in every frame when unified.
        """
        scores = self.step_scores(k, image, mask)
        batch, frames = mask.shape[:2]
        flat_scores = scores.reshape(batch, frames, -1)
        flat_mask = mask.reshape(batch, frames, -1)
        if self.pattern == "unified":  # one row: free where free in every frame (Alg. A5)
            flat_scores = flat_scores[:, :1]
            flat_mask = flat_mask.amax(dim=1, keepdim=True)
        if train:
            chosen = self._sample(flat_scores, flat_mask, new_per_frame, generator)
            new = flat_mask + (1.0 - flat_mask) * chosen
        else:
            with torch.no_grad():
                new = top_new_per_frame(flat_scores, flat_mask > 0.5, new_per_frame).to(mask.dtype)
        return new.expand(batch, frames, new.shape[-1]).reshape(mask.shape)

    @staticmethod
    def _sample(
        scores: Tensor, mask: Tensor, new_per_frame: int, generator: torch.Generator | None
    ) -> Tensor:
        if generator is None:
            raise InvalidInputError("plan_step(train=True) needs a torch.Generator")
        free = mask < 0.5
        free_count = free.sum(dim=-1).to(scores.dtype)
        if bool((free_count < new_per_frame).any()):
            raise InvalidAccelerationError(f"a frame has fewer than {new_per_frame} free entries")
        sparsity = new_per_frame / free_count.clamp_min(1.0)
        probabilities = loupe_rescale(scores, sparsity, free=free)
        return stochastic_threshold_binarise(probabilities, generator)

    def forward(
        self,
        kspace_full: Tensor,
        initial_mask: Tensor,
        sens_for_encoder: Tensor,
        new_lines: Sequence[int],
        *,
        train: bool,
        generator: torch.Generator | None = None,
    ) -> list[Tensor]:
        """Run every cascade (Alg. A4 / A5): fully sampled ``kspace_full (B, T, C, H, W, 2)``,
        ``initial_mask`` (ACS), ``sens_for_encoder (B, C, H, W, 2)`` (frame-averaged ACS maps),
        ``new_lines[k]`` new entries per frame for cascade k -> the mask after each cascade. Each encoder
        input is ``dynamic_sense_adjoint(kspace_full, sens, mask_so_far)`` (seed 004 eq. 4)."""
        if len(new_lines) != self.cascades:
            raise InvalidInputError(
                f"new_lines {list(new_lines)} needs one entry per cascade ({self.cascades})"
            )
        mask = initial_mask
        masks: list[Tensor] = []
        for k, count in enumerate(new_lines):
            image = dynamic_sense_adjoint(kspace_full, sens_for_encoder, mask)
            mask = self.plan_step(k, image, mask, int(count), train=train, generator=generator)
            masks.append(mask)
        return masks


def top_new_per_frame(scores: Tensor, acquired: Tensor, count: int) -> Tensor:
    """``acquired`` plus the ``count`` best-scoring free entries of every row: ``scores (B, R, n)``,
    ``acquired (B, R, n)`` bool -> bool ``(B, R, n)``.

    Every row of every batch item gets exactly ``count`` new entries (rows may hold different acquired
    counts). Ties go to the lower index and NaN ranks below every number, like
    :func:`kadapt.masks.torch_ops.topk_plan`. Raises InvalidAccelerationError when a row has fewer free
    entries than ``count``.
    """
    free = ~acquired
    if count < 0 or bool((free.sum(dim=-1) < count).any()):
        raise InvalidAccelerationError(f"cannot add {count} entries: a row has fewer free entries")
    lowest = torch.finfo(scores.dtype).min
    ranked = torch.where(torch.isnan(scores), torch.full_like(scores, lowest), scores)
    ranked = torch.where(free, ranked, torch.full_like(scores, float("-inf")))
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices[..., :count]
    chosen = torch.zeros_like(acquired).scatter(-1, order, True)
    return acquired | chosen


def export_ads_steps(
    model: ADSSampler, out_dir: Path, frames: int, height: int, width: int, **kwargs: Any
) -> AdsExport:
    """Write ``cascade-0.onnx`` .. ``cascade-{N-1}.onnx`` into ``out_dir`` (see
    :func:`kadapt.nn.ads_export.export_ads_steps`; imported lazily, it pulls in onnxruntime)."""
    from kadapt.nn import ads_export  # lazy: keeps onnxruntime out of plain ADS users

    return ads_export.export_ads_steps(model, out_dir, frames, height, width, **kwargs)
