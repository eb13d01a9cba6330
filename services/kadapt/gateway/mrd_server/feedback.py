"""The plan as the sequence reads it: the ``kadapt_plan`` FEEDBACK message (ID 1028) and its packed struct.

FIRE forks carry feedback to the running sequence as message 1028 (``kadapt.mrd.wire`` draws its frame:
uint32 name length with the NUL counted, the NUL-terminated name, uint32 data length, data). kadapt's
data is one packed little-endian struct, version 1::

    offset  type     field
         0  uint32   version          1
         4  uint32   round            plan round (0 for single-pass policies)
         8  uint32   flags            bit 0 degraded (the fallback mask served), bit 1 final (last round)
        12  uint32   width            W: phase-encode lines of the matrix
        16  int32    ky_offset        column = ky + ky_offset (the header's k-space centre at W // 2)
        20  uint32   frames           1 for line plans, the cardiac frame count for kt plans
        24  uint32   lines_per_frame  n: lines to acquire in each frame (ACS and earlier rounds included)
        28  uint16   ky[frames][n]    scanner encode steps (kspace_encode_step_1) to acquire, ascending

A sequence acquires, for every frame ``f``, the encode steps ``ky[f]``; the struct is 28 + 2 * frames * n
bytes. The same plan goes out as JSON in a TEXT message (``replies.plan_text``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from kadapt.errors import EncodeOutOfRangeError, MrdDecodeError
from kadapt.mrd.messages import Feedback
from kadapt.schemas import PlanResponse

FEEDBACK_NAME = "kadapt_plan"
PLAN_STRUCT_VERSION = 1
FLAG_DEGRADED = 1 << 0
FLAG_FINAL = 1 << 1
_HEAD = struct.Struct("<IIIIiII")
_UINT16_MAX = 0xFFFF


@dataclass(frozen=True)
class PlanFeedback:
    """A decoded ``kadapt_plan`` struct; ``ky`` holds one ascending tuple of encode steps per frame."""

    round: int
    degraded: bool
    final: bool
    width: int
    ky_offset: int
    ky: tuple[tuple[int, ...], ...]
    version: int = PLAN_STRUCT_VERSION

    @property
    def columns(self) -> tuple[tuple[int, ...], ...]:
        """The plan's k-space columns per frame (``ky + ky_offset``), as ``PlanResponse`` lists them."""
        return tuple(tuple(step + self.ky_offset for step in frame) for frame in self.ky)


def plan_frames(plan: PlanResponse) -> tuple[tuple[int, ...], ...]:
    """The plan's columns per frame: ``frame_lines`` for kt plans, else ``(lines,)``."""
    return plan.frame_lines if plan.frame_lines is not None else (plan.lines,)


def encode_steps(columns: tuple[int, ...], ky_offset: int) -> tuple[int, ...]:
    """Scanner encode steps ``ky = column - ky_offset`` of ``columns``; :class:`EncodeOutOfRangeError`
    when a column has no uint16 encode step (outside the header's acquirable range)."""
    steps = tuple(column - ky_offset for column in columns)
    bad = [step for step in steps if not 0 <= step <= _UINT16_MAX]
    if bad:
        raise EncodeOutOfRangeError(
            f"plan column {bad[0] + ky_offset} maps to ky={bad[0]} (ky_offset {ky_offset}), outside the "
            "uint16 encode steps of MRD"
        )
    return steps


def pack_plan(plan: PlanResponse, *, width: int, ky_offset: int) -> bytes:
    """The packed struct (layout in the module docstring) of ``plan`` on a ``width``-line matrix."""
    frames = plan_frames(plan)
    sizes = {len(lines) for lines in frames}
    if len(sizes) != 1:
        raise EncodeOutOfRangeError(
            f"plan round {plan.round} has frames with {sorted(sizes)} lines; the struct needs equal counts"
        )
    steps = np.array([encode_steps(tuple(lines), ky_offset) for lines in frames], dtype="<u2")
    flags = (FLAG_DEGRADED if plan.degraded else 0) | (FLAG_FINAL if plan.final else 0)
    head = _HEAD.pack(PLAN_STRUCT_VERSION, plan.round, flags, width, ky_offset, len(frames), sizes.pop())
    return head + steps.tobytes()


def unpack_plan(data: bytes) -> PlanFeedback:
    """Decode a ``kadapt_plan`` struct; :class:`MrdDecodeError` names a wrong version or size."""
    if len(data) < _HEAD.size:
        raise MrdDecodeError(
            f"kadapt_plan data is {len(data)} bytes, shorter than its {_HEAD.size}-byte head"
        )
    version, plan_round, flags, width, ky_offset, frames, lines = _HEAD.unpack_from(data)
    if version != PLAN_STRUCT_VERSION:
        raise MrdDecodeError(f"kadapt_plan version {version}; this decoder reads {PLAN_STRUCT_VERSION}")
    expected = _HEAD.size + 2 * frames * lines
    if len(data) != expected:
        raise MrdDecodeError(
            f"kadapt_plan data is {len(data)} bytes; frames={frames} x lines={lines} needs {expected}"
        )
    steps = np.frombuffer(data, dtype="<u2", count=frames * lines, offset=_HEAD.size).reshape(frames, lines)
    return PlanFeedback(
        round=plan_round,
        degraded=bool(flags & FLAG_DEGRADED),
        final=bool(flags & FLAG_FINAL),
        width=width,
        ky_offset=ky_offset,
        ky=tuple(tuple(int(step) for step in frame) for frame in steps),
        version=version,
    )


def plan_feedback(plan: PlanResponse, *, width: int, ky_offset: int) -> Feedback:
    """The FEEDBACK message (ID 1028) named ``kadapt_plan`` carrying ``plan``."""
    return Feedback(FEEDBACK_NAME, pack_plan(plan, width=width, ky_offset=ky_offset))
