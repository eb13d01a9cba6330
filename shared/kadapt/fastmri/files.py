"""fastMRI's HDF5 layout: one file per volume.

A fastMRI multi-coil file holds

- ``kspace``: complex64 ``(slices, coils, H, W)``, readout (kx) along H, phase encode (ky) along W;
- ``reconstruction_rss``: float32 ``(slices, H', W')``, the root-sum-of-squares target (fastMRI crops it to
  320 x 320; kadapt's simulated files keep ``H' = H``, ``W' = W``); absent from fastMRI's test files;
- ``ismrmrd_header``: the ISMRMRD XML header as a bytes scalar;
- attributes ``acquisition`` (e.g. ``CORPD_FBK``), ``max`` (the target volume's maximum), ``norm`` (its L2
  norm), ``patient_id``, plus any extras;
- kadapt's simulated files add further datasets (``sensitivity_maps`` ``(coils, H, W)``,
  ``noise_covariance`` ``(coils, coils)``), carried in :attr:`FastMriVolume.extra_arrays`; fastMRI readers
  ignore them.

fastMRI's single-coil files store ``kspace`` as ``(slices, H, W)``: :func:`read_fastmri` returns those with a
coil axis of one, so every caller sees ``(slices, coils, H, W)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.typing import NDArray

from kadapt.errors import GeometryMismatchError, InvalidInputError, NotFoundError

AttrValue = str | int | float | bool
REQUIRED_ATTRS = ("acquisition", "max", "norm", "patient_id")
STANDARD_DATASETS = ("kspace", "reconstruction_rss", "ismrmrd_header")


@dataclass(frozen=True)
class FastMriVolume:
    """One fastMRI volume.

    ``kspace`` complex64 ``(slices, coils, H, W)``; ``reconstruction_rss`` float32 ``(slices, H', W')`` or
    None; ``header_xml`` the ISMRMRD XML header; ``attrs`` at least ``acquisition``, ``max``, ``norm``,
    ``patient_id`` (build them with :func:`fastmri_volume`); ``extra_arrays`` further datasets by name.
    """

    kspace: NDArray[np.complex64]
    reconstruction_rss: NDArray[np.float32] | None
    header_xml: str
    attrs: Mapping[str, AttrValue] = field(default_factory=dict)
    extra_arrays: Mapping[str, NDArray[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kspace.ndim != 4:
            raise GeometryMismatchError(
                f"kspace must be (slices, coils, H, W), got shape {self.kspace.shape}"
            )
        if self.kspace.dtype != np.complex64:
            raise InvalidInputError(f"kspace must be complex64, got {self.kspace.dtype}")
        rss = self.reconstruction_rss
        if rss is not None:
            if rss.ndim != 3 or rss.shape[0] != self.kspace.shape[0]:
                raise GeometryMismatchError(
                    f"reconstruction_rss must be (slices={self.kspace.shape[0]}, H', W'), got {rss.shape}"
                )
            if rss.dtype != np.float32:
                raise InvalidInputError(f"reconstruction_rss must be float32, got {rss.dtype}")
        clashes = sorted(set(self.extra_arrays) & set(STANDARD_DATASETS))
        if clashes:
            raise InvalidInputError(f"extra_arrays may not reuse fastMRI dataset names {clashes}")
        missing = [name for name in REQUIRED_ATTRS if name not in self.attrs]
        if missing:
            raise InvalidInputError(f"fastMRI attrs miss {missing}; present: {sorted(self.attrs)}")

    @property
    def slices(self) -> int:
        return int(self.kspace.shape[0])

    @property
    def coils(self) -> int:
        return int(self.kspace.shape[1])


def fastmri_volume(
    kspace: NDArray[np.complex64],
    *,
    header_xml: str,
    acquisition: str,
    patient_id: str,
    reconstruction_rss: NDArray[np.float32] | None = None,
    extra_attrs: Mapping[str, AttrValue] | None = None,
    extra_arrays: Mapping[str, NDArray[Any]] | None = None,
) -> FastMriVolume:
    """A :class:`FastMriVolume` with ``max`` and ``norm`` computed as fastMRI does.

    ``kspace`` ``(slices, coils, H, W)``; ``reconstruction_rss`` ``(slices, H', W')``. ``max`` is the
    target volume's maximum and ``norm`` its L2 norm (fastMRI's ``evaluate.py`` / data transforms read
    them); without a target both are computed from the RSS of the inverse-FFT'd k-space instead.
    """
    if reconstruction_rss is not None:
        reference = reconstruction_rss
    else:
        # Deferred import: reading files must not need the FFT module's callers.
        from kadapt.kspace.fft import ifft2c

        reference = np.sqrt(np.sum(np.abs(ifft2c(kspace)) ** 2, axis=1)).astype(np.float32)
    attrs: dict[str, AttrValue] = dict(extra_attrs or {})
    attrs.update(
        acquisition=acquisition,
        patient_id=patient_id,
        max=float(np.max(reference)) if reference.size else 0.0,
        norm=float(np.linalg.norm(reference)),
    )
    return FastMriVolume(kspace, reconstruction_rss, header_xml, attrs, dict(extra_arrays or {}))


def write_fastmri(path: str | Path, volume: FastMriVolume) -> None:
    """Write ``volume`` to ``path`` in fastMRI's layout (overwrites an existing file).

    Arrays are stored uncompressed, as fastMRI's files are: noisy k-space does not compress.
    """
    for name, value in volume.attrs.items():
        if not isinstance(value, str | int | float | bool):
            raise InvalidInputError(f"attr {name!r} has type {type(value).__name__}; use str/int/float/bool")
    with h5py.File(path, "w") as file:
        file.create_dataset("kspace", data=volume.kspace)
        if volume.reconstruction_rss is not None:
            file.create_dataset("reconstruction_rss", data=volume.reconstruction_rss)
        file.create_dataset("ismrmrd_header", data=np.bytes_(volume.header_xml.encode("utf-8")))
        for name, array in volume.extra_arrays.items():
            file.create_dataset(name, data=array)
        for name, value in volume.attrs.items():
            file.attrs[name] = value


def _python_value(value: Any) -> AttrValue:
    """h5py returns numpy scalars and sometimes bytes; callers get plain Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        item = value.item()
        return item.decode("utf-8") if isinstance(item, bytes) else item
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def read_fastmri(path: str | Path, *, slices: slice | None = None) -> FastMriVolume:
    """Read a fastMRI file: ``kspace`` ``(slices, coils, H, W)`` complex64 (single-coil files get a coil
    axis of one), ``reconstruction_rss`` ``(slices, H', W')`` float32 or None, header, attrs.

    ``slices`` reads only that range of slices (h5py reads lazily, so large volumes need not fit twice).
    Files lacking ``max`` / ``norm`` (fastMRI's test set) get them from the k-space RSS.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no fastMRI file at {path}")
    selection = slices if slices is not None else slice(None)
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise InvalidInputError(f"{path} is not an HDF5 file: {error}") from error
    with file:
        for name in ("kspace", "ismrmrd_header"):
            if name not in file:
                raise InvalidInputError(f"{path} has no {name!r} dataset (found {sorted(file.keys())})")
        kspace = np.asarray(file["kspace"][selection]).astype(np.complex64, copy=False)
        rss = (
            np.asarray(file["reconstruction_rss"][selection]).astype(np.float32, copy=False)
            if "reconstruction_rss" in file
            else None
        )
        raw_header = file["ismrmrd_header"][()]
        extra_arrays = {
            name: np.asarray(file[name][()])
            for name in file
            if name not in STANDARD_DATASETS and isinstance(file[name], h5py.Dataset)
        }
        attrs = {name: _python_value(value) for name, value in file.attrs.items()}
    if kspace.ndim == 3:
        kspace = kspace[:, np.newaxis]
    header_xml = raw_header.decode("utf-8") if isinstance(raw_header, bytes) else str(raw_header)
    acquisition = str(attrs.pop("acquisition", "unknown"))
    patient_id = str(attrs.pop("patient_id", path.stem))
    if "max" in attrs and "norm" in attrs:
        attrs.update(acquisition=acquisition, patient_id=patient_id)
        return FastMriVolume(kspace, rss, header_xml, attrs, extra_arrays)
    return fastmri_volume(
        kspace,
        header_xml=header_xml,
        acquisition=acquisition,
        patient_id=patient_id,
        reconstruction_rss=rss,
        extra_attrs=attrs,
        extra_arrays=extra_arrays,
    )
