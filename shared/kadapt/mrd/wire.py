"""MRD message wire layouts: the length of a message, decoding one message, encoding one message.

Byte-compatible with python-ismrmrd-server, Gadgetron and the ``ismrmrd`` package's
``ProtocolSerializer``. A stream is a sequence of messages; each starts with a little-endian uint16 id and
has a fixed layout per id, with no overall length prefix (a reader must understand every id to find the
next message). Every layout is drawn above the code that reads it. Text payloads (ids 1, 2, 3, 5 and the
1028 name) are cut at the first NUL: FIRE clients NUL-terminate them and count the NUL in the length.
Use ``kadapt.mrd.stream`` for whole payloads, TCP streams and bulk acquisitions.
"""

from __future__ import annotations

import struct

import numpy as np

from kadapt.errors import InvalidInputError, MrdDecodeError
from kadapt.mrd.constants import (
    ACQ_HEADER_DTYPE,
    ACQ_HEADER_SIZE,
    CONFIG_FILE_SIZE,
    IMAGE_HEADER_DTYPE,
    IMAGE_HEADER_SIZE,
    IMAGE_PIXEL_DTYPES,
    WAVEFORM_HEADER_DTYPE,
    WAVEFORM_HEADER_SIZE,
    MessageId,
)
from kadapt.mrd.messages import (
    Acquisition,
    Close,
    ConfigFile,
    ConfigText,
    Feedback,
    Header,
    Image,
    Message,
    Text,
    Waveform,
)

ID = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# Size fields inside the binary headers (offsets of the C structs, see constants.py).
ACQ_SAMPLES_CHANNELS = struct.Struct("<H2xH")  # number_of_samples @34, active_channels @38
ACQ_SAMPLES_AT, ACQ_TRAJ_DIMS_AT = 34, 176
_IMAGE_TYPE_AT, _IMAGE_MATRIX_AT, _IMAGE_CHANNELS_AT = 2, 16, 34
_WAVEFORM_SIZES = struct.Struct("<HH")  # number_of_samples @28, channels @30
_WAVEFORM_SIZES_AT = 28
_KNOWN_IDS = frozenset(int(m) for m in MessageId)


def message_name(msg_id: int) -> str:
    """``"1008 (ACQUISITION)"`` for known ids, the bare number otherwise (for error details)."""
    return f"{msg_id} ({MessageId(msg_id).name})" if msg_id in _KNOWN_IDS else str(msg_id)


def _cut_text(raw: bytes, what: str) -> str:
    try:
        return raw.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MrdDecodeError(f"{what} is not UTF-8: {exc}") from exc


def frame_length(buf: bytes | bytearray, offset: int, index: int, base_offset: int = 0) -> int | None:
    """Total bytes (id included) of the message at ``offset``; None while the buffer is too short to tell.

    Unknown ids and unsupported ones (NDARRAY) raise MrdDecodeError naming the message index, the id and
    the byte offset in the stream (``base_offset + offset``).
    """
    available = len(buf) - offset
    if available < 2:
        return None
    (msg_id,) = ID.unpack_from(buf, offset)
    body = offset + 2
    # ID 1 CONFIG_FILE:   | id u16 | name: 1024 bytes, NUL padded |
    if msg_id == MessageId.CONFIG_FILE:
        return 2 + CONFIG_FILE_SIZE
    # ID 2 CONFIG_TEXT, 3 HEADER, 5 TEXT:   | id u16 | length u32 | UTF-8 text [length] (maybe NUL-ended) |
    if msg_id in (MessageId.CONFIG_TEXT, MessageId.HEADER, MessageId.TEXT):
        if available < 6:
            return None
        return 6 + int(_U32.unpack_from(buf, body)[0])
    # ID 4 CLOSE:   | id u16 |
    if msg_id == MessageId.CLOSE:
        return 2
    # ID 1008 ACQUISITION:
    #   | id u16 | AcquisitionHeader 340 bytes | traj float32 [samples * trajectory_dimensions] |
    #   | data complex64 [active_channels][samples] (float32 real, imag interleaved) |
    #   sizes: number_of_samples u16 @34, active_channels u16 @38, trajectory_dimensions u16 @176
    if msg_id == MessageId.ACQUISITION:
        if available < 2 + ACQ_HEADER_SIZE:
            return None
        samples, channels = ACQ_SAMPLES_CHANNELS.unpack_from(buf, body + ACQ_SAMPLES_AT)
        (dims,) = ID.unpack_from(buf, body + ACQ_TRAJ_DIMS_AT)
        return int(2 + ACQ_HEADER_SIZE + 4 * samples * dims + 8 * channels * samples)
    # ID 1022 IMAGE:
    #   | id u16 | ImageHeader 198 bytes | attribute length u64 | attribute XML [length] |
    #   | pixels [channels][z][y][x] of data_type |
    #   sizes: data_type u16 @2, matrix_size u16[3] (x, y, z) @16, channels u16 @34
    if msg_id == MessageId.IMAGE:
        if available < 2 + IMAGE_HEADER_SIZE + 8:
            return None
        (data_type,) = ID.unpack_from(buf, body + _IMAGE_TYPE_AT)
        pixel = IMAGE_PIXEL_DTYPES.get(data_type)
        if pixel is None:
            raise MrdDecodeError(
                f"message {index} (id 1022 IMAGE) at byte {base_offset + offset}: "
                f"unknown image data_type {data_type}"
            )
        x, y, z = struct.unpack_from("<3H", buf, body + _IMAGE_MATRIX_AT)
        (channels,) = ID.unpack_from(buf, body + _IMAGE_CHANNELS_AT)
        (attribute_length,) = _U64.unpack_from(buf, body + IMAGE_HEADER_SIZE)
        return int(2 + IMAGE_HEADER_SIZE + 8 + attribute_length + pixel.itemsize * channels * x * y * z)
    # ID 1026 WAVEFORM:   | id u16 | WaveformHeader 40 bytes | data uint32 [channels][samples] |
    #   sizes: number_of_samples u16 @28, channels u16 @30
    if msg_id == MessageId.WAVEFORM:
        if available < 2 + WAVEFORM_HEADER_SIZE:
            return None
        samples, channels = _WAVEFORM_SIZES.unpack_from(buf, body + _WAVEFORM_SIZES_AT)
        return int(2 + WAVEFORM_HEADER_SIZE + 4 * samples * channels)
    # ID 1028 FEEDBACK (FIRE):
    #   | id u16 | name length u32 (NUL counted) | name, NUL-terminated | data length u32 | data bytes |
    if msg_id == MessageId.FEEDBACK:
        if available < 6:
            return None
        name_end = body + 4 + int(_U32.unpack_from(buf, body)[0])
        if len(buf) < name_end + 4:
            return None
        return name_end + 4 + int(_U32.unpack_from(buf, name_end)[0]) - offset
    raise MrdDecodeError(
        f"message {index} at byte {base_offset + offset}: "
        + (
            f"message id {message_name(msg_id)} is recognised but not supported"
            if msg_id in _KNOWN_IDS
            else f"unknown message id {msg_id}"
        )
    )


def decode_message(buf: bytes, offset: int, length: int, index: int, base_offset: int) -> Message:
    """Decode the complete message ``buf[offset : offset + length]`` (arrays are views on ``buf``)."""
    (msg_id,) = ID.unpack_from(buf, offset)
    body = offset + 2
    end = offset + length
    what = f"message {index} (id {message_name(msg_id)}) at byte {base_offset + offset}"
    if msg_id == MessageId.ACQUISITION:
        samples, channels = ACQ_SAMPLES_CHANNELS.unpack_from(buf, body + ACQ_SAMPLES_AT)
        (dims,) = ID.unpack_from(buf, body + ACQ_TRAJ_DIMS_AT)
        head = np.frombuffer(buf, ACQ_HEADER_DTYPE, 1, body).reshape(())
        traj_at = body + ACQ_HEADER_SIZE
        traj = np.frombuffer(buf, np.float32, samples * dims, traj_at).reshape(samples, dims)
        data_at = traj_at + 4 * samples * dims
        data = np.frombuffer(buf, np.complex64, channels * samples, data_at).reshape(channels, samples)
        return Acquisition(head, data, traj)
    if msg_id in (MessageId.CONFIG_TEXT, MessageId.HEADER, MessageId.TEXT):
        text = _cut_text(buf[body + 4 : end], what)
        if msg_id == MessageId.HEADER:
            return Header(text)
        return ConfigText(text) if msg_id == MessageId.CONFIG_TEXT else Text(text)
    if msg_id == MessageId.CONFIG_FILE:
        return ConfigFile(_cut_text(buf[body:end], what))
    if msg_id == MessageId.CLOSE:
        return Close()
    if msg_id == MessageId.IMAGE:
        head = np.frombuffer(buf, IMAGE_HEADER_DTYPE, 1, body).reshape(())
        attribute_at = body + IMAGE_HEADER_SIZE + 8
        attribute_end = attribute_at + int(_U64.unpack_from(buf, body + IMAGE_HEADER_SIZE)[0])
        attributes = _cut_text(buf[attribute_at:attribute_end], f"{what} attributes")
        x, y, z = (int(v) for v in head["matrix_size"])
        channels = int(head["channels"])
        pixel = IMAGE_PIXEL_DTYPES[int(head["data_type"])]
        pixels = np.frombuffer(buf, pixel, channels * x * y * z, attribute_end)
        return Image(head, attributes, pixels.reshape(channels, z, y, x))
    if msg_id == MessageId.WAVEFORM:
        head = np.frombuffer(buf, WAVEFORM_HEADER_DTYPE, 1, body).reshape(())
        channels, samples = int(head["channels"]), int(head["number_of_samples"])
        values = np.frombuffer(buf, np.uint32, channels * samples, body + WAVEFORM_HEADER_SIZE)
        return Waveform(head, values.reshape(channels, samples))
    # FEEDBACK is the only id left: frame_length rejected every other one.
    name_end = body + 4 + int(_U32.unpack_from(buf, body)[0])
    name = _cut_text(buf[body + 4 : name_end], f"{what} name")
    return Feedback(name, buf[name_end + 4 : end])


def _text_frame(msg_id: MessageId, text: str) -> bytes:
    raw = text.encode("utf-8")
    return ID.pack(msg_id) + _U32.pack(len(raw)) + raw


def encode_message(message: Message) -> bytes:
    """The wire bytes of one message (id included), as the ``ismrmrd`` package serialises it."""
    if isinstance(message, Acquisition):
        return (
            ID.pack(MessageId.ACQUISITION)
            + message.head.tobytes()
            + message.traj.tobytes()
            + message.data.tobytes()
        )
    if isinstance(message, Header):
        return _text_frame(MessageId.HEADER, message.xml)
    if isinstance(message, Text):
        return _text_frame(MessageId.TEXT, message.text)
    if isinstance(message, ConfigText):
        return _text_frame(MessageId.CONFIG_TEXT, message.text)
    if isinstance(message, ConfigFile):
        raw = message.name.encode("utf-8")
        if len(raw) >= CONFIG_FILE_SIZE:
            raise InvalidInputError(
                f"config file name is {len(raw)} bytes, at most {CONFIG_FILE_SIZE - 1} fit: "
                f"{message.name[:40]!r}"
            )
        return ID.pack(MessageId.CONFIG_FILE) + raw.ljust(CONFIG_FILE_SIZE, b"\0")
    if isinstance(message, Close):
        return ID.pack(MessageId.CLOSE)
    if isinstance(message, Image):
        attributes = message.attributes.encode("utf-8")
        head = message.head.copy()
        head["attribute_string_len"] = len(attributes)
        return (
            ID.pack(MessageId.IMAGE)
            + head.tobytes()
            + _U64.pack(len(attributes))
            + attributes
            + np.ascontiguousarray(message.data).tobytes()
        )
    if isinstance(message, Waveform):
        return ID.pack(MessageId.WAVEFORM) + message.head.tobytes() + message.data.tobytes()
    if isinstance(message, Feedback):
        name = message.name.encode("utf-8") + b"\0"
        return (
            ID.pack(MessageId.FEEDBACK)
            + _U32.pack(len(name))
            + name
            + _U32.pack(len(message.data))
            + message.data
        )
    raise InvalidInputError(f"cannot encode {type(message).__name__} as an MRD message")
