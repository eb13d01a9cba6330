"""Centered orthonormal FFTs in torch and the one complex <-> channel converter pair.

Same convention as :mod:`kadapt.kspace.fft` (fastMRI's): ``fft2c(x) = fftshift(fft2(ifftshift(x)))`` with
``norm="ortho"`` over the last two spatial axes ``(H, W)`` -- readout kx along H, phase encode ky along W.

Two layouts exist:

- complex tensors ``(..., H, W)`` (complex64) for everything outside an exported model;
- real tensors ``(..., H, W, 2)`` (real part, imaginary part last) inside models that are exported to
  ONNX. :func:`fft2c_real` / :func:`ifft2c_real` do the shifts on the real tensor and only take a complex
  view (:func:`torch.view_as_complex`) around ``torch.fft``, which is what the dynamo ONNX exporter can
  lower to a ``DFT`` node (opset 18); the legacy exporter cannot.

ONNX Runtime's ``DFT`` kernel is slow on CPU (measured: 0.52 s of a 0.73 s MoDL slice at 128x128x8), so
inside :func:`dfts_as_matmuls` (which :func:`kadapt.nn.export.export_onnx` enters around
``torch.onnx.export``; torch's own :func:`torch.onnx.is_in_onnx_export` counts too) the real-layout transforms
are emitted as matrix products with constant centered DFT matrices instead (:func:`centered_dft_matrix`): the
same linear map to float32 rounding, which MLAS runs as GEMMs. Training, TorchScript and eager inference
keep ``torch.fft``; the bundle's ONNX-vs-PyTorch parity check compares the two paths.

A model's channel input/output uses :func:`complex_to_channels` / :func:`channels_to_complex`, the only
converter pair in kadapt (handbook architecture section 3).

This module imports torch; keep it out of :mod:`kadapt.kspace`'s ``__init__`` (the gateway imports the
numpy FFT and must not pull torch in).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from kadapt.errors import InvalidInputError

_SPATIAL_DIMS = (-2, -1)
# In the (..., H, W, 2) layout the spatial axes sit one position further left.
_REAL_LAYOUT_SPATIAL_DIMS = (-3, -2)


def _require_complex(x: torch.Tensor, name: str) -> None:
    if not x.is_complex():
        raise InvalidInputError(
            f"{name} needs a complex tensor, got dtype {x.dtype} with shape {tuple(x.shape)}"
        )
    if x.ndim < 2:
        raise InvalidInputError(f"{name} needs at least 2 dims (..., H, W), got shape {tuple(x.shape)}")


def _require_real_layout(x: torch.Tensor, name: str) -> None:
    if x.is_complex() or not x.is_floating_point():
        raise InvalidInputError(
            f"{name} needs a real floating tensor (..., H, W, 2), got dtype {x.dtype}, shape {tuple(x.shape)}"
        )
    if x.ndim < 3 or x.shape[-1] != 2:
        raise InvalidInputError(f"{name} needs shape (..., H, W, 2), got shape {tuple(x.shape)}")


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Image ``(..., H, W)`` complex -> k-space ``(..., H, W)`` complex (centered, orthonormal)."""
    _require_complex(x, "fft2c")
    shifted = torch.fft.ifftshift(x, dim=_SPATIAL_DIMS)
    kspace: torch.Tensor = torch.fft.fftshift(
        torch.fft.fft2(shifted, dim=_SPATIAL_DIMS, norm="ortho"), dim=_SPATIAL_DIMS
    )
    return kspace


def ifft2c(x: torch.Tensor) -> torch.Tensor:
    """K-space ``(..., H, W)`` complex -> image ``(..., H, W)`` complex; adjoint and inverse of fft2c."""
    _require_complex(x, "ifft2c")
    shifted = torch.fft.ifftshift(x, dim=_SPATIAL_DIMS)
    image: torch.Tensor = torch.fft.fftshift(
        torch.fft.ifft2(shifted, dim=_SPATIAL_DIMS, norm="ortho"), dim=_SPATIAL_DIMS
    )
    return image


@functools.lru_cache(maxsize=32)
def _dft_matrix_numpy(size: int, inverse: bool) -> np.ndarray[Any, np.dtype[np.complex128]]:
    eye = np.eye(size, dtype=np.complex128)
    transform = np.fft.ifft if inverse else np.fft.fft
    matrix: np.ndarray[Any, np.dtype[np.complex128]] = np.fft.fftshift(
        transform(np.fft.ifftshift(eye, axes=0), axis=0, norm="ortho"), axes=0
    )
    return matrix


def centered_dft_matrix(size: int, *, inverse: bool = False) -> NDArray[np.complex128]:
    """The ``(size, size)`` complex128 matrix ``D`` with ``D @ v == fftshift(fft(ifftshift(v)))``
    (orthonormal; ``inverse`` gives the inverse transform, ``D^H``)."""
    if size < 1:
        raise InvalidInputError(f"centered_dft_matrix needs a positive size, got {size}")
    return _dft_matrix_numpy(size, inverse).copy()


# Within one dfts_as_matmuls() block (one ONNX export) each DFT matrix is one tensor, so the graph holds it
# once as an initializer, not once per call (a 5-unroll MoDL at W = 128 went from 15 MB to 2.4 MB). The
# cache lives only for the block: tensors made while an exporter traces are fake and must not outlive it.
_DFT_TENSORS: dict[tuple[int, bool, torch.dtype, torch.device, str], torch.Tensor] | None = None


def dft_tensor(size: int, inverse: bool, like: torch.Tensor, form: str) -> torch.Tensor:
    """The centered DFT matrix as a constant tensor of ``like``'s dtype and device (one per export).

    ``form``: ``"re"`` / ``"im"`` for the ``(N, N)`` parts, or ``"block"`` for
    ``[[Re D^T, Im D^T], [-Im D^T, Re D^T]]`` ``(2N, 2N)`` (``[a | b] @ block == [Re | Im]`` of
    ``(a + ib) @ D^T`` for row vectors ``a``, ``b`` of length N)."""
    key = (size, inverse, like.dtype, like.device, form)
    cached = _DFT_TENSORS.get(key) if _DFT_TENSORS is not None else None
    if cached is None:
        matrix = _dft_matrix_numpy(size, inverse)
        if form == "re":
            values = matrix.real
        elif form == "im":
            values = matrix.imag
        elif form == "block":
            transposed = matrix.T
            values = np.block([[transposed.real, transposed.imag], [-transposed.imag, transposed.real]])
        else:
            raise InvalidInputError(f"dft_tensor form must be 're', 'im' or 'block', got {form!r}")
        cached = torch.as_tensor(values, dtype=like.dtype, device=like.device)
        if _DFT_TENSORS is not None:
            _DFT_TENSORS[key] = cached
    return cached


def apply_dft_along_last(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    """Real layout ``(..., N, 2)`` -> ``(..., N, 2)``: the centered DFT (or its inverse) along the
    second-to-last axis of ``x`` (the complex vector axis), as one real GEMM."""
    size = x.shape[-2]
    stacked = torch.cat((x[..., 0], x[..., 1]), dim=-1)  # (..., 2N): real parts, then imaginary parts
    product = torch.matmul(stacked, dft_tensor(size, inverse, x, "block"))
    return torch.stack((product[..., :size], product[..., size:]), dim=-1)


def _dft2c_matmul(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    # (..., H, W, 2): transform W (the vector axis of apply_dft_along_last), then H by swapping H and W.
    along_w = apply_dft_along_last(x, inverse)
    along_h = apply_dft_along_last(along_w.transpose(-3, -2), inverse)
    return along_h.transpose(-3, -2)


_MATMUL_DFTS = False


@contextlib.contextmanager
def dfts_as_matmuls() -> Iterator[None]:
    """Within the block the real-layout transforms (and :func:`kadapt.nn.physics.ky_projection`) run as
    GEMMs with DFT matrices: what an ONNX export should trace. Explicit, because torch's export flag alone
    was observed unset for some traces in a long-running process (the graph kept ``DFT`` nodes)."""
    global _MATMUL_DFTS, _DFT_TENSORS
    previous, outer_cache = _MATMUL_DFTS, _DFT_TENSORS
    _MATMUL_DFTS, _DFT_TENSORS = True, {}
    try:
        yield
    finally:
        _MATMUL_DFTS, _DFT_TENSORS = previous, outer_cache


def matmul_dfts() -> bool:
    """Whether DFTs are to be traced as matrix products now (see :func:`dfts_as_matmuls`)."""
    return _MATMUL_DFTS or torch.onnx.is_in_onnx_export()


def _fft2c_real(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    if matmul_dfts():
        return _dft2c_matmul(x, inverse)
    # Shifts are rolls on the real tensor; the complex view lives only around the FFT call so the
    # exported graph has no complex tensors outside the DFT node.
    shifted = torch.fft.ifftshift(x, dim=_REAL_LAYOUT_SPATIAL_DIMS)
    as_complex = torch.view_as_complex(shifted.contiguous())
    transform = torch.fft.ifft2 if inverse else torch.fft.fft2
    transformed = torch.view_as_real(transform(as_complex, dim=_SPATIAL_DIMS, norm="ortho"))
    result: torch.Tensor = torch.fft.fftshift(transformed, dim=_REAL_LAYOUT_SPATIAL_DIMS)
    return result


def fft2c_real(x: torch.Tensor) -> torch.Tensor:
    """Image ``(..., H, W, 2)`` real -> k-space ``(..., H, W, 2)`` real (last axis: real, imaginary).

    Equal to ``view_as_real(fft2c(view_as_complex(x)))``; written so that it exports with
    ``torch.onnx.export(..., dynamo=True)``. Needs float32 or float64.
    """
    _require_real_layout(x, "fft2c_real")
    return _fft2c_real(x, inverse=False)


def ifft2c_real(x: torch.Tensor) -> torch.Tensor:
    """K-space ``(..., H, W, 2)`` real -> image ``(..., H, W, 2)`` real; the inverse of :func:`fft2c_real`."""
    _require_real_layout(x, "ifft2c_real")
    return _fft2c_real(x, inverse=True)


def complex_to_channels(x: torch.Tensor) -> torch.Tensor:
    """Complex ``(..., C, H, W)`` -> real ``(..., 2C, H, W)``: all C real parts, then all C imaginary parts.

    Channel ``c`` holds ``x[..., c, :, :].real`` and channel ``C + c`` holds ``x[..., c, :, :].imag``
    (not interleaved). :func:`channels_to_complex` is the exact inverse. complex64 gives float32.
    """
    _require_complex(x, "complex_to_channels")
    if x.ndim < 3:
        raise InvalidInputError(f"complex_to_channels needs shape (..., C, H, W), got shape {tuple(x.shape)}")
    return torch.cat((x.real, x.imag), dim=-3)


def channels_to_complex(x: torch.Tensor) -> torch.Tensor:
    """Real ``(..., 2C, H, W)`` (C real parts, then C imaginary parts) -> complex ``(..., C, H, W)``.

    The inverse of :func:`complex_to_channels`; float32 gives complex64.
    """
    if x.is_complex() or not x.is_floating_point():
        raise InvalidInputError(
            f"channels_to_complex needs a real floating tensor (..., 2C, H, W), got dtype {x.dtype}"
        )
    if x.ndim < 3 or x.shape[-3] % 2 != 0:
        raise InvalidInputError(
            f"channels_to_complex needs an even channel count in shape (..., 2C, H, W), got {tuple(x.shape)}"
        )
    real, imag = torch.chunk(x, 2, dim=-3)
    return torch.complex(real, imag)
