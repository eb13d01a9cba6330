"""The simulator with task labels (issue 8): plan the slices, cut the labels, insert lesions, render.

:func:`simulate_task_volume` runs the same steps as :func:`kadapt.data.simulator.simulate_volume`, in the
same order on the same Generator (``plan_slices`` then ``render_volume``), and in between cuts the voxel
labels along the planned slices and draws the lesions from a *second* Generator: a task volume's contrast,
coils and noise are those its seed gives without a task, and lesion draws never shift them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from kadapt.data.anatomy import Anatomy
from kadapt.data.labels import LABEL_NAMES, LabelledAnatomy, label_slices
from kadapt.data.lesions import Lesions, LesionSettings, draw_lesions
from kadapt.data.manifest import SPLITS, DatasetManifest
from kadapt.data.simulator import SimulatedVolume, SimulationSettings, plan_slices, render_volume
from kadapt.data.tasks import (
    LesionRecord,
    TaskCount,
    TaskInfo,
    TaskKind,
    TaskSubject,
    has_lesions,
    has_segmentation,
    write_task_info,
)
from kadapt.errors import InvalidInputError

# spawn_key suffix of the lesion stream: SeedSequence(seed, spawn_key=(volume_index, LESION_STREAM)).
LESION_STREAM = 1


@dataclass(frozen=True)
class TaskVolume:
    """A simulated volume with ``segmentation`` uint8 ``(slices, H, W)`` (always cut; stored when the task
    asks) and its ``lesions`` (None for the segmentation task)."""

    sim: SimulatedVolume
    segmentation: NDArray[np.uint8]
    lesions: Lesions | None


def require_labelled(anatomy: Anatomy) -> LabelledAnatomy:
    """``anatomy`` if it carries labels, else :class:`~kadapt.errors.InvalidInputError`."""
    if not isinstance(anatomy, LabelledAnatomy):
        raise InvalidInputError(
            f"source {anatomy.source} has no tissue labels; task data needs kadapt.data.task_sources"
        )
    return anatomy


def lesion_rng(seed: int, volume_index: int) -> np.random.Generator:
    """The lesion stream of one volume, independent of its simulation stream ``spawn_key=(index,)``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(volume_index, LESION_STREAM)))


def simulate_task_volume(
    anatomy: LabelledAnatomy,
    settings: SimulationSettings,
    rng: np.random.Generator,
    task: TaskKind,
    lesion_generator: np.random.Generator | None = None,
    lesion_settings: LesionSettings | None = None,
) -> TaskVolume:
    """One volume with labels cut along its slices and, for ``classification`` / ``both``, lesions drawn
    from ``lesion_generator`` (required then) with ``lesion_settings`` (default :class:`LesionSettings`)."""
    geometry = plan_slices(anatomy, settings, rng)
    segmentation = label_slices(anatomy.labels, geometry, settings.supersampling)
    lesions = None
    if has_lesions(task):
        if lesion_generator is None:
            raise InvalidInputError(f"task {task!r} needs a lesion Generator")
        lesions = draw_lesions(segmentation, lesion_settings or LesionSettings(), lesion_generator)
    modulation = None if lesions is None else lesions.modulation
    sim = render_volume(anatomy, geometry, settings, rng, modulation)
    return TaskVolume(sim, segmentation, lesions)


def task_arrays(volume: TaskVolume, task: TaskKind) -> dict[str, NDArray[np.uint8]]:
    """The datasets a task adds to a fastMRI file: ``segmentation``, ``lesion``, ``lesion_mask``."""
    arrays: dict[str, NDArray[np.uint8]] = {}
    if has_segmentation(task):
        arrays["segmentation"] = volume.segmentation
    if volume.lesions is not None:
        arrays["lesion"] = volume.lesions.present
        arrays["lesion_mask"] = volume.lesions.mask
    return arrays


def task_attrs(task: TaskKind) -> dict[str, str]:
    """File attributes naming the task and the label classes (so a file explains itself)."""
    return {"task": task, "label_names": ",".join(LABEL_NAMES)}


def lesion_record(settings: LesionSettings) -> LesionRecord:
    return LesionRecord(
        probability=settings.probability,
        semi_axis_fraction=settings.semi_axis_fraction,
        dark_factor=settings.dark_factor,
        bright_factor=settings.bright_factor,
    )


def write_task_file(
    out: Path,
    task: TaskKind,
    manifest: DatasetManifest,
    label_methods: Mapping[str, str],
    lesion_slices: Mapping[str, int],
    lesions: LesionSettings,
) -> Path:
    """Write ``out/tasks.json``: the task, label classes, each subject's split and label method (by source
    name in ``label_methods``), and per split the slices and lesion slices (by volume name)."""
    counts = {
        split: TaskCount(
            slices=sum(v.slices for v in manifest.volumes_in(split)),
            lesion_slices=sum(lesion_slices.get(v.name, 0) for v in manifest.volumes_in(split)),
        )
        for split in SPLITS
    }
    subjects = [
        TaskSubject(subject=s.subject, source=s.name, split=s.split, label_method=label_methods[s.name])
        for s in manifest.sources
    ]
    info = TaskInfo(
        format_version=1,
        task=task,
        label_names=list(LABEL_NAMES),
        subjects=subjects,
        lesions=lesion_record(lesions) if has_lesions(task) else None,
        counts=counts,
    )
    return write_task_info(out, info)
