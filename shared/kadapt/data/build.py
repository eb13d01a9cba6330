"""``build_dataset``: simulated multi-coil volumes in fastMRI HDF5 (+ MRD raw files for the test split).

Layout of ``out``::

    manifest.json                 DatasetManifest (kadapt.data.manifest)
    train/<name>.h5  val/<name>.h5  test/<name>.h5      fastMRI layout (kadapt.fastmri.files)
    test_mrd/<name>.mrd.h5        ISMRMRD HDF5 raw data of the test volumes (kadapt.mrd.files), readout
                                  oversampled and ACS-flagged like a scanner's, for replay clients

Splits are by subject, never by slice: every subject is assigned to one split (test prefers Colin27 and
the abdomen — one in-distribution brain, one unlike the training anatomy — val the macaque, train the
rest), and all of its volumes (different orientations, contrasts, coils, noise) stay there. Every volume
draws from its own ``SeedSequence(seed, spawn_key=(index,))``, so one seed gives identical arrays whatever
the build order.

With ``task`` (issue 8) the anatomy is the labelled brains of :mod:`kadapt.data.task_sources`, each file
gains the task's label datasets (:mod:`kadapt.data.task_sim`) and ``tasks.json`` describes them
(:mod:`kadapt.data.tasks`); without it nothing differs from the default build.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from kadapt.data.anatomy import AnatomySource
from kadapt.data.lesions import LesionSettings
from kadapt.data.manifest import (
    MANIFEST_NAME,
    SPLITS,
    DatasetManifest,
    SkippedSource,
    SourceRecord,
    Split,
    SplitCount,
    VolumeRecord,
    write_manifest,
)
from kadapt.data.simulator import SimulatedVolume, SimulationSettings, simulate_volume
from kadapt.data.sources import anatomy_sources
from kadapt.data.task_sim import (
    lesion_rng,
    require_labelled,
    simulate_task_volume,
    task_arrays,
    task_attrs,
    write_task_file,
)
from kadapt.data.task_sources import task_sources
from kadapt.data.tasks import TASK_INFO_NAME, TaskKind, has_lesions, parse_task
from kadapt.errors import InvalidInputError, InvalidStateError
from kadapt.fastmri.files import fastmri_volume, write_fastmri
from kadapt.mrd.assemble import kspace_to_acquisitions
from kadapt.mrd.files import write_mrd
from kadapt.mrd.header import make_header

DEFAULT_VOLUMES = 16
TEST_SUBJECTS = ("colin27", "pydicom-abdomen")
VAL_SUBJECTS = ("inia19-macaque",)
TEST_FRACTION = 0.25
VAL_FRACTION = 0.125
BuildProgress = Callable[[int, int, VolumeRecord], None]


@dataclass(frozen=True)
class PlannedVolume:
    """One volume to simulate: its global index (the seed key), name, split and source."""

    index: int
    name: str
    split: Split
    source: AnatomySource


def select_sources(
    size: int, candidates: Sequence[AnatomySource] | None = None
) -> tuple[list[AnatomySource], list[SkippedSource]]:
    """The installed sources fine enough for ``size``, and the skipped ones with the reason.

    A source is skipped when its files are absent or its in-plane matrix is below ``size / 2``: slices
    interpolated more than twofold carry no high spatial frequencies and would teach a sampler that the
    k-space periphery is empty.
    """
    used: list[AnatomySource] = []
    skipped: list[SkippedSource] = []
    for source in anatomy_sources() if candidates is None else candidates:
        reason = source.missing_reason()
        if reason is None and source.matrix < size / 2:
            reason = f"in-plane matrix {source.matrix} < size/2 = {size / 2:g} (too coarse)"
        if reason is None:
            used.append(source)
        else:
            skipped.append(SkippedSource(name=source.name, reason=reason))
    return used, skipped


def assign_splits(subjects: Sequence[str]) -> dict[str, Split]:
    """Subject -> split: preferred test / val subjects where present, the rest train (order preserved).

    Without the preferred ones, test takes the last subject and val the one before it. Needs at least
    three subjects (one per split).
    """
    ordered = list(dict.fromkeys(subjects))
    if len(ordered) < 3:
        raise InvalidInputError(f"need at least 3 subjects for train / val / test, found {ordered}")
    test = [s for s in TEST_SUBJECTS if s in ordered] or [ordered[-1]]
    val = [s for s in VAL_SUBJECTS if s in ordered and s not in test]
    if not val:
        val = [[s for s in ordered if s not in test][-1]]
    if len(test) + len(val) == len(ordered):
        test = test[:1]
    splits: dict[str, Split] = dict.fromkeys(ordered, "train")
    splits.update(dict.fromkeys(val, "val"))
    splits.update(dict.fromkeys(test, "test"))
    return splits


def plan_volumes(sources: Sequence[AnatomySource], n_volumes: int) -> list[PlannedVolume]:
    """Deal ``n_volumes`` over the splits (about 1/4 test, 1/8 val, at least one each), then round-robin
    over each split's subjects and, within a subject, over its sources."""
    splits = assign_splits([source.subject for source in sources])
    test = max(1, round(n_volumes * TEST_FRACTION))
    val = max(1, round(n_volumes * VAL_FRACTION))
    budget: dict[Split, int] = {"train": n_volumes - test - val, "val": val, "test": test}
    plan: list[PlannedVolume] = []
    for split in SPLITS:
        subjects = [s for s in splits if splits[s] == split]
        by_subject = {s: [src for src in sources if src.subject == s] for s in subjects}
        for k in range(budget[split]):
            subject = subjects[k % len(subjects)]
            members = by_subject[subject]
            source = members[(k // len(subjects)) % len(members)]
            index = len(plan)
            plan.append(PlannedVolume(index, f"{index:04d}_{source.name}", split, source))
    return plan


def code_version() -> str:
    """``kadapt <version>`` plus the git commit when run from a checkout."""
    version = f"kadapt {importlib.metadata.version('kadapt')}"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version} ({commit})" if commit else version


def summarise_sources(
    used: Sequence[AnatomySource], volumes: Sequence[VolumeRecord], skipped: list[SkippedSource]
) -> list[SourceRecord]:
    """The manifest's record of every used source that got a volume; the others are appended to
    ``skipped`` with the reason."""
    subject_splits = assign_splits([source.subject for source in used])
    records: list[SourceRecord] = []
    for source in used:
        allotted = sum(1 for v in volumes if v.source == source.name)
        if not allotted:
            reason = f"no volume allotted (n_volumes={len(volumes)} over {len(used)} sources)"
            skipped.append(SkippedSource(name=source.name, reason=reason))
            continue
        records.append(
            SourceRecord(
                name=source.name,
                subject=source.subject,
                package=source.package,
                description=source.description,
                licence=source.licence,
                files=[str(path) for path in source.locate() or []],
                split=subject_splits[source.subject],
                volumes=allotted,
            )
        )
    return records


def count_splits(volumes: Sequence[VolumeRecord]) -> dict[Split, SplitCount]:
    """Volumes, slices and subjects per split."""
    return {
        split: SplitCount(
            volumes=sum(1 for v in volumes if v.split == split),
            slices=sum(v.slices for v in volumes if v.split == split),
            subjects=sorted({v.subject for v in volumes if v.split == split}),
        )
        for split in SPLITS
    }


def check_minimums(**values: tuple[int, int]) -> None:
    """``name=(value, minimum)`` pairs of a build's arguments: InvalidInputError naming the first value
    below its minimum."""
    for name, (value, minimum) in values.items():
        if value < minimum:
            raise InvalidInputError(f"{name}={value} must be >= {minimum}")


class SimulatedSummary(Protocol):
    """What a volume record reads from a simulation (static and cine simulations both have it)."""

    @property
    def contrast(self) -> str: ...
    @property
    def orientation(self) -> str: ...
    @property
    def snr(self) -> float: ...
    @property
    def noise_std(self) -> float: ...
    @property
    def fov_mm(self) -> float: ...
    @property
    def slice_spacing_mm(self) -> float: ...


def write_test_mrd(
    out: Path,
    planned: PlannedVolume,
    kspace: NDArray[np.complex64],
    num_acs: int,
    oversampling: int,
    fov: tuple[float, float, float],
) -> str | None:
    """For a test volume, write ``kspace`` ``(slices, frames, coils, H, W)`` as an MRD raw file under
    ``test_mrd/`` (readout oversampled by ``oversampling``, the ACS flagged in every frame) and return
    its path relative to ``out``; None for other splits."""
    if planned.split != "test":
        return None
    mrd_file = f"test_mrd/{planned.name}.mrd.h5"
    slices, frames, coils, height, width = kspace.shape
    batch = kspace_to_acquisitions(kspace, num_acs=num_acs, readout_oversampling=oversampling)
    mrd_header = make_header(
        readout=height * oversampling,
        width=width,
        recon_readout=height,
        slices=slices,
        frames=frames,
        coils=coils,
        fov_mm=fov,
    )
    write_mrd(out / mrd_file, mrd_header, batch)
    return mrd_file


def volume_record(
    planned: PlannedVolume,
    file: str,
    sim: SimulatedSummary,
    shape: tuple[int, ...],
    mrd_file: str | None,
) -> VolumeRecord:
    """The manifest record of a written volume; ``shape`` is its k-space's ``(slices, ..., coils, H, W)``."""
    return VolumeRecord(
        name=planned.name,
        file=file,
        split=planned.split,
        subject=planned.source.subject,
        source=planned.source.name,
        slices=shape[0],
        height=shape[-2],
        width=shape[-1],
        coils=shape[-3],
        contrast=sim.contrast,
        orientation=sim.orientation,
        snr=sim.snr,
        noise_std=sim.noise_std,
        fov_mm=sim.fov_mm,
        slice_spacing_mm=sim.slice_spacing_mm,
        mrd_file=mrd_file,
    )


def _write_volume(
    out: Path,
    planned: PlannedVolume,
    sim: SimulatedVolume,
    seed: int,
    num_acs: int,
    oversampling: int,
    task_data: tuple[Mapping[str, NDArray[np.uint8]], Mapping[str, str]] | None = None,
) -> VolumeRecord:
    slices, coils, height, width = sim.kspace.shape
    fov = (sim.fov_mm, sim.fov_mm, max(sim.slice_spacing_mm, 0.1))
    header = make_header(
        readout=height, width=width, recon_readout=height, slices=slices, coils=coils, fov_mm=fov
    )
    volume = fastmri_volume(
        sim.kspace,
        header_xml=header,
        acquisition=f"SIM_{sim.contrast}",
        patient_id=planned.source.subject,
        reconstruction_rss=sim.target,
        extra_attrs={
            "source": planned.source.name,
            "subject": planned.source.subject,
            "contrast": sim.contrast,
            "orientation": sim.orientation,
            "snr": sim.snr,
            "noise_std": sim.noise_std,
            "seed": seed,
            "seed_key": planned.index,
            **(task_data[1] if task_data else {}),
        },
        extra_arrays={
            "sensitivity_maps": sim.sensitivities,
            "noise_covariance": sim.noise_covariance,
            **(task_data[0] if task_data else {}),
        },
    )
    file = f"{planned.split}/{planned.name}.h5"
    write_fastmri(out / file, volume)
    mrd_file = write_test_mrd(out, planned, sim.kspace[:, np.newaxis], num_acs, oversampling, fov)
    return volume_record(planned, file, sim, sim.kspace.shape, mrd_file)


def prepare_output(out: Path, overwrite: bool) -> None:
    """Make the split folders; an earlier build (manifest or volume files) is removed only on request."""
    folders = [out / folder for folder in (*SPLITS, "test_mrd")]
    earlier = (out / MANIFEST_NAME).exists() or any(
        folder.is_dir() and any(folder.glob("*.h5")) for folder in folders
    )
    if earlier:
        if not overwrite:
            raise InvalidStateError(f"{out} already holds a dataset; pass overwrite=True to rebuild it")
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        (out / TASK_INFO_NAME).unlink(missing_ok=True)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)


def build_dataset(
    out: Path,
    *,
    n_volumes: int = DEFAULT_VOLUMES,
    size: int = 128,
    coils: int = 8,
    slices_per_volume: int = 8,
    seed: int = 0,
    progress: BuildProgress | None = None,
    num_acs: int | None = None,
    mrd_readout_oversampling: int = 2,
    sources: Sequence[AnatomySource] | None = None,
    overwrite: bool = False,
    task: str | None = None,
    lesion_settings: LesionSettings | None = None,
) -> DatasetManifest:
    """Simulate ``n_volumes`` volumes of k-space ``(slices_per_volume, coils, size, size)`` into ``out``.

    ``progress(done, total, record)`` is called after each volume is written. ``num_acs`` (default
    ``max(8, size // 8)``) is the ACS block flagged in the MRD files. ``sources`` restricts the anatomy
    (default: every installed source fine enough for ``size``). An existing dataset in ``out`` raises
    :class:`~kadapt.errors.InvalidStateError` unless ``overwrite``. Returns the written manifest.

    ``task`` (``segmentation`` | ``classification`` | ``both``): build task data instead — ``sources``
    default to :func:`~kadapt.data.task_sources.task_sources` and must load labelled anatomy; lesions use
    ``lesion_settings`` (default :class:`~kadapt.data.lesions.LesionSettings`); ``tasks.json`` is written.
    """
    check_minimums(
        size=(size, 32),
        coils=(coils, 1),
        slices_per_volume=(slices_per_volume, 1),
        n_volumes=(n_volumes, 3),
        mrd_readout_oversampling=(mrd_readout_oversampling, 1),
        seed=(seed, 0),
    )
    acs = max(8, size // 8) if num_acs is None else num_acs
    if not 1 <= acs <= size:
        raise InvalidInputError(f"num_acs={acs} must be within 1..size={size}")
    kind: TaskKind | None = None if task is None else parse_task(task)
    lesions = lesion_settings or LesionSettings()
    if kind is not None and sources is None:
        sources = task_sources()
    used, skipped = select_sources(size, sources)
    plan = plan_volumes(used, n_volumes)
    out = Path(out)
    prepare_output(out, overwrite)
    settings = SimulationSettings(size=size, coils=coils, slices=slices_per_volume)
    records: dict[int, VolumeRecord] = {}
    label_methods: dict[str, str] = {}
    lesion_slices: dict[str, int] = {}
    # One anatomy in memory at a time: volumes are simulated source by source.
    for source in used:
        mine = [planned for planned in plan if planned.source is source]
        if not mine:
            continue
        files = source.locate() or []
        anatomy = source.load(files)
        for planned in mine:
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(planned.index,)))
            task_data = None
            if kind is None:
                sim = simulate_volume(anatomy, settings, rng)
            else:
                labelled = require_labelled(anatomy)
                label_methods[source.name] = labelled.label_method
                generator = lesion_rng(seed, planned.index) if has_lesions(kind) else None
                made = simulate_task_volume(labelled, settings, rng, kind, generator, lesions)
                sim, task_data = made.sim, (task_arrays(made, kind), task_attrs(kind))
                lesion_slices[planned.name] = 0 if made.lesions is None else int(made.lesions.present.sum())
            records[planned.index] = _write_volume(
                out, planned, sim, seed, acs, mrd_readout_oversampling, task_data
            )
            if progress is not None:
                progress(len(records), len(plan), records[planned.index])
        del anatomy
    volumes = [records[index] for index in sorted(records)]
    source_records = summarise_sources(used, volumes, skipped)
    manifest = DatasetManifest(
        format_version=1,
        kind="kadapt-simulated",
        seed=seed,
        size=size,
        coils=coils,
        slices_per_volume=slices_per_volume,
        mrd_num_acs=acs,
        mrd_readout_oversampling=mrd_readout_oversampling,
        sources=source_records,
        skipped_sources=skipped,
        volumes=volumes,
        counts=count_splits(volumes),
        code_version=code_version(),
    )
    write_manifest(out, manifest)
    if kind is not None:
        write_task_file(out, kind, manifest, label_methods, lesion_slices, lesions)
    return manifest
