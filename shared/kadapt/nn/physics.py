"""SENSE physics on real tensors: complex arithmetic, the multi-coil operator and a fixed-step CG.

Every complex value is a real tensor with a trailing axis of 2 (real part, imaginary part), so the whole
module exports to ONNX through the dynamo exporter; the FFT itself is
:func:`kadapt.kspace.torch_fft.fft2c_real`, which takes a complex view only around ``torch.fft``.
Layout is fastMRI's: images ``(B, H, W, 2)``, coil sensitivities and coil images ``(B, C, H, W, 2)``,
k-space ``(B, C, H, W, 2)`` with the readout kx along H and the phase encode ky along W.

The operator is the usual SENSE model (seed 001 eq. 5: ``y = M F S x``): ``A x = M F (S_c x)`` for every
coil ``c``, with ``M`` a sampling mask broadcastable to ``(B, 1, H, W, 1)`` (``(B, 1, 1, W, 1)`` for line
masks), ``F`` the centered orthonormal 2D FFT and ``S_c`` the coil maps. Its adjoint is
``A^H y = sum_c conj(S_c) F^H (M y_c)``. Because ``M`` is 0/1 (``M^2 = M``), ``A^H A = S^H F^H M F S``.

Shapes are checked at the edge (Python-level checks on static shapes trace away in export). A mask is a
5-dim float tensor whose axes are each 1 or the k-space size: ``(B or 1, 1, H or 1, W or 1, 1)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kadapt.errors import InvalidInputError
from kadapt.kspace.torch_fft import dft_tensor, fft2c_real, ifft2c_real, matmul_dfts

__all__ = [
    "complex_abs",
    "complex_abs_sq",
    "complex_conj",
    "complex_mul",
    "conjugate_gradient",
    "ky_projection",
    "sense_adjoint",
    "sense_expand",
    "sense_forward",
    "sense_normal",
    "sense_reduce",
]


def _require_complex_last(x: Tensor, name: str) -> None:
    if x.is_complex() or not x.is_floating_point() or x.ndim < 1 or x.shape[-1] != 2:
        raise InvalidInputError(
            f"{name} needs a real floating tensor (..., 2), got dtype {x.dtype}, shape {tuple(x.shape)}"
        )


def _require_image(image: Tensor, name: str) -> None:
    _require_complex_last(image, name)
    if image.ndim != 4:
        raise InvalidInputError(f"{name} needs an image (B, H, W, 2), got shape {tuple(image.shape)}")


def _require_coils(coils: Tensor, name: str) -> None:
    _require_complex_last(coils, name)
    if coils.ndim != 5:
        raise InvalidInputError(f"{name} needs a coil tensor (B, C, H, W, 2), got shape {tuple(coils.shape)}")


def _require_same_geometry(image: Tensor, sens: Tensor) -> None:
    if image.shape[0] != sens.shape[0] or image.shape[1:3] != sens.shape[2:4]:
        raise InvalidInputError(
            f"image (B, H, W, 2) {tuple(image.shape)} does not match sens (B, C, H, W, 2) {tuple(sens.shape)}"
        )


def _require_mask(mask: Tensor, kspace_shape: torch.Size) -> None:
    if mask.ndim != 5 or mask.shape[1] != 1 or mask.shape[-1] != 1:
        raise InvalidInputError(
            f"mask must broadcast to (B, 1, H, W, 1), e.g. (B, 1, 1, W, 1); got shape {tuple(mask.shape)}"
        )
    for axis in (0, 2, 3):
        if mask.shape[axis] not in (1, kspace_shape[axis]):
            raise InvalidInputError(
                f"mask shape {tuple(mask.shape)} does not broadcast to k-space {tuple(kspace_shape)}"
            )


def complex_mul(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise complex product of ``a (..., 2)`` and ``b (..., 2)`` (broadcasting) -> ``(..., 2)``."""
    _require_complex_last(a, "complex_mul a")
    _require_complex_last(b, "complex_mul b")
    real = a[..., 0] * b[..., 0] - a[..., 1] * b[..., 1]
    imag = a[..., 0] * b[..., 1] + a[..., 1] * b[..., 0]
    return torch.stack((real, imag), dim=-1)


def complex_conj(a: Tensor) -> Tensor:
    """Complex conjugate of ``a (..., 2)`` -> ``(..., 2)``."""
    _require_complex_last(a, "complex_conj")
    return torch.stack((a[..., 0], -a[..., 1]), dim=-1)


def complex_abs_sq(a: Tensor) -> Tensor:
    """Squared magnitude ``|a|^2`` of ``a (..., 2)`` -> ``(...)``."""
    _require_complex_last(a, "complex_abs_sq")
    return (a * a).sum(dim=-1)


def complex_abs(a: Tensor, *, eps: float = 0.0) -> Tensor:
    """Magnitude ``sqrt(|a|^2 + eps)`` of ``a (..., 2)`` -> ``(...)``.

    With the default ``eps = 0`` this is the exact magnitude; its gradient is undefined where ``a == 0``
    (zero background), so pass a small ``eps`` (e.g. 1e-12) when differentiating a loss through it.
    """
    return torch.sqrt(complex_abs_sq(a) + eps) if eps > 0.0 else torch.sqrt(complex_abs_sq(a))


def sense_expand(image: Tensor, sens: Tensor) -> Tensor:
    """Coil images ``S_c x``: image ``(B, H, W, 2)``, sens ``(B, C, H, W, 2)`` -> ``(B, C, H, W, 2)``."""
    _require_image(image, "sense_expand image")
    _require_coils(sens, "sense_expand sens")
    _require_same_geometry(image, sens)
    return complex_mul(sens, image.unsqueeze(1))


def sense_reduce(coil_images: Tensor, sens: Tensor) -> Tensor:
    """Coil combination ``sum_c conj(S_c) x_c``: coil images and sens ``(B, C, H, W, 2)`` -> ``(B, H, W, 2)``.

    The adjoint of :func:`sense_expand`; its inverse too when the maps have unit root-sum-of-squares.
    """
    _require_coils(coil_images, "sense_reduce coil_images")
    _require_coils(sens, "sense_reduce sens")
    if coil_images.shape != sens.shape:
        raise InvalidInputError(
            f"coil_images {tuple(coil_images.shape)} and sens {tuple(sens.shape)} differ in shape"
        )
    return complex_mul(complex_conj(sens), coil_images).sum(dim=1)


def sense_forward(image: Tensor, sens: Tensor, mask: Tensor) -> Tensor:
    """Masked multi-coil k-space ``M F S x`` (seed 001 eq. 5).

    image ``(B, H, W, 2)``, sens ``(B, C, H, W, 2)``, mask float broadcastable to ``(B, 1, H, W, 1)``
    (``(B, 1, 1, W, 1)`` for line masks) -> k-space ``(B, C, H, W, 2)``.
    """
    coil_kspace = fft2c_real(sense_expand(image, sens))
    _require_mask(mask, coil_kspace.shape)
    return mask * coil_kspace


def sense_adjoint(kspace: Tensor, sens: Tensor, mask: Tensor) -> Tensor:
    """Adjoint ``A^H y = sum_c conj(S_c) F^H (M y_c)``.

    kspace and sens ``(B, C, H, W, 2)``, mask broadcastable to ``(B, 1, H, W, 1)`` -> image ``(B, H, W, 2)``.
    With ``y`` the acquired (zero-filled) k-space this is the SENSE-combined zero-filled image, MoDL's
    ``x_0`` (seed 000 section 3.1).
    """
    _require_coils(kspace, "sense_adjoint kspace")
    _require_mask(mask, kspace.shape)
    return sense_reduce(ifft2c_real(mask * kspace), sens)


def sense_normal(image: Tensor, sens: Tensor, mask: Tensor) -> Tensor:
    """Normal operator ``A^H A x``: image ``(B, H, W, 2)``, sens ``(B, C, H, W, 2)``, mask as in
    :func:`sense_forward` -> image ``(B, H, W, 2)``. Self-adjoint and positive semi-definite.

    A line mask ``(B or 1, 1, 1, W, 1)`` takes the fast path: with ``F = F_kx F_ky`` and ``M`` acting on ky
    only, ``F^H M F = F_ky^H M F_ky`` (the readout transforms cancel), so only 1D transforms along W run.
    """
    if mask.ndim == 5 and mask.shape[-3] == 1:
        coil_images = sense_expand(image, sens)
        _require_mask(mask, coil_images.shape)
        return sense_reduce(ky_projection(coil_images, mask), sens)
    return sense_adjoint(sense_forward(image, sens, mask), sens, mask)


def ky_projection(coil_images: Tensor, mask: Tensor) -> Tensor:
    """``F_ky^H M F_ky`` along W: coil images ``(B, C, H, W, 2)``, line mask ``(B or 1, 1, 1, W, 1)`` ->
    ``(B, C, H, W, 2)``; equal to ``F^H M F`` for a line mask (centered orthonormal 1D transforms).

    Under ONNX export it is one GEMM with the per-item matrix ``G = D^H diag(m) D`` (``D`` the centered
    DFT matrix along W; ONNX Runtime's DFT kernel is slow, see :mod:`kadapt.kspace.torch_fft`).
    """
    if matmul_dfts():
        return _ky_projection_matmul(coil_images, mask)
    as_complex = torch.view_as_complex(coil_images.contiguous())
    kspace = torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(as_complex, dim=-1), norm="ortho"), dim=-1)
    masked = kspace * mask[..., 0]
    back = torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(masked, dim=-1), norm="ortho"), dim=-1)
    return torch.view_as_real(back)


def _ky_projection_matmul(coil_images: Tensor, mask: Tensor) -> Tensor:
    width = coil_images.shape[-2]
    d_re = dft_tensor(width, False, coil_images, "re")
    d_im = dft_tensor(width, False, coil_images, "im")
    weights = mask.reshape(mask.shape[0], width, 1)  # m_n scales row n of D
    masked_re, masked_im = weights * d_re, weights * d_im  # (B or 1, W, W)
    # G = D^H diag(m) D = (Re D^T - i Im D^T) diag(m) (Re D + i Im D)
    g_re = d_re.T @ masked_re + d_im.T @ masked_im
    g_im = d_re.T @ masked_im - d_im.T @ masked_re
    # Row vectors times G^T as one real GEMM: [a | b] @ [[Re G^T, Im G^T], [-Im G^T, Re G^T]].
    g_re_t, g_im_t = g_re.transpose(-2, -1), g_im.transpose(-2, -1)
    block = torch.cat(
        (torch.cat((g_re_t, g_im_t), dim=-1), torch.cat((-g_im_t, g_re_t), dim=-1)), dim=-2
    ).unsqueeze(1)  # (B or 1, 1, 2W, 2W)
    stacked = torch.cat((coil_images[..., 0], coil_images[..., 1]), dim=-1)  # (B, C, H, 2W)
    product = torch.matmul(stacked, block)
    return torch.stack((product[..., :width], product[..., width:]), dim=-1)


def _batch_dot(a: Tensor, b: Tensor) -> Tensor:
    # Real part of the complex inner product per batch item, shape (B, 1, 1, 1) for broadcasting.
    # A Hermitian operator on C^n is a symmetric operator on R^2n under this product, so CG on the
    # real layout is exactly complex CG.
    return (a * b).sum(dim=(1, 2, 3), keepdim=True)


def _guarded_ratio(numerator: Tensor, denominator: Tensor, eps: float) -> Tensor:
    # Once a batch item has converged both sides reach ~0; step 0 then, and keep both where-branches
    # finite so no NaN gradient leaks through torch.where.
    usable = denominator.abs() > eps
    safe = torch.where(usable, denominator, torch.ones_like(denominator))
    return torch.where(usable, numerator / safe, torch.zeros_like(numerator))


def conjugate_gradient(
    operator: Callable[[Tensor], Tensor],
    rhs: Tensor,
    initial: Tensor,
    iterations: int,
    *,
    eps: float = 1e-30,
) -> Tensor:
    """Solve ``operator(x) = rhs`` for a Hermitian positive-definite ``operator`` by conjugate gradients.

    rhs and initial ``(B, H, W, 2)`` -> ``x`` ``(B, H, W, 2)``; ``operator`` maps ``(B, H, W, 2)`` to the same
    shape (e.g. ``x -> sense_normal(x, sens, mask) + lam * x``, MoDL's data-consistency system, seed 000
    section 3.1 / seed 001 eq. 7). Runs exactly ``iterations`` steps (a Python loop that unrolls in export,
    no data-dependent exit) with per-batch-item step sizes; divisions whose denominator is below ``eps``
    give a zero step, so converged items stay put. Differentiable.
    """
    _require_image(rhs, "conjugate_gradient rhs")
    if initial.shape != rhs.shape:
        raise InvalidInputError(
            f"conjugate_gradient initial {tuple(initial.shape)} differs from rhs {tuple(rhs.shape)}"
        )
    if iterations < 0:
        raise InvalidInputError(f"conjugate_gradient iterations must be >= 0, got {iterations}")
    x = initial
    residual = rhs - operator(x)
    direction = residual
    residual_norm_sq = _batch_dot(residual, residual)
    for _ in range(iterations):
        operator_direction = operator(direction)
        alpha = _guarded_ratio(residual_norm_sq, _batch_dot(direction, operator_direction), eps)
        x = x + alpha * direction
        residual = residual - alpha * operator_direction
        new_residual_norm_sq = _batch_dot(residual, residual)
        beta = _guarded_ratio(new_residual_norm_sq, residual_norm_sq, eps)
        direction = residual + beta * direction
        residual_norm_sq = new_residual_norm_sq
    return x
