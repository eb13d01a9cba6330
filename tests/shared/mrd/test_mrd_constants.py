"""Header dtypes and flag numbers against the ismrmrd package's ctypes structures and constants."""

from __future__ import annotations

import ctypes

import ismrmrd
import numpy as np
import pytest

from kadapt.mrd.constants import (
    ACQ_HEADER_DTYPE,
    ENCODING_COUNTERS_DTYPE,
    IMAGE_HEADER_DTYPE,
    IMAGE_PIXEL_DTYPES,
    WAVEFORM_HEADER_DTYPE,
    AcquisitionFlag,
    ImageDataType,
    MessageId,
    flag_mask,
)


def _ctypes_layout(structure: type[ctypes.Structure]) -> list[tuple[str, int, int]]:
    return [
        (field[0], getattr(structure, field[0]).offset, ctypes.sizeof(field[1]))
        for field in structure._fields_
    ]


def _numpy_layout(dtype: np.dtype[np.void]) -> list[tuple[str, int, int]]:
    assert dtype.names is not None
    return [(name, dtype.fields[name][1], dtype.fields[name][0].itemsize) for name in dtype.names]  # type: ignore[index]


@pytest.mark.parametrize(
    ("dtype", "structure", "size"),
    [
        (ACQ_HEADER_DTYPE, ismrmrd.AcquisitionHeader, 340),
        (IMAGE_HEADER_DTYPE, ismrmrd.ImageHeader, 198),
        (WAVEFORM_HEADER_DTYPE, ismrmrd.WaveformHeader, 40),
        (ENCODING_COUNTERS_DTYPE, ismrmrd.EncodingCounters, 34),
    ],
)
def test_header_dtype_matches_ismrmrd_ctypes(
    dtype: np.dtype[np.void], structure: type[ctypes.Structure], size: int
) -> None:
    assert dtype.itemsize == ctypes.sizeof(structure) == size
    assert _numpy_layout(dtype) == _ctypes_layout(structure)


def test_header_bytes_round_trip_through_ctypes() -> None:
    head = np.zeros((), dtype=ACQ_HEADER_DTYPE)
    head["flags"] = 0x0123_4567_89AB_CDEF
    head["idx"]["kspace_encode_step_1"] = 77
    head["idx"]["user"] = np.arange(8)
    head["user_float"][7] = 1.5
    structure = ismrmrd.AcquisitionHeader.from_buffer_copy(head.tobytes())
    assert structure.flags == 0x0123_4567_89AB_CDEF
    assert structure.idx.kspace_encode_step_1 == 77
    assert list(structure.idx.user) == list(range(8))
    assert structure.user_float[7] == 1.5
    assert bytes(structure) == head.tobytes()


def test_acquisition_flags_are_the_ismrmrd_bit_numbers() -> None:
    for flag in AcquisitionFlag:
        assert getattr(ismrmrd, flag.name) == flag.value
        assert flag.mask == 1 << (flag.value - 1)
    ismrmrd_flags = {name for name in dir(ismrmrd) if name.startswith("ACQ_") and name != "ACQ_HEADER"}
    assert ismrmrd_flags <= {flag.name for flag in AcquisitionFlag}
    assert flag_mask(AcquisitionFlag.ACQ_IS_NOISE_MEASUREMENT, 20) == (1 << 18) | (1 << 19)


def test_message_ids_and_image_types_match_ismrmrd() -> None:
    from ismrmrd.serialization import ISMRMRDMessageID

    for message in ISMRMRDMessageID:
        if message.name != "UNPEEKED":
            assert MessageId[message.name] == message.value
    assert int(MessageId.FEEDBACK) == 1028
    for data_type in ImageDataType:
        assert getattr(ismrmrd, f"DATATYPE_{data_type.name}") == data_type.value
    assert IMAGE_PIXEL_DTYPES[ImageDataType.INT] == np.dtype("<i4")  # C int32_t
