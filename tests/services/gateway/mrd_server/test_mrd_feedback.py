"""The 1028 ``kadapt_plan`` message: its packed struct byte for byte, round trips, and refusals."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kadapt.errors import EncodeOutOfRangeError, MrdDecodeError
from kadapt.gateway.mrd_server.feedback import (
    FEEDBACK_NAME,
    pack_plan,
    plan_feedback,
    unpack_plan,
)
from kadapt.mrd.messages import Feedback
from kadapt.mrd.stream import decode_stream, encode_message
from kadapt.schemas import PlanResponse


def plan(lines: tuple[int, ...], **fields: object) -> PlanResponse:
    values: dict[str, object] = {
        "scan_id": "s",
        "policy": "vd-random",
        "lines": lines,
        "served_by": "vd-random",
    }
    values.update(fields)
    return PlanResponse.model_validate(values)


def test_the_struct_is_laid_out_as_documented() -> None:
    data = pack_plan(plan((60, 62, 64), round=2, degraded=True, final=False), width=128, ky_offset=-4)
    assert data == struct.pack("<IIIIiII3H", 1, 2, 0b01, 128, -4, 1, 3, 64, 66, 68)
    decoded = unpack_plan(data)
    assert (decoded.round, decoded.degraded, decoded.final, decoded.width) == (2, True, False, 128)
    assert decoded.ky == ((64, 66, 68),)
    assert decoded.columns == ((60, 62, 64),)


def test_kt_plans_carry_one_row_per_frame() -> None:
    frames = ((1, 5, 8), (2, 5, 9))
    data = pack_plan(plan(frames[0], frame_lines=frames), width=16, ky_offset=0)
    assert struct.unpack_from("<II", data, 20) == (2, 3)
    assert unpack_plan(data).ky == frames


def test_the_message_frame_names_kadapt_plan_with_the_nul_counted() -> None:
    message = plan_feedback(plan((3, 4)), width=8, ky_offset=0)
    raw = encode_message(message)
    name_length = struct.unpack_from("<I", raw, 2)[0]
    assert raw[:2] == struct.pack("<H", 1028)
    assert raw[6 : 6 + name_length] == FEEDBACK_NAME.encode() + b"\0"
    (decoded,) = decode_stream(raw)
    assert isinstance(decoded, Feedback)
    assert decoded.name == FEEDBACK_NAME
    assert unpack_plan(decoded.data).columns == ((3, 4),)


@given(
    columns=st.lists(st.integers(0, 511), min_size=1, max_size=64, unique=True).map(
        lambda c: tuple(sorted(c))
    ),
    offset=st.integers(-200, 0),
    plan_round=st.integers(0, 7),
    degraded=st.booleans(),
    final=st.booleans(),
)
def test_round_trip(
    columns: tuple[int, ...], offset: int, plan_round: int, degraded: bool, final: bool
) -> None:
    source = plan(columns, round=plan_round, degraded=degraded, final=final)
    decoded = unpack_plan(pack_plan(source, width=512, ky_offset=offset))
    assert decoded.columns == (columns,)
    assert (decoded.round, decoded.degraded, decoded.final) == (plan_round, degraded, final)


def test_a_column_without_an_encode_step_is_refused() -> None:
    with pytest.raises(EncodeOutOfRangeError, match="column 2 maps to ky=-3"):
        pack_plan(plan((2, 9)), width=16, ky_offset=5)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\1\0\0", "shorter than"),
        (struct.pack("<IIIIiII", 2, 0, 0, 8, 0, 1, 0), "version 2"),
        (struct.pack("<IIIIiII2H", 1, 0, 0, 8, 0, 1, 3, 1, 2), "needs 34"),
    ],
)
def test_malformed_structs_are_refused(data: bytes, fragment: str) -> None:
    with pytest.raises(MrdDecodeError, match=fragment):
        unpack_plan(data)
