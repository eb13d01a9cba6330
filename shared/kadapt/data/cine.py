"""Cine data on disk (docs/dynamic.md C1): the reader, the file listing and the manifest.

A cine dataset (built by :func:`kadapt.data.cine_build.build_cine_dataset`, ``kadapt data build
--frames T``) is laid out like the static one, split by subject::

    manifest.json                  CineManifest: DatasetManifest's fields plus frames, num_acs, motion
    train/NNNN_<source>.h5  val/...  test/...
    test_mrd/NNNN_<source>.mrd.h5  the test volumes as MRD raw files, ``phase`` counter = frame

Each ``.h5`` file holds fastMRI-style datasets with a frame axis:
``kspace`` complex64 ``(slices, frames, coils, H, W)`` (orthonormal centred FFT, coil noise added),
``reconstruction_rss`` float32 ``(slices, frames, H, W)`` (RSS of the fully sampled noisy k-space),
``sensitivity_maps`` complex64 ``(coils, H, W)`` (static over frames, ``sum |S|^2 = 1``),
``noise_covariance`` complex64 ``(coils, coils)``, ``ismrmrd_header`` (encoding limit ``phase`` 0..T-1),
and the attributes of the static files (``acquisition``, ``max``, ``norm``, ``patient_id``, ``subject``,
``source``, ``contrast``, ``snr``, ...) plus ``frames`` and ``motion`` (JSON of the drawn motion).

This module imports only h5py, numpy and pydantic, so readers (trainer, bench) stay light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from numpy.typing import NDArray

from kadapt.data.manifest import SPLITS, DatasetManifest, Split, read_manifest_as
from kadapt.errors import GeometryMismatchError, InvalidInputError, NotFoundError


class CineManifest(DatasetManifest):
    """``manifest.json`` of a cine dataset: :class:`DatasetManifest` plus the frame count, the ACS block
    flagged in its MRD files (``num_acs`` = ``mrd_num_acs``) and the motion model's name."""

    frames: int
    num_acs: int
    motion_model: str


@dataclass(frozen=True, eq=False)
class CineVolume:
    """One cine volume read from disk.

    ``kspace`` complex64 ``(slices, frames, coils, H, W)``; ``rss`` float32 ``(slices, frames, H, W)``;
    ``sens`` complex64 ``(coils, H, W)`` (static over frames); ``subject`` / ``source`` the anatomy it was
    cut from; ``path`` the file.
    """

    kspace: NDArray[np.complex64]
    rss: NDArray[np.float32]
    sens: NDArray[np.complex64]
    subject: str
    source: str
    path: Path

    @property
    def slices(self) -> int:
        return int(self.kspace.shape[0])

    @property
    def frames(self) -> int:
        return int(self.kspace.shape[1])

    @property
    def coils(self) -> int:
        return int(self.kspace.shape[2])


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return _text(value.item())
    return str(value)


def read_cine(path: str | Path, *, slices: slice | None = None) -> CineVolume:
    """Read a cine file (see the module docstring); ``slices`` reads only that range of slices.

    Raises NotFoundError (no file), InvalidInputError (not HDF5, a dataset missing) and
    GeometryMismatchError (shapes that disagree).
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no cine file at {path}")
    selection = slices if slices is not None else slice(None)
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise InvalidInputError(f"{path} is not an HDF5 file: {error}") from error
    with file:
        missing = [name for name in ("kspace", "reconstruction_rss", "sensitivity_maps") if name not in file]
        if missing:
            raise InvalidInputError(f"{path} is not a cine file: no {missing} (found {sorted(file.keys())})")
        kspace = np.asarray(file["kspace"][selection]).astype(np.complex64, copy=False)
        rss = np.asarray(file["reconstruction_rss"][selection]).astype(np.float32, copy=False)
        sens = np.asarray(file["sensitivity_maps"][()]).astype(np.complex64, copy=False)
        subject = _text(file.attrs.get("subject", file.attrs.get("patient_id", path.stem)))
        source = _text(file.attrs.get("source", "unknown"))
    if kspace.ndim != 5:
        raise GeometryMismatchError(
            f"{path}: kspace must be (slices, frames, coils, H, W), got {kspace.shape}"
        )
    count, frames, coils, height, width = kspace.shape
    if rss.shape != (count, frames, height, width):
        raise GeometryMismatchError(
            f"{path}: reconstruction_rss {rss.shape} != {(count, frames, height, width)}"
        )
    if sens.shape != (coils, height, width):
        raise GeometryMismatchError(f"{path}: sensitivity_maps {sens.shape} != {(coils, height, width)}")
    return CineVolume(kspace, rss, sens, subject, source, path)


def list_cine(root: str | Path, split: Split) -> list[Path]:
    """The cine files of ``split`` under the dataset folder ``root``, sorted by name.

    Raises InvalidInputError for an unknown split and NotFoundError when the split folder is absent.
    """
    if split not in SPLITS:
        raise InvalidInputError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    folder = Path(root) / split
    if not folder.is_dir():
        raise NotFoundError(f"no {split} folder in {root} (build it with `kadapt data build --frames T`)")
    return sorted(folder.glob("*.h5"))


def load_cine_manifest(path: str | Path) -> CineManifest:
    """Read a cine dataset's manifest from ``path`` (the ``manifest.json`` file or the dataset folder)."""
    return read_manifest_as(path, CineManifest, "cine dataset manifest")
