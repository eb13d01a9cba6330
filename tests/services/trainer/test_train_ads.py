"""``kadapt train ads``: quick runs of ads, opt and a family mix on a tiny cine set, bundles, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from kadapt.bundles import load_bundle
from kadapt.cli.main import app
from kadapt.errors import InvalidInputError, InvalidStateError
from kadapt.masks import line_budget
from kadapt.trainer.ads_config import make_ads_config
from kadapt.trainer.ads_data import CineDataset, apply_mask, fixed_family_masks, make_cine_batch
from kadapt.trainer.ads_loop import AdsTrainResult, build_training_model, train_ads

from .ads_fixtures import FRAMES, NUM_ACS, SIZE, write_tiny_cine

FAMILIES = "kt-equispaced,equispaced"


@pytest.fixture(scope="module")
def cine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cine(tmp_path_factory.mktemp("cine") / "data", slices=2)


@pytest.fixture(scope="module")
def family_run(cine: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A family-mix pre-training through the CLI: ``(repository, runs)``."""
    root = tmp_path_factory.mktemp("family")
    result = CliRunner().invoke(
        app,
        [
            "train", "ads", "--data", str(cine), "--sampler", FAMILIES,
            "--out", str(root / "models" / "mix" / "1"), "--R", "4", "6", "8", "--num-acs", str(NUM_ACS),
            "--quick", "--runs", str(root / "runs"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "models", root / "runs"


@pytest.fixture(scope="module")
def ads_run(
    cine: Path, family_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> AdsTrainResult:
    """An ADS fine-tune started from the family run's recon (the pre-training protocol)."""
    root = tmp_path_factory.mktemp("ads")
    config = make_ads_config(
        cine, "ads", root / "models" / "ads" / "1", num_acs=NUM_ACS, quick=True, runs=root / "runs",
        init_from=family_run[1] / "best.pt",
    )  # fmt: skip
    return train_ads(config, show_progress=False)


def _run_onnx(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output: np.ndarray = session.run(None, inputs)[0]
    return output


def test_family_run_writes_a_dynamic_vsharp_bundle_that_reloads_with_parity(
    cine: Path, family_run: tuple[Path, Path]
) -> None:
    repository, runs = family_run
    bundle = load_bundle(repository, "mix", "1")
    manifest = bundle.manifest
    assert manifest.kind == "vsharp"
    assert (manifest.geometry.ky, manifest.geometry.kx, manifest.geometry.coils) == (SIZE, SIZE, 2)
    assert manifest.geometry.frames == FRAMES
    assert manifest.training["dynamic"] is True
    assert manifest.training["sampler"] == FAMILIES
    assert manifest.accelerations == (4.0, 6.0, 8.0)
    assert {spec.name: spec.shape for spec in manifest.inputs} == {
        "masked_kspace": (1, FRAMES, 2, SIZE, SIZE, 2),
        "mask": (1, FRAMES, SIZE),
        "sens": (1, 2, SIZE, SIZE, 2),
    }
    assert float(manifest.validation["onnx_max_relative_l2"]) <= 1e-4  # type: ignore[arg-type]
    assert set(manifest.validation) >= {f"{family}/R{r}" for family in FAMILIES.split(",") for r in (4, 6, 8)}
    # Reload: the ONNX file answers like the best checkpoint's PyTorch model on a val slice.
    config = make_ads_config(cine, FAMILIES, repository / "other" / "1", num_acs=NUM_ACS, quick=True)
    val = CineDataset(cine, "val", NUM_ACS, 1)
    model = build_training_model(config, val.geometry, NUM_ACS)
    model.recon.load_state_dict(torch.load(runs / "best.pt", weights_only=True)["model"])
    model.eval()
    batch = make_cine_batch(val.slices[:1])
    fixed = fixed_family_masks(("kt-equispaced",), (8.0,), FRAMES, SIZE, NUM_ACS, 0)
    mask = torch.from_numpy(fixed[("kt-equispaced", 8.0)][None].astype(np.float32))
    masked = apply_mask(batch.kspace, mask)
    with torch.no_grad():
        expected = model.recon(masked, mask, batch.sens).numpy()
    got = _run_onnx(
        bundle.path / "model.onnx",
        {"masked_kspace": masked.numpy(), "mask": mask.numpy(), "sens": batch.sens.numpy()},
    )
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-4


def test_ads_run_writes_the_cascade_bundle_naming_its_recon(ads_run: AdsTrainResult) -> None:
    assert ads_run.sampler_bundle is not None
    recon, sampler = ads_run.bundle.manifest, ads_run.sampler_bundle.manifest
    assert sampler.kind == "ads"
    assert sampler.name == f"{recon.name}-sampler"
    assert sampler.version == recon.version
    assert sampler.geometry.coils is None
    assert sampler.geometry.frames == FRAMES
    assert sampler.training["ads"] == {
        "cascades": 2, "pattern": "frame-specific", "dim": "1d", "init": "acs",
        "recon": f"{recon.name}/{recon.version}",
    }  # fmt: skip
    assert sorted(sampler.files) == ["cascade-0.onnx", "cascade-1.onnx"]
    assert {spec.name: spec.shape for spec in sampler.inputs} == {
        "image": (1, FRAMES, SIZE, SIZE, 2),
        "mask": (1, FRAMES, SIZE),
    }
    assert sampler.normalisation == "mean-magnitude (inside the graph)"
    assert float(sampler.validation["onnx_max_relative_l2"]) <= 1e-4  # type: ignore[arg-type]
    origin = recon.training["initialised_from"]
    assert isinstance(origin, dict)
    assert str(origin["path"]).endswith("best.pt")
    assert set(ads_run.validation) == {"ads/R4", "ads/R6", "ads/R8"}
    # Reload: cascade 0 scores zero on acquired lines, the shape of the mask.
    mask = np.zeros((1, FRAMES, SIZE), dtype=np.float32)
    mask[..., SIZE // 2 - 1 : SIZE // 2 + 1] = 1.0
    image = np.random.default_rng(0).standard_normal((1, FRAMES, SIZE, SIZE, 2)).astype(np.float32)
    scores = _run_onnx(
        load_bundle(ads_run.sampler_bundle.path.parent.parent, sampler.name, sampler.version).path
        / "cascade-0.onnx",
        {"image": image, "mask": mask},
    )
    assert scores.shape == mask.shape
    assert np.all(scores[mask == 1.0] == 0.0)


def test_opt_run_stores_its_pattern_scores(cine: Path, tmp_path: Path) -> None:
    config = make_ads_config(
        cine, "opt", tmp_path / "models" / "opt" / "1", num_acs=NUM_ACS, quick=True, runs=tmp_path / "runs"
    )
    result = train_ads(config, show_progress=False)
    assert result.sampler_bundle is None
    manifest = result.bundle.manifest
    assert manifest.training["sampler"] == "opt"
    assert "pattern.npy" in manifest.files
    assert manifest.training["pattern"] == "frame-specific"
    assert manifest.training["pattern_file"] == "pattern.npy"
    scores = np.load(result.bundle.path / "pattern.npy")
    assert scores.shape == (FRAMES, SIZE)
    assert scores.dtype == np.float32
    # Served as the top-k per frame: the stored scores reproduce the validated masks' budget.
    checkpoint = torch.load(tmp_path / "runs" / "best.pt", weights_only=True)
    np.testing.assert_allclose(
        scores, (5.0 * checkpoint["sampler"]["logits"]).expand(FRAMES, SIZE).numpy(), rtol=1e-6
    )
    model = build_training_model(config, (FRAMES, 2, SIZE, SIZE), NUM_ACS)
    assert model.sampler is not None
    model.sampler.load_state_dict(checkpoint["sampler"])
    masks = model.learned_masks(
        make_cine_batch(CineDataset(cine, "val", NUM_ACS).slices), 6.0, train=False, generator=None
    )
    assert set(masks.sum(dim=-1).flatten().tolist()) == {float(line_budget(SIZE, 6.0, NUM_ACS))}


def test_resume_continues_the_step_count_and_refuses_a_silent_restart(cine: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = make_ads_config(
        cine, "kt-equispaced", tmp_path / "m" / "a" / "1", num_acs=NUM_ACS, quick=True, runs=runs, steps=1
    )
    assert train_ads(first, show_progress=False).global_step == 1
    again = make_ads_config(
        cine, "kt-equispaced", tmp_path / "m" / "a" / "2", num_acs=NUM_ACS, quick=True, runs=runs
    )
    with pytest.raises(InvalidStateError, match="--resume"):
        train_ads(again, show_progress=False)
    resumed = make_ads_config(
        cine,
        "kt-equispaced",
        tmp_path / "m" / "a" / "3",
        num_acs=NUM_ACS,
        quick=True,
        runs=runs,
        resume=True,
        steps=2,
    )
    result = train_ads(resumed, show_progress=False)
    assert (result.first_epoch, result.epochs_completed, result.global_step) == (2, 2, 2)
    assert json.loads((result.bundle.path / "manifest.json").read_text())["training"]["steps"] == 2


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("gaussian-2d", {}, "2d"),
        ("ads,equispaced", {}, "cannot be mixed"),
        ("ads", {"dim": "2d"}, "1d"),
        ("ads", {"init": "equispaced"}, "acs"),
        ("ads", {"pattern": "diagonal"}, "pattern"),
    ],
)
def test_bad_specs_are_refused(
    cine: Path, tmp_path: Path, spec: str, options: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        make_ads_config(cine, spec, tmp_path / "m" / "x" / "1", **options)  # type: ignore[arg-type]
