"""``kadapt train recon --policy BUNDLE``: training and validation masks are the plans the sampler bundle
serves for each slice (and each flip), precomputed once; the bundle records the policy; resume and
``--init`` keep working; bad policies are refused before any data is loaded."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kadapt.bundles import (
    BundleGeometry,
    Manifest,
    load_bundle,
    served_fixed_plan,
    utc_now,
    write_bundle,
)
from kadapt.bundles.sampler_masks import SamplerMasks
from kadapt.cli.main import app
from kadapt.data.manifest import load_manifest
from kadapt.errors import InvalidAccelerationError, InvalidInputError, NotFoundError
from kadapt.fastmri.files import read_fastmri
from kadapt.masks import acs_lines, line_budget
from kadapt.nn.mnet import MNet, MNetGeometry, randomise_parameters
from kadapt.nn.mnet_bundle import export_mnet_bundle
from kadapt.trainer.config import make_config
from kadapt.trainer.data import (
    ALL_FLIPS,
    NO_FLIPS,
    MaskSampler,
    SliceDataset,
    draw_batch,
    flip_slice,
)
from kadapt.trainer.loop import train_recon
from kadapt.trainer.policy_masks import PolicyPlans, prepare_policies

ACCELERATIONS = (4.0, 3.0)  # the tiny dataset: W = H = 32, 4 coils, num_acs W // 16 -> 4


@pytest.fixture(scope="module")
def policy_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight mnet bundle at the tiny dataset's geometry and a fixed-mask bundle."""
    repo = tmp_path_factory.mktemp("policies")
    model = MNet(MNetGeometry(width=32, height=32, coils=4, num_acs=4), channels=(8, 8), hidden=16)
    export_mnet_bundle(
        randomise_parameters(model, torch.Generator().manual_seed(0)),
        repo,
        name="mnet-tiny",
        accelerations=ACCELERATIONS,
        training={"description": "UNTRAINED random weights (test)"},
        code_version="test",
    )
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(1).random(32).astype(np.float32), allow_pickle=False)
    manifest = Manifest(
        name="pop", version="1", kind="fixed-mask", geometry=BundleGeometry(ky=32),
        accelerations=(4.0, 3.0, 2.0), num_acs=4, training={"description": "test"}, code_version="test",
        created=utc_now(),
    )  # fmt: skip
    write_bundle(repo, manifest, {"mask.npy": buffer.getvalue()})
    return repo


def test_plans_are_the_served_masks_of_each_slices_own_acs(tiny_dataset: Path, policy_repo: Path) -> None:
    dataset = SliceDataset(tiny_dataset, "train", 4)
    sampler = SamplerMasks.open(policy_repo / "mnet-tiny" / "1")
    plans = PolicyPlans(sampler, dataset, ACCELERATIONS, flips=True)
    assert len(plans.plans) == len(dataset) * 4
    # The raw k-space as read from the file, as a scanner would send it.
    record = load_manifest(tiny_dataset).volumes_in("train")[0]
    raw = read_fastmri(tiny_dataset / record.file).kspace
    for index, item in enumerate(dataset.slices[: raw.shape[0]]):
        for row, acceleration in enumerate(ACCELERATIONS):
            mask = plans.masks([(index, NO_FLIPS)], acceleration)[0]
            assert np.array_equal(mask, sampler.mask_for(raw[item.slice_index], acceleration, 4))
            assert mask.sum() == line_budget(32, acceleration, 4)
            assert mask[acs_lines(32, 4)].all()
            assert np.array_equal(plans.plans[(index, NO_FLIPS)][row], mask)
    # A flipped slice gets the plan of its own (flipped) ACS block.
    item = dataset.slices[0]
    for flips in ALL_FLIPS:
        flipped = flip_slice(item, flips)
        expected = sampler.mask_for(flipped.kspace * np.float32(item.scale), 4.0, 4)
        assert np.array_equal(plans.masks([(0, flips)], 4.0)[0], expected)
    # ... which the model sees as another scan (a random-weight net's top-k may still agree).
    scores = [
        sampler.scores(flip_slice(item, flips).kspace * np.float32(item.scale), 4) for flips in ALL_FLIPS
    ]
    assert all(not np.allclose(scores[0], other) for other in scores[1:])


def test_batches_draw_policy_plans_per_item_and_families_keep_their_stream(
    tiny_dataset: Path, policy_repo: Path
) -> None:
    train = SliceDataset(tiny_dataset, "train", 4)
    val = SliceDataset(tiny_dataset, "val", 4)
    policies = prepare_policies(
        [policy_repo / "mnet-tiny" / "1", policy_repo / "pop" / "1"], train, val, ACCELERATIONS, augment=True
    )
    assert sorted(policies.train) == ["mnet-tiny", "pop"]
    assert policies.validation[("pop", 4.0)].shape == (len(val), 32)
    sampler = MaskSampler(("equispaced",), ACCELERATIONS, 32, 4, np.random.default_rng(0), policies.train)
    rng, flips_rng = np.random.default_rng(1), np.random.default_rng(2)
    seen = set()
    for _ in range(12):
        source, acceleration, items, masks = draw_batch(train, sampler, 3, rng, flips_rng)
        seen.add(source)
        assert masks.shape == (3, 32)
        assert (masks.sum(axis=1) == line_budget(32, acceleration, 4)).all()
        if source == "pop":
            pop = load_bundle(policy_repo, "pop", "1")
            scores = np.load(pop.file("mask.npy"))
            assert (masks == served_fixed_plan(scores, 4, acceleration)).all()
    assert seen == {"equispaced", "mnet-tiny", "pop"}
    # Families only: draw_batch consumes the mask generator exactly as the loop did before policies.
    old, new = np.random.default_rng(7), np.random.default_rng(7)
    old_sampler = MaskSampler(("vd-random",), ACCELERATIONS, 32, 4, old)
    picks = old.choice(len(train), size=2, replace=False)
    _, _, before = old_sampler.draw(2)
    _, _, items, after = draw_batch(
        train, MaskSampler(("vd-random",), ACCELERATIONS, 32, 4, new), 2, new, None
    )
    assert np.array_equal(before, after)
    assert [item.slice_index for item in items] == [train.slices[int(i)].slice_index for i in picks]


def test_bad_policies_are_refused_before_loading_data(
    tiny_dataset: Path, policy_repo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "models" / "unet" / "1"

    def config(*policies: Path, accelerations: tuple[float, ...] = ACCELERATIONS) -> None:
        make_config("unet", tiny_dataset, accelerations, (), out, quick=True, policies=policies)

    with pytest.raises(NotFoundError, match="no-such"):
        config(policy_repo / "no-such" / "1")
    with pytest.raises(InvalidAccelerationError, match=r"R=\[2\.0\]"):
        config(policy_repo / "mnet-tiny" / "1", accelerations=(4.0, 2.0))
    with pytest.raises(InvalidInputError, match="'mnet-tiny' is already used"):
        config(policy_repo / "mnet-tiny" / "1", policy_repo / "mnet-tiny" / "1")
    with pytest.raises(InvalidInputError, match=r"--masks.*--policy"):
        config()
    recon = tmp_path / "models" / "modl" / "1"
    manifest = load_bundle(policy_repo, "mnet-tiny", "1").manifest.model_copy(
        update={"name": "modl", "kind": "modl", "files": {}}
    )
    write_bundle(tmp_path / "models", manifest, {"model.onnx": b"not a model"})
    with pytest.raises(InvalidInputError, match="'modl' bundle, not a sampler"):
        config(recon)


def test_cli_quick_run_trains_on_the_policy_and_records_it(
    tiny_dataset: Path, policy_repo: Path, tmp_path: Path
) -> None:
    repository, runs = tmp_path / "models", tmp_path / "runs"
    policy = policy_repo / "mnet-tiny" / "1"
    result = CliRunner().invoke(
        app,
        [
            "train", "recon", "--model", "unet", "--data", str(tiny_dataset), "--R", "4", "3",
            "--policy", str(policy), "--out", str(repository / "unet-mnet" / "1"), "--quick",
            "--runs", str(runs),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = load_bundle(repository, "unet-mnet", "1").manifest
    training = manifest.training
    assert training["masks"] == []
    policies = training["policies"]
    assert isinstance(policies, list)
    assert len(policies) == 1
    entry = policies[0]
    assert isinstance(entry, dict)
    assert (entry["name"], entry["version"], entry["kind"]) == ("mnet-tiny", "1", "mnet")
    assert entry["manifest_sha256"] == SamplerMasks.open(policy).record()["manifest_sha256"]
    assert set(manifest.validation) >= {"mnet-tiny/R4", "mnet-tiny/R3"}
    assert not any(key.startswith(("vd-random", "equispaced")) for key in manifest.validation)

    # --resume with other policies is refused; with the same ones it continues.
    def resumed(*policy_dirs: Path, version: str) -> None:
        config = make_config(
            "unet", tiny_dataset, ACCELERATIONS, (), repository / "unet-mnet" / version, runs=runs,
            quick=True, epochs=2, resume=True, policies=policy_dirs,
        )  # fmt: skip
        train_recon(config, show_progress=False)

    with pytest.raises(InvalidInputError, match="other --policy bundles"):
        resumed(policy_repo / "pop" / "1", version="2")
    resumed(policy, version="2")
    assert load_bundle(repository, "unet-mnet", "2").manifest.training["epochs"] == 2

    # --init from that run's best weights, policy and families mixed (fine-tuning on MNet masks).
    shutil.copy(runs / "best.pt", tmp_path / "start.pt")
    config = make_config(
        "unet", tiny_dataset, ACCELERATIONS, ("equispaced",), repository / "unet-mnet" / "3",
        runs=tmp_path / "runs-init", quick=True, init_from=tmp_path / "start.pt", policies=(policy,),
    )  # fmt: skip
    run = train_recon(config, show_progress=False)
    training = run.bundle.manifest.training
    initialised = training["initialised_from"]
    assert isinstance(initialised, dict)
    assert initialised["path"] == str(tmp_path / "start.pt")
    assert set(run.validation) == {"equispaced/R4", "equispaced/R3", "mnet-tiny/R4", "mnet-tiny/R3"}
