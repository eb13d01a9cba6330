"""Per-scan k-space files: one complex64 ``.npy`` memmap per scan, shared by memory and Redis modes.

``<data_dir>/scans/<scan_id>/kspace.npy`` is stored line-major, ``(slice, frame, W, coil, H)``, the way a
raw-data file is written: one readout line is one contiguous ``coil x H`` block, so storing a shot of
lines is a few contiguous writes (a column of a ``(..., H, W)`` array would touch every page of the
file). Readout oversampling is already removed. Readers get fastMRI's ``(slice, frame, coil, H, W)``.
Keeping samples on a (shared) volume instead of in
the session store lets gateway replicas share scans and keeps Redis small (architecture.md section 9).
The file is created sparse, so an untouched scan costs no disk. Noise readouts go to ``noise/`` beside it
for a later prewhitening step.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from numpy.typing import NDArray

from kadapt.errors import InvalidHeaderError, InvalidInputError, ServiceUnavailableError
from kadapt.jobs.blobs import volume_full
from kadapt.schemas import ScanGeometry

_SCAN_ID = re.compile(r"^[0-9a-f]{32}$")

KspaceArray = NDArray[np.complex64]


class KspaceFiles:
    """The k-space memmaps of all scans under ``root`` (``<data_dir>/scans``), opened once per process."""

    def __init__(self, root: Path, *, max_scan_bytes: int) -> None:
        self.root = Path(root)
        self.max_scan_bytes = max_scan_bytes
        self._open: dict[str, np.memmap[tuple[int, ...], np.dtype[np.complex64]]] = {}

    def directory(self, scan_id: str) -> Path:
        if not _SCAN_ID.match(scan_id):
            # Scan ids become path components: refuse anything but our own uuid4 hex.
            raise InvalidInputError(f"scan id {scan_id!r} is not a 32-character hex id")
        return self.root / scan_id

    def path(self, scan_id: str) -> Path:
        return self.directory(scan_id) / "kspace.npy"

    @staticmethod
    def shape(geometry: ScanGeometry) -> tuple[int, int, int, int, int]:
        """The stored (line-major) shape ``(slice, frame, W, coil, H)``."""
        return (geometry.slices, geometry.frames, geometry.width, geometry.coils, geometry.height)

    def check_size(self, geometry: ScanGeometry) -> None:
        """Raise :class:`InvalidHeaderError` when the header asks for more k-space than allowed."""
        size = int(np.prod(self.shape(geometry), dtype=np.int64)) * 8
        if size > self.max_scan_bytes:
            raise InvalidHeaderError(
                f"the header's matrix {self.shape(geometry)} needs {size} bytes of k-space, "
                f"more than the gateway's limit of {self.max_scan_bytes}"
            )

    def create(self, scan_id: str, geometry: ScanGeometry) -> None:
        """Create the zero-filled (sparse) file ``(slice, frame, W, coil, H)``; a full volume raises
        :class:`InsufficientStorageError` (any other OS error :class:`ServiceUnavailableError`) and
        leaves no directory behind."""
        self.check_size(geometry)
        directory = self.directory(scan_id)
        try:
            directory.mkdir(parents=True, exist_ok=False)
            self._open[scan_id] = open_memmap(
                self.path(scan_id), mode="w+", dtype=np.complex64, shape=self.shape(geometry)
            )
        except OSError as error:
            if not isinstance(error, FileExistsError):  # never remove another scan's directory
                self.delete(scan_id)
            full = volume_full(error, f"scan {scan_id}: creating its k-space file")
            if full is not None:
                raise full from error
            raise ServiceUnavailableError(
                f"scan {scan_id}: creating its k-space file failed: {error}"
            ) from error

    def open(self, scan_id: str) -> np.memmap[tuple[int, ...], np.dtype[np.complex64]]:
        """The scan's line-major memmap ``(slice, frame, W, coil, H)`` (opened read-write, cached)."""
        kspace = self._open.get(scan_id)
        if kspace is None:
            kspace = np.load(self.path(scan_id), mmap_mode="r+")
            self._open[scan_id] = kspace
        return kspace

    def write_lines(
        self,
        scan_id: str,
        slices: NDArray[np.integer],
        frames: NDArray[np.integer],
        columns: NDArray[np.integer],
        lines: KspaceArray,
    ) -> None:
        """Store ``lines`` ``(n, coil, H)`` at ``(slice, frame, :, :, column)`` (indices ``(n,)``) at once."""
        if not len(columns):
            return
        kspace = self.open(scan_id)
        # pwrite of each contiguous line block: far cheaper than first-touch page faults through the
        # memmap on a freshly created sparse file; the page cache keeps the memmap view coherent.
        _, frame_count, width, coils, height = kspace.shape
        line_bytes = coils * height * 8
        index = (np.asarray(slices, np.int64) * frame_count + np.asarray(frames, np.int64)) * width + columns
        offsets = kspace.offset + index * line_bytes
        data = np.ascontiguousarray(lines, dtype=np.complex64).reshape(len(columns), -1).view(np.uint8)
        with open(self.path(scan_id), "r+b") as handle:
            descriptor = handle.fileno()
            for offset, line in zip(offsets.tolist(), data, strict=True):
                os.pwrite(descriptor, line.data, offset)

    def zero_lines(
        self,
        scan_id: str,
        slices: NDArray[np.integer],
        frames: NDArray[np.integer],
        columns: NDArray[np.integer],
    ) -> None:
        """Zero the lines at ``(slice, frame, column)`` (staged lines the plan did not choose)."""
        if len(columns):
            self.open(scan_id)[slices, frames, columns] = 0

    def read_acs(self, scan_id: str, columns: NDArray[np.integer], *, slice_index: int) -> KspaceArray:
        """The ACS k-space of one slice, frame 0: ``(coil, H, num_acs)``."""
        lines = self.open(scan_id)[slice_index, 0, columns]  # (num_acs, coil, H)
        return np.ascontiguousarray(np.moveaxis(lines, 0, -1))

    def read_masked(self, scan_id: str, mask: NDArray[np.bool_]) -> KspaceArray:
        """The scan's k-space ``(slice, frame, coil, H, W)`` with zeros where ``mask`` ``(slice, frame, W)``
        is False. ``+ 0.0`` turns the -0.0 of masked samples into +0.0 (science.md, fastMRI traps)."""
        kspace = np.ascontiguousarray(np.moveaxis(np.asarray(self.open(scan_id)), 2, -1), dtype=np.complex64)
        kspace *= mask[:, :, None, None, :]
        kspace += np.complex64(0.0)
        return kspace

    def save_noise(self, scan_id: str, noise: KspaceArray) -> Path:
        """Keep noise readouts ``(n, coil, samples)`` for prewhitening; one file per request."""
        directory = self.directory(scan_id) / "noise"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{uuid.uuid4().hex}.npy"
        np.save(path, noise, allow_pickle=False)
        return path

    def forget(self, scan_id: str) -> None:
        """Drop the cached memmap (other processes keep theirs). No ``msync``: the page cache keeps its
        samples for every reader, and a completed scan's samples are already in its recon job's blob."""
        self._open.pop(scan_id, None)

    def delete(self, scan_id: str) -> None:
        """Remove the scan's directory (k-space and noise)."""
        self._open.pop(scan_id, None)
        shutil.rmtree(self.directory(scan_id), ignore_errors=True)
