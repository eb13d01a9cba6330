"""Readouts <-> k-space arrays: the accumulation step of a Cartesian MRD reconstruction.

``assemble_kspace`` does what Gadgetron's accumulator gadgets and python-ismrmrd-server's ``simplefft``
do before the FFT: sort readouts by encoding counter into fastMRI's layout ``(slice, frame, coil, H, W)``
(column ``ky + ky_offset`` of W, cardiac ``phase`` as the frame), flip ``ACQ_IS_REVERSE`` readouts, remove
readout oversampling (inverse FFT along the readout, keep the central ``recon x`` samples, FFT back), set
noise readouts aside, keep calibration-only lines in a reference buffer, and ignore navigator / phase
correction / feedback readouts (counted). ``kspace_to_acquisitions`` is the inverse, for replay and tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from kadapt.errors import (
    EncodeOutOfRangeError,
    GeometryMismatchError,
    InvalidAccelerationError,
    InvalidHeaderError,
    NonFiniteDataError,
)
from kadapt.kspace.fft import fft1c, ifft1c
from kadapt.mrd.builders import make_acquisition_heads
from kadapt.mrd.constants import ACQ_HEADER_DTYPE, NON_IMAGING_FLAGS, AcquisitionFlag, flag_mask
from kadapt.mrd.header import EncodingInfo
from kadapt.mrd.messages import Acquisition, AcquisitionBatch

Flag = AcquisitionFlag
ComplexArray = NDArray[np.complex64]


@runtime_checkable
class ReadoutSource(Protocol):
    """Anything holding readouts in bulk: ``heads`` (n,) and ``data`` (n, coils, samples) or a sequence of
    ``(coils, samples)`` arrays (``AcquisitionBatch``, ``kadapt.mrd.files.MrdFile``)."""

    @property
    def heads(self) -> NDArray[np.void]: ...

    @property
    def data(self) -> ComplexArray | Sequence[ComplexArray]: ...


@dataclass(frozen=True, slots=True, eq=False)
class AssembledKSpace:
    """Readouts sorted into arrays.

    ``kspace`` complex64 ``(slice, frame, coil, H, W)``; ``sampled`` bool ``(slice, frame, W)``;
    ``calibration_lines`` bool ``(W,)`` (lines flagged ``ACQ_IS_PARALLEL_CALIBRATION*``); ``reference``
    complex64 ``(slice, frame, coil, H, W)`` with ``reference_sampled`` — calibration-only readouts, None
    when there are none; ``noise`` complex64 ``(coil, n)`` or None; ``skipped`` counts the ignored readouts
    by flag name.
    """

    kspace: ComplexArray
    sampled: NDArray[np.bool_]
    calibration_lines: NDArray[np.bool_]
    reference: ComplexArray | None
    reference_sampled: NDArray[np.bool_] | None
    noise: ComplexArray | None
    skipped: dict[str, int] = field(default_factory=dict)
    imaging_readouts: int = 0


def _has(flags: NDArray[np.uint64], flag: Flag) -> NDArray[np.bool_]:
    hit: NDArray[np.bool_] = (flags & np.uint64(flag.mask)) != 0
    return hit


def _as_source(
    acquisitions: Iterable[Acquisition] | ReadoutSource,
) -> tuple[NDArray[np.void], ComplexArray | Sequence[ComplexArray]]:
    if isinstance(acquisitions, ReadoutSource):
        return acquisitions.heads, acquisitions.data
    items = list(acquisitions)
    if not items:
        return np.zeros(0, dtype=ACQ_HEADER_DTYPE), []
    return np.stack([acq.head for acq in items]), [acq.data for acq in items]


def _gather(data: ComplexArray | Sequence[ComplexArray], indices: NDArray[np.intp]) -> ComplexArray:
    """Readouts ``indices`` as one ``(k, coils, samples)`` array; GeometryMismatchError on differing
    shapes."""
    if isinstance(data, np.ndarray):
        return np.asarray(data[indices], dtype=np.complex64)
    if indices.size == 0:
        return np.zeros((0, 0, 0), dtype=np.complex64)
    shape = data[int(indices[0])].shape
    for index in indices.tolist():
        if data[index].shape != shape:
            raise GeometryMismatchError(
                f"readout {index} is (coils, samples)={data[index].shape}, "
                f"readout {int(indices[0])} is {shape}"
            )
    return np.stack([data[i] for i in indices.tolist()]).astype(np.complex64, copy=False)


def _check_finite(block: ComplexArray, indices: NDArray[np.intp], what: str) -> None:
    finite = np.isfinite(block.view(np.float32)).reshape(block.shape[0], -1).all(axis=1)
    if not finite.all():
        raise NonFiniteDataError(f"{what} readout {int(indices[np.argmin(finite)])} contains NaN or Inf")


def _check_counters(heads: NDArray[np.void], indices: NDArray[np.intp], info: EncodingInfo) -> None:
    idx = heads["idx"][indices]
    ky = idx["kspace_encode_step_1"].astype(np.int64)
    column = ky + info.ky_offset
    checks = (
        ("kspace_encode_step_1", ky, (ky < info.ky.minimum) | (ky > info.ky.maximum) | (column < 0)
         | (column >= info.width), f"{info.ky.minimum}..{info.ky.maximum} (columns 0..{info.width - 1})"),
        ("slice", idx["slice"], idx["slice"] >= info.slices, f"0..{info.slices - 1}"),
        ("phase", idx["phase"], idx["phase"] >= info.phases, f"0..{info.phases - 1}"),
        ("kspace_encode_step_2", idx["kspace_encode_step_2"], idx["kspace_encode_step_2"] > 0,
         "0 (3D encoding is not supported)"),
    )  # fmt: skip
    for name, values, bad, allowed in checks:
        if bad.any():
            first = int(np.argmax(bad))
            raise EncodeOutOfRangeError(
                f"readout {int(indices[first])}: {name}={int(values[first])} "
                f"outside the header's limits {allowed}"
            )


def _to_recon_readout(
    block: ComplexArray, heads: NDArray[np.void], indices: NDArray[np.intp], info: EncodingInfo
) -> ComplexArray:
    """Flip reversed readouts, place short (asymmetric echo) ones by ``center_sample``, remove oversampling.
    ``block`` ``(k, coils, samples)`` -> ``(k, coils, H)``."""
    k, coils, samples = block.shape
    encoded = info.encoded_readout
    reverse = _has(heads["flags"][indices], Flag.ACQ_IS_REVERSE)
    block[reverse] = block[reverse, :, ::-1]
    if samples > encoded:
        raise GeometryMismatchError(
            f"readout {int(indices[0])} has {samples} samples, more than the encoded matrix x={encoded}"
        )
    if samples < encoded:
        centers = heads["center_sample"][indices].astype(np.int64)
        centers = np.where(reverse, samples - 1 - centers, centers)
        offsets = encoded // 2 - centers
        bad = (offsets < 0) | (offsets + samples > encoded)
        if bad.any():
            first = int(np.argmax(bad))
            raise GeometryMismatchError(
                f"readout {int(indices[first])}: {samples} samples with center_sample {int(centers[first])} "
                f"do not fit the encoded readout of {encoded}"
            )
        full = np.zeros((k, coils, encoded), dtype=np.complex64)
        for offset in np.unique(offsets).tolist():
            rows = offsets == offset
            full[rows, :, offset : offset + samples] = block[rows]
        block = full
    height = info.height
    if height > encoded:
        raise InvalidHeaderError(f"recon matrix x={height} is larger than the encoded matrix x={encoded}")
    if height < encoded:
        # Oversampling doubles the readout FOV: in image space the object fills the central recon x.
        start = encoded // 2 - height // 2
        block = fft1c(ifft1c(block, axis=-1)[..., start : start + height], axis=-1)
    return block


def _scatter(
    target: ComplexArray, sampled: NDArray[np.bool_], heads: NDArray[np.void], indices: NDArray[np.intp],
    lines: ComplexArray, ky_offset: int,
) -> None:  # fmt: skip
    """Put ``lines`` ``(k, coils, H)`` into ``target`` ``(slice, frame, coils, H, W)``; repeats of one
    (slice, frame, column) — averages, repetitions — are averaged."""
    _, frames, _, _, width = target.shape
    idx = heads["idx"][indices]
    slices = idx["slice"].astype(np.int64)
    phases = idx["phase"].astype(np.int64)
    columns = idx["kspace_encode_step_1"].astype(np.int64) + ky_offset
    keys = (slices * frames + phases) * width + columns
    unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    if counts.size and counts.max() > 1:
        sums = np.zeros((unique.size, *lines.shape[1:]), dtype=np.complex64)
        np.add.at(sums, inverse, lines)
        lines = (sums / counts[:, None, None].astype(np.float32)).astype(np.complex64)
        slices, rest = np.divmod(unique, frames * width)
        phases, columns = np.divmod(rest, width)
    target[slices, phases, :, :, columns] = lines
    sampled[slices, phases, columns] = True


def assemble_kspace(
    acquisitions: Iterable[Acquisition] | ReadoutSource, info: EncodingInfo
) -> AssembledKSpace:
    """Sort readouts into ``(slice, frame, coil, H, W)`` k-space following ``info``.

    Accepts ``Acquisition`` objects or a bulk source (``AcquisitionBatch``, ``MrdFile``). Calibration-only
    readouts (``ACQ_IS_PARALLEL_CALIBRATION`` without ``_AND_IMAGING``) go to ``reference`` and fill the
    image k-space only at lines no imaging readout covered. Raises EncodeOutOfRangeError (ky / slice /
    frame outside the header), GeometryMismatchError (coils or samples inconsistent), NonFiniteDataError,
    InvalidHeaderError (non-Cartesian trajectory).
    """
    if info.trajectory.lower() != "cartesian":
        raise InvalidHeaderError(
            f"trajectory {info.trajectory!r} is not supported; kadapt assembles cartesian"
        )
    heads, data = _as_source(acquisitions)
    flags = heads["flags"]
    noise = _has(flags, Flag.ACQ_IS_NOISE_MEASUREMENT)
    skipped: dict[str, int] = {}
    ignored = np.zeros(flags.shape, dtype=bool)
    for flag in NON_IMAGING_FLAGS:
        hit = _has(flags, flag) & ~noise & ~ignored
        if hit.any():
            skipped[flag.name] = int(hit.sum())
        ignored |= hit
    calibration = _has(flags, Flag.ACQ_IS_PARALLEL_CALIBRATION)
    calibration_and_imaging = _has(flags, Flag.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
    usable = ~noise & ~ignored
    reference_only = usable & calibration & ~calibration_and_imaging
    imaging = usable & ~reference_only
    used = np.flatnonzero(usable)
    _check_counters(heads, used, info)

    noise_indices = np.flatnonzero(noise)
    noise_data = None
    if noise_indices.size:
        noise_lines = [np.asarray(data[i], dtype=np.complex64) for i in noise_indices.tolist()]
        for index, line in zip(noise_indices.tolist(), noise_lines, strict=True):
            if line.shape[0] != noise_lines[0].shape[0]:
                raise GeometryMismatchError(
                    f"noise readout {index} has {line.shape[0]} coils, noise readout "
                    f"{int(noise_indices[0])} has {noise_lines[0].shape[0]}"
                )
            if not np.isfinite(line).all():
                raise NonFiniteDataError(f"noise readout {index} contains NaN or Inf")
        noise_data = np.concatenate(noise_lines, axis=1)

    block = _gather(data, used)
    if used.size:
        coils = block.shape[1]
    elif info.receiver_channels is not None:
        coils = info.receiver_channels
    elif noise_data is not None:
        coils = noise_data.shape[0]
    else:
        raise GeometryMismatchError(
            "no imaging readouts and no receiverChannels in the header: coil count unknown"
        )
    if info.receiver_channels is not None and coils != info.receiver_channels:
        raise GeometryMismatchError(
            f"readouts have {coils} coils, the header's receiverChannels is {info.receiver_channels}"
        )
    if noise_data is not None and noise_data.shape[0] != coils:
        raise GeometryMismatchError(
            f"noise readouts have {noise_data.shape[0]} coils, imaging readouts {coils}"
        )
    if used.size:
        _check_finite(block, used, "imaging")
        block = _to_recon_readout(block, heads, used, info)

    shape = (info.slices, info.phases, coils, info.height, info.width)
    kspace = np.zeros(shape, dtype=np.complex64)
    sampled = np.zeros((info.slices, info.phases, info.width), dtype=bool)
    in_block_imaging = imaging[used]
    _scatter(kspace, sampled, heads, used[in_block_imaging], block[in_block_imaging], info.ky_offset)
    reference = reference_sampled = None
    if reference_only.any():
        reference = np.zeros(shape, dtype=np.complex64)
        reference_sampled = np.zeros_like(sampled)
        _scatter(
            reference,
            reference_sampled,
            heads,
            used[~in_block_imaging],
            block[~in_block_imaging],
            info.ky_offset,
        )
        # A calibration line with no imaging readout is still a measured line of the image (fastMRI's
        # fully sampled ACS block); where both exist the imaging readout wins.
        fill = reference_sampled & ~sampled
        s, f, c = np.nonzero(fill)
        kspace[s, f, :, :, c] = reference[s, f, :, :, c]
        sampled |= fill
    calibration_lines = np.zeros(info.width, dtype=bool)
    flagged = used[(calibration | calibration_and_imaging)[used]]
    calibration_lines[heads["idx"]["kspace_encode_step_1"][flagged].astype(np.int64) + info.ky_offset] = True
    return AssembledKSpace(
        kspace=kspace,
        sampled=sampled,
        calibration_lines=calibration_lines,
        reference=reference,
        reference_sampled=reference_sampled,
        noise=noise_data,
        skipped=skipped,
        imaging_readouts=int(in_block_imaging.sum()),
    )


def acs_columns(width: int, num_acs: int) -> NDArray[np.bool_]:
    """The ACS block as a line mask ``(W,)``: columns ``W//2 - num_acs//2`` .. ``+ num_acs`` (fastMRI)."""
    if not 0 <= num_acs <= width:
        raise InvalidAccelerationError(f"num_acs={num_acs} does not fit a width of {width} lines")
    lines = np.zeros(width, dtype=bool)
    start = width // 2 - num_acs // 2
    lines[start : start + num_acs] = True
    return lines


def kspace_to_acquisitions(
    kspace: ArrayLike,
    *,
    num_acs: int,
    readout_oversampling: int = 1,
    mask: ArrayLike | None = None,
    center_line: int | None = None,
    sample_time_us: float = 5.0,
) -> AcquisitionBatch:
    """Readouts of ``kspace`` ``(slice, frame, coil, H, W)``, the inverse of :func:`assemble_kspace`.

    Acquires the lines of ``mask`` (``(W,)``, ``(frame, W)`` or ``(slice, frame, W)``; None = all) plus
    the ACS block, which is flagged ``ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING``; order is slice, frame,
    then ascending column. Column c is ``ky = c - W//2 + center_line`` (``center_line`` default ``W//2``,
    matching ``make_header``). With ``readout_oversampling`` > 1 the image is zero-padded along the readout
    (inverse FFT, pad, FFT) to ``H * readout_oversampling`` samples. Each (slice, frame) image starts with
    ACQ_FIRST_IN_ENCODE_STEP1 | ACQ_FIRST_IN_SLICE and ends with the LAST flags; the final readout also
    has ACQ_LAST_IN_MEASUREMENT. Returns the bulk :class:`AcquisitionBatch`.
    """
    volume = np.asarray(kspace)
    if volume.ndim != 5:
        raise GeometryMismatchError(f"kspace must be (slice, frame, coil, H, W), got shape {volume.shape}")
    volume = volume.astype(np.complex64, copy=False)
    slices, frames, coils, height, width = volume.shape
    if readout_oversampling < 1:
        raise GeometryMismatchError(f"readout_oversampling={readout_oversampling} must be >= 1")
    lines = np.broadcast_to(acs_columns(width, num_acs), (slices, frames, width)).copy()
    if mask is None:
        lines[...] = True
    else:
        line_mask = np.asarray(mask, dtype=bool)
        try:
            lines |= np.broadcast_to(line_mask, (slices, frames, width))
        except ValueError:
            raise GeometryMismatchError(
                f"mask shape {line_mask.shape} does not broadcast to "
                f"(slice, frame, W)={(slices, frames, width)}"
            ) from None
    if readout_oversampling > 1:
        samples = height * readout_oversampling
        before = samples // 2 - height // 2
        image = ifft1c(volume, axis=-2)
        padding = [(0, 0)] * 3 + [(before, samples - height - before), (0, 0)]
        volume = fft1c(np.pad(image, padding), axis=-2)
    samples = volume.shape[-2]
    s_idx, f_idx, columns = np.nonzero(lines)
    count = columns.size
    ky = columns - width // 2 + (width // 2 if center_line is None else center_line)
    if count and (ky.min() < 0 or ky.max() > 0xFFFF):
        raise EncodeOutOfRangeError(
            f"center_line={center_line} puts ky outside 0..65535 ({ky.min()}..{ky.max()})"
        )
    heads = make_acquisition_heads(count, coils=coils, samples=samples, sample_time_us=sample_time_us)
    heads["scan_counter"] = np.arange(1, count + 1)
    heads["idx"]["kspace_encode_step_1"] = ky
    heads["idx"]["slice"] = s_idx
    heads["idx"]["phase"] = f_idx
    flags = np.zeros(count, dtype=np.uint64)
    flags[acs_columns(width, num_acs)[columns]] |= np.uint64(
        Flag.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING.mask
    )
    image_key = s_idx * frames + f_idx
    starts = np.flatnonzero(np.diff(image_key, prepend=-1) != 0)
    ends = np.append(starts[1:] - 1, count - 1) if count else starts
    flags[starts] |= np.uint64(flag_mask(Flag.ACQ_FIRST_IN_ENCODE_STEP1, Flag.ACQ_FIRST_IN_SLICE))
    flags[ends] |= np.uint64(flag_mask(Flag.ACQ_LAST_IN_ENCODE_STEP1, Flag.ACQ_LAST_IN_SLICE))
    if count:
        flags[-1] |= np.uint64(Flag.ACQ_LAST_IN_MEASUREMENT.mask)
    heads["flags"] = flags
    data = np.ascontiguousarray(volume[s_idx, f_idx, :, :, columns], dtype=np.complex64)
    return AcquisitionBatch(heads, data, None)
