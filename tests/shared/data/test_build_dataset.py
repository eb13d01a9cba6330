"""build_dataset: layout, manifest, subject-disjoint splits, readable fastMRI and MRD files, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kadapt.data.anatomy import AnatomySource
from kadapt.data.build import assign_splits, build_dataset, plan_volumes
from kadapt.data.manifest import SPLITS, load_manifest
from kadapt.errors import InvalidInputError, InvalidStateError, NotFoundError
from kadapt.fastmri.files import read_fastmri
from kadapt.mrd.assemble import assemble_kspace
from kadapt.mrd.files import read_mrd
from kadapt.mrd.header import parse_header


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, int, str]]]:
    """A tiny build from the installed package anatomy (size 64, 4 coils, 2 slices, 4 volumes)."""
    out = tmp_path_factory.mktemp("dataset")
    calls: list[tuple[int, int, str]] = []
    build_dataset(
        out,
        n_volumes=4,
        size=64,
        coils=4,
        slices_per_volume=2,
        seed=3,
        progress=lambda done, total, record: calls.append((done, total, record.name)),
    )
    return out, calls


def test_manifest_is_valid_and_describes_the_files(
    real_dataset: tuple[Path, list[tuple[int, int, str]]],
) -> None:
    out, calls = real_dataset
    manifest = load_manifest(out)
    assert manifest == load_manifest(out / "manifest.json")
    assert (manifest.size, manifest.coils, manifest.slices_per_volume, manifest.seed) == (64, 4, 2, 3)
    assert len(manifest.volumes) == 4
    assert [c[0] for c in calls] == [1, 2, 3, 4]
    assert sum(count.volumes for count in manifest.counts.values()) == 4
    assert all(manifest.counts[split].volumes >= 1 for split in SPLITS)
    assert manifest.code_version.startswith("kadapt ")
    used = {source.name for source in manifest.sources}
    assert used == {volume.source for volume in manifest.volumes}
    assert all(source.licence for source in manifest.sources)
    colin = [s for s in manifest.sources if s.subject == "colin27"]
    assert all("McGill" in s.licence for s in colin)  # MNI's notice travels with Colin27
    for volume in manifest.volumes:
        assert (out / volume.file).is_file()
        assert (volume.mrd_file is not None) == (volume.split == "test")


def test_splits_are_disjoint_by_subject(real_dataset: tuple[Path, list[tuple[int, int, str]]]) -> None:
    manifest = load_manifest(real_dataset[0])
    subjects = {split: {v.subject for v in manifest.volumes_in(split)} for split in SPLITS}
    assert not subjects["train"] & subjects["val"]
    assert not subjects["train"] & subjects["test"]
    assert not subjects["val"] & subjects["test"]
    for source in manifest.sources:
        assert {v.split for v in manifest.volumes if v.source == source.name} == {source.split}


def test_fastmri_and_mrd_files_are_readable(real_dataset: tuple[Path, list[tuple[int, int, str]]]) -> None:
    out = real_dataset[0]
    manifest = load_manifest(out)
    for record in manifest.volumes:
        volume = read_fastmri(out / record.file)
        assert volume.kspace.shape == (2, 4, 64, 64)
        assert volume.reconstruction_rss is not None
        assert volume.reconstruction_rss.shape == (2, 64, 64)
        assert volume.attrs["patient_id"] == record.subject
        assert volume.extra_arrays["sensitivity_maps"].shape == (4, 64, 64)
        assert parse_header(volume.header_xml).width == 64
        if record.mrd_file is None:
            continue
        mrd = read_mrd(out / record.mrd_file)
        info = parse_header(mrd.header_xml)
        assert info.encoded_readout == 64 * manifest.mrd_readout_oversampling
        assembled = assemble_kspace(mrd, info)
        assert assembled.kspace.shape == (2, 1, 4, 64, 64)
        scale = float(np.abs(volume.kspace).max())
        np.testing.assert_allclose(assembled.kspace[:, 0], volume.kspace, atol=1e-4 * scale)
        assert int(assembled.calibration_lines.sum()) == manifest.mrd_num_acs


def test_same_seed_gives_identical_kspace(tmp_path: Path, synthetic_sources: list[AnatomySource]) -> None:
    def build(folder: str, seed: int) -> list[bytes]:
        out = tmp_path / folder
        manifest = build_dataset(
            out, n_volumes=4, size=32, coils=2, slices_per_volume=2, seed=seed, sources=synthetic_sources
        )
        return [read_fastmri(out / v.file).kspace.tobytes() for v in manifest.volumes]

    first, again, other = build("a", 5), build("b", 5), build("c", 6)
    assert first == again
    assert all(x != y for x, y in zip(first, other, strict=True))


def test_existing_dataset_needs_overwrite(tmp_path: Path, synthetic_sources: list[AnatomySource]) -> None:
    def build(seed: int, overwrite: bool = False):
        return build_dataset(
            tmp_path,
            n_volumes=3,
            size=32,
            coils=2,
            slices_per_volume=1,
            seed=seed,
            sources=synthetic_sources,
            overwrite=overwrite,
        )

    build(1)
    with pytest.raises(InvalidStateError, match="overwrite"):
        build(2)
    manifest = build(2, overwrite=True)
    assert manifest.seed == 2
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.h5"))
    assert files == sorted(
        [v.file for v in manifest.volumes] + [v.mrd_file for v in manifest.volumes if v.mrd_file]
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": 16}, "size=16"),
        ({"coils": 0}, "coils=0"),
        ({"n_volumes": 2}, "n_volumes=2"),
        ({"slices_per_volume": 0}, "slices_per_volume=0"),
        ({"seed": -1}, "seed=-1"),
        ({"num_acs": 0}, "num_acs=0"),
    ],
)
def test_arguments_are_validated(tmp_path: Path, options: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        build_dataset(tmp_path, **options)
    assert not (tmp_path / "manifest.json").exists()


def test_split_assignment_prefers_colin27_and_keeps_every_split_filled() -> None:
    splits = assign_splits(["mni152", "colin27", "inia19-macaque", "pydicom-shoulder", "pydicom-abdomen"])
    assert splits == {
        "mni152": "train",
        "colin27": "test",
        "inia19-macaque": "val",
        "pydicom-shoulder": "train",
        "pydicom-abdomen": "test",
    }
    three = assign_splits(["colin27", "pydicom-abdomen", "mni152"])
    assert sorted(three.values()) == ["test", "train", "val"]
    plain = assign_splits(["a", "b", "c", "d"])
    assert plain == {"a": "train", "b": "train", "c": "val", "d": "test"}
    with pytest.raises(InvalidInputError, match="at least 3 subjects"):
        assign_splits(["a", "b", "b"])


def test_plan_deals_volumes_over_subjects(synthetic_sources: list[AnatomySource]) -> None:
    plan = plan_volumes(synthetic_sources, 8)
    assert [p.index for p in plan] == list(range(8))
    assert {p.split for p in plan} == set(SPLITS)
    assert len({p.name for p in plan}) == 8


def test_missing_manifest_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="not a valid dataset manifest"):
        load_manifest(tmp_path)
