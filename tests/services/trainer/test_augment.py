"""``training.augment``: random image-domain flips keep k-space, maps and target consistent."""

from __future__ import annotations

import numpy as np

from kadapt.kspace.coils import rss
from kadapt.kspace.fft import fft2c, ifft2c
from kadapt.trainer.data import PreparedSlice, random_flip


def _slice(rng: np.random.Generator) -> PreparedSlice:
    images = (rng.standard_normal((3, 10, 12)) + 1j * rng.standard_normal((3, 10, 12))).astype(np.complex64)
    sens = (rng.standard_normal((3, 10, 12)) + 0j).astype(np.complex64)
    target = (rss(images) + 0j).astype(np.complex64)
    return PreparedSlice("vol", 0, fft2c(images).astype(np.complex64), sens, target, 2.5)


def test_random_flip_flips_images_maps_and_target_alike_and_draws_every_combination() -> None:
    item = _slice(np.random.default_rng(0))
    original = ifft2c(item.kspace)
    rng = np.random.default_rng(1)
    seen: set[tuple[int, ...]] = set()
    for _ in range(40):
        flipped = random_flip(item, rng)
        images = ifft2c(flipped.kspace)
        (axes,) = [
            a for a in ((), (-2,), (-1,), (-2, -1)) if np.allclose(images, np.flip(original, a), atol=1e-5)
        ]
        seen.add(axes)
        np.testing.assert_array_equal(flipped.sens, np.flip(item.sens, axes))
        np.testing.assert_array_equal(flipped.target, np.flip(item.target, axes))
        np.testing.assert_allclose(np.abs(flipped.target), rss(images), rtol=1e-4, atol=1e-5)
        assert flipped.scale == item.scale
        assert flipped.kspace.dtype == np.complex64
    assert seen == {(), (-2,), (-1,), (-2, -1)}
