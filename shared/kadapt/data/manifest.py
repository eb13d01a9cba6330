"""``manifest.json`` of a simulated dataset: what was built, from which anatomy, under which licences.

Paths in the manifest are relative to the dataset folder (``train/0003_mricron-colin27.h5``), so a
dataset can be moved or mounted elsewhere. Strict pydantic models: unknown fields are rejected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from kadapt.errors import InvalidInputError, NotFoundError

MANIFEST_NAME = "manifest.json"

M = TypeVar("M", bound=BaseModel)
FORMAT_VERSION = 1
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


class _ManifestModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class SourceRecord(_ManifestModel):
    """An anatomy source used by the dataset, with the licence note to keep alongside the data."""

    name: str
    subject: str
    package: str
    description: str
    licence: str
    files: list[str]
    split: Split
    volumes: int


class SkippedSource(_ManifestModel):
    """A known source that was not used, and why (not installed, too coarse for the matrix, ...)."""

    name: str
    reason: str


class VolumeRecord(_ManifestModel):
    """One simulated volume. ``file``: fastMRI HDF5; ``mrd_file``: MRD raw file (test split only)."""

    name: str
    file: str
    split: Split
    subject: str
    source: str
    slices: int
    height: int
    width: int
    coils: int
    contrast: str
    orientation: str
    snr: float
    noise_std: float
    fov_mm: float
    slice_spacing_mm: float
    mrd_file: str | None


class SplitCount(_ManifestModel):
    volumes: int
    slices: int
    subjects: list[str]


class DatasetManifest(_ManifestModel):
    """Everything :func:`kadapt.data.build.build_dataset` wrote; ``counts`` per split."""

    format_version: Literal[1]
    kind: Literal["kadapt-simulated"]
    seed: int
    size: int
    coils: int
    slices_per_volume: int
    mrd_num_acs: int
    mrd_readout_oversampling: int
    sources: list[SourceRecord]
    skipped_sources: list[SkippedSource]
    volumes: list[VolumeRecord]
    counts: dict[Split, SplitCount]
    code_version: str

    def volumes_in(self, split: Split) -> list[VolumeRecord]:
        """The volumes of one split, in build order."""
        return [volume for volume in self.volumes if volume.split == split]


def write_manifest(folder: Path, manifest: BaseModel) -> Path:
    """Write ``folder/manifest.json`` (indented JSON; a static or cine dataset manifest) and return its
    path."""
    path = folder / MANIFEST_NAME
    path.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def read_manifest_as(path: str | Path, model: type[M], what: str) -> M:
    """Read ``path`` (the ``manifest.json`` file or the dataset folder) as ``model``; NotFoundError when
    it is absent, InvalidInputError naming ``what`` when it does not validate."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise NotFoundError(f"no dataset manifest at {path}")
    try:
        return model.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as error:
        raise InvalidInputError(f"{path} is not a valid {what}: {error}") from error


def load_manifest(path: str | Path) -> DatasetManifest:
    """Read a dataset manifest from ``path`` (the ``manifest.json`` file or the dataset folder)."""
    return read_manifest_as(path, DatasetManifest, "dataset manifest")
