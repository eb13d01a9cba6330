"""``kadapt.bundles.ads_runtime``: the ``ads`` bundle contract (C5) on tiny exported bundles."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from kadapt.bundles import Bundle, load_bundle, write_bundle
from kadapt.bundles.ads_runtime import AdsRuntime, round_budget
from kadapt.errors import BundleError, GeometryMismatchError, InvalidInputError, NonFiniteDataError
from kadapt.kspace.dynamic import sense_image_so_far
from kadapt.kspace.fft import fft2c
from kadapt.masks import acs_mask, line_budget
from kadapt.masks.mechanics import budget_split

from .ads_fixtures import write_ads_sampler_bundle, write_tiny_ads_bundle

FRAMES, HEIGHT, WIDTH, NUM_ACS, COILS = 4, 16, 24, 2, 3


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ads-models")
    write_tiny_ads_bundle(root, "tiny-ads", pattern="frame-specific", seed=1)
    write_tiny_ads_bundle(root, "tiny-ads-unified", pattern="unified", seed=2)
    return root


@pytest.fixture(scope="module")
def runtime(repository: Path) -> AdsRuntime:
    return AdsRuntime.open(load_bundle(repository, "tiny-ads"))


def cine_kspace(seed: int) -> np.ndarray:
    """Fully sampled cine k-space ``(T, C, H, W)`` of a moving blob seen by smooth coils."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    images = []
    for frame in range(FRAMES):
        centre = WIDTH / 2 + 3 * np.sin(2 * np.pi * frame / FRAMES)
        blob = np.exp(-((x - centre) ** 2 / 18 + (y - HEIGHT / 2) ** 2 / 10))
        images.append(blob + 0.05 * rng.standard_normal((HEIGHT, WIDTH)))
    coils = np.stack([np.exp(-((x - c * WIDTH / 2) ** 2) / 200 + 1j * c) for c in range(COILS)])
    coil_images = np.asarray(images)[:, None] * coils[None]
    return np.asarray(fft2c(coil_images.astype(np.complex64)), dtype=np.complex64)


@pytest.mark.parametrize("rate", [4.0, 6.0, 8.0])
@pytest.mark.parametrize("cascades", [1, 2, 3])
def test_round_budget_arithmetic_every_round_exact(rate: float, cascades: int) -> None:
    """Round r holds num_acs + sum(budget_split(new, N)[:r+1]) lines; the last round exactly round(W/R)."""
    width, num_acs = 96, 4
    total = line_budget(width, rate, num_acs)
    shares = budget_split(total - num_acs, cascades)
    budgets = [round_budget(width, rate, num_acs, cascades, r) for r in range(cascades)]
    assert budgets == [num_acs + sum(shares[: r + 1]) for r in range(cascades)]
    assert budgets[-1] == total == round(width / rate)
    assert all(b <= c for b, c in itertools.pairwise(budgets))
    with pytest.raises(InvalidInputError):
        round_budget(width, rate, num_acs, cascades, cascades)


def test_default_cine_geometry_budgets() -> None:
    """The contract's numbers: W = 96, num_acs 4, N = 2 -> R 4: 14 / 24, R 6: 10 / 16, R 8: 8 / 12."""
    got = {r: [round_budget(96, r, 4, 2, k) for k in range(2)] for r in (4.0, 6.0, 8.0)}
    assert got == {4.0: [14, 24], 6.0: [10, 16], 8.0: [8, 12]}


def test_open_reads_the_manifest(runtime: AdsRuntime) -> None:
    assert (runtime.cascades, runtime.frames, runtime.height, runtime.width) == (2, FRAMES, HEIGHT, WIDTH)
    assert runtime.pattern == "frame-specific"
    assert runtime.warm_up() >= 0.0


@pytest.mark.parametrize("rate", [4.0, 6.0, 8.0])
def test_plan_round_exact_budget_per_frame_and_acquired_kept(runtime: AdsRuntime, rate: float) -> None:
    kspace = cine_kspace(0)
    acquired = np.repeat(acs_mask(WIDTH, NUM_ACS)[None], FRAMES, axis=0)
    for step in range(runtime.cascades):
        image = sense_image_so_far(kspace, acquired, NUM_ACS)
        planned = runtime.plan_round(image, acquired, step, rate, NUM_ACS)
        assert planned.shape == (FRAMES, WIDTH)
        assert planned.dtype == np.bool_
        expected = runtime.round_budget(rate, NUM_ACS, step)
        assert planned.sum(axis=1).tolist() == [expected] * FRAMES
        assert np.all(planned[acquired])
        acquired = planned
    assert acquired.sum(axis=1).tolist() == [round(WIDTH / rate)] * FRAMES


def test_plan_all_matches_rounds_and_is_deterministic(runtime: AdsRuntime) -> None:
    kspace = cine_kspace(1)
    first = runtime.plan_all(kspace, 6.0, NUM_ACS)
    assert np.array_equal(first, runtime.plan_all(kspace, 6.0, NUM_ACS))
    assert first.sum(axis=1).tolist() == [line_budget(WIDTH, 6.0, NUM_ACS)] * FRAMES
    assert np.all(first[:, acs_mask(WIDTH, NUM_ACS)])
    # frame-specific: the tiny model's per-frame bias makes frames differ
    assert len({tuple(np.flatnonzero(row)) for row in first}) > 1


def test_plan_depends_on_the_image(runtime: AdsRuntime) -> None:
    acquired = np.repeat(acs_mask(WIDTH, NUM_ACS)[None], FRAMES, axis=0)
    plans = {
        runtime.plan_round(
            sense_image_so_far(cine_kspace(seed), acquired, NUM_ACS), acquired, 0, 4.0, NUM_ACS
        ).tobytes()
        for seed in range(4)
    }
    assert len(plans) > 1


def test_unified_gives_identical_lines_in_every_frame(repository: Path) -> None:
    unified = AdsRuntime.open(load_bundle(repository, "tiny-ads-unified"))
    assert unified.pattern == "unified"
    mask = unified.plan_all(cine_kspace(2), 4.0, NUM_ACS)
    assert all(np.array_equal(mask[0], row) for row in mask)
    assert mask.sum(axis=1).tolist() == [round(WIDTH / 4.0)] * FRAMES


def test_wrong_shapes_and_values_are_refused(runtime: AdsRuntime) -> None:
    acquired = np.repeat(acs_mask(WIDTH, NUM_ACS)[None], FRAMES, axis=0)
    image = np.zeros((FRAMES, HEIGHT, WIDTH), dtype=np.complex64)
    with pytest.raises(GeometryMismatchError):
        runtime.plan_round(image[:, :-1], acquired, 0, 4.0, NUM_ACS)
    with pytest.raises(GeometryMismatchError):
        runtime.plan_round(image, acquired[:-1], 0, 4.0, NUM_ACS)
    with pytest.raises(GeometryMismatchError):
        runtime.plan_round(image, np.zeros((FRAMES, WIDTH + 1), dtype=bool), 0, 4.0, NUM_ACS)
    with pytest.raises(GeometryMismatchError):
        runtime.plan_round(image.real, acquired, 0, 4.0, NUM_ACS)
    bad = image.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteDataError):
        runtime.plan_round(bad, acquired, 0, 4.0, NUM_ACS)
    with pytest.raises(InvalidInputError):
        runtime.plan_round(image, acquired, 2, 4.0, NUM_ACS)
    with pytest.raises(GeometryMismatchError):
        runtime.plan_all(np.zeros((FRAMES, 2, HEIGHT, WIDTH + 1), np.complex64), 4.0, NUM_ACS)


def _rewritten(repository: Path, source: Bundle, name: str, **ads: object) -> Bundle:
    manifest = json.loads((source.path / "manifest.json").read_text())
    manifest["name"] = name
    manifest["training"]["ads"].update(ads)
    from kadapt.bundles import Manifest

    files = {filename: source.path / filename for filename in source.manifest.files}
    return write_bundle(repository, Manifest.model_validate_json(json.dumps(manifest)), files)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"init": "equispaced"}, "init 'acs'"),
        ({"dim": "2d"}, "dim '1d'"),
        ({"pattern": "diagonal"}, "pattern"),
        ({"cascades": 3}, "cascade-2.onnx"),
    ],
)
def test_unservable_bundles_are_refused(
    repository: Path, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    bundle = _rewritten(tmp_path, load_bundle(repository, "tiny-ads"), "bad-ads", **change)
    with pytest.raises(BundleError, match=message):
        AdsRuntime.open(bundle)


def test_other_kinds_are_refused(repository: Path, tmp_path: Path) -> None:
    source = load_bundle(repository, "tiny-ads")
    manifest = source.manifest.model_copy(update={"name": "not-ads", "kind": "mnet"})
    bundle = write_bundle(tmp_path, manifest, {f: source.path / f for f in source.manifest.files})
    with pytest.raises(BundleError, match="not 'ads'"):
        AdsRuntime.open(bundle)


@pytest.mark.parametrize("pattern", ["frame-specific", "unified"])
def test_real_ads_sampler_rounds_match_pytorch_top_k(
    tmp_path: Path, pattern: Literal["frame-specific", "unified"]
) -> None:
    """Through the NN's ADSSampler export: each served round equals ``plan_step(train=False)`` in torch."""
    import torch

    from kadapt.nn.ads import ADSSampler

    model = ADSSampler(
        FRAMES,
        HEIGHT,
        WIDTH,
        cascades=2,
        pattern=pattern,
        chans=2,
        num_pool_layers=2,
        mlp_layers=2,
        mlp_hidden=16,
    ).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # explicit randomness: fixed weights whatever the global torch state
        for parameter in model.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    runtime = AdsRuntime.open(write_ads_sampler_bundle(tmp_path, model, num_acs=NUM_ACS))
    kspace = cine_kspace(3)
    acquired = np.repeat(acs_mask(WIDTH, NUM_ACS)[None], FRAMES, axis=0)
    for step in range(2):
        image = sense_image_so_far(kspace, acquired, NUM_ACS)
        served = runtime.plan_round(image, acquired, step, 4.0, NUM_ACS)
        new = runtime.round_budget(4.0, NUM_ACS, step) - int(acquired[0].sum())
        channels = torch.from_numpy(np.stack([image.real, image.imag], -1).astype(np.float32))[None]
        with torch.no_grad():
            reference = model.plan_step(
                step, channels, torch.from_numpy(acquired.astype(np.float32))[None], new, train=False
            )
        assert np.array_equal(served, reference[0].numpy() > 0.5)
        acquired = served
    assert acquired.sum(axis=1).tolist() == [round(WIDTH / 4.0)] * FRAMES
