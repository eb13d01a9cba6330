"""Task data from the installed brains: subject split, tasks.json, HDF5 round trip, labels vs anatomy."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from kadapt.data.build import build_dataset
from kadapt.data.labels import BACKGROUND, CSF, LABEL_NAMES, WM
from kadapt.data.manifest import SPLITS, load_manifest
from kadapt.data.task_sources import task_sources
from kadapt.data.tasks import load_task_info, load_task_split
from kadapt.errors import NotFoundError

SLICES, SIZE, COILS = 2, 64, 2


@pytest.fixture(scope="module")
def task_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One volume per labelled subject (3 volumes, 64 x 64, 2 coils, 2 slices), task ``both``."""
    missing = [source.missing_reason() for source in task_sources() if source.missing_reason()]
    if missing:
        pytest.skip(f"labelled anatomy not installed: {missing}")
    out = tmp_path_factory.mktemp("task-data")
    build_dataset(out, n_volumes=3, size=SIZE, coils=COILS, slices_per_volume=SLICES, seed=2, task="both")
    return out


def test_split_is_by_subject(task_dataset: Path) -> None:
    info = load_task_info(task_dataset)
    assert {s.subject: s.split for s in info.subjects} == {
        "mni152": "train",
        "inia19-macaque": "val",
        "colin27": "test",
    }
    manifest = load_manifest(task_dataset)
    for split in SPLITS:
        loaded = load_task_split(task_dataset, split)
        assert set(loaded.subjects) == {s.subject for s in info.subjects if s.split == split}
        assert {v.subject for v in manifest.volumes_in(split)} == set(loaded.subjects)
        assert info.counts[split].slices == len(loaded)
        assert loaded.lesion is not None
        assert info.counts[split].lesion_slices == int(loaded.lesion.sum())


def test_hdf5_round_trip(task_dataset: Path) -> None:
    info = load_task_info(task_dataset)
    assert info.task == "both"
    assert info.label_names == list(LABEL_NAMES)
    assert info.lesions is not None
    manifest = load_manifest(task_dataset)
    for split in SPLITS:
        loaded = load_task_split(task_dataset, split)
        assert loaded.segmentation is not None
        assert loaded.lesion is not None
        for number, record in enumerate(manifest.volumes_in(split)):
            with h5py.File(task_dataset / record.file, "r") as file:
                assert file["segmentation"].dtype == np.uint8
                assert file["segmentation"].shape == (SLICES, SIZE, SIZE)
                assert file["lesion"].dtype == np.uint8
                assert file["lesion"].shape == (SLICES,)
                assert file["lesion_mask"].shape == (SLICES, SIZE, SIZE)
                assert file.attrs["task"] == "both"
                rows = loaded.volume == number
                np.testing.assert_array_equal(loaded.segmentation[rows], file["segmentation"][()])
                np.testing.assert_array_equal(loaded.lesion[rows], file["lesion"][()])
                np.testing.assert_array_equal(loaded.kspace[rows], file["kspace"][()])
                np.testing.assert_array_equal(loaded.target[rows], file["reconstruction_rss"][()])
        first = loaded[0]
        assert first.kspace.shape == (COILS, SIZE, SIZE)
        assert first.target.shape == (SIZE, SIZE)
        assert first.lesion in (0, 1)
        assert first.slice_index == 0


def test_labels_align_with_anatomy(task_dataset: Path) -> None:
    manifest = load_manifest(task_dataset)
    for split in SPLITS:
        loaded = load_task_split(task_dataset, split)
        assert loaded.segmentation is not None
        assert loaded.lesion is not None
        assert loaded.lesion_mask is not None
        for number, record in enumerate(manifest.volumes_in(split)):
            rows = loaded.volume == number
            labels, target = loaded.segmentation[rows], loaded.target[rows]
            assert np.isin(labels, (CSF, WM)).any()
            assert target[labels == BACKGROUND].mean() < 0.1 * target[labels > 0].mean()
            csf, wm = target[labels == CSF].mean(), target[labels == WM].mean()
            if record.contrast == "T1W":
                assert wm > 2.0 * csf
            if record.contrast == "T2W":
                assert csf > 1.5 * wm
        # Lesion labels: a slice is positive exactly when it has lesion pixels, all of them inside the head.
        assert np.array_equal(loaded.lesion.astype(bool), loaded.lesion_mask.any(axis=(1, 2)))
        assert np.all(loaded.segmentation[loaded.lesion_mask.astype(bool)] > 0)


def test_a_default_dataset_has_no_task(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        load_task_info(tmp_path)
