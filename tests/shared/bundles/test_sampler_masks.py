"""``kadapt.bundles.SamplerMasks``: the plan a sampler bundle serves, outside the service -- exact budget,
ACS kept, the model's own top-k, deterministic, batched, and typed refusals naming the bad value.
(Parity with the sampler service itself: tests/services/sampler/test_sampler_masks_parity.py.)"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kadapt.bundles import (
    BundleGeometry,
    Manifest,
    TensorSpec,
    load_bundle,
    served_fixed_plan,
    utc_now,
    write_bundle,
)
from kadapt.bundles.sampler_masks import SamplerMasks
from kadapt.errors import (
    BundleError,
    GeometryMismatchError,
    InvalidAccelerationError,
    InvalidInputError,
    NonFiniteDataError,
)
from kadapt.kspace.preprocess import acs_block
from kadapt.masks import acs_lines, acs_mask, line_budget
from kadapt.nn.mnet import MNet, MNetGeometry, randomise_parameters
from kadapt.nn.mnet_bundle import export_mnet_bundle

GEOMETRY = MNetGeometry(width=32, height=16, coils=2, num_acs=4)


def kspace(seed: int, shape: tuple[int, ...] = (2, 16, 32)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@pytest.fixture(scope="module")
def mnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight mnet bundle (W=32, H=16, 2 coils, 4 ACS, R 4 / 2)."""
    repo = tmp_path_factory.mktemp("models")
    model = randomise_parameters(MNet(GEOMETRY, channels=(8, 8), hidden=16), torch.Generator().manual_seed(0))
    bundle = export_mnet_bundle(
        model,
        repo,
        name="mnet-tiny",
        accelerations=(4.0, 2.0),
        training={"description": "UNTRAINED random weights (test)"},
        code_version="test",
    )
    return bundle.path


def fixed_mask_dir(root: Path, scores: np.ndarray, accelerations: tuple[float, ...] = (4.0, 2.0)) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, scores, allow_pickle=False)
    manifest = Manifest(
        name="pop",
        version="1",
        kind="fixed-mask",
        geometry=BundleGeometry(ky=scores.shape[0]),
        accelerations=accelerations,
        num_acs=4,
        outputs=(TensorSpec(name="scores", shape=(scores.shape[0],), dtype=str(scores.dtype)),),
        normalisation="none",
        training={"description": "test pattern"},
        code_version="test",
        created=utc_now(),
    )
    return write_bundle(root, manifest, {"mask.npy": buffer.getvalue()}).path


def test_mnet_mask_is_the_acs_plus_the_models_top_k_free_lines(mnet_dir: Path) -> None:
    masks = SamplerMasks.open(mnet_dir)
    assert masks.kind == "mnet"
    assert masks.ref == "mnet-tiny/1"
    data = kspace(0)
    for acceleration in (4.0, 2.0):
        mask = masks.mask_for(data, acceleration, 4)
        assert mask.shape == (32,)
        assert mask.dtype == np.bool_
        budget = line_budget(32, acceleration, 4)
        assert mask.sum() == budget
        assert mask[acs_lines(32, 4)].all()
        scores = masks.scores(data, 4)
        free = [ky for ky in range(32) if not acs_mask(32, 4)[ky]]
        best = sorted(free, key=lambda ky: (-scores[ky], ky))[: budget - 4]
        assert set(np.flatnonzero(mask)) == set(acs_lines(32, 4)) | set(best)
    # The full k-space and its ACS block give the same plan; only the ACS is read.
    assert np.array_equal(masks.mask_for(acs_block(data, 4), 4.0, 4), masks.mask_for(data, 4.0, 4))
    outside = data.copy()
    outside[..., :10] = 0
    assert np.array_equal(masks.mask_for(outside, 4.0, 4), masks.mask_for(data, 4.0, 4))
    # Deterministic; another scan, another plan (the scan's data decides).
    assert np.array_equal(masks.mask_for(data, 4.0, 4), SamplerMasks.open(mnet_dir).mask_for(data, 4.0, 4))
    plans = {masks.mask_for(kspace(seed), 2.0, 4).tobytes() for seed in range(6)}
    assert len(plans) > 1


def test_batched_masks_equal_item_by_item_and_masks_for_every_r(mnet_dir: Path) -> None:
    masks = SamplerMasks.open(mnet_dir)
    batch = np.stack([kspace(seed) for seed in range(3)])
    planned = masks.mask_for(batch, 4.0, 4)
    assert planned.shape == (3, 32)
    for item, row in zip(batch, planned, strict=True):
        assert np.array_equal(masks.mask_for(item, 4.0, 4), row)
    every = masks.masks_for(batch, (4.0, 2.0), 4)
    assert np.array_equal(every[4.0], planned)
    assert (every[2.0].sum(axis=-1) == 16).all()
    assert (every[4.0] <= every[2.0]).all()  # one score vector: the plans are nested


@pytest.mark.parametrize(
    ("shape", "num_acs", "acceleration", "error", "named"),
    [
        ((2, 16, 48), 4, 4.0, GeometryMismatchError, "W=48"),
        ((3, 16, 32), 4, 4.0, GeometryMismatchError, "coils=3"),
        ((2, 20, 32), 4, 4.0, GeometryMismatchError, "H=20"),
        ((2, 16, 32), 6, 4.0, GeometryMismatchError, "num_acs=6"),
        ((2, 16, 32), 4, 8.0, InvalidAccelerationError, "R=8"),
        ((2, 16, 5), 4, 4.0, GeometryMismatchError, "W=5"),
        ((16, 32), 4, 4.0, InvalidInputError, "(16, 32)"),
    ],
)
def test_bad_geometry_or_untrained_r_is_refused_naming_the_value(
    mnet_dir: Path,
    shape: tuple[int, ...],
    num_acs: int,
    acceleration: float,
    error: type[Exception],
    named: str,
) -> None:
    masks = SamplerMasks.open(mnet_dir)
    with pytest.raises(error, match=re.escape(named)) as caught:
        masks.mask_for(kspace(0, shape), acceleration, num_acs)
    assert isinstance(caught.value, InvalidInputError)


def test_acs_without_signal_or_with_nan_is_refused_where_the_service_falls_back(mnet_dir: Path) -> None:
    masks = SamplerMasks.open(mnet_dir)
    with pytest.raises(InvalidInputError, match="no signal"):
        masks.mask_for(np.zeros((2, 16, 32), np.complex64), 4.0, 4)
    bad = kspace(0)
    bad[0, 0, 16] = np.nan
    with pytest.raises(NonFiniteDataError, match="NaN"):
        masks.mask_for(bad, 4.0, 4)
    with pytest.raises(InvalidInputError, match="complex"):
        masks.mask_for(np.ones((2, 16, 32), np.float32), 4.0, 4)


def test_fixed_mask_bundle_serves_its_scores_top_k_with_the_centre_tiebreak(tmp_path: Path) -> None:
    scores = np.random.default_rng(3).random(32).astype(np.float32)
    masks = SamplerMasks.open(fixed_mask_dir(tmp_path, scores))
    assert masks.kind == "fixed-mask"
    mask = masks.mask_for(kspace(0), 4.0, 4)
    assert np.array_equal(mask, served_fixed_plan(scores, 4, 4.0))
    assert mask.sum() == 8
    assert mask[acs_lines(32, 4)].all()
    free = [ky for ky in range(32) if not acs_mask(32, 4)[ky]]
    best = sorted(free, key=lambda ky: -scores[ky])[:4]
    assert set(np.flatnonzero(mask)) == set(acs_lines(32, 4)) | set(best)
    # The scan's data does not matter, its geometry does (W only: a line pattern is coil-agnostic).
    assert np.array_equal(masks.mask_for(kspace(9, (7, 8, 32)), 4.0, 4), mask)
    with pytest.raises(GeometryMismatchError, match="W=64"):
        masks.mask_for(kspace(0, (2, 16, 64)), 4.0, 4)
    with pytest.raises(InvalidAccelerationError, match="R=3"):
        masks.mask_for(kspace(0), 3.0, 4)


def test_fixed_bool_mask_ties_go_to_the_centre(tmp_path: Path) -> None:
    pattern = np.zeros(32, dtype=bool)
    pattern[[0, 1, 2, 30, 31]] = True  # 5 preferred lines; the 4 free slots at R 4 take 4 of them
    masks = SamplerMasks.open(fixed_mask_dir(tmp_path, pattern))
    lines = set(np.flatnonzero(masks.mask_for(kspace(0), 4.0, 4)))
    assert lines - set(acs_lines(32, 4)) == {1, 2, 30, 31}  # nearest the centre 16 first, ky 0 left out


def test_other_kinds_and_tampered_bundles_are_refused(tmp_path: Path, mnet_dir: Path) -> None:
    bundle = load_bundle(mnet_dir.parent.parent, "mnet-tiny", "1")
    recon = bundle.manifest.model_copy(update={"kind": "modl"})
    with pytest.raises(InvalidInputError, match="'modl'"):
        SamplerMasks(type(bundle)(path=bundle.path, manifest=recon))
    path = fixed_mask_dir(tmp_path, np.linspace(0, 1, 32, dtype=np.float32))
    np.save(path / "mask.npy", np.zeros(32, np.float32))
    with pytest.raises(BundleError, match=r"mask\.npy"):
        SamplerMasks.open(path)


def test_record_names_the_bundle_and_its_manifest_digest(mnet_dir: Path) -> None:
    record = SamplerMasks.open(mnet_dir).record()
    assert (record["name"], record["version"], record["kind"]) == ("mnet-tiny", "1", "mnet")
    digest = record["manifest_sha256"]
    assert isinstance(digest, str)
    assert len(digest) == 64
