"""Message builders: acquisition header defaults, image layout and scaling, meta XML, input checks."""

from __future__ import annotations

import ismrmrd
import numpy as np
import pytest

from kadapt.errors import EncodeOutOfRangeError, GeometryMismatchError, InvalidInputError, NonFiniteDataError
from kadapt.mrd.builders import USHORT_MAX, channel_mask
from kadapt.mrd.constants import AcquisitionFlag, ImageDataType
from kadapt.mrd.messages import parse_meta, serialize_meta
from kadapt.mrd.stream import ConfigFile, encode_message, make_acquisition, make_image_messages


def test_make_acquisition_fills_the_usual_header_fields() -> None:
    acquisition = make_acquisition(
        12, np.ones((70, 32)), phase=4, flags=[AcquisitionFlag.ACQ_IS_REVERSE], sample_time_us=2.5
    )
    head = acquisition.head
    assert acquisition.data.dtype == np.complex64
    assert (acquisition.active_channels, acquisition.number_of_samples, acquisition.center_sample) == (
        70,
        32,
        16,
    )
    assert int(head["available_channels"]) == 70
    assert int(head["version"]) == 1
    assert float(head["sample_time_us"]) == 2.5
    assert head["read_dir"].tolist() == [1.0, 0.0, 0.0]
    assert head["slice_dir"].tolist() == [0.0, 0.0, 1.0]
    assert acquisition.flags == 1 << 21
    structure = ismrmrd.AcquisitionHeader.from_buffer_copy(head.tobytes())
    assert [structure.isChannelActive(c) for c in (0, 63, 64, 69, 70)] == [True, True, True, True, False]
    assert channel_mask(0).tolist() == [0] * 16


def test_counters_outside_uint16_and_bad_shapes_are_refused() -> None:
    with pytest.raises(EncodeOutOfRangeError, match="kspace_encode_step_1=70000"):
        make_acquisition(70_000, np.ones((1, 4)))
    with pytest.raises(EncodeOutOfRangeError, match="slice=-1"):
        make_acquisition(0, np.ones((1, 4)), slice=-1)
    with pytest.raises(GeometryMismatchError, match=r"\(coils, samples\)"):
        make_acquisition(0, np.ones(4))
    with pytest.raises(GeometryMismatchError, match="trajectory must be"):
        make_acquisition(0, np.ones((1, 4)), trajectory=np.ones((3, 2)))
    with pytest.raises(InvalidInputError, match="config file name is 1024 bytes"):
        encode_message(ConfigFile("x" * 1024))


def test_image_messages_follow_mrd_conventions() -> None:
    magnitude = np.arange(2 * 2 * 6 * 4, dtype=np.float32).reshape(2, 2, 6, 4)  # (slices, frames, H, W)
    images = make_image_messages(magnitude, field_of_view=(300.0, 200.0, 5.0), first_image_index=10)
    assert [(im.slice, im.phase, im.image_index) for im in images] == [
        (0, 0, 10),
        (0, 1, 11),
        (1, 0, 12),
        (1, 1, 13),
    ]
    third = images[2]
    assert third.matrix_size == (6, 4, 1)  # x = readout = H
    assert third.data.shape == (1, 1, 4, 6)
    np.testing.assert_array_equal(third.data[0, 0], magnitude[1, 0].T)
    assert third.head["field_of_view"].tolist() == [300.0, 200.0, 5.0]
    assert third.meta["WindowWidth"] == [f"{magnitude.max():g}"]
    assert ismrmrd.Meta.deserialize(third.attributes)["ImageProcessingHistory"] == "KADAPT"


def test_ushort_images_scale_the_volume_maximum_to_4095() -> None:
    magnitude = np.array([[[[0.0, 0.5], [1.0, 2.0]]]], dtype=np.float32)
    (image,) = make_image_messages(magnitude, field_of_view=(1.0, 1.0, 1.0), data_type=ImageDataType.USHORT)
    assert image.data.dtype == np.uint16
    assert image.data.max() == USHORT_MAX
    np.testing.assert_array_equal(image.data[0, 0], np.array([[0, 2048], [1024, 4095]]))
    assert image.meta["WindowCenter"] == ["2047.5"]


def test_image_inputs_are_checked() -> None:
    with pytest.raises(NonFiniteDataError):
        make_image_messages(np.full((1, 1, 2, 2), np.nan), field_of_view=(1.0, 1.0, 1.0))
    with pytest.raises(GeometryMismatchError, match="real"):
        make_image_messages(np.ones((1, 2, 2), np.complex64), field_of_view=(1.0, 1.0, 1.0))
    with pytest.raises(InvalidInputError, match="FLOAT or USHORT"):
        make_image_messages(
            np.ones((1, 1, 2, 2)), field_of_view=(1.0, 1.0, 1.0), data_type=ImageDataType.CXFLOAT
        )


def test_meta_xml_matches_ismrmrd_meta() -> None:
    meta = {"DataRole": "Image", "ImageProcessingHistory": ["FIRE", "PYTHON"], "WindowCenter": 12}
    ours = serialize_meta(meta)
    theirs = ismrmrd.Meta(meta)
    assert ours == theirs.serialize()
    assert parse_meta(ours) == {
        "DataRole": ["Image"],
        "ImageProcessingHistory": ["FIRE", "PYTHON"],
        "WindowCenter": ["12"],
    }
    assert serialize_meta({}) == ""
    assert parse_meta("") == {}
    with pytest.raises(InvalidInputError, match="root is <other>"):
        parse_meta("<other/>")
