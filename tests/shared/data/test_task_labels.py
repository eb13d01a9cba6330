"""Task data on synthetic anatomy: tissue model, label slicing, lesions; tasks leave the simulation alone."""

from __future__ import annotations

import numpy as np
import pytest

from kadapt.data.anatomy import Anatomy
from kadapt.data.labels import (
    BACKGROUND,
    CSF,
    GM,
    WM,
    LabelledAnatomy,
    kmeans_1d,
    labels_from_maps,
    tissue_model_maps,
)
from kadapt.data.lesions import LesionSettings, draw_lesions, ellipse_weight
from kadapt.data.simulator import SimulationSettings, simulate_volume
from kadapt.data.task_sim import require_labelled, simulate_task_volume
from kadapt.data.tasks import parse_task
from kadapt.errors import InvalidInputError

from .conftest import ellipsoid_intensity, synthetic_anatomy

SETTINGS = SimulationSettings(size=48, coils=3, slices=2)


@pytest.fixture(scope="module")
def labelled() -> LabelledAnatomy:
    """Nested ellipsoids as a skull-stripped brain (0 outside), labelled by the 3-class tissue model."""
    maps, _ = tissue_model_maps(ellipsoid_intensity((56, 60, 52)))
    labels = labels_from_maps(maps)
    names = ("csf", "gm", "wm", "fat")
    return LabelledAnatomy("synthetic-brain", "synthetic", maps, names, (2.0, 2.0, 2.0), None, labels, "test")


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_kmeans_finds_three_separated_clusters() -> None:
    values = np.concatenate([rng(0).normal(mean, 1.0, 2000) for mean in (10.0, 50.0, 90.0)])
    np.testing.assert_allclose(kmeans_1d(values), [10.0, 50.0, 90.0], atol=0.2)


def test_tissue_model_is_a_partition_inside_the_brain(labelled: LabelledAnatomy) -> None:
    intensity = ellipsoid_intensity((56, 60, 52))
    maps, means = tissue_model_maps(intensity)
    assert np.all(np.diff(means) > 0)
    inside = intensity > 0
    np.testing.assert_allclose(maps[:3].sum(axis=0)[inside], 1.0, atol=1e-6)
    assert not maps[:, ~inside].any()
    assert not maps[3].any()
    # Voxel labels: background exactly outside; inside, the class whose mean is nearest the intensity.
    nearest = 1 + np.argmin(np.abs(intensity[inside][:, None] - means[None]), axis=1)
    assert np.all(labelled.labels[~inside] == BACKGROUND)
    assert np.mean(labelled.labels[inside] == nearest) > 0.999


@pytest.mark.parametrize("seed", range(6))
def test_labels_follow_the_image(labelled: LabelledAnatomy, seed: int) -> None:
    made = simulate_task_volume(labelled, SETTINGS, rng(seed), "segmentation")
    labels, target = made.segmentation, made.sim.target
    assert labels.shape == target.shape == (2, 48, 48)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) == {BACKGROUND, CSF, GM, WM}
    peak = float(target.max())
    # Labels sit inside the head: tissue pixels are lit, background pixels (nearly all) dark.
    assert np.mean(target[labels > 0] > 0.02 * peak) > 0.98
    assert target[labels == BACKGROUND].mean() < 0.1 * target[labels > 0].mean()
    mean = {k: float(target[labels == k].mean()) for k in (CSF, GM, WM)}
    if made.sim.contrast == "T1W":
        assert mean[WM] > mean[GM] > mean[CSF]
    if made.sim.contrast == "T2W":
        assert mean[CSF] > mean[GM] > mean[WM]


def test_the_seeds_above_cover_t1_and_t2(labelled: LabelledAnatomy) -> None:
    contrasts = {
        simulate_task_volume(labelled, SETTINGS, rng(s), "segmentation").sim.contrast for s in range(6)
    }
    assert {"T1W", "T2W"} <= contrasts


def test_a_task_does_not_change_the_simulation(labelled: LabelledAnatomy) -> None:
    plain = simulate_volume(labelled, SETTINGS, rng(7))
    made = simulate_task_volume(labelled, SETTINGS, rng(7), "segmentation")
    np.testing.assert_array_equal(made.sim.kspace, plain.kspace)
    never = simulate_task_volume(labelled, SETTINGS, rng(7), "both", rng(1), LesionSettings(probability=0.0))
    assert never.lesions is not None
    assert not never.lesions.present.any()
    np.testing.assert_array_equal(never.sim.kspace, plain.kspace)


def test_lesion_labels_match_the_inserted_lesions(labelled: LabelledAnatomy) -> None:
    plain = simulate_task_volume(labelled, SETTINGS, rng(3), "segmentation")
    made = simulate_task_volume(
        labelled, SETTINGS, rng(3), "classification", rng(11), LesionSettings(probability=1.0)
    )
    lesions = made.lesions
    assert lesions is not None
    assert lesions.present.tolist() == [1, 1]
    for index in range(2):
        mask = lesions.mask[index].astype(bool)
        assert mask.any()
        assert np.all(made.segmentation[index][mask] > 0)
        untouched = lesions.modulation[index] == 1.0
        np.testing.assert_array_equal(made.sim.target[index][untouched], plain.sim.target[index][untouched])
        full = lesions.modulation[index] == lesions.factor[index]
        ratio = made.sim.target[index][full] / plain.sim.target[index][full]
        np.testing.assert_allclose(ratio, lesions.factor[index], rtol=1e-4)
    assert made.sim.noise_std == pytest.approx(plain.sim.noise_std, rel=1e-5)


def test_lesions_are_about_half_of_the_slices_and_deterministic() -> None:
    segmentation = np.full((400, 32, 32), WM, dtype=np.uint8)
    first = draw_lesions(segmentation, LesionSettings(), rng(5))
    again = draw_lesions(segmentation, LesionSettings(), rng(5))
    np.testing.assert_array_equal(first.modulation, again.modulation)
    assert 0.4 < first.present.mean() < 0.6
    assert np.array_equal(first.present.astype(bool), first.mask.any(axis=(1, 2)))
    dark = first.factor[first.present == 1] < 1
    assert 0.3 < dark.mean() < 0.7
    empty = draw_lesions(np.zeros((4, 32, 32), dtype=np.uint8), LesionSettings(probability=1.0), rng(5))
    assert not empty.present.any()
    assert np.all(empty.modulation == 1.0)


def test_ellipse_weight_is_one_inside_and_zero_outside() -> None:
    weight = ellipse_weight(32, 32, (16.0, 16.0), (6.0, 3.0), 0.0)
    assert weight[16, 16] == 1.0
    assert weight[0, 0] == 0.0
    assert weight[16 + 8, 16] == 0.0
    assert weight[16 + 5, 16] == 1.0


def test_task_inputs_are_checked() -> None:
    with pytest.raises(InvalidInputError):
        parse_task("detection")
    plain: Anatomy = synthetic_anatomy("plain", "p", (32, 32, 32), None)
    with pytest.raises(InvalidInputError):
        require_labelled(plain)
    with pytest.raises(InvalidInputError):
        LesionSettings(dark_factor=(0.5, 1.5))
