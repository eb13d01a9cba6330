"""The ``payload`` field of a plan request (issue 5): ACS by default, or the SENSE image so far of an
``ads`` round, checked against the request's ``(frames, height, width)`` in both transports."""

from __future__ import annotations

import io

import numpy as np
import pybase64
import pytest

from kadapt.errors import GeometryMismatchError, InvalidInputError
from kadapt.schemas import PlanRequest
from kadapt.schemas.plan_binary import decode_plan_body, encode_plan_body


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def request(**changes: object) -> PlanRequest:
    fields: dict[str, object] = {
        "scan_id": "s",
        "policy": "ads",
        "width": 12,
        "height": 8,
        "coils": 2,
        "frames": 3,
        "acceleration": 4.0,
        "num_acs": 2,
        "round": 1,
        "acquired_per_frame": ((5, 6), (5, 6, 7), (4, 5, 6)),
        "deadline_unix_ms": 0.0,
        "payload": "sense-image",
    }
    fields.update(changes)
    return PlanRequest(**fields)  # type: ignore[arg-type]


def test_default_payload_is_the_acs_and_old_headers_still_parse() -> None:
    old = (
        '{"scan_id":"s","policy":"p","width":12,"height":8,"coils":2,"acceleration":4.0,"num_acs":2,'
        '"deadline_unix_ms":0}'
    )
    parsed = PlanRequest.model_validate_json(old)
    assert parsed.payload == "acs"
    parsed.check_payload()  # an ACS payload is the policy's business
    with pytest.raises(ValueError, match="payload"):
        PlanRequest.model_validate_json(old[:-1] + ',"payload":"k-space"}')


def test_sense_image_round_trips_in_both_transports_and_is_checked() -> None:
    image = np.zeros((3, 8, 12), dtype=np.complex64)
    binary = decode_plan_body(encode_plan_body(request(), npy(image)))
    assert binary.payload == "sense-image"
    assert binary.acquired_per_frame == ((5, 6), (5, 6, 7), (4, 5, 6))
    binary.check_payload()
    inline = request(acs_npy_b64=pybase64.b64encode(npy(image)).decode("ascii"))
    inline.check_payload()
    assert inline.acs_npy() == binary.acs_npy()


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((3, 8, 13), dtype=np.complex64),  # W
        np.zeros((2, 8, 12), dtype=np.complex64),  # frames
        np.zeros((8, 12), dtype=np.complex64),  # no frame axis
        np.zeros((3, 8, 12), dtype=np.float32),  # not complex
    ],
)
def test_wrong_sense_images_are_geometry_mismatches(array: np.ndarray) -> None:
    with pytest.raises(GeometryMismatchError) as error:
        request().with_acs_npy(npy(array)).check_payload()
    assert error.value.status == 422


def test_bytes_that_are_no_npy_or_are_truncated_are_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match=r"not \.npy"):
        request().with_acs_npy(b"not an array").check_payload()
    with pytest.raises(InvalidInputError, match="data bytes"):
        request().with_acs_npy(npy(np.zeros((3, 8, 12), dtype=np.complex64))[:-8]).check_payload()
