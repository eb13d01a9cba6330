"""The simulator: shapes, RSS target, noise statistics, determinism, every kind of anatomy."""

from __future__ import annotations

import numpy as np
import pytest

from kadapt.data.anatomy import Anatomy
from kadapt.data.simulator import CONTRASTS, SimulationSettings, plan_slices, simulate_volume
from kadapt.errors import InvalidInputError
from kadapt.kspace.fft import fft2c, ifft2c

from .conftest import synthetic_anatomy

SETTINGS = SimulationSettings(size=48, coils=4, slices=3)


def _rss(kspace: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(np.abs(ifft2c(kspace)) ** 2, axis=1))


def test_shapes_dtypes_and_metadata(volume_anatomy: Anatomy) -> None:
    sim = simulate_volume(volume_anatomy, SETTINGS, np.random.default_rng(0))
    assert sim.kspace.shape == (3, 4, 48, 48)
    assert sim.kspace.dtype == np.complex64
    assert sim.target.shape == (3, 48, 48)
    assert sim.target.dtype == np.float32
    assert sim.image.shape == (3, 48, 48)
    assert sim.image.dtype == np.complex64
    assert sim.sensitivities.shape == (4, 48, 48)
    assert sim.noise_covariance.shape == (4, 4)
    assert sim.contrast in CONTRASTS
    assert SETTINGS.snr_range[0] <= sim.snr <= SETTINGS.snr_range[1]
    assert sim.fov_mm > 0
    assert sim.slice_spacing_mm > 0
    assert np.all(np.isfinite(sim.kspace))


def test_rss_of_the_kspace_matches_the_target(volume_anatomy: Anatomy) -> None:
    clean = SimulationSettings(size=48, coils=4, slices=3, snr_range=(1e5, 1e5))
    sim = simulate_volume(volume_anatomy, clean, np.random.default_rng(1))
    np.testing.assert_allclose(_rss(sim.kspace), sim.target, atol=1e-3 * float(sim.target.max()))
    # Unit-RSS coil maps: the target is the object magnitude.
    np.testing.assert_allclose(sim.target, np.abs(sim.image), atol=1e-4)
    noisy = simulate_volume(volume_anatomy, SETTINGS, np.random.default_rng(1))
    foreground = noisy.target > 0.3 * noisy.target.max()
    error = np.abs(_rss(noisy.kspace) - noisy.target)[foreground].mean() / noisy.target[foreground].mean()
    assert error < 3.0 / noisy.snr


def test_noise_has_the_reported_covariance_and_snr(volume_anatomy: Anatomy) -> None:
    settings = SimulationSettings(size=64, coils=4, slices=4)
    sim = simulate_volume(volume_anatomy, settings, np.random.default_rng(2))
    noise = sim.kspace - fft2c(sim.sensitivities[None] * sim.image[:, None])
    samples = np.moveaxis(noise, 1, 0).reshape(4, -1)
    estimate = samples @ samples.conj().T / samples.shape[1]
    requested = sim.noise_covariance
    assert np.linalg.norm(estimate - requested) / np.linalg.norm(requested) < 0.05
    assert np.trace(requested).real / 4 == pytest.approx(sim.noise_std**2, rel=1e-4)


def test_same_seed_same_bytes_other_seed_differs(volume_anatomy: Anatomy) -> None:
    first = simulate_volume(volume_anatomy, SETTINGS, np.random.default_rng(7))
    second = simulate_volume(volume_anatomy, SETTINGS, np.random.default_rng(7))
    assert first.kspace.tobytes() == second.kspace.tobytes()
    assert first.target.tobytes() == second.target.tobytes()
    other = simulate_volume(volume_anatomy, SETTINGS, np.random.default_rng(8))
    assert not np.allclose(first.kspace, other.kspace)


@pytest.mark.parametrize(("shape", "slab_axis"), [((64, 64, 6), 2), ((80, 64, 1), 2), ((40, 64, 64), 0)])
def test_slabs_and_single_images_simulate(shape: tuple[int, int, int], slab_axis: int) -> None:
    anatomy = synthetic_anatomy("thin", "thin", shape, slab_axis)
    sim = simulate_volume(anatomy, SETTINGS, np.random.default_rng(3))
    assert sim.kspace.shape == (3, 4, 48, 48)
    # Every slice holds tissue, and neighbouring slices are not identical copies.
    assert np.all(sim.target.reshape(3, -1).max(axis=1) > 0.1)
    assert not np.allclose(sim.target[0], sim.target[1])


def test_slices_stay_in_the_central_region(volume_anatomy: Anatomy) -> None:
    for seed in range(5):
        geometry = plan_slices(volume_anatomy, SETTINGS, np.random.default_rng(seed))
        centre = geometry.coordinates[:, :, 48, 48]  # (3, slices) voxel indices at the FOV centre
        shape = np.asarray(volume_anatomy.shape)[:, None]
        assert np.all(np.abs(centre - shape / 2) < 0.25 * shape)


def test_settings_are_validated() -> None:
    with pytest.raises(InvalidInputError, match="coils=0"):
        SimulationSettings(coils=0)
    with pytest.raises(InvalidInputError, match="snr_range"):
        SimulationSettings(snr_range=(5.0, 1.0))
