"""``build_cine_dataset``: simulated multi-coil cine volumes (docs/dynamic.md C1; layout in
:mod:`kadapt.data.cine`).

It reuses the static build's source selection, subject split and volume plan
(:mod:`kadapt.data.build`): every subject sits in one split, never neighbouring slices across splits.
Every volume draws the static simulator's choices from ``SeedSequence(seed, spawn_key=(index,))`` (as
the static build) and its motion from ``spawn_key=(index, 2)`` (``(index, 1)`` is the task lesions'), so
one seed gives identical arrays whatever the build order.

The test volumes are also written as MRD raw files (2x readout oversampling), one readout per line and
frame with the ``phase`` counter = frame and the centred ACS lines of every frame flagged
``ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING``, which the replay client streams like the static test files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from kadapt.data.anatomy import AnatomySource
from kadapt.data.build import (
    PlannedVolume,
    check_minimums,
    code_version,
    count_splits,
    plan_volumes,
    prepare_output,
    select_sources,
    summarise_sources,
    volume_record,
    write_test_mrd,
)
from kadapt.data.cine import CineManifest
from kadapt.data.cine_motion import MOTION_MODEL
from kadapt.data.cine_sim import CineSettings, SimulatedCine, simulate_cine_volume
from kadapt.data.manifest import VolumeRecord, write_manifest
from kadapt.data.simulator import SimulationSettings
from kadapt.errors import InvalidInputError
from kadapt.mrd.header import make_header

DEFAULT_CINE_VOLUMES = 18  # 12 train, 2 val, 4 test with plan_volumes' fractions (48 / 8 / 16 slices)
MOTION_SEED_KEY = 2
CineProgress = Callable[[int, int, VolumeRecord], None]


def _write_cine(
    out: Path, planned: PlannedVolume, sim: SimulatedCine, seed: int, num_acs: int, oversampling: int
) -> VolumeRecord:
    """Write one volume's ``.h5`` (and its MRD file for the test split); returns its manifest record."""
    slices, frames, coils, height, width = sim.kspace.shape
    fov = (sim.fov_mm, sim.fov_mm, max(sim.slice_spacing_mm, 0.1))
    header = make_header(
        readout=height,
        width=width,
        recon_readout=height,
        slices=slices,
        frames=frames,
        coils=coils,
        fov_mm=fov,
    )
    attrs: dict[str, str | int | float] = {
        "acquisition": f"SIM_CINE_{sim.contrast}",
        "patient_id": planned.source.subject,
        "max": float(sim.rss.max()),
        "norm": float(np.linalg.norm(sim.rss)),
        "source": planned.source.name,
        "subject": planned.source.subject,
        "contrast": sim.contrast,
        "orientation": sim.orientation,
        "snr": sim.snr,
        "noise_std": sim.noise_std,
        "seed": seed,
        "seed_key": planned.index,
        "frames": frames,
        "num_acs": num_acs,
        "motion": sim.motion.describe(),
    }
    file = f"{planned.split}/{planned.name}.h5"
    with h5py.File(out / file, "w") as handle:
        handle.create_dataset("kspace", data=sim.kspace)
        handle.create_dataset("reconstruction_rss", data=sim.rss)
        handle.create_dataset("ismrmrd_header", data=np.bytes_(header.encode("utf-8")))
        handle.create_dataset("sensitivity_maps", data=sim.sensitivities)
        handle.create_dataset("noise_covariance", data=sim.noise_covariance)
        for name, value in attrs.items():
            handle.attrs[name] = value
    mrd_file = write_test_mrd(out, planned, sim.kspace, num_acs, oversampling, fov)
    return volume_record(planned, file, sim, sim.kspace.shape, mrd_file)


def build_cine_dataset(
    out: Path,
    *,
    frames: int = 8,
    n_volumes: int = DEFAULT_CINE_VOLUMES,
    size: int = 96,
    coils: int = 8,
    slices_per_volume: int = 4,
    num_acs: int = 4,
    seed: int = 0,
    progress: CineProgress | None = None,
    mrd_readout_oversampling: int = 2,
    sources: Sequence[AnatomySource] | None = None,
    overwrite: bool = False,
) -> CineManifest:
    """Simulate ``n_volumes`` cine volumes of k-space ``(slices_per_volume, frames, coils, size, size)``.

    ``num_acs`` is the centred ACS block flagged in every frame of the MRD files (docs/dynamic.md C1: 4 lines,
    seed 004's 4 % of 96). ``progress(done, total, record)`` is called after each volume; ``sources``
    restricts the anatomy (default: every installed source fine enough for ``size``). An existing dataset
    in ``out`` raises InvalidStateError unless ``overwrite``. Returns the written manifest.
    """
    check_minimums(
        frames=(frames, 2),
        size=(size, 32),
        coils=(coils, 1),
        slices_per_volume=(slices_per_volume, 1),
        n_volumes=(n_volumes, 3),
        mrd_readout_oversampling=(mrd_readout_oversampling, 1),
        seed=(seed, 0),
    )
    if not 1 <= num_acs <= size:
        raise InvalidInputError(f"num_acs={num_acs} must be within 1..size={size}")
    used, skipped = select_sources(size, sources)
    plan = plan_volumes(used, n_volumes)
    out = Path(out)
    prepare_output(out, overwrite)
    settings = CineSettings(SimulationSettings(size=size, coils=coils, slices=slices_per_volume), frames)
    records: dict[int, VolumeRecord] = {}
    # One anatomy in memory at a time: volumes are simulated source by source.
    for source in used:
        mine = [planned for planned in plan if planned.source is source]
        if not mine:
            continue
        anatomy = source.load(source.locate() or [])
        for planned in mine:
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(planned.index,)))
            motion_rng = np.random.default_rng(
                np.random.SeedSequence(seed, spawn_key=(planned.index, MOTION_SEED_KEY))
            )
            sim = simulate_cine_volume(anatomy, settings, rng, motion_rng)
            records[planned.index] = _write_cine(out, planned, sim, seed, num_acs, mrd_readout_oversampling)
            if progress is not None:
                progress(len(records), len(plan), records[planned.index])
        del anatomy
    volumes = [records[index] for index in sorted(records)]
    manifest = CineManifest(
        format_version=1,
        kind="kadapt-simulated",
        seed=seed,
        size=size,
        coils=coils,
        slices_per_volume=slices_per_volume,
        mrd_num_acs=num_acs,
        mrd_readout_oversampling=mrd_readout_oversampling,
        sources=summarise_sources(used, volumes, skipped),
        skipped_sources=skipped,
        volumes=volumes,
        counts=count_splits(volumes),
        code_version=code_version(),
        frames=frames,
        num_acs=num_acs,
        motion_model=MOTION_MODEL,
    )
    write_manifest(out, manifest)
    return manifest
