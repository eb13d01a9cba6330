"""MRD HDF5 files read and written with h5py directly.

The layout is ISMRMRD's (``ismrmrd.Dataset`` and the C++ library read it)::

    /<group>/xml       (1,) variable-length bytes: the XML header
    /<group>/data      (n,) compound {head: AcquisitionHeader (340 bytes),
                                      traj: vlen float32 [samples * trajectory_dimensions],
                                      data: vlen float32 [2 * coils * samples] (real, imag interleaved)}
    /<group>/phantom   optional ground truth of ismrmrd_generate_cartesian_shepp_logan,
                       (z, y, x) compound {real, imag} float32

Reading every record in one h5py call and viewing the vlen arrays with numpy is about 20x faster than
the ``ismrmrd`` object API, which builds a Python object per readout and per header field.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from numpy.typing import NDArray

from kadapt.errors import GeometryMismatchError, InvalidInputError, MrdDecodeError
from kadapt.mrd.constants import ACQ_HEADER_DTYPE
from kadapt.mrd.messages import Acquisition, AcquisitionBatch

_VLEN_FLOAT32 = h5py.vlen_dtype(np.dtype("<f4"))
ACQUISITION_RECORD_DTYPE = np.dtype(
    [("head", ACQ_HEADER_DTYPE), ("traj", _VLEN_FLOAT32), ("data", _VLEN_FLOAT32)]
)


@dataclass(frozen=True, slots=True, eq=False)
class MrdFile:
    """The contents of one MRD group.

    ``heads``: ``(n,)`` of ``ACQ_HEADER_DTYPE``. ``data`` is complex64 ``(n, coils, samples)`` when every
    readout has the same coils and samples, else a list of ``(coils_i, samples_i)`` arrays; likewise
    ``traj`` is float32 ``(n, samples, dims)`` or a list of ``(samples_i, dims_i)`` (a noise readout
    without trajectory among readouts with one makes it a list).
    """

    header_xml: str
    heads: NDArray[np.void]
    data: NDArray[np.complex64] | list[NDArray[np.complex64]]
    traj: NDArray[np.float32] | list[NDArray[np.float32]]

    def __len__(self) -> int:
        return int(self.heads.shape[0])

    @property
    def uniform(self) -> bool:
        """Whether all readouts share one shape (``data`` and ``traj`` are single arrays)."""
        return isinstance(self.data, np.ndarray) and isinstance(self.traj, np.ndarray)

    def acquisition(self, index: int) -> Acquisition:
        """Readout ``index`` as an :class:`Acquisition` (views)."""
        return Acquisition(self.heads[index : index + 1].reshape(()), self.data[index], self.traj[index])

    def acquisitions(self) -> Iterator[Acquisition]:
        """Every readout in file order."""
        return (self.acquisition(i) for i in range(len(self)))

    def batch(self) -> AcquisitionBatch:
        """The bulk form; GeometryMismatchError when readouts differ in shape (use ``acquisitions()``)."""
        if not isinstance(self.data, np.ndarray) or not isinstance(self.traj, np.ndarray):
            raise GeometryMismatchError(
                "readouts in this file differ in coils, samples or trajectory dimensions; "
                "iterate acquisitions() instead"
            )
        traj = self.traj if self.traj.shape[-1] else None
        return AcquisitionBatch(self.heads, self.data, traj)


def _vlen_rows(
    rows: NDArray[np.object_], lengths: NDArray[np.int64], what: str
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Concatenate vlen float32 rows after checking each has its declared length; returns the flat
    array and the row start offsets."""
    actual = np.fromiter((row.size for row in rows), dtype=np.int64, count=rows.size)
    wrong = np.flatnonzero(actual != lengths)
    if wrong.size:
        index = int(wrong[0])
        raise MrdDecodeError(
            f"readout {index}: {what} has {int(actual[index])} floats, "
            f"its header implies {int(lengths[index])}"
        )
    flat = np.concatenate(list(rows)).astype(np.float32, copy=False) if rows.size else np.zeros(0, np.float32)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    return flat, starts


def read_mrd(path: str | Path, group: str = "dataset") -> MrdFile:
    """Read the XML header and every acquisition of ``/<group>`` (see the module docstring for layout)."""
    with h5py.File(path, "r") as file:
        if group not in file:
            raise InvalidInputError(f"{path}: no group /{group} (groups: {sorted(file.keys())})")
        node = file[group]
        if "xml" not in node:
            raise InvalidInputError(f"{path}: /{group}/xml (the MRD header) is missing")
        raw_xml = node["xml"][0]
        header_xml = raw_xml.decode("utf-8") if isinstance(raw_xml, bytes) else str(raw_xml)
        if "data" in node:
            # One read of whole records is several times faster than one read per field.
            records = node["data"][...]
            heads = np.ascontiguousarray(records["head"]).astype(ACQ_HEADER_DTYPE)
            data_rows = records["data"]
            traj_rows = records["traj"]
        else:
            heads = np.zeros(0, dtype=ACQ_HEADER_DTYPE)
            data_rows = traj_rows = np.zeros(0, dtype=object)
    header_xml = header_xml.split("\0", 1)[0]
    coils = heads["active_channels"].astype(np.int64)
    samples = heads["number_of_samples"].astype(np.int64)
    dims = heads["trajectory_dimensions"].astype(np.int64)
    data_flat, data_starts = _vlen_rows(data_rows, 2 * coils * samples, "data")
    traj_flat, traj_starts = _vlen_rows(traj_rows, samples * dims, "traj")
    complex_flat = data_flat.view(np.complex64)
    n = heads.shape[0]
    data: NDArray[np.complex64] | list[NDArray[np.complex64]]
    traj: NDArray[np.float32] | list[NDArray[np.float32]]
    if n and np.all(coils == coils[0]) and np.all(samples == samples[0]):
        data = complex_flat.reshape(n, int(coils[0]), int(samples[0]))
    else:
        data = [
            complex_flat[start // 2 : start // 2 + c * s].reshape(c, s)
            for start, c, s in zip(data_starts.tolist(), coils.tolist(), samples.tolist(), strict=True)
        ]
    if n and np.all(samples == samples[0]) and np.all(dims == dims[0]):
        traj = traj_flat.reshape(n, int(samples[0]), int(dims[0]))
    else:
        traj = [
            traj_flat[start : start + s * d].reshape(s, d)
            for start, s, d in zip(traj_starts.tolist(), samples.tolist(), dims.tolist(), strict=True)
        ]
    return MrdFile(header_xml, heads, data, traj)


def _records(acquisitions: Iterable[Acquisition] | AcquisitionBatch) -> NDArray[np.void]:
    if isinstance(acquisitions, AcquisitionBatch):
        n = len(acquisitions)
        records = np.empty(n, dtype=ACQUISITION_RECORD_DTYPE)
        records["head"] = acquisitions.heads
        flat_data = np.ascontiguousarray(acquisitions.data).view(np.float32).reshape(n, -1)
        empty = np.zeros(0, dtype=np.float32)
        for i in range(n):
            records["data"][i] = flat_data[i]
            records["traj"][i] = empty if acquisitions.traj is None else acquisitions.traj[i].reshape(-1)
        return records
    items: Sequence[Acquisition] = list(acquisitions)
    records = np.empty(len(items), dtype=ACQUISITION_RECORD_DTYPE)
    for i, acq in enumerate(items):
        records["head"][i] = acq.head
        records["data"][i] = np.ascontiguousarray(acq.data).view(np.float32).reshape(-1)
        records["traj"][i] = np.ascontiguousarray(acq.traj).reshape(-1)
    return records


def write_mrd(
    path: str | Path,
    header_xml: str,
    acquisitions: Iterable[Acquisition] | AcquisitionBatch,
    group: str = "dataset",
) -> None:
    """Write ``/<group>/xml`` and ``/<group>/data`` in ISMRMRD's layout (``ismrmrd.Dataset`` reads it).

    The file is created or appended to; an existing ``/<group>`` is replaced.
    """
    records = _records(acquisitions)
    with h5py.File(path, "a") as file:
        if group in file:
            del file[group]
        node = file.create_group(group)
        xml = node.create_dataset("xml", shape=(1,), dtype=h5py.vlen_dtype(bytes))
        xml[0] = header_xml.encode("utf-8")
        data = node.create_dataset(
            "data",
            shape=records.shape,
            maxshape=(None,),
            dtype=ACQUISITION_RECORD_DTYPE,
            chunks=(max(1, min(len(records), 1024)),),
        )
        if len(records):
            data[...] = records


def read_phantom(path: str | Path, group: str = "dataset") -> NDArray[np.complex64] | None:
    """The ground truth ``/<group>/phantom`` as complex64 ``(z, y, x)`` (x = readout), or None if absent."""
    with h5py.File(path, "r") as file:
        if group not in file or "phantom" not in file[group]:
            return None
        raw = file[group]["phantom"][...]
    values = np.asarray(raw)
    if values.dtype.names is not None:
        values = values["real"] + 1j * values["imag"]
    phantom: NDArray[np.complex64] = values.astype(np.complex64)
    return phantom
