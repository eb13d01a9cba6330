"""kadapt train sampler --quick end to end: energy-density, LOUPE and MNet (hand-built labels) bundles
loaded by the sampler's real registry, plans exact and deterministic, resume, labels generated on a miss."""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kadapt.bundles import Bundle, BundleGeometry, Manifest, load_bundle, utc_now, write_bundle
from kadapt.cli.main import app
from kadapt.errors import InvalidInputError, InvalidStateError
from kadapt.kspace.preprocess import acs_start
from kadapt.masks import acs_lines, line_budget, make_mask
from kadapt.masks.mechanics import topk_plan
from kadapt.nn.export import export_torchscript
from kadapt.nn.mnet import MNet, MNetGeometry
from kadapt.nn.unet import UNetRecon
from kadapt.sampler.domain.planner import PolicyRegistry
from kadapt.sampler.domain.policies import FixedMaskBundlePolicy
from kadapt.schemas import PlanRequest
from kadapt.trainer.data import SliceDataset, make_batch
from kadapt.trainer.labels.store import LabelSet, label_path, save_labels
from kadapt.trainer.sampler_config import make_sampler_config
from kadapt.trainer.sampler_labels import find_labels
from kadapt.trainer.sampler_train import SamplerTrainResult, train_sampler

ACCELERATIONS = (4.0, 3.0)
NUM_ACS = 4  # W // 16 = 2 at W = 32, raised to the minimum of 4


@dataclass(frozen=True)
class SamplerRuns:
    root: Path
    repository: Path
    cache: Path
    results: dict[str, SamplerTrainResult]


def _hand_labels(train: SliceDataset, cache: Path) -> None:
    """Random exact-budget label masks per train slice, as the label generators would store them."""
    rng = np.random.default_rng(11)
    for acceleration in ACCELERATIONS:
        masks = make_mask(
            "random", width=32, acceleration=acceleration, num_acs=NUM_ACS, rng=rng, batch=len(train)
        )
        labels = LabelSet(
            method="icd", acceleration=acceleration, num_acs=NUM_ACS, width=32,
            masks=np.asarray(masks, dtype=np.bool_).reshape(len(train), 32),
            volumes=tuple(item.volume for item in train.slices),
            slices=np.asarray([item.slice_index for item in train.slices], dtype=np.int64),
            settings={"made": "by hand"}, metrics={},
        )  # fmt: skip
        save_labels(label_path(cache, "train", "icd", acceleration, NUM_ACS, "hand"), labels)


@pytest.fixture(scope="module")
def sampler_runs(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> SamplerRuns:
    root = tmp_path_factory.mktemp("sampler-runs")
    repository, cache = root / "models", root / "labels"
    _hand_labels(SliceDataset(tiny_dataset, "train", NUM_ACS), cache)
    results: dict[str, SamplerTrainResult] = {}
    for method, name in (("energy-density", "energy-pop"), ("loupe", "loupe-pop")):
        config = make_sampler_config(
            method,
            tiny_dataset,
            ACCELERATIONS,
            repository / name / "1",
            runs=root / f"runs-{method}",
            quick=True,
        )
        results[method] = train_sampler(config, show_progress=False)
    cli = CliRunner().invoke(
        app,
        [
            "train", "sampler", "--method", "mnet", "--labels", "icd", "--label-cache", str(cache),
            "--data", str(tiny_dataset), "--R", "4", "3", "--out", str(repository / "mnet-icd" / "1"),
            "--quick", "--runs", str(root / "runs-mnet"), "--fallback", "energy-pop",
        ],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    return SamplerRuns(root, repository, cache, results)


def _request(policy: str, acceleration: float, acs: np.ndarray | None = None) -> PlanRequest:
    encoded = None
    if acs is not None:
        buffer = io.BytesIO()
        np.save(buffer, acs.astype(np.complex64), allow_pickle=False)
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return PlanRequest(
        scan_id="test", policy=policy, width=32, height=32, coils=4, acceleration=acceleration,
        num_acs=NUM_ACS, acquired=tuple(int(ky) for ky in acs_lines(32, NUM_ACS)),
        deadline_unix_ms=time.time() * 1000.0 + 60_000.0, acs_npy_b64=encoded,
    )  # fmt: skip


def _json(bundle: Bundle) -> dict[str, Any]:
    """The manifest as plain JSON (its ``training`` and ``validation`` are free-form JSON values)."""
    manifest: dict[str, Any] = json.loads(bundle.manifest.model_dump_json())
    return manifest


def _val_acs(tiny_dataset: Path) -> list[np.ndarray]:
    val = SliceDataset(tiny_dataset, "val", NUM_ACS)
    start = acs_start(32, NUM_ACS)
    return [item.kspace[:, :, start : start + NUM_ACS] for item in val.slices]


def test_the_sampler_registry_serves_every_bundle_exactly_and_deterministically(
    sampler_runs: SamplerRuns, tiny_dataset: Path
) -> None:
    registry = PolicyRegistry.from_sources(sampler_runs.repository)
    assert registry.failures == {}
    acs = _val_acs(tiny_dataset)[0]
    for name in ("energy-pop", "loupe-pop", "mnet-icd"):
        policy = registry.get(name)
        assert policy.info.accelerations == ACCELERATIONS
        for acceleration in ACCELERATIONS:
            first = policy.plan(_request(name, acceleration, acs), 0.0)
            again = policy.plan(_request(name, acceleration, acs), 0.0)
            assert first == again
            assert not first.degraded, first.reason
            assert len(first.lines) == line_budget(32, acceleration, NUM_ACS)
            assert set(acs_lines(32, NUM_ACS).tolist()) <= set(first.lines)
    assert registry.get("mnet-icd").fallback.name == "energy-pop"  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["energy-pop", "loupe-pop"])
def test_fixed_mask_bundles_serve_the_plans_validation_scored(sampler_runs: SamplerRuns, name: str) -> None:
    bundle = load_bundle(sampler_runs.repository, name)
    policy = FixedMaskBundlePolicy(bundle)
    served = bundle.manifest.training["served_lines"]
    assert isinstance(served, dict)
    for acceleration in ACCELERATIONS:
        assert list(policy.plan(_request(name, acceleration), 0.0).lines) == served[f"R{acceleration:g}"]
    validation = bundle.manifest.validation
    assert set(validation) == {f"{prefix}R{r:g}" for prefix in ("", "vd-random/") for r in ACCELERATIONS}
    for entry in validation.values():
        assert isinstance(entry, dict)
        assert 0.0 < float(entry["ssim"]) <= 1.0  # type: ignore[arg-type]
    assert bundle.manifest.training["train_slices"] == 2


def test_energy_profile_is_the_normalised_line_energy(sampler_runs: SamplerRuns, tiny_dataset: Path) -> None:
    profile = np.asarray(load_bundle(sampler_runs.repository, "energy-pop").manifest.training["profile"])
    train = SliceDataset(tiny_dataset, "train", NUM_ACS)
    shares = [(np.abs(s.kspace) ** 2).sum(axis=(0, 1)) / (np.abs(s.kspace) ** 2).sum() for s in train.slices]
    np.testing.assert_allclose(profile, np.mean(shares, axis=0), rtol=1e-5)
    assert int(np.argmax(profile)) == 16  # the k-space centre line


def test_mnet_bundle_serves_the_plan_validation_scored(sampler_runs: SamplerRuns, tiny_dataset: Path) -> None:
    manifest = _json(load_bundle(sampler_runs.repository, "mnet-icd"))
    training, validation = manifest["training"], manifest["validation"]
    assert training["label_method"] == "icd"
    assert {key: entry["file"] for key, entry in training["labels"].items()} == {
        "R4": "icd-R4-acs4-hand.h5",
        "R3": "icd-R3-acs4-hand.h5",
    }
    assert training["fallback"] == "energy-pop"
    assert 0.0 <= validation["onnx_max_relative_l2"] <= 1e-4
    assert {"R4", "R3", "vd-random/R4", "vd-random/R3"} <= set(validation)
    params = dict(training["model"])
    params["channels"] = tuple(params["channels"])
    mnet = MNet(MNetGeometry(width=32, height=32, coils=4, num_acs=NUM_ACS), **params)
    mnet.load_state_dict(
        torch.load(sampler_runs.root / "runs-mnet" / "best.pt", weights_only=True)["learner"]["sampler"]
    )
    mnet.eval()
    policy = PolicyRegistry.from_sources(sampler_runs.repository).get("mnet-icd")
    for acs in _val_acs(tiny_dataset):
        block = torch.from_numpy(np.stack([acs.real, acs.imag], axis=-1)[None].astype(np.float32))
        with torch.no_grad():
            scores = mnet(block).numpy()
        for acceleration in ACCELERATIONS:
            budget = line_budget(32, acceleration, NUM_ACS)
            expected = np.flatnonzero(
                topk_plan(scores, np.asarray([np.isin(np.arange(32), acs_lines(32, NUM_ACS))]), budget)[0]
            )
            assert list(policy.plan(_request("mnet-icd", acceleration, acs), 0.0).lines) == expected.tolist()


def test_runs_write_tensorboard_and_checkpoints(sampler_runs: SamplerRuns) -> None:
    for method in ("energy-density", "loupe", "mnet"):
        assert list((sampler_runs.root / f"runs-{method}" / "tensorboard").glob("events.out.tfevents.*"))
    for method in ("loupe", "mnet"):
        last = torch.load(sampler_runs.root / f"runs-{method}" / "last.pt", weights_only=True)
        assert (last["method"], last["epoch"], last["step"], last["warmed"]) == (method, 1, 2, 1)
        assert "recon" in last["learner"]  # the co-trained U-Net is checkpointed too


def test_resume_continues_a_loupe_run(sampler_runs: SamplerRuns, tiny_dataset: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(sampler_runs.root / "runs-loupe", runs)
    before = torch.load(runs / "last.pt", weights_only=True)
    config = make_sampler_config(
        "loupe", tiny_dataset, ACCELERATIONS, tmp_path / "models" / "loupe-pop" / "2", runs=runs, quick=True,
        epochs=2, resume=True,
    )  # fmt: skip
    result = train_sampler(config, show_progress=False)
    assert (result.first_epoch, result.epochs_completed, result.global_step) == (2, 2, 4)
    after = torch.load(runs / "last.pt", weights_only=True)
    assert (after["epoch"], after["step"], after["warmed"]) == (2, 4, 1)  # no second warm-up
    # Adam's step counters and the Bernoulli generator continued (a restart would count 2 again).
    assert all(int(state["step"]) == 4 for state in after["learner"]["optimiser"]["state"].values())
    assert not torch.equal(after["learner"]["generator"], before["learner"]["generator"])
    assert after["rng"] != before["rng"]
    assert load_bundle(tmp_path / "models", "loupe-pop", "2").manifest.training["steps"] == 4


def test_resume_refuses_other_runs_and_missing_checkpoints(
    sampler_runs: SamplerRuns, tiny_dataset: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(sampler_runs.root / "runs-loupe", runs)
    out = tmp_path / "models" / "mnet-x" / "1"
    config = make_sampler_config(
        "mnet", tiny_dataset, ACCELERATIONS, out, labels="icd", label_cache=sampler_runs.cache, runs=runs,
        quick=True, epochs=2, resume=True,
    )  # fmt: skip
    with pytest.raises(InvalidInputError, match="holds a 'loupe' run"):
        train_sampler(config, show_progress=False)
    fresh = make_sampler_config("loupe", tiny_dataset, ACCELERATIONS, out, runs=runs, quick=True)
    with pytest.raises(InvalidStateError, match="pass --resume"):
        train_sampler(fresh, show_progress=False)
    missing = make_sampler_config(
        "loupe", tiny_dataset, ACCELERATIONS, out, runs=tmp_path / "none", quick=True, resume=True
    )
    with pytest.raises(InvalidStateError, match="no checkpoint at"):
        train_sampler(missing, show_progress=False)


def _frozen_recon_bundle(repository: Path, tiny_dataset: Path) -> Path:
    """A tiny U-Net recon bundle (TorchScript only: all a frozen --recon needs)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = UNetRecon(chans=4, num_pool_layers=2).eval()
    item = SliceDataset(tiny_dataset, "val", NUM_ACS).slices[0]
    batch = make_batch([item], np.ones((1, 32), dtype=np.bool_))
    path = repository.parent / "model.pt"
    export_torchscript(
        model, (batch.masked_kspace, batch.mask, batch.sens), path,
        input_names=("masked_kspace", "mask", "sens"), output_names=("image",),
    )  # fmt: skip
    manifest = Manifest(
        name="unet-tiny", version="1", kind="unet", geometry=BundleGeometry(ky=32, kx=32, coils=4),
        accelerations=ACCELERATIONS, num_acs=NUM_ACS, code_version="test", created=utc_now(),
    )  # fmt: skip
    return write_bundle(repository, manifest, {"model.pt": path}).path


def test_mnet_generates_icd_labels_on_a_miss_with_a_frozen_recon(tiny_dataset: Path, tmp_path: Path) -> None:
    recon = _frozen_recon_bundle(tmp_path / "recons", tiny_dataset)
    cache = tmp_path / "labels"
    config = make_sampler_config(
        "mnet", tiny_dataset, (4.0,), tmp_path / "models" / "mnet-frozen" / "1", labels="icd",
        label_cache=cache, recon=str(recon), runs=tmp_path / "runs", quick=True,
    )  # fmt: skip
    result = train_sampler(config, show_progress=False)
    files = sorted((cache / "train").glob("icd-R4-acs4-*.h5"))
    assert len(files) == 1
    training = _json(result.bundle)["training"]
    summary = training["labels"]["R4"]
    assert (summary["generated"], summary["file"], summary["count"]) == (True, files[0].name, 2)
    assert training["recon"] == {"name": "unet-tiny/1", "kind": "unet", "co_trained": False}
    assert training["warmup_steps"] == 0  # a frozen recon is not warmed up
    assert PolicyRegistry.from_sources(tmp_path / "models").failures == {}
    # The next run finds the generated labels instead of making new ones.
    found = find_labels(cache, "icd", 4.0, SliceDataset(tiny_dataset, "train", NUM_ACS))
    assert found is not None
    assert found.path == files[0]
