"""Anatomy: tissue maps from intensities and GM/WM maps; every installed package source loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kadapt.data.anatomy import (
    TISSUE_CLASSES,
    Anatomy,
    AnatomySource,
    probabilistic_tissue_maps,
    quantile_tissue_maps,
)
from kadapt.data.build import select_sources
from kadapt.data.sources import anatomy_sources
from kadapt.errors import GeometryMismatchError, InvalidInputError

from .conftest import ellipsoid_intensity


def test_quantile_maps_are_a_partition_ordered_by_brightness() -> None:
    intensity = ellipsoid_intensity((40, 40, 40))
    maps = quantile_tissue_maps(intensity)
    assert maps.shape == (TISSUE_CLASSES, 40, 40, 40)
    assert maps.dtype == np.float32
    total = maps.sum(axis=0)
    assert maps.min() >= 0.0
    assert total.max() <= 1.0 + 1e-5
    assert np.all(total[intensity == 0] == 0.0)
    # The mean class index rises with intensity: classes keep the source's brightness order.
    classes = np.tensordot(np.arange(TISSUE_CLASSES), maps, axes=1)
    inside = total > 0.99
    order = np.argsort(intensity[inside])
    assert np.all(np.diff(classes[inside][order]) >= -1e-4)


def test_probabilistic_maps_use_grey_and_white_matter() -> None:
    t1 = np.zeros((10, 10, 10), dtype=np.float32)
    t1[2:8, 2:8, 2:8] = 100.0
    grey = np.zeros_like(t1)
    grey[2:8, 2:8, 2:5] = 0.7
    white = np.zeros_like(t1)
    white[2:8, 2:8, 5:8] = 0.9
    maps = probabilistic_tissue_maps(t1, grey, white)
    assert maps[1, 4, 4, 3] == pytest.approx(0.7)
    assert maps[2, 4, 4, 6] == pytest.approx(0.9)
    assert maps[0, 4, 4, 3] == pytest.approx(0.3)
    assert maps[:, 0, 0, 0].sum() == 0.0
    assert np.all(maps[3] == 0.0)
    with pytest.raises(GeometryMismatchError, match=r"\(9, 10, 10\)"):
        probabilistic_tissue_maps(t1, grey[:9], white)


def test_anatomy_validates_its_maps() -> None:
    with pytest.raises(GeometryMismatchError, match=r"\(3, 4, 4, 4\)"):
        Anatomy("x", "x", np.zeros((3, 4, 4, 4), np.float32), ("a",), (1.0, 1.0, 1.0), None)
    with pytest.raises(InvalidInputError, match="slab_axis=5"):
        Anatomy("x", "x", np.zeros((4, 4, 4, 4), np.float32), ("a",), (1.0, 1.0, 1.0), 5)
    with pytest.raises(InvalidInputError, match="empty"):
        quantile_tissue_maps(np.zeros((4, 4, 4)))


def test_missing_sources_are_reported_and_skipped(tmp_path: Path) -> None:
    def never(files: list[Path]) -> Anatomy:
        raise AssertionError("a missing source must not be loaded")

    absent = AnatomySource("absent", "s1", "not-a-package", "d", "l", 128, lambda: None, never)
    gone = AnatomySource("gone", "s2", "pkg", "d", "l", 128, lambda: [tmp_path / "gone.nii.gz"], never)
    coarse = AnatomySource("coarse", "s3", "pkg", "d", "l", 20, lambda: [], never)
    assert absent.missing_reason() == "not-a-package is not installed"
    assert "gone.nii.gz" in (gone.missing_reason() or "")
    used, skipped = select_sources(64, [absent, gone, coarse])
    assert used == []
    reasons = {item.name: item.reason for item in skipped}
    assert set(reasons) == {"absent", "gone", "coarse"}
    assert "20 < size/2 = 32" in reasons["coarse"]


def test_every_installed_source_loads_with_its_declared_matrix() -> None:
    installed = [source for source in anatomy_sources() if source.missing_reason() is None]
    # nilearn, pydicom-data and nibabel are dependencies of kadapt: at least those load everywhere.
    assert {"nilearn-mni152", "pydicom-shoulder", "pydicom-abdomen", "nibabel-anatomical"} <= {
        source.name for source in installed
    }
    for source in installed:
        anatomy = source.load(source.locate() or [])
        assert anatomy.source == source.name
        assert anatomy.subject == source.subject
        assert anatomy.in_plane_matrix == source.matrix, source.name
        maps = anatomy.tissue_maps
        assert maps.shape[0] == TISSUE_CLASSES
        assert maps.dtype == np.float32
        assert maps.min() >= 0.0, source.name
        assert maps.sum(axis=0).max() <= 1.0 + 1e-4, source.name
        low, high = anatomy.foreground_box_mm()
        assert np.all(high > low), source.name
        assert source.licence
        assert source.description
