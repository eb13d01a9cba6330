"""Cine motion and simulation: waveform, periodic non-trivial motion, static coils, RSS vs k-space."""

from __future__ import annotations

import numpy as np
import pytest

from kadapt.data.anatomy import Anatomy
from kadapt.data.cine_motion import (
    MotionSettings,
    apply_motion,
    blood_pool_weight,
    cardiac_waveform,
    draw_motion,
)
from kadapt.data.cine_sim import CineSettings, SimulatedCine, simulate_cine_volume
from kadapt.data.simulator import SimulationSettings
from kadapt.errors import GeometryMismatchError, InvalidInputError
from kadapt.kspace.fft import ifft2c

FRAMES = 4


def _simulate(anatomy: Anatomy, seed: int = 0, motion_seed: int = 1, frames: int = FRAMES) -> SimulatedCine:
    settings = CineSettings(SimulationSettings(size=32, coils=2, slices=2), frames)
    return simulate_cine_volume(
        anatomy, settings, np.random.default_rng(seed), np.random.default_rng(motion_seed)
    )


@pytest.fixture(scope="module")
def cine(volume_anatomy: Anatomy) -> SimulatedCine:
    return _simulate(volume_anatomy)


def test_waveform_is_a_periodic_cardiac_cycle() -> None:
    w = cardiac_waveform(64, 0.35)
    assert w[0] == 0.0
    assert np.all((w >= 0) & (w <= 1))
    peak = int(np.argmax(w))
    assert peak / 64 == pytest.approx(0.35, abs=1 / 64)
    # Faster systole than diastole: it reaches half the peak sooner than it falls back to it.
    rise = int(np.argmax(w >= 0.5))
    fall = 64 - peak - int(np.argmax(w[peak:] < 0.5))
    assert rise < 64 - peak - fall
    # Periodic: the last frame leads back towards frame 0.
    assert w[-1] < w[len(w) // 2]
    with pytest.raises(InvalidInputError, match="systole_fraction"):
        cardiac_waveform(8, 1.0)


def test_shapes_and_static_coils(cine: SimulatedCine) -> None:
    assert cine.kspace.shape == (2, FRAMES, 2, 32, 32)
    assert cine.kspace.dtype == np.complex64
    assert cine.rss.shape == (2, FRAMES, 32, 32)
    assert cine.rss.dtype == np.float32
    assert cine.image.shape == (2, FRAMES, 32, 32)
    assert cine.sensitivities.shape == (2, 32, 32)
    np.testing.assert_allclose(np.sum(np.abs(cine.sensitivities) ** 2, axis=0), 1.0, atol=1e-5)
    assert len(cine.motion.contraction) == 2


def test_rss_is_the_rss_of_the_noisy_kspace(cine: SimulatedCine) -> None:
    expected = np.sqrt(np.sum(np.abs(ifft2c(cine.kspace)) ** 2, axis=2))
    np.testing.assert_allclose(cine.rss, expected, rtol=1e-5, atol=1e-6)
    # Noise is present (the RSS differs from the noiseless object) but small.
    clean = np.abs(cine.image)
    error = np.linalg.norm(cine.rss - clean) / np.linalg.norm(clean)
    assert 0.0 < error < 0.2


def test_motion_is_non_trivial_and_periodic(cine: SimulatedCine) -> None:
    image = np.abs(cine.image)
    distance = [float(np.linalg.norm(image[:, t] - image[:, 0])) for t in range(FRAMES)]
    scale = float(np.linalg.norm(image[:, 0]))
    assert all(d > 0.02 * scale for d in distance[1:])  # every frame differs
    assert distance[FRAMES - 1] < distance[FRAMES // 2]  # the cycle returns towards frame 0


def test_noise_is_independent_per_frame(volume_anatomy: Anatomy) -> None:
    # With no motion at all, frames still differ by independent noise only.
    still = MotionSettings(contraction=(1e-9, 1e-9), respiratory_fraction=(0.0, 0.0), systolic_dip=(0.0, 0.0))
    settings = CineSettings(SimulationSettings(size=32, coils=2, slices=1), 3, still)
    sim = simulate_cine_volume(volume_anatomy, settings, np.random.default_rng(0), np.random.default_rng(0))
    np.testing.assert_allclose(sim.image[:, 1], sim.image[:, 0], atol=1e-5)
    noise = sim.kspace[:, 1] - sim.kspace[:, 0]
    assert float(np.abs(noise).std()) > 0.5 * sim.noise_std


def test_motion_draws_only_from_its_generator(volume_anatomy: Anatomy) -> None:
    first, again = _simulate(volume_anatomy, 3, 4), _simulate(volume_anatomy, 3, 4)
    other_motion = _simulate(volume_anatomy, 3, 5)
    assert first.kspace.tobytes() == again.kspace.tobytes()
    assert first.motion != other_motion.motion
    # Same volume stream: same contrast, coils and noise level; only the motion changed.
    assert first.contrast == other_motion.contrast
    np.testing.assert_array_equal(first.sensitivities, other_motion.sensitivities)
    assert first.snr == other_motion.snr


def test_blood_pool_contracts_with_the_ventricle() -> None:
    rng = np.random.default_rng(0)
    foreground = np.ones((1, 48, 48), dtype=bool)
    motion = draw_motion(foreground, rng, MotionSettings(respiratory_fraction=(0.0, 0.0)))
    magnitude = np.full((1, 48, 48), 0.3, dtype=np.float32)
    cine = np.abs(apply_motion(magnitude, np.zeros_like(magnitude), motion, 8))
    bright = (cine[0] > 0.3 + 0.5 * (motion.blood_level - 0.3) * motion.blood_blend).sum(axis=(1, 2))
    peak = int(np.argmax(cardiac_waveform(8, motion.systole_fraction)))
    assert bright[peak] < 0.8 * bright[0]  # the bright pool is smallest in end-systole
    pool = blood_pool_weight(motion, (48, 48))
    assert pool.max() > 0.99
    assert pool.min() < 0.01


def test_apply_motion_checks_shapes() -> None:
    motion = draw_motion(np.ones((2, 16, 16), dtype=bool), np.random.default_rng(0))
    flat = np.zeros((1, 16, 16), dtype=np.float32)
    with pytest.raises(GeometryMismatchError, match="slices"):
        apply_motion(flat, flat, motion, 4)
    with pytest.raises(GeometryMismatchError, match="phase"):
        apply_motion(np.zeros((2, 16, 16), np.float32), flat, motion, 4)
    with pytest.raises(InvalidInputError, match="frames=1"):
        CineSettings(SimulationSettings(size=32), frames=1)
    with pytest.raises(InvalidInputError, match="contraction"):
        MotionSettings(contraction=(0.5, 2.0))
