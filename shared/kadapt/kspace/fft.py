"""Centered orthonormal FFTs (numpy), fastMRI's convention.

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))`` over the last two axes ``(H, W)``: k-space
``(..., coil, H, W)`` with the readout (kx) along H and the phase-encode axis (ky) along W.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

ComplexArray = NDArray[np.complexfloating]


def fftnc(x: ComplexArray, axes: Sequence[int]) -> ComplexArray:
    """Centered orthonormal forward FFT over ``axes``; keeps complex64 in, complex64 out."""
    axes = tuple(axes)
    out = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes)
    return out.astype(np.result_type(x.dtype, np.complex64), copy=False)


def ifftnc(x: ComplexArray, axes: Sequence[int]) -> ComplexArray:
    """Centered orthonormal inverse FFT over ``axes`` (the adjoint of :func:`fftnc`)."""
    axes = tuple(axes)
    out = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes)
    return out.astype(np.result_type(x.dtype, np.complex64), copy=False)


def fft2c(x: ComplexArray) -> ComplexArray:
    """Image ``(..., H, W)`` -> k-space ``(..., H, W)``."""
    return fftnc(x, (-2, -1))


def ifft2c(x: ComplexArray) -> ComplexArray:
    """K-space ``(..., H, W)`` -> image ``(..., H, W)``."""
    return ifftnc(x, (-2, -1))


def fft1c(x: ComplexArray, axis: int = -1) -> ComplexArray:
    """Centered orthonormal 1D FFT along ``axis``."""
    return fftnc(x, (axis,))


def ifft1c(x: ComplexArray, axis: int = -1) -> ComplexArray:
    """Centered orthonormal 1D inverse FFT along ``axis``."""
    return ifftnc(x, (axis,))
