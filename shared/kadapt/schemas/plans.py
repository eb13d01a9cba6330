"""Gateway -> sampler plan protocol (architecture.md section 5)."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import pybase64
from pydantic import Field, PrivateAttr

from kadapt.errors import GeometryMismatchError, InvalidInputError
from kadapt.schemas._base import IntTuple, IntTupleTuple, ModelName, WireModel

PlanPayload = Literal["acs", "sense-image"]
"""What a plan request's ``.npy`` payload holds: ``acs`` the ACS k-space ``(coil, H, num_acs)`` (model
policies that look at the calibration, ``mnet``), ``sense-image`` the SENSE image of the data acquired
so far ``(frames, H, W)`` (``ads`` cascade rounds, seed 004 section 2.3)."""

# np.save writes a header of at most a few hundred bytes (format 1.0: under 64 KiB by definition).
_NPY_HEADER_PEEK = 1 << 16


def npy_header(npy: bytes) -> tuple[tuple[int, ...], np.dtype[np.generic], int]:
    """``(shape, dtype, data bytes)`` of ``.npy`` bytes, reading the header only;
    :class:`InvalidInputError` (400) when they are not ``.npy``."""
    stream = io.BytesIO(npy[:_NPY_HEADER_PEEK])
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except ValueError as err:
        raise InvalidInputError(f"the plan payload is not .npy data: {err}") from err
    return tuple(int(size) for size in shape), dtype, len(npy) - stream.tell()


class PlanRequest(WireModel):
    """Ask for the next lines of one scan.

    ``deadline_unix_ms`` is absolute (milliseconds since the epoch); the sampler drops work whose
    deadline has passed at admission, dequeue and before inference. ``acquired`` lists the ky lines
    already acquired (always including the centred ACS block of ``num_acs`` lines). ``acs_npy_b64``
    optionally carries the ACS k-space (complex64 ``(coil, H, num_acs)``, ``.npy`` bytes, base64) for
    samplers that look at the scan. ``acquired_per_frame`` (dynamic policies, one tuple per frame) adds
    lines acquired in single frames only; ``acquired`` holds the lines acquired in every frame.

    The ACS may instead travel out of band, as raw ``.npy`` bytes after a JSON header in the binary
    ``application/x-kadapt-plan`` body (:mod:`kadapt.schemas.plan_binary`, no base64, no 570k-character
    JSON string); the decoded request then holds them privately (:meth:`with_acs_npy`) and
    :meth:`acs_npy` returns the bytes of either transport. They are not part of ``model_dump_json``.

    ``payload`` names what those ``.npy`` bytes hold (:data:`PlanPayload`): ``acs`` (the default, so
    older clients keep working) or ``sense-image``, the SENSE image of the centre slice's data acquired
    so far, complex64 ``(frames, H, W)``, which an ``ads`` policy's cascade round looks at instead of the
    ACS (docs/sampler.md, "Plan transport"); :meth:`check_payload` checks its shape.
    """

    scan_id: str
    policy: ModelName
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    coils: int = Field(gt=0)
    frames: int = Field(default=1, gt=0)
    acceleration: float = Field(gt=1.0)
    num_acs: int = Field(ge=1)
    acquired: IntTuple = ()
    acquired_per_frame: IntTupleTuple | None = None
    round: int = Field(default=0, ge=0)
    seed: int = Field(default=0, ge=0)
    deadline_unix_ms: float
    acs_npy_b64: str | None = None
    payload: PlanPayload = "acs"
    _acs_npy: bytes | None = PrivateAttr(default=None)

    def check_payload(self) -> None:
        """For a ``sense-image`` payload, check its ``.npy`` header against the request: complex
        ``(frames, height, width)`` with a matching data length. :class:`GeometryMismatchError` (422)
        naming both shapes, :class:`InvalidInputError` for bytes that are not ``.npy`` or not base64.
        ACS payloads are the policy's business (an ``mnet`` policy falls back on a bad one)."""
        if self.payload != "sense-image":
            return
        try:
            npy = self.acs_npy()
        except ValueError as err:
            raise InvalidInputError(str(err)) from err
        if npy is None:
            return
        shape, dtype, data_bytes = npy_header(npy)
        expected = (self.frames, self.height, self.width)
        if shape != expected or dtype.kind != "c" or dtype.hasobject:
            raise GeometryMismatchError(
                f"the sense-image payload is {dtype} {shape}; the request's (frames, height, width) "
                f"needs complex {expected}",
                expected=list(expected),
                got=list(shape),
            )
        if data_bytes != int(np.prod(shape)) * dtype.itemsize:
            raise InvalidInputError(
                f"the sense-image .npy holds {data_bytes} data bytes, its header {shape} {dtype} needs "
                f"{int(np.prod(shape)) * dtype.itemsize}"
            )

    @property
    def has_acs(self) -> bool:
        """Whether the request carries ACS k-space, inline (``acs_npy_b64``) or out of band."""
        return self._acs_npy is not None or self.acs_npy_b64 is not None

    def acs_npy(self) -> bytes | None:
        """The ACS ``.npy`` bytes from whichever transport carried them (``None``: no ACS).
        ``ValueError`` when ``acs_npy_b64`` is not base64."""
        if self._acs_npy is not None:
            return self._acs_npy
        if self.acs_npy_b64 is None:
            return None
        try:
            # pybase64 (SIMD): 0.02 ms instead of about 1.3 ms for the 430 kB ACS of a 320 x 320 x 8 scan.
            return pybase64.b64decode(self.acs_npy_b64, validate=True)
        except ValueError as err:  # binascii.Error is a ValueError
            raise ValueError(f"acs_npy_b64 is not base64: {err}") from err

    def with_acs_npy(self, acs_npy: bytes) -> PlanRequest:
        """A copy carrying ``acs_npy`` (``.npy`` bytes) out of band; ``ValueError`` when the request
        already has ``acs_npy_b64`` (one ACS per request)."""
        if self.acs_npy_b64 is not None:
            raise ValueError("the request already carries acs_npy_b64; send the ACS once")
        copy = self.model_copy()
        copy._acs_npy = acs_npy
        return copy


class PlanResponse(WireModel):
    """The lines to acquire, as the complete ky line set of the mask (ACS and earlier rounds included).

    ``lines`` has exactly ``round(W / R)`` sorted entries (per frame for dynamic policies:
    ``frame_lines``). ``degraded`` is true when the answer is the policy's fallback; ``reason`` says why.
    """

    scan_id: str
    policy: str
    lines: IntTuple
    frame_lines: IntTupleTuple | None = None
    round: int = 0
    final: bool = True
    degraded: bool = False
    reason: str | None = None
    served_by: str = Field(description="policy or fallback family that produced the lines")
    elapsed_ms: float = 0.0
