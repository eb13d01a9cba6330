"""ONNX (dynamo) and TorchScript export with parity reports, for the U-Net and MoDL."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from kadapt.bundles import TensorSpec
from kadapt.errors import BundleError, InvalidInputError
from kadapt.nn.export import (
    ExportReport,
    check_parity,
    export_onnx,
    export_torchscript,
    random_like_inputs,
    relative_l2_error,
    verify_onnx,
)
from kadapt.nn.modl import MoDL
from kadapt.nn.physics import complex_abs_sq
from kadapt.nn.unet import UNet

B, C, H, W = 1, 2, 32, 32
MODL_NAMES = (("masked_kspace", "mask", "sens"), ("image",))


def _modl_inputs(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sens = torch.randn((B, C, H, W, 2), generator=g)
    sens = sens / complex_abs_sq(sens).sum(dim=1, keepdim=True).sqrt().unsqueeze(-1)
    mask = torch.zeros((B, 1, 1, W, 1))
    mask[..., ::3, :] = 1.0
    mask[..., W // 2 - 2 : W // 2 + 2, :] = 1.0
    return mask * torch.randn((B, C, H, W, 2), generator=g), mask, sens


def _trained_looking_modl(g: torch.Generator) -> MoDL:
    model = MoDL(num_unrolls=2, cg_iterations=3, denoiser_channels=8)
    with torch.no_grad():  # leave the identity initialisation so the denoiser matters in the graph
        model.denoiser.body[-1].weight.normal_(0.0, 0.05, generator=g)
    return model


@pytest.fixture(scope="module")
def modl_onnx(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ExportReport, MoDL, tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(0)
    model = _trained_looking_modl(g)
    inputs = _modl_inputs(g)
    path = tmp_path_factory.mktemp("modl") / "model.onnx"
    report = export_onnx(
        model, inputs, path, input_names=MODL_NAMES[0], output_names=MODL_NAMES[1], generator=g
    )
    return report, model, inputs


def test_modl_onnx_parity_and_report(modl_onnx: tuple[ExportReport, MoDL, tuple[torch.Tensor, ...]]) -> None:
    report, model, _ = modl_onnx
    assert report.format == "onnx"
    assert report.opset == 18
    assert report.max_relative_l2 <= 1e-4
    assert report.checked_inputs == 2  # the example inputs and one fresh random set
    assert report.providers == ("CPUExecutionProvider",)
    assert report.inputs == (
        TensorSpec(name="masked_kspace", shape=(B, C, H, W, 2), dtype="float32"),
        TensorSpec(name="mask", shape=(B, 1, 1, W, 1), dtype="float32"),
        TensorSpec(name="sens", shape=(B, C, H, W, 2), dtype="float32"),
    )
    assert report.outputs == (TensorSpec(name="image", shape=(B, H, W, 2), dtype="float32"),)
    assert report.sha256 == hashlib.sha256(report.path.read_bytes()).hexdigest()
    assert model.training, "export restores the model's training mode"


def test_modl_onnx_graph_computes_dfts_as_matmuls_at_the_opset(
    modl_onnx: tuple[ExportReport, MoDL, tuple[torch.Tensor, ...]],
) -> None:
    report, _, _ = modl_onnx
    graph = onnx.load(str(report.path))
    assert {op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")} == {18}
    op_types = {node.op_type for node in graph.graph.node}
    functions = {node.op_type for function in graph.functions for node in function.node}
    # ORT's DFT kernel is slow on CPU: the export emits the centered DFTs as GEMMs (kadapt.kspace.torch_fft)
    assert "DFT" not in op_types | functions
    assert "MatMul" in op_types | functions
    assert [i.name for i in graph.graph.input] == list(MODL_NAMES[0])


def test_verify_onnx_raises_bundle_error_with_the_numbers_when_the_tolerance_is_impossible(
    modl_onnx: tuple[ExportReport, MoDL, tuple[torch.Tensor, ...]],
) -> None:
    report, model, inputs = modl_onnx
    with pytest.raises(BundleError, match=r"max relative L2 error .* > tolerance 1\.000e-12") as caught:
        verify_onnx(report.path, model, [inputs], input_names=MODL_NAMES[0], tolerance=1e-12)
    assert caught.value.extra["max_relative_l2"] == pytest.approx(report.max_relative_l2, rel=1.0)


def test_verify_onnx_detects_a_model_that_drifted_from_the_file(
    modl_onnx: tuple[ExportReport, MoDL, tuple[torch.Tensor, ...]],
) -> None:
    report, model, inputs = modl_onnx
    drifted = _trained_looking_modl(torch.Generator().manual_seed(99))
    drifted.load_state_dict(model.state_dict())
    with torch.no_grad():
        drifted.lambda_raw.add_(1.0)
    with pytest.raises(BundleError, match="parity against PyTorch failed"):
        verify_onnx(report.path, drifted, [inputs], input_names=MODL_NAMES[0])


def test_unet_onnx_export_parity(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    model = UNet(2, 2, chans=8, num_pool_layers=2)
    example = (torch.randn((1, 2, 33, 35), generator=g),)  # odd sizes: the reflect padding is exported
    report = export_onnx(
        model, example, tmp_path / "unet.onnx", input_names=["image"], output_names=["refined"], generator=g
    )
    assert report.max_relative_l2 <= 1e-4
    assert report.inputs[0].shape == (1, 2, 33, 35)
    assert report.outputs[0] == TensorSpec(name="refined", shape=(1, 2, 33, 35), dtype="float32")


def test_modl_torchscript_export_parity(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    model = _trained_looking_modl(g)
    report = export_torchscript(
        model,
        _modl_inputs(g),
        tmp_path / "model.pt",
        input_names=MODL_NAMES[0],
        output_names=MODL_NAMES[1],
        random_checks=2,
        generator=g,
    )
    assert report.format == "torchscript"
    assert report.opset is None
    assert report.providers == ("torch.jit",)
    assert report.checked_inputs == 3
    assert report.max_relative_l2 <= 1e-5
    assert report.sha256 == hashlib.sha256((tmp_path / "model.pt").read_bytes()).hexdigest()


def test_relative_l2_error_and_check_parity() -> None:
    reference = np.array([3.0, 4.0], dtype=np.float32)
    assert relative_l2_error(reference, reference) == 0.0
    assert relative_l2_error(reference, np.array([3.0, 4.5])) == pytest.approx(0.1)
    assert relative_l2_error(np.zeros(2), np.array([0.0, 2.0])) == pytest.approx(2.0)
    assert relative_l2_error(reference, np.array([np.nan, 4.0])) == float("inf")
    with pytest.raises(BundleError, match="output shape"):
        relative_l2_error(reference, np.zeros(3))
    check_parity(1e-5, 1e-4, what="model.onnx")
    with pytest.raises(BundleError, match=r"model\.onnx: .* 2\.000e-04 > tolerance 1\.000e-04"):
        check_parity(2e-4, 1e-4, what="model.onnx")
    with pytest.raises(BundleError):
        check_parity(float("nan"), 1e-4, what="model.onnx")


def test_random_like_inputs_keep_masks_binary_and_shapes() -> None:
    g = torch.Generator().manual_seed(3)
    kspace, mask, sens = _modl_inputs(g)
    fresh = random_like_inputs((kspace, mask, sens), torch.Generator().manual_seed(4))
    assert [t.shape for t in fresh] == [kspace.shape, mask.shape, sens.shape]
    assert set(torch.unique(fresh[1]).tolist()) <= {0.0, 1.0}
    assert not torch.equal(fresh[2], sens)
    again = random_like_inputs((kspace, mask, sens), torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(fresh, again, strict=True))


def test_mismatched_names_are_rejected(tmp_path: Path) -> None:
    model = UNet(2, 2, chans=4, num_pool_layers=1)
    with pytest.raises(InvalidInputError, match="2 input names"):
        export_onnx(
            model, (torch.zeros(1, 2, 8, 8),), tmp_path / "x.onnx", input_names=["a", "b"], output_names=["y"]
        )
