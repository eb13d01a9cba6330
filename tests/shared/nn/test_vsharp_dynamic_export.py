"""vSHARP 2D+t exports to ONNX (dynamo) through kadapt.nn.export with parity (contract C3 inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kadapt.nn.export import export_onnx
from kadapt.nn.vsharp_dynamic import VSharpDynamic

T, C, N = 4, 2, 16


@pytest.mark.parametrize("factorised", [False, True])
def test_vsharp_dynamic_onnx_parity(tmp_path: Path, factorised: bool) -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    model = VSharpDynamic(
        num_steps=2, chans=4, initializer_channels=(4, 4), initializer_dilations=(1, 2), factorised=factorised
    )
    mask = torch.zeros(1, T, N)
    mask[..., N // 2 - 2 : N // 2 + 2] = 1.0
    mask[:, 1::2, ::3] = 1.0
    sens = torch.randn(1, C, N, N, 2, generator=generator)
    sens = sens / sens.square().sum(dim=(1, 4), keepdim=True).sqrt()
    kspace = torch.randn(1, T, C, N, N, 2, generator=generator) * mask[:, :, None, None, :, None]
    report = export_onnx(
        model,
        (kspace, mask, sens),
        tmp_path / "model.onnx",
        input_names=["masked_kspace", "mask", "sens"],
        output_names=["image"],
        generator=generator,
    )
    assert report.inputs[1].shape == (1, T, N)
    assert report.outputs[0].shape == (1, T, N, N, 2)
    assert report.max_relative_l2 <= 1e-4
