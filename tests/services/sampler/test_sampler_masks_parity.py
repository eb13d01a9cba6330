"""The core's :class:`kadapt.bundles.SamplerMasks` gives exactly the plan the sampler service serves for
the same scan (first round: nothing acquired beyond the ACS), for ``mnet`` and ``fixed-mask`` bundles --
the masks ``kadapt train recon --policy`` trains on are the served ones."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from kadapt.bundles import BundleGeometry, Manifest, load_bundle, utc_now, write_bundle
from kadapt.bundles.sampler_masks import SamplerMasks
from kadapt.kspace.preprocess import acs_block
from kadapt.masks import acs_lines
from kadapt.nn.mnet import MNet, MNetGeometry, randomise_parameters
from kadapt.nn.mnet_bundle import export_mnet_bundle
from kadapt.sampler.domain.mnet import MNetServing, load_mnet_policy
from kadapt.sampler.domain.planner import PolicyRegistry
from kadapt.sampler.domain.policies import FixedMaskBundlePolicy
from kadapt.schemas import PlanRequest

GEOMETRY = MNetGeometry(width=32, height=16, coils=2, num_acs=4)


def encode(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def scan(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (2, 16, 32)
    # Mixed intensity scales: the graph normalises, the plan must not care.
    scale = float(10.0 ** rng.uniform(-3, 3))
    return (scale * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))).astype(np.complex64)


def first_round(name: str, kspace: np.ndarray, acceleration: float) -> PlanRequest:
    """What the gateway sends after the ACS lines: the ACS block as .npy, the ACS as acquired."""
    return PlanRequest(
        scan_id="scan-1",
        policy=name,
        width=32,
        height=16,
        coils=2,
        acceleration=acceleration,
        num_acs=4,
        acquired=tuple(int(ky) for ky in acs_lines(32, 4)),
        deadline_unix_ms=1e15,
        acs_npy_b64=encode(np.ascontiguousarray(acs_block(kspace, 4))),
    )


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("models")
    for index, coil_handling in enumerate(("mixing", "average")):
        model = MNet(GEOMETRY, channels=(8, 8), hidden=16, coil_handling=coil_handling)  # type: ignore[arg-type]
        export_mnet_bundle(
            randomise_parameters(model, torch.Generator().manual_seed(index)),
            repo,
            name=f"mnet-{coil_handling}",
            accelerations=(4.0, 2.0, 8.0),
            training={"description": "UNTRAINED random weights (test)"},
            code_version="test",
        )
    return repo


@pytest.mark.parametrize("name", ["mnet-mixing", "mnet-average"])
def test_mnet_masks_equal_the_sampler_services_plans(repository: Path, name: str) -> None:
    registry = PolicyRegistry.from_sources(repository)
    policy = load_mnet_policy(load_bundle(repository, name), registry.get, MNetServing())
    masks = SamplerMasks.open(repository / name / "1")
    compared = 0
    for seed in range(12):
        kspace = scan(seed)
        for acceleration in (4.0, 2.0, 8.0):
            served = policy.plan(first_round(name, kspace, acceleration), 0.0)
            assert not served.degraded, served.reason
            assert tuple(np.flatnonzero(masks.mask_for(kspace, acceleration, 4))) == served.lines
            compared += 1
    assert compared == 36


def test_fixed_mask_masks_equal_the_sampler_services_plans(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    # Coarse scores: many ties, so the centre tie-break decides too.
    scores = rng.integers(0, 4, size=32).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, scores, allow_pickle=False)
    manifest = Manifest(
        name="pop", version="1", kind="fixed-mask", geometry=BundleGeometry(ky=32),
        accelerations=(4.0, 2.0, 8.0), num_acs=4, training={"description": "test"}, code_version="test",
        created=utc_now(),
    )  # fmt: skip
    bundle = write_bundle(tmp_path, manifest, {"mask.npy": buffer.getvalue()})
    policy = FixedMaskBundlePolicy(bundle)
    masks = SamplerMasks.open(bundle.path)
    for acceleration in (4.0, 2.0, 8.0):
        served = policy.plan(first_round("pop", scan(0), acceleration), 0.0)
        assert tuple(np.flatnonzero(masks.mask_for(scan(0), acceleration, 4))) == served.lines
