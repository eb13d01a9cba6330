"""MRD (ISMRMRD) message ids, acquisition flags, image data types and the binary header layouts.

The header dtypes are the C structs of ISMRMRD (Inati et al., MRM 2017, "ISMRM Raw Data Format") as
numpy structured dtypes, little-endian. ``ACQ_HEADER_DTYPE`` and ``IMAGE_HEADER_DTYPE`` are packed
(``#pragma pack(2)`` in C; no padding occurs); ``WAVEFORM_HEADER_DTYPE`` is naturally aligned (40 bytes
with padding after ``version`` and at the end) because the C++ ``WaveformHeader`` is not packed. Sizes and
field offsets are checked against the ``ismrmrd`` package's ctypes structures in the tests.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class MessageId(IntEnum):
    """Little-endian uint16 id that starts every MRD streaming message."""

    CONFIG_FILE = 1
    CONFIG_TEXT = 2
    HEADER = 3
    CLOSE = 4
    TEXT = 5
    ACQUISITION = 1008
    IMAGE = 1022
    WAVEFORM = 1026
    FEEDBACK = 1028
    NDARRAY = 1030  # recognised, not supported: decoding raises MrdDecodeError naming it


class AcquisitionFlag(IntEnum):
    """ISMRMRD acquisition flag bit numbers: flag ``b`` is the mask ``1 << (b - 1)`` of ``head.flags``."""

    ACQ_FIRST_IN_ENCODE_STEP1 = 1
    ACQ_LAST_IN_ENCODE_STEP1 = 2
    ACQ_FIRST_IN_ENCODE_STEP2 = 3
    ACQ_LAST_IN_ENCODE_STEP2 = 4
    ACQ_FIRST_IN_AVERAGE = 5
    ACQ_LAST_IN_AVERAGE = 6
    ACQ_FIRST_IN_SLICE = 7
    ACQ_LAST_IN_SLICE = 8
    ACQ_FIRST_IN_CONTRAST = 9
    ACQ_LAST_IN_CONTRAST = 10
    ACQ_FIRST_IN_PHASE = 11
    ACQ_LAST_IN_PHASE = 12
    ACQ_FIRST_IN_REPETITION = 13
    ACQ_LAST_IN_REPETITION = 14
    ACQ_FIRST_IN_SET = 15
    ACQ_LAST_IN_SET = 16
    ACQ_FIRST_IN_SEGMENT = 17
    ACQ_LAST_IN_SEGMENT = 18
    ACQ_IS_NOISE_MEASUREMENT = 19
    ACQ_IS_PARALLEL_CALIBRATION = 20
    ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING = 21
    ACQ_IS_REVERSE = 22
    ACQ_IS_NAVIGATION_DATA = 23
    ACQ_IS_PHASECORR_DATA = 24
    ACQ_LAST_IN_MEASUREMENT = 25
    ACQ_IS_HPFEEDBACK_DATA = 26
    ACQ_IS_DUMMYSCAN_DATA = 27
    ACQ_IS_RTFEEDBACK_DATA = 28
    ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA = 29
    ACQ_IS_PHASE_STABILIZATION_REFERENCE = 30
    ACQ_IS_PHASE_STABILIZATION = 31
    ACQ_COMPRESSION1 = 53
    ACQ_COMPRESSION2 = 54
    ACQ_COMPRESSION3 = 55
    ACQ_COMPRESSION4 = 56
    ACQ_USER1 = 57
    ACQ_USER2 = 58
    ACQ_USER3 = 59
    ACQ_USER4 = 60
    ACQ_USER5 = 61
    ACQ_USER6 = 62
    ACQ_USER7 = 63
    ACQ_USER8 = 64

    @property
    def mask(self) -> int:
        """The bit of ``head.flags`` this flag sets."""
        return 1 << (self.value - 1)


def flag_mask(*flags: AcquisitionFlag | int) -> int:
    """OR of the masks of ``flags`` (bit numbers 1..64), e.g. for ``head["flags"]``."""
    mask = 0
    for flag in flags:
        mask |= 1 << (int(flag) - 1)
    return mask


class ImageDataType(IntEnum):
    """``ImageHeader.data_type``: the pixel type of an MRD image."""

    USHORT = 1
    SHORT = 2
    UINT = 3
    INT = 4
    FLOAT = 5
    DOUBLE = 6
    CXFLOAT = 7
    CXDOUBLE = 8


class ImageType(IntEnum):
    """``ImageHeader.image_type``."""

    MAGNITUDE = 1
    PHASE = 2
    REAL = 3
    IMAG = 4
    COMPLEX = 5
    RGB = 6


# Pixel dtypes per data_type, little-endian as on the wire (INT is the C int32_t).
IMAGE_PIXEL_DTYPES: dict[int, np.dtype[np.generic]] = {
    ImageDataType.USHORT: np.dtype("<u2"),
    ImageDataType.SHORT: np.dtype("<i2"),
    ImageDataType.UINT: np.dtype("<u4"),
    ImageDataType.INT: np.dtype("<i4"),
    ImageDataType.FLOAT: np.dtype("<f4"),
    ImageDataType.DOUBLE: np.dtype("<f8"),
    ImageDataType.CXFLOAT: np.dtype("<c8"),
    ImageDataType.CXDOUBLE: np.dtype("<c16"),
}

USER_INTS = 8
USER_FLOATS = 8
PHYS_STAMPS = 3
CHANNEL_MASKS = 16

ENCODING_COUNTERS_DTYPE = np.dtype(
    [
        ("kspace_encode_step_1", "<u2"),
        ("kspace_encode_step_2", "<u2"),
        ("average", "<u2"),
        ("slice", "<u2"),
        ("contrast", "<u2"),
        ("phase", "<u2"),
        ("repetition", "<u2"),
        ("set", "<u2"),
        ("segment", "<u2"),
        ("user", "<u2", (USER_INTS,)),
    ]
)

ACQ_HEADER_DTYPE = np.dtype(
    [
        ("version", "<u2"),
        ("flags", "<u8"),
        ("measurement_uid", "<u4"),
        ("scan_counter", "<u4"),
        ("acquisition_time_stamp", "<u4"),
        ("physiology_time_stamp", "<u4", (PHYS_STAMPS,)),
        ("number_of_samples", "<u2"),
        ("available_channels", "<u2"),
        ("active_channels", "<u2"),
        ("channel_mask", "<u8", (CHANNEL_MASKS,)),
        ("discard_pre", "<u2"),
        ("discard_post", "<u2"),
        ("center_sample", "<u2"),
        ("encoding_space_ref", "<u2"),
        ("trajectory_dimensions", "<u2"),
        ("sample_time_us", "<f4"),
        ("position", "<f4", (3,)),
        ("read_dir", "<f4", (3,)),
        ("phase_dir", "<f4", (3,)),
        ("slice_dir", "<f4", (3,)),
        ("patient_table_position", "<f4", (3,)),
        ("idx", ENCODING_COUNTERS_DTYPE),
        ("user_int", "<i4", (USER_INTS,)),
        ("user_float", "<f4", (USER_FLOATS,)),
    ]
)

IMAGE_HEADER_DTYPE = np.dtype(
    [
        ("version", "<u2"),
        ("data_type", "<u2"),
        ("flags", "<u8"),
        ("measurement_uid", "<u4"),
        ("matrix_size", "<u2", (3,)),
        ("field_of_view", "<f4", (3,)),
        ("channels", "<u2"),
        ("position", "<f4", (3,)),
        ("read_dir", "<f4", (3,)),
        ("phase_dir", "<f4", (3,)),
        ("slice_dir", "<f4", (3,)),
        ("patient_table_position", "<f4", (3,)),
        ("average", "<u2"),
        ("slice", "<u2"),
        ("contrast", "<u2"),
        ("phase", "<u2"),
        ("repetition", "<u2"),
        ("set", "<u2"),
        ("acquisition_time_stamp", "<u4"),
        ("physiology_time_stamp", "<u4", (PHYS_STAMPS,)),
        ("image_type", "<u2"),
        ("image_index", "<u2"),
        ("image_series_index", "<u2"),
        ("user_int", "<i4", (USER_INTS,)),
        ("user_float", "<f4", (USER_FLOATS,)),
        ("attribute_string_len", "<u4"),
    ]
)

# Not packed in C++: uint64 flags aligned at 8, two trailing padding bytes after waveform_id.
WAVEFORM_HEADER_DTYPE = np.dtype(
    [
        ("version", "<u2"),
        ("flags", "<u8"),
        ("measurement_uid", "<u4"),
        ("scan_counter", "<u4"),
        ("time_stamp", "<u4"),
        ("number_of_samples", "<u2"),
        ("channels", "<u2"),
        ("sample_time_us", "<f4"),
        ("waveform_id", "<u2"),
    ],
    align=True,
)

ACQ_HEADER_SIZE = ACQ_HEADER_DTYPE.itemsize  # 340
IMAGE_HEADER_SIZE = IMAGE_HEADER_DTYPE.itemsize  # 198
WAVEFORM_HEADER_SIZE = WAVEFORM_HEADER_DTYPE.itemsize  # 40
CONFIG_FILE_SIZE = 1024

# Readouts that are neither image, calibration nor noise data: assembly sets them aside and counts them.
NON_IMAGING_FLAGS: tuple[AcquisitionFlag, ...] = (
    AcquisitionFlag.ACQ_IS_NAVIGATION_DATA,
    AcquisitionFlag.ACQ_IS_PHASECORR_DATA,
    AcquisitionFlag.ACQ_IS_HPFEEDBACK_DATA,
    AcquisitionFlag.ACQ_IS_DUMMYSCAN_DATA,
    AcquisitionFlag.ACQ_IS_RTFEEDBACK_DATA,
    AcquisitionFlag.ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA,
    AcquisitionFlag.ACQ_IS_PHASE_STABILIZATION_REFERENCE,
    AcquisitionFlag.ACQ_IS_PHASE_STABILIZATION,
)
