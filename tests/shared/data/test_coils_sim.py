"""Simulated coils: birdcage sensitivities with unit RSS, Hermitian PD noise covariance, noise statistics."""

from __future__ import annotations

import numpy as np
import pytest

from kadapt.data.coils_sim import birdcage_sensitivities, coil_noise, random_noise_covariance
from kadapt.errors import GeometryMismatchError, InvalidInputError


def test_birdcage_maps_have_unit_rss_and_vary_with_the_seed() -> None:
    maps = birdcage_sensitivities(8, 48, 40, np.random.default_rng(0))
    assert maps.shape == (8, 48, 40)
    assert maps.dtype == np.complex64
    np.testing.assert_allclose(np.sqrt(np.sum(np.abs(maps) ** 2, axis=0)), 1.0, atol=1e-5)
    # Coils see different regions: the magnitude maps are far from identical.
    assert np.abs(np.abs(maps[0]) - np.abs(maps[4])).mean() > 0.05
    again = birdcage_sensitivities(8, 48, 40, np.random.default_rng(0))
    np.testing.assert_array_equal(maps, again)
    other = birdcage_sensitivities(8, 48, 40, np.random.default_rng(1))
    assert not np.allclose(maps, other)
    with pytest.raises(InvalidInputError, match="coils=0"):
        birdcage_sensitivities(0, 8, 8, np.random.default_rng(0))


def test_noise_covariance_is_hermitian_positive_definite_with_trace_coils() -> None:
    covariance = random_noise_covariance(6, np.random.default_rng(2), correlation=0.4)
    assert covariance.shape == (6, 6)
    np.testing.assert_allclose(covariance, covariance.conj().T, atol=1e-12)
    assert np.linalg.eigvalsh(covariance).min() > 0
    assert np.trace(covariance).real == pytest.approx(6.0)
    off_diagonal = np.abs(covariance - np.diag(np.diag(covariance)))
    assert off_diagonal.max() > 0.01  # channels are correlated
    with pytest.raises(InvalidInputError, match=r"correlation=1\.5"):
        random_noise_covariance(4, np.random.default_rng(0), correlation=1.5)


def test_coil_noise_has_the_requested_covariance() -> None:
    rng = np.random.default_rng(3)
    covariance = random_noise_covariance(4, rng) * 0.25
    noise = coil_noise((3, 4, 96, 96), covariance, rng)
    assert noise.shape == (3, 4, 96, 96)
    assert noise.dtype == np.complex64
    samples = np.moveaxis(noise, 1, 0).reshape(4, -1)
    estimate = samples @ samples.conj().T / samples.shape[1]
    error = np.linalg.norm(estimate - covariance) / np.linalg.norm(covariance)
    assert error < 0.03
    assert abs(np.mean(samples)) < 0.01


def test_coil_noise_rejects_a_mismatched_covariance() -> None:
    with pytest.raises(GeometryMismatchError, match="3 coils"):
        coil_noise((3, 8, 8), np.eye(4), np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="positive definite"):
        coil_noise((2, 8, 8), -np.eye(2), np.random.default_rng(0))
