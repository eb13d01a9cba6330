"""The method registry: one contract for every registered method, and the bundle fallback rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kadapt.errors import InvalidInputError, UnknownReconMethodError
from kadapt.recon.domain.methods import (
    FALLBACK_METHOD,
    MethodRegistry,
    ReconMethod,
    default_registry,
    repository_bundle_lookup,
)

REGISTRY = default_registry()


@pytest.mark.parametrize("name", REGISTRY.names())
def test_every_method_honours_the_contract(name: str, phantom: Any, vd_mask: Any) -> None:
    """(slice, frame, coil, H, W) + (slice, frame, W) -> finite, non-negative float32 (slice, frame, H, W),
    deterministic."""
    mask = vd_mask(64, 4.0, 12, np.random.default_rng(0), leading=(1, 1))
    kspace = phantom.kspace * mask[:, :, None, None, :]
    method = REGISTRY.get(name)
    first = method.run(kspace, mask, 12)
    assert first.shape == (1, 1, 64, 64)
    assert first.dtype == np.float32
    assert np.isfinite(first).all()
    assert (first >= 0).all()
    np.testing.assert_array_equal(method.run(kspace, mask, 12), first)
    assert method.description
    assert method.kind == "classic"


def test_the_four_classic_methods_are_registered_with_cg_sense_as_fallback() -> None:
    assert REGISTRY.names() == ["zero-filled", "sense", "cg-sense", "l1-wavelet"]
    assert REGISTRY.fallback == FALLBACK_METHOD == "cg-sense"
    choice = REGISTRY.choose("l1-wavelet")
    assert (choice.method.name, choice.fallback_reason) == ("l1-wavelet", None)


def _write_bundle(repository: Path, name: str, version: str) -> None:
    folder = repository / name / version
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text('{"kind": "modl"}')


def test_bundle_names_fall_back_to_cg_sense_with_a_reason(tmp_path: Path) -> None:
    _write_bundle(tmp_path, "modl-knee", "1")
    registry = default_registry(tmp_path)
    for requested in ("modl-knee", "modl-knee/1"):
        choice = registry.choose(requested)
        assert choice.requested == requested
        assert choice.method.name == "cg-sense"
        assert choice.fallback_reason is not None
        assert repr(requested) in choice.fallback_reason


@pytest.mark.parametrize(
    "name", ["modl-knee/2", "unet", "../modl-knee", "/etc", "modl-knee/../modl-knee", ""]
)
def test_names_that_are_neither_methods_nor_bundles_are_unknown(tmp_path: Path, name: str) -> None:
    _write_bundle(tmp_path, "modl-knee", "1")
    (tmp_path / "unet").mkdir()  # a folder without any manifest is not a bundle
    with pytest.raises(UnknownReconMethodError) as caught:
        default_registry(tmp_path).choose(name)
    assert caught.value.to_problem()["method"] == name
    assert repository_bundle_lookup(tmp_path)(name) is False


def test_registration_is_unique() -> None:
    registry = MethodRegistry()
    method = ReconMethod("custom", "test", "classic", lambda kspace, mask, num_acs: kspace)
    registry.register(method)
    with pytest.raises(InvalidInputError, match="already registered"):
        registry.register(method)
    with pytest.raises(UnknownReconMethodError, match="'other'"):
        registry.get("other")
