"""ADS cascade steps export to cascade-k.onnx with the contract's inputs / outputs and PyTorch parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from kadapt.errors import InvalidInputError
from kadapt.nn.ads import ADSSampler, export_ads_steps
from kadapt.nn.ads_export import structured_inputs

T, H, W = 4, 16, 16


@pytest.mark.parametrize("pattern", ["frame-specific", "unified"])
def test_every_cascade_exports_with_parity(tmp_path: Path, pattern: str) -> None:
    torch.set_num_threads(1)
    model = ADSSampler(T, H, W, cascades=2, pattern=pattern, chans=4, mlp_hidden=16)  # type: ignore[arg-type]
    result = export_ads_steps(model, tmp_path, T, H, W, num_acs=4, generator=torch.Generator().manual_seed(0))
    assert [p.name for p in result.paths] == ["cascade-0.onnx", "cascade-1.onnx"]
    assert result.max_relative_l2 <= 1e-4
    for report in result.reports:
        assert [(s.name, s.shape, s.dtype) for s in report.inputs] == [
            ("image", (1, T, H, W, 2), "float32"),
            ("mask", (1, T, W), "float32"),
        ]
        assert [(s.name, s.shape) for s in report.outputs] == [("scores", (1, T, W))]
        assert report.checked_inputs == 2  # structured + random
    # The file's scores zero acquired lines and are scale-free, like the torch model.
    image, mask = structured_inputs(T, H, W, 4)
    session = onnxruntime.InferenceSession(str(result.paths[1]), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"image": image.numpy(), "mask": mask.numpy()})[0]
    assert np.all(scores[mask.numpy() == 1] == 0)
    assert np.all(scores[mask.numpy() == 0] > 0)
    scaled = session.run(None, {"image": 300.0 * image.numpy(), "mask": mask.numpy()})[0]
    np.testing.assert_allclose(scaled, scores, rtol=1e-4, atol=1e-6)


def test_geometry_must_match_the_model(tmp_path: Path) -> None:
    model = ADSSampler(T, H, W, chans=4, mlp_hidden=16)
    with pytest.raises(InvalidInputError, match="geometry"):
        export_ads_steps(model, tmp_path, T + 1, H, W)
