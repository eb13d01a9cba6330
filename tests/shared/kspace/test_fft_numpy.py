"""Centered orthonormal numpy FFTs: Parseval, adjointness, inverse, centring."""

from __future__ import annotations

import numpy as np
import pytest

from kadapt.kspace.fft import fft1c, fft2c, fftnc, ifft1c, ifft2c, ifftnc


def complex_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@pytest.mark.parametrize("shape", [(4, 16, 12), (2, 3, 15, 9)])
def test_fft2c_preserves_energy(shape: tuple[int, ...]) -> None:
    x = complex_normal(np.random.default_rng(0), shape)
    assert np.linalg.norm(fft2c(x)) == pytest.approx(np.linalg.norm(x), rel=1e-5)
    assert np.linalg.norm(ifft2c(x)) == pytest.approx(np.linalg.norm(x), rel=1e-5)


@pytest.mark.parametrize("shape", [(16, 12), (3, 15, 9)])
def test_ifft2c_is_the_adjoint_and_inverse_of_fft2c(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    x = complex_normal(rng, shape).astype(np.complex128)
    y = complex_normal(rng, shape).astype(np.complex128)
    assert np.vdot(fft2c(x), y) == pytest.approx(np.vdot(x, ifft2c(y)), rel=1e-10)
    np.testing.assert_allclose(ifft2c(fft2c(x)), x, atol=1e-12)


def test_fft2c_keeps_complex64() -> None:
    x = complex_normal(np.random.default_rng(2), (8, 8))
    assert fft2c(x).dtype == np.complex64
    assert ifft2c(x).dtype == np.complex64


@pytest.mark.parametrize(("height", "width"), [(16, 12), (15, 9)])
def test_centred_impulse_has_flat_spectrum(height: int, width: int) -> None:
    # The image centre (H // 2, W // 2) is the origin of the centered transform: a real, flat spectrum.
    image = np.zeros((height, width), dtype=np.complex128)
    image[height // 2, width // 2] = 1.0
    np.testing.assert_allclose(
        fft2c(image), np.full((height, width), 1 / np.sqrt(height * width)), atol=1e-12
    )


def test_one_dimensional_and_n_dimensional_forms_agree() -> None:
    x = complex_normal(np.random.default_rng(3), (3, 10, 14)).astype(np.complex128)
    np.testing.assert_allclose(fft1c(fft1c(x, axis=-2), axis=-1), fft2c(x), atol=1e-12)
    np.testing.assert_allclose(ifft1c(fft1c(x, axis=0), axis=0), x, atol=1e-12)
    np.testing.assert_allclose(ifftnc(fftnc(x, (0, 1, 2)), (0, 1, 2)), x, atol=1e-12)
