"""build_cine_dataset and kadapt.data.cine: layout (contract C1), subject split, reader, MRD round trip."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from kadapt.data.anatomy import AnatomySource
from kadapt.data.cine import list_cine, load_cine_manifest, read_cine
from kadapt.data.cine_build import build_cine_dataset
from kadapt.data.manifest import SPLITS
from kadapt.errors import GeometryMismatchError, InvalidInputError, NotFoundError
from kadapt.mrd.assemble import acs_columns, assemble_kspace
from kadapt.mrd.constants import AcquisitionFlag
from kadapt.mrd.files import read_mrd
from kadapt.mrd.header import parse_header

FRAMES, SIZE, COILS, SLICES, ACS = 4, 32, 2, 2, 4


@pytest.fixture(scope="module")
def cine_dataset(tmp_path_factory: pytest.TempPathFactory, synthetic_sources: list[AnatomySource]) -> Path:
    out = tmp_path_factory.mktemp("cine")
    build_cine_dataset(
        out,
        frames=FRAMES,
        n_volumes=4,
        size=SIZE,
        coils=COILS,
        slices_per_volume=SLICES,
        num_acs=ACS,
        seed=2,
        sources=synthetic_sources,
    )
    return out


def test_manifest_and_split_by_subject(cine_dataset: Path) -> None:
    manifest = load_cine_manifest(cine_dataset)
    assert (manifest.frames, manifest.num_acs, manifest.mrd_num_acs) == (FRAMES, ACS, ACS)
    assert (manifest.size, manifest.coils, manifest.slices_per_volume) == (SIZE, COILS, SLICES)
    assert json.loads((cine_dataset / "manifest.json").read_text())["frames"] == FRAMES
    subjects = {split: {v.subject for v in manifest.volumes_in(split)} for split in SPLITS}
    assert all(subjects[split] for split in SPLITS)
    assert not subjects["train"] & subjects["val"]
    assert not subjects["train"] & subjects["test"]
    assert not subjects["val"] & subjects["test"]
    for split in SPLITS:
        listed = list_cine(cine_dataset, split)
        assert [p.relative_to(cine_dataset).as_posix() for p in listed] == sorted(
            v.file for v in manifest.volumes_in(split)
        )
        for path in listed:
            assert read_cine(path).subject in subjects[split]


def test_files_follow_the_contract(cine_dataset: Path) -> None:
    for path in list_cine(cine_dataset, "train") + list_cine(cine_dataset, "test"):
        volume = read_cine(path)
        assert volume.kspace.shape == (SLICES, FRAMES, COILS, SIZE, SIZE)
        assert volume.kspace.dtype == np.complex64
        assert volume.rss.shape == (SLICES, FRAMES, SIZE, SIZE)
        assert volume.rss.dtype == np.float32
        assert volume.sens.shape == (COILS, SIZE, SIZE)
        np.testing.assert_allclose(np.sum(np.abs(volume.sens) ** 2, axis=0), 1.0, atol=1e-5)
        assert (volume.frames, volume.coils, volume.slices) == (FRAMES, COILS, SLICES)
        assert volume.source in path.name
        with h5py.File(path, "r") as file:
            info = parse_header(file["ismrmrd_header"][()])
            attrs = dict(file.attrs)
        assert (info.frames, info.width, info.height) == (FRAMES, SIZE, SIZE)
        assert attrs["frames"] == FRAMES
        assert json.loads(attrs["motion"])["model"].startswith("radial-contraction")
        assert attrs["max"] == pytest.approx(float(volume.rss.max()))
        partial = read_cine(path, slices=slice(1, 2))
        np.testing.assert_array_equal(partial.kspace, volume.kspace[1:2])


def test_mrd_round_trip_has_phase_counter_and_acs_in_every_frame(cine_dataset: Path) -> None:
    manifest = load_cine_manifest(cine_dataset)
    tested = [v for v in manifest.volumes if v.mrd_file is not None]
    assert tested
    assert all(v.split == "test" for v in tested)
    for record in tested:
        assert record.mrd_file is not None
        mrd = read_mrd(cine_dataset / record.mrd_file)
        info = parse_header(mrd.header_xml)
        assert info.frames == FRAMES
        assert info.encoded_readout == SIZE * manifest.mrd_readout_oversampling
        heads = mrd.heads
        phases = heads["idx"]["phase"]
        assert sorted(set(phases.tolist())) == list(range(FRAMES))
        acs_flag = np.uint64(AcquisitionFlag.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING.mask)
        flagged = (heads["flags"] & acs_flag) != 0
        acs_ky = set(np.flatnonzero(acs_columns(SIZE, ACS)).tolist())
        for s in range(SLICES):
            for t in range(FRAMES):
                here = (phases == t) & (heads["idx"]["slice"] == s)
                assert set(heads["idx"]["kspace_encode_step_1"][here & flagged].tolist()) == acs_ky
        assembled = assemble_kspace(mrd, info)
        kspace = read_cine(cine_dataset / record.file).kspace
        assert assembled.kspace.shape == kspace.shape
        scale = float(np.abs(kspace).max())
        np.testing.assert_allclose(assembled.kspace, kspace, atol=1e-4 * scale)
        assert int(assembled.calibration_lines.sum()) == ACS


def test_same_seed_same_bytes(tmp_path: Path, synthetic_sources: list[AnatomySource]) -> None:
    def build(folder: str, seed: int) -> bytes:
        out = tmp_path / folder
        manifest = build_cine_dataset(
            out,
            frames=2,
            n_volumes=3,
            size=32,
            coils=1,
            slices_per_volume=1,
            seed=seed,
            sources=synthetic_sources,
        )
        return b"".join(read_cine(out / v.file).kspace.tobytes() for v in manifest.volumes)

    assert build("a", 1) == build("b", 1)
    assert build("a2", 1) != build("c", 2)


def test_reader_and_builder_errors(tmp_path: Path, synthetic_sources: list[AnatomySource]) -> None:
    with pytest.raises(NotFoundError):
        read_cine(tmp_path / "absent.h5")
    with pytest.raises(NotFoundError):
        list_cine(tmp_path, "train")
    with pytest.raises(InvalidInputError, match="split"):
        list_cine(tmp_path, "holdout")  # type: ignore[arg-type]
    static = tmp_path / "static.h5"
    with h5py.File(static, "w") as file:
        file["kspace"] = np.zeros((1, 2, 8, 8), np.complex64)
        file["reconstruction_rss"] = np.zeros((1, 8, 8), np.float32)
        file["sensitivity_maps"] = np.zeros((2, 8, 8), np.complex64)
    with pytest.raises(GeometryMismatchError, match="frames"):
        read_cine(static)
    with pytest.raises(InvalidInputError, match="frames=1"):
        build_cine_dataset(tmp_path / "x", frames=1, sources=synthetic_sources)
    with pytest.raises(NotFoundError):
        load_cine_manifest(tmp_path)
