"""Quick training runs of every model kind produce bundles that follow the recon bundle contract."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from kadapt.bundles import load_bundle
from kadapt.nn.export import relative_l2_error
from kadapt.trainer.bundle import INPUT_NAMES
from kadapt.trainer.config import build_model, make_config
from kadapt.trainer.data import SliceDataset, make_batch, validation_masks

from .conftest import ACCELERATIONS, MASKS, QuickRun

KINDS = ("unet", "modl", "vsharp")


@pytest.mark.parametrize("kind", KINDS)
def test_manifest_follows_the_bundle_contract(
    kind: str, quick_runs: dict[str, QuickRun], tiny_dataset: Path
) -> None:
    run = quick_runs[kind]
    bundle = load_bundle(run.repository, kind, "1")  # verifies sha256 of every file
    manifest = bundle.manifest
    assert manifest.kind == kind
    assert set(manifest.files) == {"model.onnx", "model.pt"}
    assert (manifest.geometry.ky, manifest.geometry.kx, manifest.geometry.coils) == (32, 32, 4)
    assert manifest.accelerations == ACCELERATIONS
    assert manifest.num_acs == 32 // 8
    assert manifest.normalisation == "acs-p99.5"
    assert manifest.opset == 18
    assert [(spec.name, spec.shape, spec.dtype) for spec in manifest.inputs] == [
        ("masked_kspace", (1, 4, 32, 32, 2), "float32"),
        ("mask", (1, 1, 1, 32, 1), "float32"),
        ("sens", (1, 4, 32, 32, 2), "float32"),
    ]
    assert [(spec.name, spec.shape, spec.dtype) for spec in manifest.outputs] == [
        ("image", (1, 32, 32, 2), "float32")
    ]
    assert re.fullmatch(r"kadapt \S+( \(\w+\))?", manifest.code_version)
    training = manifest.training
    assert training["data"] == tiny_dataset.name
    assert training["dataset_seed"] == 0
    assert (training["train_slices"], training["val_slices"]) == (2, 2)
    assert training["masks"] == list(MASKS)
    assert training["accelerations"] == list(ACCELERATIONS)
    assert (training["steps"], training["epochs"]) == (2, 1)
    assert isinstance(training["loss"], dict)
    assert training["loss"]["preset"] == "seed004"


@pytest.mark.parametrize("kind", KINDS)
def test_validation_metrics_are_finite_per_mask_and_r(kind: str, quick_runs: dict[str, QuickRun]) -> None:
    validation = load_bundle(quick_runs[kind].repository, kind, "1").manifest.validation
    for family in MASKS:
        for acceleration in ACCELERATIONS:
            entry = validation[f"{family}/R{acceleration:g}"]
            assert isinstance(entry, dict)
            assert set(entry) == {"psnr", "ssim", "nmse"}
            assert all(isinstance(v, float) and math.isfinite(v) for v in entry.values())
            assert 0.0 < float(entry["ssim"]) <= 1.0  # type: ignore[arg-type]
    for key in ("onnx_max_relative_l2", "torchscript_max_relative_l2"):
        value = validation[key]
        assert isinstance(value, float)
        assert 0.0 <= value <= 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_matches_the_best_checkpoint_on_a_real_slice(
    kind: str, quick_runs: dict[str, QuickRun], tiny_dataset: Path
) -> None:
    run = quick_runs[kind]
    bundle = load_bundle(run.repository, kind, "1")
    session = onnxruntime.InferenceSession(str(bundle.file("model.onnx")), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == list(INPUT_NAMES)
    assert [node.name for node in session.get_outputs()] == ["image"]
    config = make_config(
        kind, tiny_dataset, ACCELERATIONS, MASKS, run.repository / kind / "unused", quick=True
    )
    model = build_model(config.model, config.model_params)
    model.load_state_dict(torch.load(run.runs / "best.pt", weights_only=True)["model"])
    model.eval()
    val = SliceDataset(tiny_dataset, "val", bundle.manifest.num_acs)
    mask = validation_masks(MASKS, ACCELERATIONS, 32, bundle.manifest.num_acs, seed=7)[("vd-random", 3.0)]
    batch = make_batch([val.slices[-1]], mask[None, :])
    feeds = {
        "masked_kspace": batch.masked_kspace.numpy(),
        "mask": batch.mask.numpy(),
        "sens": batch.sens.numpy(),
    }
    for name, array in feeds.items():
        spec = next(spec for spec in bundle.manifest.inputs if spec.name == name)
        assert array.shape == spec.shape
    (onnx_image,) = session.run(None, feeds)
    with torch.no_grad():
        torch_image = model(batch.masked_kspace, batch.mask, batch.sens).numpy()
    assert onnx_image.shape == (1, 32, 32, 2)
    assert np.all(np.isfinite(onnx_image))
    assert relative_l2_error(torch_image, onnx_image) <= 1e-4
