"""Decoding edge cases: truncation, incremental TCP reads, NUL-terminated text, malformed messages, the
FIRE feedback message, the bulk acquisition path and its speed."""

from __future__ import annotations

import itertools
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kadapt.errors import GeometryMismatchError, MrdDecodeError, MrdTruncatedError, PayloadTooLargeError
from kadapt.mrd.constants import ACQ_HEADER_SIZE, AcquisitionFlag
from kadapt.mrd.stream import (
    Acquisition,
    Close,
    ConfigFile,
    Feedback,
    Header,
    Message,
    StreamDecoder,
    Text,
    decode_acquisitions,
    decode_stream,
    encode_acquisitions,
    encode_message,
    encode_messages,
    make_acquisition,
    make_acquisition_heads,
)


def two_acquisitions() -> tuple[bytes, list[Acquisition]]:
    rng = np.random.default_rng(0)
    readouts = [
        make_acquisition(ky, rng.standard_normal((2, 6)).astype(np.complex64), scan_counter=ky)
        for ky in (3, 4)
    ]
    return encode_messages(readouts), readouts


def test_every_cut_point_of_a_two_acquisition_stream_is_truncated() -> None:
    payload, _ = two_acquisitions()
    message_length = len(payload) // 2
    for cut in range(1, len(payload)):
        if cut == message_length:
            assert [m.ky for m in decode_stream(payload[:cut])] == [3]  # type: ignore[union-attr]
            continue
        with pytest.raises(MrdTruncatedError) as caught:
            decode_stream(payload[:cut])
        index = 0 if cut < message_length else 1
        assert f"message {index} " in caught.value.detail
        assert f"at byte {index * message_length}" in caught.value.detail
        if cut - index * message_length >= 2:
            assert "1008 (ACQUISITION)" in caught.value.detail


def test_stream_decoder_reassembles_every_split_of_two_acquisitions() -> None:
    payload, readouts = two_acquisitions()
    for split in range(len(payload) + 1):
        decoder = StreamDecoder()
        messages = decoder.feed(payload[:split]) + decoder.feed(payload[split:])
        assert [m.ky for m in messages] == [3, 4]  # type: ignore[union-attr]
        assert all(np.array_equal(m.data, r.data) for m, r in zip(messages, readouts, strict=True))  # type: ignore[union-attr]
        assert decoder.pending == 0
        decoder.finish()


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_stream_decoder_reassembles_arbitrary_chunking(cuts: list[int]) -> None:
    rng = np.random.default_rng(5)
    messages: list[Message] = [
        ConfigFile("cfg"),
        Header("<ismrmrdHeader/>"),
        make_acquisition(1, rng.standard_normal((3, 10)).astype(np.complex64)),
        Text("hello"),
        Feedback("ky", b"\x01\x02"),
        make_acquisition(2, rng.standard_normal((3, 10)).astype(np.complex64)),
        Close(),
    ]
    payload = encode_messages(messages)
    bounds = sorted({min(c, len(payload)) for c in cuts} | {0, len(payload)})
    decoder = StreamDecoder()
    received: list[Message] = []
    for start, end in itertools.pairwise(bounds):
        received += decoder.feed(payload[start:end])
    assert encode_messages(received) == payload
    assert decoder.messages_decoded == len(messages)


def test_stream_decoder_finish_reports_a_partial_message() -> None:
    payload, _ = two_acquisitions()
    decoder = StreamDecoder()
    assert len(decoder.feed(payload[:-5])) == 1
    assert decoder.pending == len(payload) // 2 - 5
    with pytest.raises(MrdTruncatedError, match="message 1 at byte"):
        decoder.finish()


def test_stream_decoder_refuses_an_absurd_declared_size() -> None:
    decoder = StreamDecoder(max_message_bytes=1 << 20)
    with pytest.raises(PayloadTooLargeError, match="declares"):
        decoder.feed(struct.pack("<HI", 5, 1 << 30))


def test_nul_terminated_text_and_header_are_tolerated() -> None:
    # FIRE clients send the C string with its NUL and count the NUL in the length.
    xml = "<ismrmrdHeader></ismrmrdHeader>"
    payload = (
        struct.pack("<HI", 3, len(xml) + 1) + xml.encode() + b"\0"
        + struct.pack("<HI", 5, 6) + b"hello\0"
        + struct.pack("<HI", 2, 4) + b"ab\0\0"
        + struct.pack("<H", 1) + b"simplefft".ljust(1024, b"\0")
    )  # fmt: skip
    decoded = decode_stream(payload)
    assert [type(m).__name__ for m in decoded] == ["Header", "Text", "ConfigText", "ConfigFile"]
    assert decoded[0] == Header(xml)
    assert decoded[1] == Text("hello")
    assert decoded[2].text == "ab"  # type: ignore[union-attr]
    assert decoded[3] == ConfigFile("simplefft")


def test_feedback_round_trip_and_hand_built_layout() -> None:
    # python-ismrmrd-server's FeedbackData: packed {bool, int64[2], float32} = 21 bytes.
    data = struct.pack("<?2qf", True, -3, 7, 1.5)
    message = Feedback("MyFeedback", data)
    hand_built = struct.pack("<HI", 1028, 11) + b"MyFeedback\0" + struct.pack("<I", 21) + data
    assert encode_message(message) == hand_built
    assert decode_stream(hand_built) == [message]
    assert decode_stream(hand_built + encode_message(Close())) == [message, Close()]


def test_unknown_message_id_names_index_id_and_offset() -> None:
    payload = encode_message(Text("x")) + struct.pack("<H", 999) + b"\0" * 10
    with pytest.raises(MrdDecodeError, match=r"message 1 at byte 7: unknown message id 999"):
        decode_stream(payload)


def test_ndarray_is_recognised_but_unsupported() -> None:
    with pytest.raises(MrdDecodeError, match=r"1030 \(NDARRAY\) is recognised but not supported"):
        decode_stream(struct.pack("<HHHH", 1030, 5, 0, 1) + b"\0" * 12)


def test_header_claiming_more_data_than_sent_is_a_decode_error() -> None:
    acquisition = make_acquisition(0, np.zeros((8, 256), dtype=np.complex64))
    short = encode_message(acquisition)[: 2 + ACQ_HEADER_SIZE + 8 * 4 * 256]  # 4 of 8 coils
    with pytest.raises(MrdDecodeError) as caught:
        decode_stream(short)
    assert "message 0 (id 1008 (ACQUISITION)) at byte 0" in caught.value.detail
    assert f"needs {2 + ACQ_HEADER_SIZE + 8 * 8 * 256} bytes" in caught.value.detail


def test_unknown_image_data_type_is_a_decode_error() -> None:
    header = bytearray(198)
    struct.pack_into("<H", header, 2, 42)
    with pytest.raises(MrdDecodeError, match="unknown image data_type 42"):
        decode_stream(struct.pack("<H", 1022) + bytes(header) + struct.pack("<Q", 0))


def test_invalid_utf8_text_is_a_decode_error() -> None:
    with pytest.raises(MrdDecodeError, match=r"message 0 \(id 5 \(TEXT\)\) at byte 0 is not UTF-8"):
        decode_stream(struct.pack("<HI", 5, 2) + b"\xff\xfe")


def test_acquisition_with_wrong_data_shape_is_rejected() -> None:
    acquisition = make_acquisition(0, np.zeros((4, 16), dtype=np.complex64))
    with pytest.raises(GeometryMismatchError, match=r"header says complex64 \(active_channels=4"):
        Acquisition(acquisition.head, np.zeros((4, 8), dtype=np.complex64), acquisition.traj)


def random_batch(count: int, coils: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    heads = make_acquisition_heads(count, coils=coils, samples=samples)
    heads["idx"]["kspace_encode_step_1"] = np.arange(count) % 256
    heads["flags"][::7] = AcquisitionFlag.ACQ_IS_REVERSE.mask
    shape = (count, coils, samples)
    data = rng.standard_normal(shape, dtype=np.float32) + 1j * rng.standard_normal(shape, dtype=np.float32)
    return heads, data.astype(np.complex64)


def test_bulk_encode_matches_per_message_encode_and_bulk_decode_inverts_it() -> None:
    heads, data = random_batch(50, 4, 24)
    payload = encode_acquisitions(heads, data)
    one_by_one = encode_messages(
        Acquisition(heads[i : i + 1].reshape(()), data[i], np.zeros((24, 0), np.float32)) for i in range(50)
    )
    assert payload == one_by_one
    batch = decode_acquisitions(payload)
    assert batch.heads.tobytes() == heads.tobytes()
    np.testing.assert_array_equal(batch.data, data)
    assert batch.acquisition(3).ky == 3
    assert [m.ky for m in decode_stream(payload)] == list(range(50))  # type: ignore[union-attr]


def test_bulk_decode_of_mixed_shapes_falls_back_and_reports_the_mismatch() -> None:
    uniform = encode_acquisitions(*random_batch(3, 4, 24))
    other = encode_message(make_acquisition(9, np.zeros((2, 24), dtype=np.complex64)))
    with pytest.raises(GeometryMismatchError, match=r"readout 3 has data \(2, 24\)"):
        decode_acquisitions(uniform + other)
    with pytest.raises(MrdDecodeError, match="message 3 is Text"):
        decode_acquisitions(uniform + encode_message(Text("x")))


def test_bulk_encode_rejects_heads_that_disagree_with_data() -> None:
    heads, data = random_batch(4, 4, 24)
    heads["active_channels"][2] = 3
    with pytest.raises(GeometryMismatchError, match="readout 2: header active_channels=3"):
        encode_acquisitions(heads, data)


def test_bulk_and_per_message_decoding_agree_on_ten_thousand_readouts() -> None:
    # Speed (about 75 ms per-message, 1 ms bulk for these 167 MB) is a benchmark fact, not asserted here.
    heads, block = random_batch(100, 8, 256)
    heads = make_acquisition_heads(10_000, coils=8, samples=256)
    data = np.tile(block, (100, 1, 1))
    payload = encode_acquisitions(heads, data)
    messages = decode_stream(payload)
    batch = decode_acquisitions(payload)
    assert len(messages) == len(batch) == 10_000
    np.testing.assert_array_equal(batch.data[-1], data[-1])
    assert isinstance(messages[-1], Acquisition)
    np.testing.assert_array_equal(messages[-1].data, data[-1])
