"""Ingest: decode one request's MRD messages, validate all of them, and prepare the lines to store.

A request is all or nothing: :func:`parse_request` checks every readout (coils, samples, finite data,
encoding counters inside the header's limits, no line twice) before anything is stored, so a bad
request changes nothing. Readouts are handled as Gadgetron / FIRE do: noise measurements are set aside
(kept for prewhitening), navigator / phase-correction and other non-imaging readouts are counted and
dropped, reversed readouts (``ACQ_IS_REVERSE``) are flipped, and readout oversampling is removed per
readout (centred inverse FFT along the readout, crop the centre ``H`` samples, forward FFT). Everything
runs on whole arrays; nothing loops over samples in Python.

Repetitions: a (slice, frame, ky) line is acquired once. A readout of repetition ``r > 0`` whose line
arrived before (earlier in the request, or in an earlier request: see ``ScanService``) is a *repeat*: it is
skipped, not stored and not an error, so files that repeat the ACS block in every repetition stream as one
scan. The first readout of a line wins (no averaging: the k-space file holds one readout per line). Any
other second arrival of a line (twice in one repetition, or again in repetition 0) is a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import (
    DuplicateLineError,
    EncodeOutOfRangeError,
    GeometryMismatchError,
    InvalidInputError,
    MrdDecodeError,
    NonFiniteDataError,
)
from kadapt.gateway.domain.session import Encoding, ScanSession, describe_key, line_keys
from kadapt.kspace.fft import fft1c, ifft1c
from kadapt.mrd.constants import ACQ_HEADER_DTYPE, NON_IMAGING_FLAGS, AcquisitionFlag, flag_mask
from kadapt.mrd.messages import Acquisition, AcquisitionBatch, Close
from kadapt.mrd.stream import decode_acquisitions, decode_stream
from kadapt.schemas import ScanGeometry

_NOISE = np.uint64(flag_mask(AcquisitionFlag.ACQ_IS_NOISE_MEASUREMENT))
_NON_IMAGING = np.uint64(flag_mask(*NON_IMAGING_FLAGS))
_REVERSE = np.uint64(flag_mask(AcquisitionFlag.ACQ_IS_REVERSE))

IntArray = NDArray[np.int64]
MAX_SAMPLE_MAGNITUDE = 1e30


@dataclass(frozen=True)
class DecodedRequest:
    """The messages of one request: readouts grouped by shape, each with its message index.

    ``groups`` holds ``(indices (k,), batch)`` pairs, ``count`` the readouts in all, ``close`` whether a
    CLOSE message came. TEXT / HEADER / CONFIG messages are ignored.
    """

    groups: tuple[tuple[IntArray, AcquisitionBatch], ...]
    count: int
    close: bool


@dataclass(frozen=True)
class ParsedRequest:
    """A validated request. Imaging readouts: ``slices``, ``frames``, ``columns``, ``keys``,
    ``repetitions``, ``reverse`` ``(n,)`` and ``data`` complex64 ``(n, coil, samples)`` as sent, one per
    line (``keys`` are unique). ``noise`` ``(m, coil, samples')`` readouts, ``skipped`` the noise and
    non-imaging readouts set aside, ``repeated`` the readouts dropped as later repetitions of a line of
    this request."""

    slices: IntArray
    frames: IntArray
    columns: IntArray
    keys: IntArray
    reverse: NDArray[np.bool_]
    data: NDArray[np.complex64]
    noise: tuple[NDArray[np.complex64], ...]
    skipped: int
    close: bool
    repetitions: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    repeated: int = 0

    @property
    def lines(self) -> int:
        return int(self.keys.shape[0])


def decode_request(payload: bytes) -> DecodedRequest:
    """Decode a request body of MRD messages.

    The usual body (ACQUISITION messages of one shape) is one zero-copy record view; anything else goes
    through the general decoder. Malformed bytes raise :class:`MrdDecodeError`, a message cut short
    :class:`MrdTruncatedError`.
    """
    try:
        batch = decode_acquisitions(payload)
    except (MrdDecodeError, GeometryMismatchError, InvalidInputError):
        batch = None  # mixed shapes or other messages; the general decoder re-raises genuine errors
    if batch is not None:
        return DecodedRequest(((np.arange(len(batch), dtype=np.int64), batch),), len(batch), False)
    messages = decode_stream(payload)
    by_shape: dict[tuple[int, ...], list[tuple[int, Acquisition]]] = {}
    close = False
    count = 0
    for message in messages:
        if isinstance(message, Acquisition):
            shape = (*message.data.shape, message.traj.shape[1])
            by_shape.setdefault(shape, []).append((count, message))
            count += 1
        elif isinstance(message, Close):
            close = True
    groups = tuple(
        (
            np.array([index for index, _ in members], dtype=np.int64),
            AcquisitionBatch.from_acquisitions([acquisition for _, acquisition in members]),
        )
        for members in by_shape.values()
    )
    return DecodedRequest(groups, count, close)


def _first(mask: NDArray[np.bool_] | np.bool_, indices: IntArray) -> int:
    """Message index of the first True entry of ``mask``."""
    return int(indices[np.flatnonzero(np.asarray(mask))[0]])


def _check_finite(indices: IntArray, data: NDArray[np.complex64]) -> None:
    values = data.view(np.float32).reshape(data.shape[0], -1)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        raise NonFiniteDataError(f"readout {_first(~finite, indices)} contains NaN or Inf samples")
    # A readout's FFT (oversampling removal) sums up to 65535 samples: beyond this they overflow float32.
    huge = (np.abs(values) > MAX_SAMPLE_MAGNITUDE).any(axis=1)
    if huge.any():
        first = _first(huge, indices)
        raise NonFiniteDataError(
            f"readout {first} has samples beyond {MAX_SAMPLE_MAGNITUDE:.0e} in magnitude; they would "
            "overflow to Inf in the readout FFT"
        )


def parse_request(payload: bytes, session: ScanSession) -> ParsedRequest:
    """Decode and validate one request against the session (see module docstring); stores nothing.

    Raises, naming the first bad readout: :class:`GeometryMismatchError` (coils, samples),
    :class:`NonFiniteDataError`, :class:`EncodeOutOfRangeError` (ky / slice / frame / repetition outside
    the header), :class:`DuplicateLineError` (a line twice in this request).
    """
    decoded = decode_request(payload)
    geometry, encoding = session.geometry, session.encoding
    imaging: list[tuple[IntArray, NDArray[np.void], NDArray[np.complex64]]] = []
    noise: list[NDArray[np.complex64]] = []
    skipped = 0
    for indices, batch in decoded.groups:
        coils = batch.data.shape[1]
        if coils != geometry.coils:
            raise GeometryMismatchError(
                f"readout {int(indices[0])} has {coils} coils, the scan has {geometry.coils}",
                coils=coils,
                expected=geometry.coils,
            )
        _check_finite(indices, batch.data)
        flags = batch.heads["flags"]
        is_noise = (flags & _NOISE) != 0
        is_other = ~is_noise & ((flags & _NON_IMAGING) != 0)
        is_image = ~(is_noise | is_other)
        skipped += int(is_noise.sum() + is_other.sum())
        if is_noise.any():
            noise.append(np.array(batch.data[is_noise], dtype=np.complex64))
        if is_image.any():
            samples = batch.data.shape[2]
            if samples != geometry.readout_samples:
                raise GeometryMismatchError(
                    f"readout {_first(is_image, indices)} has {samples} samples, the header's readout has "
                    f"{geometry.readout_samples}",
                    samples=samples,
                    expected=geometry.readout_samples,
                )
            imaging.append((indices[is_image], batch.heads[is_image], batch.data[is_image]))
    if imaging:
        indices = np.concatenate([item[0] for item in imaging])
        heads = np.concatenate([item[1] for item in imaging])
        data = imaging[0][2] if len(imaging) == 1 else np.concatenate([item[2] for item in imaging])
    else:
        indices = np.zeros(0, dtype=np.int64)
        heads = np.zeros(0, dtype=ACQ_HEADER_DTYPE)
        data = np.zeros((0, geometry.coils, geometry.readout_samples), dtype=np.complex64)
    counters = heads["idx"]
    ky = counters["kspace_encode_step_1"].astype(np.int64)
    slices = counters["slice"].astype(np.int64)
    frames = counters["phase"].astype(np.int64)
    repetitions = counters["repetition"].astype(np.int64)
    columns = ky + encoding.ky_offset
    checks = (
        (
            "ky",
            ky,
            (ky < encoding.ky_min) | (ky > encoding.ky_max) | (columns < 0) | (columns >= geometry.width),
            f"[{encoding.ky_min}, {encoding.ky_max}]",
        ),
        ("slice", slices, slices >= geometry.slices, f"[0, {geometry.slices - 1}]"),
        ("phase", frames, frames >= geometry.frames, f"[0, {geometry.frames - 1}]"),
        ("repetition", repetitions, repetitions >= encoding.repetitions, f"[0, {encoding.repetitions - 1}]"),
    )
    for name, values, outside, limits in checks:
        if outside.any():
            first = int(np.flatnonzero(outside)[0])
            raise EncodeOutOfRangeError(
                f"readout {int(indices[first])}: {name}={int(values[first])} outside the header's "
                f"limits {limits}",
                counter=name,
                value=int(values[first]),
            )
    keys = line_keys(slices, frames, columns, geometry)
    arrivals = _first_arrivals(keys, repetitions, geometry, encoding)
    reverse = (heads["flags"] & _REVERSE) != 0
    repeated = int(keys.size - arrivals.size)
    if repeated:
        slices, frames, columns = slices[arrivals], frames[arrivals], columns[arrivals]
        keys, repetitions = keys[arrivals], repetitions[arrivals]
        reverse, data = reverse[arrivals], data[arrivals]
    return ParsedRequest(
        slices=slices,
        frames=frames,
        columns=columns,
        keys=keys,
        reverse=reverse,
        data=data,
        noise=tuple(noise),
        skipped=skipped,
        close=decoded.close,
        repetitions=repetitions,
        repeated=repeated,
    )


def _first_arrivals(
    keys: IntArray, repetitions: IntArray, geometry: ScanGeometry, encoding: Encoding
) -> IntArray:
    """Sorted indices ``(k,)`` of the first readout of every line in ``keys`` ``(n,)``.

    Later readouts of a line are repeats when their repetition is > 0 and differs from every earlier
    one's; anything else (the same line twice in one repetition, or again in repetition 0) raises
    :class:`DuplicateLineError` naming the line.
    """
    pairs = keys * max(1, encoding.repetitions) + repetitions
    unique_pairs, pair_counts = np.unique(pairs, return_counts=True)
    if (pair_counts > 1).any():
        twice = int(unique_pairs[np.flatnonzero(pair_counts > 1)[0]])
        key, repetition = divmod(twice, max(1, encoding.repetitions))
        raise DuplicateLineError(
            f"line {describe_key(key, geometry, encoding)} appears more than once in repetition "
            f"{repetition} of this request"
        )
    _, first = np.unique(keys, return_index=True)
    later = np.ones(keys.size, dtype=bool)
    later[first] = False
    again_in_zero = later & (repetitions == 0)
    if again_in_zero.any():
        key = int(keys[np.flatnonzero(again_in_zero)[0]])
        raise DuplicateLineError(
            f"line {describe_key(key, geometry, encoding)} appears more than once in this request "
            "(again in repetition 0)"
        )
    return np.sort(first)


def prepare_lines(
    data: NDArray[np.complex64], reverse: NDArray[np.bool_], height: int
) -> NDArray[np.complex64]:
    """Readouts ``(n, coil, samples)`` as sent -> stored lines ``(n, coil, H)``.

    Reversed readouts are flipped along the samples; when ``samples > H`` the readout oversampling is
    removed: centred inverse FFT along the readout, keep the centre ``H`` samples (the field of view the
    recon matrix covers), forward FFT back to k-space.
    """
    lines = np.array(data, dtype=np.complex64)
    if reverse.any():
        lines[reverse] = lines[reverse, :, ::-1]
    samples = lines.shape[-1]
    if samples == height:
        return lines
    start = samples // 2 - height // 2
    profile = ifft1c(lines, axis=-1)[..., start : start + height]
    return np.ascontiguousarray(fft1c(profile, axis=-1), dtype=np.complex64)


def route_lines(
    session: ScanSession, parsed: ParsedRequest, acs_columns: IntArray
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Which lines of the request to store now (``acquire``) and which to hold (``stage``), ``(n,)``.

    Prospective: every line is stored (the scanner did acquire it). Retrospective: planned lines are
    stored, ACS lines (``acs_columns``) before the plan too; other lines wait for the plan (staged) or,
    once the final plan is known, are dropped.
    """
    everything = np.ones(parsed.lines, dtype=bool)
    if not session.policy.retrospective:
        return everything, ~everything
    planned = session.planned_mask() if session.plan_is_current else None
    if planned is not None:
        in_plan = planned[parsed.frames, parsed.columns]
        final = session.plan is not None and session.plan.final
        return in_plan, (~in_plan if not final else ~everything)
    acs = np.isin(parsed.columns, acs_columns)
    return acs, ~acs
