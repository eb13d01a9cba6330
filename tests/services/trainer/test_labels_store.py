"""Label files: LabelSet validation, HDF5 round trip, settings hash and the settings-keyed cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from kadapt.errors import InvalidInputError, NotFoundError
from kadapt.masks import make_mask
from kadapt.trainer.labels.store import (
    LabelSet,
    cached_labels,
    data_fingerprint,
    label_path,
    load_labels,
    save_labels,
    settings_hash,
)

WIDTH, R, ACS = 32, 4.0, 4


def _labels(settings: dict[str, Any] | None = None, count: int = 3, seed: int = 0) -> LabelSet:
    rng = np.random.default_rng(seed)
    masks = make_mask("vd-random", width=WIDTH, acceleration=R, num_acs=ACS, rng=rng, batch=count)
    return LabelSet(
        method="icd",
        acceleration=R,
        num_acs=ACS,
        width=WIDTH,
        masks=masks,
        volumes=tuple(f"vol{index // 2}" for index in range(count)),
        slices=np.arange(count, dtype=np.int64) % 2,
        settings=settings or {"sweeps": 2, "loss": {"nrmse": 1.0}, "rng_state": {"state": 2**100 + 7}},
        metrics={"mean_label_loss": 0.1, "loss_per_sweep": [0.2, 0.1]},
        per_slice={"label_loss": rng.random(count), "accepted": np.array([True, False, True][:count])},
    )


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    labels = _labels()
    path = save_labels(tmp_path / "sub" / "labels.h5", labels)
    loaded = load_labels(path)
    assert (loaded.method, loaded.acceleration, loaded.num_acs, loaded.width) == ("icd", R, ACS, WIDTH)
    assert loaded.masks.dtype == np.bool_
    np.testing.assert_array_equal(loaded.masks, labels.masks)
    np.testing.assert_array_equal(loaded.slices, labels.slices)
    assert loaded.volumes == labels.volumes
    assert loaded.settings == labels.settings  # big ints survive the JSON attribute
    assert loaded.metrics == labels.metrics
    assert set(loaded.per_slice) == {"label_loss", "accepted"}
    np.testing.assert_array_equal(loaded.per_slice["label_loss"], labels.per_slice["label_loss"])
    np.testing.assert_array_equal(loaded.per_slice["accepted"], labels.per_slice["accepted"])
    assert loaded.budget == 8
    assert len(loaded) == 3
    assert not list(path.parent.glob(".*.tmp"))  # the temporary file was renamed away


@pytest.mark.parametrize("problem", ["budget", "acs", "method", "volumes", "settings"])
def test_invalid_label_sets_are_refused(problem: str) -> None:
    labels = _labels()
    masks = labels.masks.copy()
    fields: dict[str, Any] = {}
    if problem == "budget":
        masks[0, np.flatnonzero(~masks[0])[0]] = True
        fields["masks"] = masks
    elif problem == "acs":
        row = masks[1]
        row[WIDTH // 2] = False
        row[np.flatnonzero(~row)[0]] = True  # same count, ACS line missing
        fields["masks"] = masks
    elif problem == "method":
        fields["method"] = "greedy"
    elif problem == "volumes":
        fields["volumes"] = ("a",)
    else:
        fields["settings"] = {"not json": object()}
    arguments = {name: getattr(labels, name) for name in LabelSet.__dataclass_fields__} | fields
    with pytest.raises(InvalidInputError):
        LabelSet(**arguments)


def test_settings_hash_ignores_key_order_and_sees_values() -> None:
    first = settings_hash({"a": 1, "b": [1.0, 2.0], "c": {"x": 1, "y": 2}})
    assert first == settings_hash({"c": {"y": 2, "x": 1}, "b": [1.0, 2.0], "a": 1})
    assert first != settings_hash({"a": 1, "b": [1.0, 2.5], "c": {"x": 1, "y": 2}})
    assert len(first) == 16
    assert first.isalnum()


def test_label_path_layout(tmp_path: Path) -> None:
    path = label_path(tmp_path, "train", "mask-backward", 4.0, 8, "0123abcd")
    assert path == tmp_path / "train" / "mask-backward-R4-acs8-0123abcd.h5"
    assert label_path(tmp_path, "val", "icd", 2.5, 4, "ff").name == "icd-R2.5-acs4-ff.h5"
    with pytest.raises(InvalidInputError):
        label_path(tmp_path, "train", "greedy", 4.0, 8, "ff")
    with pytest.raises(InvalidInputError):
        label_path(tmp_path, "../x", "icd", 4.0, 8, "ff")


def test_cache_hits_on_equal_settings_and_misses_on_a_change(tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def generator(settings: dict[str, Any]) -> Any:
        def generate() -> LabelSet:
            calls.append(settings)
            return _labels(settings, seed=len(calls))

        return generate

    settings = {"sweeps": 2, "loss": {"nrmse": 1.0}}
    first, path, hit = cached_labels(tmp_path, "train", "icd", R, ACS, settings, generator(settings))
    assert not hit
    assert path.is_file()
    assert len(calls) == 1
    assert path.name.endswith(f"-{settings_hash(settings)}.h5")
    again, same_path, hit = cached_labels(
        tmp_path, "train", "icd", R, ACS, {"loss": {"nrmse": 1.0}, "sweeps": 2}, generator(settings)
    )
    assert hit
    assert same_path == path
    assert len(calls) == 1
    np.testing.assert_array_equal(again.masks, first.masks)
    changed = {"sweeps": 3, "loss": {"nrmse": 1.0}}
    _other, other_path, hit = cached_labels(tmp_path, "train", "icd", R, ACS, changed, generator(changed))
    assert not hit
    assert other_path != path
    assert len(calls) == 2
    assert load_labels(other_path).settings == changed


def test_cache_refuses_labels_whose_settings_differ_from_the_key(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="other settings"):
        cached_labels(tmp_path, "train", "icd", R, ACS, {"sweeps": 2}, lambda: _labels({"sweeps": 9}))
    assert not list(tmp_path.rglob("*.h5"))


def test_loading_missing_or_foreign_files_fails_with_named_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        load_labels(tmp_path / "absent.h5")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle.attrs["format"] = 1
    with pytest.raises(InvalidInputError, match=r"foreign\.h5"):
        load_labels(foreign)
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(InvalidInputError, match=r"text\.h5"):
        load_labels(tmp_path / "text.h5")


def test_data_fingerprint_sees_names_indices_and_bytes() -> None:
    arrays = [np.ones((2, 4, 4), np.complex64), np.zeros((2, 4, 4), np.complex64)]
    slices = np.array([0, 1], dtype=np.int64)
    base = data_fingerprint(("a", "a"), slices, arrays)
    assert base == data_fingerprint(("a", "a"), slices, [array.copy() for array in arrays])
    assert base != data_fingerprint(("a", "b"), slices, arrays)
    assert base != data_fingerprint(("a", "a"), slices[::-1].copy(), arrays)
    changed = [arrays[0], arrays[1] + 1e-3]
    assert base != data_fingerprint(("a", "a"), slices, changed)
