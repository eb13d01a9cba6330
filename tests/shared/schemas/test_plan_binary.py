"""The ``application/x-kadapt-plan`` framing (:mod:`kadapt.schemas.plan_binary`): round trip, the
out-of-band ACS on :class:`PlanRequest`, and typed errors for broken framing."""

from __future__ import annotations

import base64
import struct

import pytest
from pydantic import ValidationError

from kadapt.errors import InvalidInputError
from kadapt.schemas import PlanRequest
from kadapt.schemas.plan_binary import (
    MAX_HEADER_BYTES,
    PLAN_BINARY_MEDIA_TYPE,
    decode_plan_body,
    decode_plan_request,
    encode_plan_body,
)


def request(**changes: object) -> PlanRequest:
    fields: dict[str, object] = {
        "scan_id": "s",
        "policy": "p",
        "width": 32,
        "height": 16,
        "coils": 2,
        "acceleration": 4.0,
        "num_acs": 4,
        "acquired": (14, 15, 16, 17),
        "deadline_unix_ms": 1.0e12,
    }
    fields.update(changes)
    return PlanRequest(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_fields_and_carries_the_acs_out_of_band() -> None:
    payload = b"\x93NUMPY fake npy bytes \x00\x01"
    decoded = decode_plan_body(encode_plan_body(request(), payload))
    assert decoded.model_dump() == request().model_dump()
    assert decoded.acs_npy_b64 is None
    assert decoded.has_acs
    assert decoded.acs_npy() == payload
    assert b"NUMPY" not in decoded.model_dump_json().encode()  # never on the JSON wire
    assert decode_plan_request(encode_plan_body(request(), payload), PLAN_BINARY_MEDIA_TYPE) == decoded


def test_no_acs_and_json_requests() -> None:
    empty = decode_plan_body(encode_plan_body(request(), None))
    assert not empty.has_acs
    assert empty.acs_npy() is None
    inline = request(acs_npy_b64=base64.b64encode(b"abc").decode())
    assert inline.acs_npy() == b"abc"
    assert decode_plan_request(inline.model_dump_json().encode(), "application/json") == inline
    with pytest.raises(ValueError, match="not base64"):
        request(acs_npy_b64="%%%").acs_npy()


def test_one_acs_per_request() -> None:
    inline = request(acs_npy_b64="AAAA")
    with pytest.raises(InvalidInputError, match="acs_npy_b64"):
        encode_plan_body(inline, b"x")
    with pytest.raises(ValueError, match="already carries"):
        inline.with_acs_npy(b"x")
    header = inline.model_dump_json().encode()
    with pytest.raises(InvalidInputError, match="already carries"):
        decode_plan_body(struct.pack("<4sI", b"KPL1", len(header)) + header + b"npy")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "shorter than its 8-byte prefix"),
        (b"KPL2\x00\x00\x00\x00", "expected b'KPL1'"),
        (struct.pack("<4sI", b"KPL1", 100) + b"{}", "announces a 100-byte header"),
        (struct.pack("<4sI", b"KPL1", MAX_HEADER_BYTES + 1), "announces"),
    ],
)
def test_broken_framing_is_invalid_input(body: bytes, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match="binary plan body") as caught:
        decode_plan_body(body)
    assert fragment in caught.value.detail
    assert caught.value.status == 400


def test_a_header_that_is_no_request_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        decode_plan_body(struct.pack("<4sI", b"KPL1", 2) + b"{}")
