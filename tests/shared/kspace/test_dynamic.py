"""kadapt.kspace.dynamic: the SENSE image of the data acquired so far (what an ADS cascade step sees)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kadapt.errors import InvalidInputError
from kadapt.kspace.coils import acs_sensitivities
from kadapt.kspace.dynamic import frame_averaged_acs, frame_averaged_acs_sensitivities, sense_image_so_far
from kadapt.kspace.fft import fft2c
from kadapt.masks import acs_lines
from kadapt.nn.smp import acs_sensitivity_estimate

FRAMES, COILS, H, W, ACS = 4, 3, 24, 20, 6


def _maps(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W] / max(H, W)
    maps = np.stack(
        [np.exp(-((y - c) ** 2 + (x - 0.5) ** 2) * 3) * np.exp(1j * c * x) for c in (0.1, 0.5, 0.9)]
    )
    normalised: np.ndarray = (maps / np.sqrt((np.abs(maps) ** 2).sum(axis=0))).astype(np.complex64)
    return normalised


def _cine(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(frame, coil, H, W) k-space of a moving blob and its true maps."""
    y, x = np.mgrid[0:H, 0:W]
    frames = [
        (1.0 + ((y - H / 2) ** 2 + (x - W / 2 - t) ** 2 < 30)).astype(np.complex64) for t in range(FRAMES)
    ]
    maps = _maps(rng)
    kspace = fft2c(np.stack(frames)[:, None] * maps[None]).astype(np.complex64)
    return kspace, maps


def test_frame_averaged_acs_keeps_only_the_acs_columns_averaged_over_frames() -> None:
    kspace, _ = _cine(np.random.default_rng(0))
    averaged = frame_averaged_acs(kspace, ACS)
    acs = acs_lines(W, ACS)
    np.testing.assert_allclose(averaged[..., acs], kspace[..., acs].mean(axis=0), rtol=1e-6)
    others = np.setdiff1d(np.arange(W), acs)
    assert not np.any(averaged[..., others])


def test_maps_equal_the_2d_estimate_of_the_averaged_acs_and_the_torch_twin() -> None:
    kspace, _ = _cine(np.random.default_rng(0))
    maps = frame_averaged_acs_sensitivities(kspace, ACS)
    np.testing.assert_allclose(maps, acs_sensitivities(kspace.mean(axis=0), ACS), atol=1e-6)
    # The trainer feeds the encoder through the torch twin; serving through this function.
    averaged = torch.from_numpy(
        np.stack([frame_averaged_acs(kspace, ACS).real, frame_averaged_acs(kspace, ACS).imag], -1)
    )
    twin = acs_sensitivity_estimate(averaged[None].float(), ACS)[0].numpy()
    np.testing.assert_allclose(twin[..., 0] + 1j * twin[..., 1], maps, atol=1e-5)


def test_fully_sampled_image_so_far_is_the_coil_combined_frame() -> None:
    kspace, maps = _cine(np.random.default_rng(0))
    full = np.ones((FRAMES, W), dtype=bool)
    image = sense_image_so_far(kspace, full, ACS, maps=maps)
    assert image.shape == (FRAMES, H, W)
    assert image.dtype == np.complex64
    y, x = np.mgrid[0:H, 0:W]
    expected = 1.0 + ((y - H / 2) ** 2 + (x - W / 2 - 2) ** 2 < 30)
    np.testing.assert_allclose(np.abs(image[2]), expected, atol=1e-4)


def test_lines_off_the_mask_are_ignored_per_frame() -> None:
    rng = np.random.default_rng(1)
    kspace, _ = _cine(rng)
    mask = np.zeros((FRAMES, W), dtype=bool)
    mask[:, acs_lines(W, ACS)] = True
    mask[1, [0, 3]] = True  # frame 1 has two more lines
    zero_filled = np.where(mask[:, None, None, :], kspace, 0)
    np.testing.assert_array_equal(
        sense_image_so_far(kspace, mask, ACS), sense_image_so_far(zero_filled, mask, ACS)
    )
    one_more = mask.copy()
    one_more[1, 5] = True
    changed = np.abs(sense_image_so_far(kspace, one_more, ACS) - sense_image_so_far(kspace, mask, ACS)).max(
        axis=(1, 2)
    )
    assert changed[1] > 0
    assert not np.any(changed[[0, 2, 3]])


def test_bad_shapes_name_the_shape() -> None:
    kspace, _ = _cine(np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match=r"\(frame, coil, H, W\)"):
        sense_image_so_far(kspace[0], np.ones((COILS, W), bool), ACS)
    with pytest.raises(InvalidInputError, match="mask of shape"):
        sense_image_so_far(kspace, np.ones((FRAMES, W - 1), bool), ACS)
