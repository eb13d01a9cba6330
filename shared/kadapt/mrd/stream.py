"""MRD streaming: whole payloads, TCP streams fed in chunks, and many acquisitions at once.

``decode_stream`` decodes a whole payload, ``StreamDecoder`` a TCP stream fed in arbitrary chunks, and
``decode_acquisitions`` / ``encode_acquisitions`` handle many readouts of one shape as a single numpy
record view (the gateway's hot path and replay). The per-message byte layouts are in
``kadapt.mrd.wire``; this module re-exports the message types, ``encode_message`` and the builders.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import InvalidInputError, MrdDecodeError, MrdTruncatedError, PayloadTooLargeError
from kadapt.mrd.builders import make_acquisition, make_acquisition_heads, make_image_messages, make_waveform
from kadapt.mrd.constants import ACQ_HEADER_DTYPE, ACQ_HEADER_SIZE, MessageId
from kadapt.mrd.messages import (
    Acquisition,
    AcquisitionBatch,
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
from kadapt.mrd.wire import (
    ACQ_SAMPLES_AT,
    ACQ_SAMPLES_CHANNELS,
    ACQ_TRAJ_DIMS_AT,
    ID,
    decode_message,
    encode_message,
    frame_length,
    message_name,
)

__all__ = [
    "Acquisition",
    "AcquisitionBatch",
    "Close",
    "ConfigFile",
    "ConfigText",
    "Feedback",
    "Header",
    "Image",
    "Message",
    "StreamDecoder",
    "Text",
    "Waveform",
    "decode_acquisitions",
    "decode_stream",
    "encode_acquisitions",
    "encode_message",
    "encode_messages",
    "make_acquisition",
    "make_acquisition_heads",
    "make_image_messages",
    "make_waveform",
]


def _decode_frames(buf: bytes, first_index: int, base_offset: int) -> tuple[list[Message], int]:
    """Decode every complete message in ``buf``; returns them and the bytes they used.

    ``first_index`` / ``base_offset`` place ``buf`` in the whole stream for error details.
    """
    messages: list[Message] = []
    offset = 0
    while offset < len(buf):
        index = first_index + len(messages)
        length = frame_length(buf, offset, index, base_offset)
        if length is None or offset + length > len(buf):
            break
        messages.append(decode_message(buf, offset, length, index, base_offset))
        offset += length
    return messages, offset


def decode_stream(payload: bytes | bytearray | memoryview) -> list[Message]:
    """Decode a complete payload of MRD messages.

    Raises MrdTruncatedError when the payload ends inside a message and MrdDecodeError for an unknown
    or unsupported id or a malformed message; the detail names the message index, id and byte offset.
    Arrays in the result are read-only views on (an immutable copy of) ``payload``.
    """
    buf = payload if isinstance(payload, bytes) else bytes(payload)
    messages, used = _decode_frames(buf, 0, 0)
    if used < len(buf):
        index = len(messages)
        msg_id = message_name(ID.unpack_from(buf, used)[0]) if len(buf) - used >= 2 else "unknown"
        length = frame_length(buf, used, index)
        needed = "an unknown number of" if length is None else str(length)
        raise MrdTruncatedError(
            f"message {index} (id {msg_id}) at byte {used} is truncated: it needs {needed} bytes, "
            f"the payload ends {len(buf) - used} bytes after its start"
        )
    return messages


class StreamDecoder:
    """Incremental decoder for a TCP stream: ``feed`` any chunks, get back the messages they complete.

    Partial messages are kept until their last byte arrives. ``max_message_bytes`` bounds the memory a
    single declared message may claim (PayloadTooLargeError beyond it).
    """

    def __init__(self, max_message_bytes: int = 1 << 30) -> None:
        self._buffer = bytearray()
        self._index = 0
        self._offset = 0
        self._max_message_bytes = max_message_bytes

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer)

    @property
    def messages_decoded(self) -> int:
        return self._index

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Message]:
        """Append ``chunk`` and return the messages completed so far, in order."""
        self._buffer += chunk
        end = count = 0
        while True:
            length = frame_length(self._buffer, end, self._index + count, self._offset)
            if length is not None and length > self._max_message_bytes:
                raise PayloadTooLargeError(
                    f"message {self._index + count} at byte {self._offset + end} declares {length} bytes, "
                    f"more than the limit of {self._max_message_bytes}"
                )
            if length is None or end + length > len(self._buffer):
                break
            end += length
            count += 1
        if end == 0:
            return []
        # Decode from an immutable snapshot: the returned arrays view it, and the bytearray must stay
        # resizable (numpy views would pin its buffer).
        snapshot = bytes(self._buffer[:end])
        del self._buffer[:end]
        messages, _ = _decode_frames(snapshot, self._index, self._offset)
        self._index += len(messages)
        self._offset += end
        return messages

    def finish(self) -> None:
        """Declare the end of the stream: MrdTruncatedError when a partial message is pending."""
        if self._buffer:
            raise MrdTruncatedError(
                f"stream ended inside message {self._index} at byte {self._offset}: "
                f"{len(self._buffer)} bytes of it were received"
            )


def encode_messages(messages: Iterable[Message]) -> bytes:
    """Concatenated wire bytes of ``messages``."""
    return b"".join(encode_message(m) for m in messages)


def _acquisition_record_dtype(coils: int, samples: int, dims: int) -> np.dtype[np.void]:
    fields: list[tuple[str, object] | tuple[str, object, tuple[int, ...]]] = [
        ("id", "<u2"),
        ("head", ACQ_HEADER_DTYPE),
    ]
    if dims:
        fields.append(("traj", "<f4", (samples, dims)))
    fields.append(("data", "<c8", (coils, samples)))
    return np.dtype(fields)


def encode_acquisitions(
    heads: NDArray[np.void], data: NDArray[np.complex64], traj: NDArray[np.float32] | None = None
) -> bytes:
    """Wire bytes of ``n`` ACQUISITION messages in one vectorised pass.

    ``heads`` (n,) of ACQ_HEADER_DTYPE, ``data`` complex64 (n, coils, samples), ``traj`` float32
    (n, samples, trajectory_dimensions) or None. Headers must agree with the shapes (GeometryMismatchError).
    """
    batch = AcquisitionBatch(heads, np.asarray(data), traj)
    n, coils, samples = batch.data.shape
    dims = 0 if batch.traj is None else batch.traj.shape[2]
    records = np.empty(n, dtype=_acquisition_record_dtype(coils, samples, dims))
    records["id"] = MessageId.ACQUISITION
    records["head"] = batch.heads
    if batch.traj is not None and dims:
        records["traj"] = batch.traj
    records["data"] = batch.data
    return records.tobytes()


def decode_acquisitions(payload: bytes | bytearray | memoryview) -> AcquisitionBatch:
    """Decode a payload of ACQUISITION messages of one shape into an :class:`AcquisitionBatch`.

    Zero-copy when every message has the same size (one numpy record view over the payload); otherwise
    falls back to :func:`decode_stream`. Any other message id raises MrdDecodeError naming it; readouts
    of different shapes raise GeometryMismatchError.
    """
    buf = payload if isinstance(payload, bytes) else bytes(payload)
    if len(buf) >= 2 + ACQ_HEADER_SIZE and ID.unpack_from(buf, 0)[0] == MessageId.ACQUISITION:
        samples, coils = ACQ_SAMPLES_CHANNELS.unpack_from(buf, 2 + ACQ_SAMPLES_AT)
        (dims,) = ID.unpack_from(buf, 2 + ACQ_TRAJ_DIMS_AT)
        record = _acquisition_record_dtype(coils, samples, dims)
        if len(buf) % record.itemsize == 0:
            view = np.frombuffer(buf, record)
            heads = view["head"]
            if (
                np.all(view["id"] == MessageId.ACQUISITION)
                and np.all(heads["number_of_samples"] == samples)
                and np.all(heads["active_channels"] == coils)
                and np.all(heads["trajectory_dimensions"] == dims)
            ):
                return AcquisitionBatch(heads, view["data"], view["traj"] if dims else None)
    messages = decode_stream(buf)
    acquisitions: list[Acquisition] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Acquisition):
            raise MrdDecodeError(
                f"message {index} is {type(message).__name__}, expected only ACQUISITION messages"
            )
        acquisitions.append(message)
    if not acquisitions:
        raise InvalidInputError("the payload holds no ACQUISITION message")
    return AcquisitionBatch.from_acquisitions(acquisitions)
