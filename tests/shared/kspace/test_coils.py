"""Coil numerics on a simulated phantom (sigpy Shepp-Logan x birdcage maps)."""

from __future__ import annotations

import numpy as np
import pytest

from kadapt.errors import InvalidAccelerationError, InvalidInputError
from kadapt.kspace.coils import acs_sensitivities, coil_compress, rss, sense_combine
from kadapt.kspace.espirit import espirit_maps
from kadapt.kspace.fft import ifft2c


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """|<a, b>| / (||a|| ||b||) of the flattened arrays (1 = equal up to one complex factor)."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    return float(np.abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)))


def unit_maps(maps: np.ndarray) -> np.ndarray:
    return maps / np.sqrt(np.sum(np.abs(maps) ** 2, axis=0))


def test_rss_matches_the_manual_formula() -> None:
    rng = np.random.default_rng(0)
    images = (rng.standard_normal((2, 4, 6, 5)) + 1j * rng.standard_normal((2, 4, 6, 5))).astype(np.complex64)
    expected = np.sqrt(sum(np.abs(images[:, c]) ** 2 for c in range(4)))
    np.testing.assert_allclose(rss(images), expected, rtol=1e-6)
    np.testing.assert_allclose(rss(images, axis=0), np.sqrt(np.sum(np.abs(images) ** 2, axis=0)), rtol=1e-6)
    assert rss(images).dtype == np.float32


def test_acs_sensitivities_reproduce_the_true_maps(coil_phantom) -> None:
    maps = acs_sensitivities(coil_phantom.kspace, num_acs=16)
    support = coil_phantom.support
    assert maps.dtype == np.complex64
    assert maps.shape == coil_phantom.kspace.shape
    # Unit sum of squares on the object, zero in the background far from it.
    np.testing.assert_allclose(np.sum(np.abs(maps[:, support]) ** 2, axis=0), 1.0, atol=1e-5)
    assert np.all(maps[:, 0, 0] == 0)
    truth = unit_maps(coil_phantom.maps)
    assert correlation(maps[:, support], truth[:, support]) > 0.99
    for coil in range(maps.shape[0]):
        assert correlation(maps[coil, support], truth[coil, support]) > 0.98


def test_acs_sensitivities_reject_an_impossible_acs_block(coil_phantom) -> None:
    with pytest.raises(InvalidAccelerationError, match="num_acs=0"):
        acs_sensitivities(coil_phantom.kspace, num_acs=0)
    with pytest.raises(InvalidInputError, match=r"\(coil, H, W\)"):
        acs_sensitivities(coil_phantom.kspace[None], num_acs=8)
    with pytest.raises(InvalidInputError, match="no signal"):
        acs_sensitivities(np.zeros((2, 8, 8), np.complex64), num_acs=4)


def test_espirit_and_sense_combine_recover_the_image(coil_phantom) -> None:
    maps = espirit_maps(coil_phantom.kspace, num_acs=24)
    support = coil_phantom.support
    assert maps.dtype == np.complex64
    assert maps.shape == coil_phantom.kspace.shape
    assert np.all(np.isfinite(maps))
    # ESPIRiT's phase is relative to coil 0; compare with the truth referenced the same way.
    truth = unit_maps(coil_phantom.maps)
    truth = truth * np.conj(truth[0] / np.abs(truth[0]))
    assert correlation(maps[:, support], truth[:, support]) > 0.99
    combined = sense_combine(ifft2c(coil_phantom.kspace), maps)
    assert combined.shape == coil_phantom.image.shape
    assert correlation(np.abs(combined[support]), np.abs(coil_phantom.image[support])) > 0.999


def test_sense_combine_with_true_maps_is_exact_and_broadcasts(coil_phantom) -> None:
    coil_images = coil_phantom.maps * coil_phantom.image
    combined = sense_combine(coil_images, coil_phantom.maps)
    np.testing.assert_allclose(combined, coil_phantom.image, atol=1e-5)
    stacked = np.stack([coil_images, 2 * coil_images])  # (frame, coil, H, W)
    both = sense_combine(stacked, coil_phantom.maps)
    assert both.shape == (2, *coil_phantom.image.shape)
    np.testing.assert_allclose(both[1], 2 * coil_phantom.image, atol=1e-5)


def test_sense_combine_is_zero_where_the_maps_are_zero() -> None:
    images = np.ones((2, 4, 4), np.complex64)
    maps = np.zeros((2, 4, 4), np.complex64)
    maps[:, :2] = 1 / np.sqrt(2)
    combined = sense_combine(images, maps)
    assert np.all(combined[2:] == 0)
    np.testing.assert_allclose(combined[:2], np.sqrt(2), rtol=1e-6)
    with pytest.raises(InvalidInputError, match="do not match"):
        sense_combine(images, maps[:1])


def test_coil_compression_keeps_the_energy_with_enough_virtual_coils(coil_phantom) -> None:
    kspace = np.stack([coil_phantom.kspace, 0.5 * np.roll(coil_phantom.kspace, 3, axis=-1)])
    compressed, matrix = coil_compress(kspace, num_virtual=5)
    assert compressed.shape == (2, 5, *kspace.shape[-2:])
    assert matrix.shape == (5, kspace.shape[-3])
    assert compressed.dtype == np.complex64
    np.testing.assert_allclose(matrix @ matrix.conj().T, np.eye(5), atol=1e-5)
    np.testing.assert_allclose(compressed, np.einsum("vc,schw->svhw", matrix, kspace), rtol=1e-4, atol=1e-4)
    kept = np.linalg.norm(compressed) ** 2 / np.linalg.norm(kspace) ** 2
    assert kept > 0.99
    # Fewer virtual coils keep less, all of them keep everything.
    fewer, _ = coil_compress(kspace, num_virtual=2)
    everything, _ = coil_compress(kspace, num_virtual=kspace.shape[-3])
    assert np.linalg.norm(fewer) < np.linalg.norm(compressed)
    assert np.linalg.norm(everything) ** 2 / np.linalg.norm(kspace) ** 2 == pytest.approx(1.0, abs=1e-5)
    # The compressed images still combine to the object.
    assert correlation(rss(ifft2c(compressed[0])), rss(ifft2c(coil_phantom.kspace))) > 0.999


def test_coil_compression_rejects_more_virtual_than_physical_coils(coil_phantom) -> None:
    with pytest.raises(InvalidInputError, match="num_virtual=9"):
        coil_compress(coil_phantom.kspace, num_virtual=9)
