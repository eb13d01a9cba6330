"""Task data (issue 8): ``tasks.json`` and the loader of (k-space, target, labels) per slice for a split.

A task dataset is an ordinary :func:`kadapt.data.build.build_dataset` folder built with ``task=...``: the
fastMRI files gain ``segmentation`` uint8 ``(slices, H, W)`` (classes ``label_names``), ``lesion`` uint8
``(slices,)`` and ``lesion_mask`` uint8 ``(slices, H, W)`` as the task asks, and a ``tasks.json`` next to
``manifest.json`` records the task, the label classes, how each subject's labels were made and the lesion
settings. IGS (seed 002, Alg. 1) and the task models read it through :func:`load_task_split`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, ValidationError

from kadapt.data.manifest import Split, load_manifest
from kadapt.errors import GeometryMismatchError, InvalidInputError, NotFoundError

TASK_INFO_NAME = "tasks.json"
TaskKind = Literal["segmentation", "classification", "both"]
TASK_KINDS: tuple[TaskKind, ...] = ("segmentation", "classification", "both")


def parse_task(task: str) -> TaskKind:
    """``task`` as a :data:`TaskKind`, or :class:`~kadapt.errors.InvalidInputError` naming the choices."""
    for kind in TASK_KINDS:
        if task == kind:
            return kind
    raise InvalidInputError(f"task={task!r} must be one of {', '.join(TASK_KINDS)}")


def has_segmentation(task: TaskKind) -> bool:
    return task in ("segmentation", "both")


def has_lesions(task: TaskKind) -> bool:
    return task in ("classification", "both")


class _TaskModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class TaskSubject(_TaskModel):
    """One labelled subject: its source, split and how its labels were made."""

    subject: str
    source: str
    split: Split
    label_method: str


class LesionRecord(_TaskModel):
    """The :class:`~kadapt.data.lesions.LesionSettings` the lesions were drawn with."""

    probability: float
    semi_axis_fraction: tuple[float, float]
    dark_factor: tuple[float, float]
    bright_factor: tuple[float, float]


class TaskCount(_TaskModel):
    slices: int
    lesion_slices: int


class TaskInfo(_TaskModel):
    """``tasks.json``: what the task datasets in the fastMRI files mean."""

    format_version: Literal[1]
    task: TaskKind
    label_names: list[str]
    subjects: list[TaskSubject]
    lesions: LesionRecord | None
    counts: dict[Split, TaskCount]


def write_task_info(folder: Path, info: TaskInfo) -> Path:
    """Write ``folder/tasks.json`` and return its path."""
    path = folder / TASK_INFO_NAME
    path.write_text(info.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def load_task_info(folder: str | Path) -> TaskInfo:
    """Read ``tasks.json`` from a dataset folder (:class:`NotFoundError` when built without a task)."""
    path = Path(folder) / TASK_INFO_NAME
    if not path.is_file():
        raise NotFoundError(f"no {TASK_INFO_NAME} in {folder}: build it with `kadapt data build --task ...`")
    try:
        return TaskInfo.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as error:
        raise InvalidInputError(f"{path} is not a valid task description: {error}") from error


@dataclass(frozen=True)
class TaskSlice:
    """One slice: ``kspace`` complex64 ``(coils, H, W)``, ``target`` float32 ``(H, W)``, ``segmentation``
    uint8 ``(H, W)``, ``lesion`` 0 / 1, ``lesion_mask`` uint8 ``(H, W)`` (None where the task has none)."""

    kspace: NDArray[np.complex64]
    target: NDArray[np.float32]
    segmentation: NDArray[np.uint8] | None
    lesion: int | None
    lesion_mask: NDArray[np.uint8] | None
    volume: str
    slice_index: int
    subject: str


@dataclass(frozen=True)
class TaskSplit:
    """Every slice of one split, stacked: ``kspace`` ``(N, coils, H, W)``, ``target`` ``(N, H, W)``,
    ``sensitivity_maps`` ``(N, coils, H, W)`` (the simulator's true maps), ``segmentation`` ``(N, H, W)``,
    ``lesion`` ``(N,)``, ``lesion_mask`` ``(N, H, W)`` (None when absent), ``volume`` ``(N,)`` indices into
    ``volume_names`` / ``subjects`` (per-volume metrics), ``slice_index`` ``(N,)``."""

    info: TaskInfo
    split: Split
    kspace: NDArray[np.complex64]
    target: NDArray[np.float32]
    sensitivity_maps: NDArray[np.complex64]
    segmentation: NDArray[np.uint8] | None
    lesion: NDArray[np.uint8] | None
    lesion_mask: NDArray[np.uint8] | None
    volume: NDArray[np.int64]
    slice_index: NDArray[np.int64]
    volume_names: tuple[str, ...]
    subjects: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.kspace.shape[0])

    def __getitem__(self, index: int) -> TaskSlice:
        if not -len(self) <= index < len(self):
            raise InvalidInputError(f"slice {index} out of range for {len(self)} slices")
        volume = int(self.volume[index])
        return TaskSlice(
            kspace=self.kspace[index],
            target=self.target[index],
            segmentation=None if self.segmentation is None else self.segmentation[index],
            lesion=None if self.lesion is None else int(self.lesion[index]),
            lesion_mask=None if self.lesion_mask is None else self.lesion_mask[index],
            volume=self.volume_names[volume],
            slice_index=int(self.slice_index[index]),
            subject=self.subjects[volume],
        )

    def __iter__(self) -> Iterator[TaskSlice]:
        return (self[index] for index in range(len(self)))


def _stack(parts: list[NDArray[np.generic]], name: str, expected: bool) -> NDArray[np.generic] | None:
    if not expected:
        return None
    if len(parts) == 0:
        raise InvalidInputError(f"the task promises {name!r} but no file holds it")
    return np.concatenate(parts)


def load_task_split(folder: str | Path, split: Split) -> TaskSplit:
    """Load every slice of ``split`` from a task dataset ``folder`` (manifest order), with its labels."""
    from kadapt.fastmri.files import read_fastmri

    folder = Path(folder)
    info = load_task_info(folder)
    manifest = load_manifest(folder)
    wants_labels, wants_lesions = has_segmentation(info.task), has_lesions(info.task)
    columns: dict[str, list[NDArray[np.generic]]] = {
        k: []
        for k in ("kspace", "target", "maps", "segmentation", "lesion", "lesion_mask", "volume", "slice")
    }
    records = manifest.volumes_in(split)
    for number, record in enumerate(records):
        volume = read_fastmri(folder / record.file)
        slices = volume.kspace.shape[0]
        if (
            volume.reconstruction_rss is None
            or volume.reconstruction_rss.shape[-2:] != volume.kspace.shape[-2:]
        ):
            raise GeometryMismatchError(f"{record.file}: the target must be (slices, H, W) like the k-space")
        arrays = volume.extra_arrays
        needed = ["sensitivity_maps"] + (["segmentation"] if wants_labels else [])
        needed += ["lesion", "lesion_mask"] if wants_lesions else []
        missing = [name for name in needed if name not in arrays]
        if missing:
            raise InvalidInputError(f"{record.file} lacks {missing} (task {info.task!r})")
        columns["kspace"].append(volume.kspace)
        columns["target"].append(volume.reconstruction_rss)
        columns["maps"].append(np.broadcast_to(arrays["sensitivity_maps"], volume.kspace.shape))
        for name in ("segmentation", "lesion", "lesion_mask"):
            if name in needed:
                columns[name].append(np.asarray(arrays[name], dtype=np.uint8))
        columns["volume"].append(np.full(slices, number, dtype=np.int64))
        columns["slice"].append(np.arange(slices, dtype=np.int64))
    if not records:
        raise NotFoundError(f"split {split!r} of {folder} holds no volume")
    return TaskSplit(
        info=info,
        split=split,
        kspace=np.concatenate(columns["kspace"]).astype(np.complex64, copy=False),
        target=np.concatenate(columns["target"]).astype(np.float32, copy=False),
        sensitivity_maps=np.concatenate(columns["maps"]).astype(np.complex64, copy=False),
        segmentation=_as_uint8(_stack(columns["segmentation"], "segmentation", wants_labels)),
        lesion=_as_uint8(_stack(columns["lesion"], "lesion", wants_lesions)),
        lesion_mask=_as_uint8(_stack(columns["lesion_mask"], "lesion_mask", wants_lesions)),
        volume=np.concatenate(columns["volume"]),
        slice_index=np.concatenate(columns["slice"]),
        volume_names=tuple(record.name for record in records),
        subjects=tuple(record.subject for record in records),
    )


def _as_uint8(array: NDArray[np.generic] | None) -> NDArray[np.uint8] | None:
    return None if array is None else np.asarray(array, dtype=np.uint8)
