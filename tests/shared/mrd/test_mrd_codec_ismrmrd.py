"""Byte-exactness of the MRD codec against the ismrmrd package's ProtocolSerializer / Deserializer."""

from __future__ import annotations

import io
from typing import Any

import ismrmrd
import numpy as np
import pytest
from ismrmrd.serialization import ProtocolDeserializer, ProtocolSerializer

from kadapt.mrd.constants import AcquisitionFlag, ImageDataType
from kadapt.mrd.header import make_header
from kadapt.mrd.stream import (
    Acquisition,
    Close,
    ConfigFile,
    ConfigText,
    Header,
    Image,
    Message,
    Text,
    Waveform,
    decode_stream,
    encode_message,
    make_acquisition,
    make_image_messages,
    make_waveform,
)


def ismrmrd_bytes(*objects: Any, close: bool = False) -> bytes:
    """What ismrmrd's ProtocolSerializer writes for ``objects`` (and CLOSE when ``close``)."""
    stream = io.BytesIO()
    serializer = ProtocolSerializer(stream)
    for obj in objects:
        serializer.serialize(obj)
    if close:
        serializer.close()
    return stream.getvalue()


def ismrmrd_read(payload: bytes) -> list[Any]:
    """Everything ismrmrd's ProtocolDeserializer yields from ``payload`` (which must end with CLOSE)."""
    return list(ProtocolDeserializer(io.BytesIO(payload)).deserialize())


def random_readout(rng: np.random.Generator, coils: int = 4, samples: int = 32) -> np.ndarray:
    return (rng.standard_normal((coils, samples)) + 1j * rng.standard_normal((coils, samples))).astype(
        np.complex64
    )


CLOSE_BYTES = b"\x04\x00"


def test_config_file_config_text_text_and_close_are_byte_exact() -> None:
    cases: list[tuple[Message, Any]] = [
        (ConfigFile("simplefft"), ismrmrd.ConfigFile("simplefft")),
        (ConfigText('{"parameters": {"a": 1}}'), ismrmrd.ConfigText('{"parameters": {"a": 1}}')),
        (Text("plan: [1, 2, 3] \u00b5s"), "plan: [1, 2, 3] \u00b5s"),
    ]
    for ours, theirs in cases:
        assert encode_message(ours) == ismrmrd_bytes(theirs)
        assert decode_stream(ismrmrd_bytes(theirs)) == [ours]
        assert ismrmrd_read(encode_message(ours) + CLOSE_BYTES) == [theirs]
        assert type(ismrmrd_read(encode_message(ours) + CLOSE_BYTES)[0]) is type(theirs)
    assert encode_message(Close()) == ismrmrd_bytes(close=True) == CLOSE_BYTES
    assert decode_stream(CLOSE_BYTES) == [Close()]


def test_header_is_byte_exact() -> None:
    header = ismrmrd.xsd.CreateFromDocument(make_header(readout=256, width=128, recon_readout=128, coils=8))
    theirs = ismrmrd_bytes(header)
    assert encode_message(Header(header.toXML())) == theirs
    (decoded,) = decode_stream(theirs)
    assert isinstance(decoded, Header)
    assert decoded.xml == header.toXML()
    (read_back,) = ismrmrd_read(encode_message(decoded) + CLOSE_BYTES)
    assert read_back.encoding[0].encodedSpace.matrixSize.x == 256
    assert read_back.acquisitionSystemInformation.receiverChannels == 8


@pytest.mark.parametrize("trajectory_dimensions", [0, 2])
def test_acquisition_is_byte_exact(trajectory_dimensions: int) -> None:
    rng = np.random.default_rng(1)
    data = random_readout(rng, coils=8, samples=64)
    trajectory = rng.standard_normal((64, trajectory_dimensions)).astype(np.float32)
    flags = (AcquisitionFlag.ACQ_IS_PARALLEL_CALIBRATION, AcquisitionFlag.ACQ_LAST_IN_SLICE)
    ours = make_acquisition(
        17, data, slice=2, phase=3, repetition=1, flags=flags, trajectory=trajectory, scan_counter=9
    )
    theirs = ismrmrd.Acquisition(ours.head.tobytes(), data, trajectory)
    assert encode_message(ours) == ismrmrd_bytes(theirs)

    (decoded,) = decode_stream(ismrmrd_bytes(theirs))
    assert isinstance(decoded, Acquisition)
    assert decoded.head.tobytes() == bytes(theirs.getHead())
    np.testing.assert_array_equal(decoded.data, data)
    np.testing.assert_array_equal(decoded.traj, trajectory)
    assert (decoded.ky, decoded.slice, decoded.phase, decoded.repetition) == (17, 2, 3, 1)
    assert decoded.is_flag_set(AcquisitionFlag.ACQ_IS_PARALLEL_CALIBRATION)
    assert not decoded.is_flag_set(AcquisitionFlag.ACQ_IS_NOISE_MEASUREMENT)

    (read_back,) = ismrmrd_read(encode_message(ours) + CLOSE_BYTES)
    assert read_back == theirs
    assert read_back.idx.kspace_encode_step_1 == 17
    assert read_back.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)


def test_acquisition_built_by_ismrmrd_round_trips_byte_exact() -> None:
    rng = np.random.default_rng(2)
    theirs = ismrmrd.Acquisition.from_array(random_readout(rng, 2, 16), center_sample=8, sample_time_us=3.5)
    theirs.idx.kspace_encode_step_1 = 5
    theirs.set_flag(ismrmrd.ACQ_IS_REVERSE)
    payload = ismrmrd_bytes(theirs)
    (decoded,) = decode_stream(payload)
    assert encode_message(decoded) == payload


@pytest.mark.parametrize("data_type", [ImageDataType.FLOAT, ImageDataType.USHORT])
def test_image_is_byte_exact(data_type: ImageDataType) -> None:
    rng = np.random.default_rng(3)
    magnitude = rng.random((2, 3, 24, 16)).astype(np.float32)
    images = make_image_messages(
        magnitude, field_of_view=(240.0, 160.0, 5.0), image_series_index=4, data_type=data_type
    )
    assert len(images) == 6
    for ours in images:
        theirs = ismrmrd.Image(ours.head.tobytes(), ours.attributes)
        theirs.data[:] = ours.data
        assert encode_message(ours) == ismrmrd_bytes(theirs)
        (read_back,) = ismrmrd_read(encode_message(ours) + CLOSE_BYTES)
        assert read_back == theirs
        assert read_back.meta["DataRole"] == "Image"
        (decoded,) = decode_stream(ismrmrd_bytes(theirs))
        assert isinstance(decoded, Image)
        assert decoded.head.tobytes() == ours.head.tobytes()
        assert decoded.attributes == ours.attributes
        np.testing.assert_array_equal(decoded.data, ours.data)


def test_image_built_by_ismrmrd_round_trips_byte_exact() -> None:
    array = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    theirs = ismrmrd.Image.from_array(array, image_index=3, image_series_index=2)
    theirs.meta = {"DataRole": "Image", "WindowCenter": "10"}
    payload = ismrmrd_bytes(theirs)
    (decoded,) = decode_stream(payload)
    assert isinstance(decoded, Image)
    assert decoded.data.shape == (1, 2, 5, 7)
    assert decoded.matrix_size == (7, 5, 2)
    assert decoded.meta == {"DataRole": ["Image"], "WindowCenter": ["10"]}
    assert encode_message(decoded) == payload


def test_waveform_is_byte_exact() -> None:
    data = np.arange(3 * 50, dtype=np.uint32).reshape(3, 50) * 1000
    ours = make_waveform(data, waveform_id=1, time_stamp=12345, sample_time_us=2500.0, scan_counter=4)
    theirs = ismrmrd.Waveform.from_array(
        data, waveform_id=1, time_stamp=12345, sample_time_us=2500.0, scan_counter=4
    )
    assert encode_message(ours) == ismrmrd_bytes(theirs)
    (read_back,) = ismrmrd_read(encode_message(ours) + CLOSE_BYTES)
    assert read_back == theirs
    (decoded,) = decode_stream(ismrmrd_bytes(theirs))
    assert isinstance(decoded, Waveform)
    np.testing.assert_array_equal(decoded.data, data)
    assert int(decoded.head["waveform_id"]) == 1


def test_a_whole_session_decodes_in_order_and_ismrmrd_reads_ours() -> None:
    rng = np.random.default_rng(4)
    xml = ismrmrd.xsd.CreateFromDocument(make_header(readout=32, width=8, coils=4)).toXML()
    readouts = [make_acquisition(ky, random_readout(rng)) for ky in range(8)]
    session: list[Message] = [ConfigFile("default"), Header(xml), Text('{"policy": "x"}'), *readouts]
    payload = b"".join(encode_message(m) for m in session) + CLOSE_BYTES
    decoded = decode_stream(payload)
    assert [type(m) for m in decoded] == [type(m) for m in session] + [Close]
    assert [m.ky for m in decoded if isinstance(m, Acquisition)] == list(range(8))
    theirs = ismrmrd_read(payload)
    assert len(theirs) == len(session)
    assert [a.idx.kspace_encode_step_1 for a in theirs[3:]] == list(range(8))
    assert ismrmrd_bytes(*theirs, close=True) == payload
