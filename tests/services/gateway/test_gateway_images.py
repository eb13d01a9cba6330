"""Image encodings: npy round trip, windowed 8-bit PNG, MRD IMAGE stream."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage

from kadapt.errors import EncodeOutOfRangeError, InvalidInputError
from kadapt.gateway.domain.images import encode_images, encode_png, window_to_uint8
from kadapt.mrd.messages import Image
from kadapt.mrd.stream import decode_stream


def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.abs(rng.standard_normal((2, 3, 24, 16))).astype(np.float32)


def test_npy_round_trip() -> None:
    body, media_type = encode_images(volume(), "npy")
    assert media_type == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), volume())


def test_png_is_one_slice_windowed_to_the_995th_percentile() -> None:
    images = volume()
    images[1, 2, 0, 0] = 1000.0  # one hot voxel must not darken the preview
    body, media_type = encode_images(images, "png", slice_index=1, frame=2)
    assert media_type == "image/png"
    decoded = np.asarray(PILImage.open(io.BytesIO(body)))
    np.testing.assert_array_equal(decoded, window_to_uint8(images[1, 2]))
    assert decoded.shape == (24, 16)
    assert decoded[0, 0] == 255
    assert np.median(decoded) > 60
    with pytest.raises(EncodeOutOfRangeError, match="slice=2"):
        encode_images(images, "png", slice_index=2)
    with pytest.raises(EncodeOutOfRangeError, match="frame=3"):
        encode_images(images, "png", frame=3)


def test_png_of_a_blank_image_is_black() -> None:
    decoded = np.asarray(PILImage.open(io.BytesIO(encode_png(window_to_uint8(np.zeros((4, 5)))))))
    assert decoded.shape == (4, 5)
    assert not decoded.any()


def test_mrd_stream_holds_one_image_per_slice_and_frame() -> None:
    images = volume()
    body, media_type = encode_images(images, "mrd", field_of_view_mm=(200.0, 180.0, 4.0))
    assert media_type == "application/vnd.ismrmrd.stream"
    messages = decode_stream(body)
    assert len(messages) == 6
    assert all(isinstance(m, Image) for m in messages)
    for message in messages:
        assert isinstance(message, Image)
        np.testing.assert_allclose(message.data[0, 0].T, images[message.slice, message.phase])
        np.testing.assert_allclose(message.head["field_of_view"], (200.0, 180.0, 4.0))


def test_unknown_format_and_bad_shapes_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="dicom"):
        encode_images(volume(), "dicom")
    with pytest.raises(InvalidInputError, match="slice, frame, H, W"):
        encode_images(volume()[0], "npy")
