"""The binary plan-request body ``application/x-kadapt-plan``: a JSON header and the raw payload ``.npy``.

A JSON :class:`~kadapt.schemas.PlanRequest` carries the ACS block as base64 ``.npy`` in a string field:
at a 320 x 320 x 8-coil scan with 16 ACS lines that is a 437 kB body, a 437k-character JSON string to
parse and a base64 decode. This framing sends the same request with the ACS bytes as they are, so the
sampler reads them straight into the model input (docs/sampler.md, "Plan transport")::

    offset  size  field
    0       4     magic b"KPL1" (format version 1)
    4       4     n: uint32 little-endian, byte length of the header
    8       n     the PlanRequest as UTF-8 JSON, without ``acs_npy_b64`` (or with it null)
    8 + n   rest  the payload as ``.npy`` bytes, C order; empty when the request carries none:
                  the header's ``payload`` "acs" (default): ACS k-space complex64 ``(coil, H, num_acs)``;
                  "sense-image": the SENSE image so far complex64 ``(frames, H, W)`` (``ads`` rounds)

The header is validated exactly like the JSON body (strict, unknown fields rejected). Only the framing
is checked here; what the ACS holds (dtype, shape, finite values) is the planning policy's business,
with the same fallback as for ``acs_npy_b64``.
"""

from __future__ import annotations

import struct

from kadapt.errors import InvalidInputError
from kadapt.schemas.plans import PlanRequest

PLAN_BINARY_MEDIA_TYPE = "application/x-kadapt-plan"
PLAN_BINARY_MAGIC = b"KPL1"
MAX_HEADER_BYTES = 1 << 20
_PREFIX = struct.Struct("<4sI")


def encode_plan_body(request: PlanRequest, acs_npy: bytes | None) -> bytes:
    """``request`` (without ``acs_npy_b64``) and the ACS ``.npy`` bytes as one binary body.
    ``InvalidInputError`` when the request already carries ``acs_npy_b64``."""
    if request.acs_npy_b64 is not None:
        raise InvalidInputError("a binary plan body carries the ACS after the header, not in acs_npy_b64")
    header = request.model_dump_json(exclude={"acs_npy_b64"}).encode()
    return b"".join((_PREFIX.pack(PLAN_BINARY_MAGIC, len(header)), header, acs_npy or b""))


def split_plan_body(body: bytes) -> tuple[bytes, bytes]:
    """The header JSON and the ACS ``.npy`` bytes (maybe empty) of a binary body.
    ``InvalidInputError`` (400) naming what is wrong with the framing."""
    if len(body) < _PREFIX.size:
        raise InvalidInputError(f"binary plan body of {len(body)} bytes is shorter than its 8-byte prefix")
    magic, length = _PREFIX.unpack_from(body)
    if magic != PLAN_BINARY_MAGIC:
        raise InvalidInputError(f"binary plan body starts with {magic!r}, expected {PLAN_BINARY_MAGIC!r}")
    if length > MAX_HEADER_BYTES or _PREFIX.size + length > len(body):
        raise InvalidInputError(
            f"binary plan body announces a {length}-byte header; {len(body) - _PREFIX.size} bytes follow "
            f"the prefix (at most {MAX_HEADER_BYTES})"
        )
    end = _PREFIX.size + length
    return body[_PREFIX.size : end], body[end:]


def decode_plan_body(body: bytes) -> PlanRequest:
    """The :class:`PlanRequest` of a binary body, its ACS attached out of band (``acs_npy()``).

    ``InvalidInputError`` (400) for bad framing or a header that also sets ``acs_npy_b64``; a
    ``pydantic.ValidationError`` for a header that is not a valid request (the API answers 422, as for
    a JSON body)."""
    header, acs_npy = split_plan_body(body)
    request = PlanRequest.model_validate_json(header)
    if not acs_npy:
        return request
    try:
        return request.with_acs_npy(acs_npy)
    except ValueError as err:
        raise InvalidInputError(f"binary plan body: {err}") from err


def decode_plan_request(body: bytes, content_type: str | None) -> PlanRequest:
    """A plan request body of either transport by its ``Content-Type`` (binary framing for
    ``application/x-kadapt-plan``, JSON otherwise); for clients, test doubles and tools."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == PLAN_BINARY_MEDIA_TYPE:
        return decode_plan_body(body)
    return PlanRequest.model_validate_json(body)
