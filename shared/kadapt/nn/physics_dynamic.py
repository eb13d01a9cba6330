"""Dynamic (2D+t) SENSE physics: the 2D operators of :mod:`kadapt.nn.physics`, frames folded into the batch.

Cine data (seed 004 section 2.1, eq. 1-2) is a stack of ``T`` 2D acquisitions with static coil maps: frame
``t`` obeys ``y_t = M_t F S x_t``. Layout (architecture.md sec. 3, ``frame`` before ``coil``): k-space
``(B, T, C, H, W, 2)``, images ``(B, T, H, W, 2)``, static sens ``(B, C, H, W, 2)``, masks ``(B, T, W)``
(ky lines per frame) or ``(B, T, H, W)`` (2D points per frame), float 0/1. Every function folds ``(B, T)``
into one batch axis, broadcasts the maps over frames and calls the 2D operator, so the dynamic model
exports exactly as the 2D ones do (real tensors, FFTs as GEMMs under
:func:`kadapt.kspace.torch_fft.dfts_as_matmuls`).
"""

from __future__ import annotations

from torch import Tensor

from kadapt.errors import InvalidInputError
from kadapt.nn.physics import sense_adjoint, sense_forward, sense_normal

__all__ = [
    "dynamic_sense_adjoint",
    "dynamic_sense_forward",
    "dynamic_sense_normal",
    "fold_frames",
    "fold_mask",
    "fold_sens",
    "unfold_frames",
]


def fold_frames(x: Tensor) -> Tensor:
    """``(B, T, ...) -> (B * T, ...)``."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unfold_frames(x: Tensor, batch: int) -> Tensor:
    """``(B * T, ...) -> (B, T, ...)`` for a known ``batch`` ``B``."""
    return x.reshape(batch, x.shape[0] // batch, *x.shape[1:])


def fold_sens(sens: Tensor, frames: int) -> Tensor:
    """Static maps ``(B, C, H, W, 2)`` repeated over frames -> ``(B * T, C, H, W, 2)``."""
    if sens.ndim != 5 or sens.shape[-1] != 2:
        raise InvalidInputError(f"sens needs shape (B, C, H, W, 2), got {tuple(sens.shape)}")
    return fold_frames(sens.unsqueeze(1).expand(sens.shape[0], frames, *sens.shape[1:]))


def fold_mask(mask: Tensor, height: int, width: int) -> Tensor:
    """Fold lines ``(B, T, W)`` -> ``(B*T, 1, 1, W, 1)``, points ``(B, T, H, W)`` -> ``(B*T, 1, H, W, 1)``

    The result broadcasts against folded k-space ``(B * T, C, H, W, 2)`` as :mod:`kadapt.nn.physics` wants
    (the line form keeps :func:`kadapt.nn.physics.sense_normal`'s 1D fast path).
    """
    if mask.ndim == 3 and mask.shape[-1] == width:
        return mask.reshape(mask.shape[0] * mask.shape[1], 1, 1, width, 1)
    if mask.ndim == 4 and mask.shape[-2:] == (height, width):
        return mask.reshape(mask.shape[0] * mask.shape[1], 1, height, width, 1)
    raise InvalidInputError(
        f"dynamic mask must be (B, T, W={width}) or (B, T, H={height}, W={width}), got {tuple(mask.shape)}"
    )


def _require_dynamic(x: Tensor, ndim: int, name: str, layout: str) -> None:
    if x.is_complex() or not x.is_floating_point() or x.ndim != ndim or x.shape[-1] != 2:
        raise InvalidInputError(f"{name} needs a real tensor {layout}, got {x.dtype} {tuple(x.shape)}")


def _check_frames(mask: Tensor, batch: int, frames: int) -> None:
    if mask.shape[0] != batch or mask.shape[1] != frames:
        raise InvalidInputError(f"mask {tuple(mask.shape)} does not start with (B, T) = ({batch}, {frames})")


def dynamic_sense_forward(image: Tensor, sens: Tensor, mask: Tensor) -> Tensor:
    """``M_t F S x_t`` per frame: image ``(B, T, H, W, 2)``, sens ``(B, C, H, W, 2)``, mask ``(B, T, W)`` or
    ``(B, T, H, W)`` -> k-space ``(B, T, C, H, W, 2)`` (seed 004 eq. 1, frame by frame)."""
    _require_dynamic(image, 5, "dynamic_sense_forward image", "(B, T, H, W, 2)")
    batch, frames, height, width, _ = image.shape
    _check_frames(mask, batch, frames)
    folded = sense_forward(fold_frames(image), fold_sens(sens, frames), fold_mask(mask, height, width))
    return unfold_frames(folded, batch)


def dynamic_sense_adjoint(kspace: Tensor, sens: Tensor, mask: Tensor) -> Tensor:
    """``sum_c conj(S_c) F^H (M_t y_{t,c})`` per frame: k-space ``(B, T, C, H, W, 2)``,
    sens ``(B, C, H, W, 2)``, mask ``(B, T, W)`` or ``(B, T, H, W)`` -> image ``(B, T, H, W, 2)``.

    With fully sampled k-space and the acquired-so-far mask this is the zero-filled SENSE image of the data
    so far, the ADS encoder input (seed 004 section 2.3).
    """
    _require_dynamic(kspace, 6, "dynamic_sense_adjoint kspace", "(B, T, C, H, W, 2)")
    batch, frames, _, height, width, _ = kspace.shape
    _check_frames(mask, batch, frames)
    folded = sense_adjoint(fold_frames(kspace), fold_sens(sens, frames), fold_mask(mask, height, width))
    return unfold_frames(folded, batch)


def dynamic_sense_normal(image: Tensor, sens: Tensor, mask: Tensor) -> Tensor:
    """``A^H A x`` per frame, image ``(B, T, H, W, 2)`` -> ``(B, T, H, W, 2)``; line masks take the 1D fast
    path of :func:`kadapt.nn.physics.sense_normal`."""
    _require_dynamic(image, 5, "dynamic_sense_normal image", "(B, T, H, W, 2)")
    batch, frames, height, width, _ = image.shape
    _check_frames(mask, batch, frames)
    folded = sense_normal(fold_frames(image), fold_sens(sens, frames), fold_mask(mask, height, width))
    return unfold_frames(folded, batch)
