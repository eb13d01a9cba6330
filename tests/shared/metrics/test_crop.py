"""center_crop: fastMRI's offsets, views, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadapt.errors import InvalidInputError
from kadapt.metrics import center_crop


def test_center_crop_uses_fastmri_offsets() -> None:
    x = np.arange(2 * 7 * 6).reshape(2, 7, 6)
    cropped = center_crop(x, (3, 4))
    np.testing.assert_array_equal(cropped, x[:, 2:5, 1:5])
    assert np.shares_memory(cropped, x)


@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    crop_height=st.integers(1, 40),
    crop_width=st.integers(1, 40),
)
def test_center_crop_keeps_the_centre_pixel(
    height: int, width: int, crop_height: int, crop_width: int
) -> None:
    crop_height = min(crop_height, height)
    crop_width = min(crop_width, width)
    x = np.zeros((height, width))
    x[height // 2, width // 2] = 1.0
    cropped = center_crop(x, (crop_height, crop_width))
    assert cropped.shape == (crop_height, crop_width)
    # Same parity: the centred-FFT origin stays the centre of the crop.
    if (height - crop_height) % 2 == 0 and (width - crop_width) % 2 == 0:
        assert cropped[crop_height // 2, crop_width // 2] == 1.0


@pytest.mark.parametrize("shape", [(8, 4), (0, 2), (2, 7)])
def test_center_crop_rejects_crops_that_do_not_fit(shape: tuple[int, int]) -> None:
    with pytest.raises(InvalidInputError, match="does not fit"):
        center_crop(np.zeros((3, 6, 6)), shape)
