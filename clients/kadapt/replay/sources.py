"""Fully sampled scans to replay, from fastMRI HDF5 or MRD HDF5 files.

A :class:`ReplayScan` holds the data the way a scanner would send it: raw readouts
``(slice, frame, coil, readout_samples, W)`` (readout oversampling still in), the MRD XML header, and
the fully sampled reference image ``(slice, frame, H, W)`` (RSS after oversampling removal) that the
replayed reconstruction is scored against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from numpy.typing import NDArray

from kadapt.errors import InvalidInputError
from kadapt.fastmri.files import read_fastmri
from kadapt.kspace.coils import rss
from kadapt.kspace.fft import ifft2c
from kadapt.kspace.preprocess import remove_readout_oversampling
from kadapt.mrd.builders import make_acquisition_heads
from kadapt.mrd.constants import AcquisitionFlag, flag_mask
from kadapt.mrd.files import read_mrd
from kadapt.mrd.header import EncodingInfo, make_header, parse_header
from kadapt.mrd.stream import encode_acquisitions

_ACS_FLAGS = flag_mask(AcquisitionFlag.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)


@dataclass
class ReplayScan:
    """One fully sampled scan. ``raw`` is complex64 ``(slice, frame, coil, readout_samples, W)``;
    ``heads`` optional original MRD headers per line ``(slice, frame, W)`` (MRD sources); ``preamble``
    MRD bytes a scanner sends before the imaging lines (the file's noise readouts)."""

    name: str
    header_xml: str
    raw: NDArray[np.complex64]
    reference: NDArray[np.float32]
    heads: NDArray[np.void] | None = None
    preamble: bytes = b""

    @property
    def info(self) -> EncodingInfo:
        return parse_header(self.header_xml)

    def encode_lines(self, cells: NDArray[np.integer], acs_columns: frozenset[int] = frozenset()) -> bytes:
        """MRD ACQUISITION messages for ``cells`` ``(n, 3)`` rows of ``(slice, frame, column)``.

        ``ky = column - ky_offset`` (the header's centre line lands on ``W // 2``); lines of the ACS
        block carry ``ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING`` as a scanner's embedded ACS would.
        """
        info = self.info
        slices, frames, columns = (cells[:, i] for i in range(3))
        data = np.ascontiguousarray(self.raw[slices, frames, :, :, columns])  # (n, coil, samples)
        coils, samples = data.shape[1], data.shape[2]
        if self.heads is not None:
            heads = self.heads[slices, frames, columns].copy()
        else:
            heads = make_acquisition_heads(len(cells), coils=coils, samples=samples)
            heads["idx"]["kspace_encode_step_1"] = columns - info.ky_offset
            heads["idx"]["slice"] = slices
            heads["idx"]["phase"] = frames
        is_acs = np.isin(columns, np.fromiter(acs_columns, dtype=np.int64, count=len(acs_columns)))
        heads["flags"] = np.where(
            is_acs, heads["flags"] | _ACS_FLAGS, heads["flags"] & ~np.uint64(_ACS_FLAGS)
        )
        return encode_acquisitions(heads, data)


def _reference(raw: NDArray[np.complex64], oversampling: float) -> NDArray[np.float32]:
    kspace = raw
    if oversampling > 1:
        kspace = remove_readout_oversampling(raw, axis=-2, factor=round(oversampling))
    return rss(ifft2c(kspace), axis=-3).astype(np.float32)


def load_fastmri_scan(path: Path) -> ReplayScan:
    """A fastMRI HDF5 file: ``kspace`` (slices, coils, H, W); the header from ``ismrmrd_header`` or, when
    absent, a minimal one matching the array."""
    volume = read_fastmri(path)
    kspace = np.asarray(volume.kspace, dtype=np.complex64)
    slices, coils, height, width = kspace.shape
    header = volume.header_xml or make_header(readout=height, width=width, slices=slices, coils=coils)
    info = parse_header(header)
    if info.encoded_readout != height or info.width != width:
        # fastMRI's own files may carry a header whose encoded matrix differs from the stored array;
        # replay sends what is stored, so describe the stored array.
        header = make_header(
            readout=height,
            width=width,
            recon_readout=max(1, int(height / info.readout_oversampling)),
            slices=slices,
            coils=coils,
        )
        info = parse_header(header)
    raw = kspace[:, None]
    return ReplayScan(path.name, header, raw, _reference(raw, info.readout_oversampling))


def load_mrd_scan(path: Path) -> ReplayScan:
    """An MRD HDF5 raw file: imaging readouts placed by (slice, phase, ky); noise readouts are replayed
    first, as the scanner sends them; navigator and calibration-only readouts are not replayed."""
    mrd = read_mrd(path)
    info = parse_header(mrd.header_xml)
    batch = mrd.batch()
    flags = batch.heads["flags"]
    skip = flag_mask(
        AcquisitionFlag.ACQ_IS_NOISE_MEASUREMENT,
        AcquisitionFlag.ACQ_IS_NAVIGATION_DATA,
        AcquisitionFlag.ACQ_IS_PHASECORR_DATA,
        AcquisitionFlag.ACQ_IS_PARALLEL_CALIBRATION,
    )
    imaging = (flags & np.uint64(skip)) == 0
    noise = (flags & np.uint64(flag_mask(AcquisitionFlag.ACQ_IS_NOISE_MEASUREMENT))) != 0
    preamble = b""
    if noise.any():
        preamble = encode_acquisitions(batch.heads[noise], np.ascontiguousarray(batch.data[noise]))
    heads, data = batch.heads[imaging], batch.data[imaging]
    coils, samples = data.shape[1], data.shape[2]
    columns = heads["idx"]["kspace_encode_step_1"].astype(np.int64) + info.ky_offset
    slices = heads["idx"]["slice"].astype(np.int64)
    frames = heads["idx"]["phase"].astype(np.int64)
    raw = np.zeros((info.slices, info.frames, coils, samples, info.width), dtype=np.complex64)
    cell_heads = np.zeros((info.slices, info.frames, info.width), dtype=heads.dtype)
    filled = np.zeros((info.slices, info.frames, info.width), dtype=bool)
    raw[slices, frames, :, :, columns] = data
    cell_heads[slices, frames, columns] = heads
    filled[slices, frames, columns] = True
    if not filled.all():
        missing = int((~filled).sum())
        raise InvalidInputError(
            f"{path}: not fully sampled ({missing} lines missing); replay needs full data"
        )
    reference = _reference(raw, info.readout_oversampling)
    return ReplayScan(path.name, mrd.header_xml, raw, reference, cell_heads, preamble)


def load_scan(path: Path) -> ReplayScan:
    """Dispatch on the file's layout: MRD HDF5 has a ``/dataset/data`` group, fastMRI a ``kspace``."""
    if not path.exists():
        raise InvalidInputError(f"no such file: {path}")
    with h5py.File(path, "r") as handle:
        is_mrd = "dataset" in handle and "data" in handle["dataset"]
        is_fastmri = "kspace" in handle
    if is_mrd:
        return load_mrd_scan(path)
    if is_fastmri:
        return load_fastmri_scan(path)
    raise InvalidInputError(f"{path}: neither an MRD (/dataset/data) nor a fastMRI (kspace) HDF5 file")
