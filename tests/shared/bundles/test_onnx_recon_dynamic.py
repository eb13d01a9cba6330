"""Dynamic (cine) recon bundles in the core runtime (issue 5, contract C3): one inference per slice over all
frames, scale and coil maps from the frame-averaged ACS. A hand-built graph checks the arithmetic exactly;
a tiny exported VSharpDynamic checks the runtime against the torch model on independently built inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from kadapt.bundles import BundleGeometry, Manifest, utc_now, write_bundle
from kadapt.bundles.onnx_recon import (
    MODEL_FILE,
    OUTPUT_NAME,
    OnnxRecon,
    ScanShape,
    is_dynamic,
    open_session,
    rejection,
    warm_up,
)
from kadapt.errors import BundleError
from kadapt.kspace.coils import acs_sensitivities
from kadapt.kspace.preprocess import acs_scale

from .dynamic_recon_fixtures import TinyDynamicGraph, export_tiny_vsharp_dynamic, tiny_vsharp_dynamic

FRAMES, COILS, HEIGHT, WIDTH, NUM_ACS = 3, 2, 8, 12, 2


def _manifest(**changes: Any) -> Manifest:
    fields: dict[str, Any] = {
        "name": "sum-coils-t", "version": "1", "kind": "vsharp",
        "geometry": BundleGeometry(ky=WIDTH, kx=HEIGHT, coils=COILS, frames=FRAMES), "accelerations": (4.0,),
        "num_acs": NUM_ACS, "training": {"dynamic": True}, "code_version": "test", "created": utc_now(),
    }  # fmt: skip
    return Manifest(**{**fields, **changes})


def _sum_coils_graph() -> bytes:
    """``image = sum over coils of masked_kspace * mask`` per frame:
    ``(1, T, C, H, W, 2)`` -> ``(1, T, H, W, 2)``."""
    kspace_shape = [1, FRAMES, COILS, HEIGHT, WIDTH, 2]
    inputs = [
        helper.make_tensor_value_info("masked_kspace", TensorProto.FLOAT, kspace_shape),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, FRAMES, WIDTH]),
        helper.make_tensor_value_info("sens", TensorProto.FLOAT, [1, COILS, HEIGHT, WIDTH, 2]),
    ]
    shape = helper.make_tensor("shape", TensorProto.INT64, [6], [1, FRAMES, 1, 1, WIDTH, 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    nodes = [
        helper.make_node("Reshape", ["mask", "shape"], ["mask6"]),
        helper.make_node("Mul", ["masked_kspace", "mask6"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axes"], [OUTPUT_NAME], keepdims=0),
    ]
    output = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, FRAMES, HEIGHT, WIDTH, 2])
    graph = helper.make_graph(nodes, "sum-coils-t", inputs, [output], initializer=[shape, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def _cine_slice(seed: int = 0) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Masked k-space ``(T, C, H, W)`` whose ACS differs per frame, and its ``(T, W)`` mask."""
    rng = np.random.default_rng(seed)
    shape = (FRAMES, COILS, HEIGHT, WIDTH)
    kspace = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * np.arange(1, FRAMES + 1)[
        :, None, None, None
    ]
    mask = np.zeros((FRAMES, WIDTH), dtype=bool)
    mask[:, WIDTH // 2 - NUM_ACS // 2 : WIDTH // 2 + NUM_ACS // 2] = True
    for frame in range(FRAMES):
        mask[frame, frame::FRAMES] = True
    return np.where(mask[:, None, None, :], kspace, 0).astype(np.complex64), mask


def test_dynamic_inference_is_one_run_per_slice_on_the_frame_averaged_scale(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "models", _manifest(), {MODEL_FILE: _sum_coils_graph()})
    assert is_dynamic(bundle.manifest)
    session, _ = open_session(bundle, ["CPUExecutionProvider"], intra_op_threads=1)
    assert warm_up(session, bundle.manifest) >= 0.0
    runs: list[float] = []
    runtime = OnnxRecon(session, bundle.manifest, on_run=runs.append)
    kspace, mask = _cine_slice()
    images = runtime.infer_frames(kspace, mask, NUM_ACS)
    assert images.shape == (FRAMES, HEIGHT, WIDTH)
    assert images.dtype == np.float32
    # The graph sums normalised coils; the runtime scales the magnitude back by the frame-averaged scale.
    np.testing.assert_allclose(images, np.abs(kspace.sum(axis=1)), rtol=1e-5, atol=1e-5)
    assert len(runs) == 1
    volume = np.stack([kspace, 3 * kspace])
    masks = np.stack([mask, mask])
    out = runtime.reconstruct(volume, masks, NUM_ACS)
    assert out.shape == (2, FRAMES, HEIGHT, WIDTH)
    assert len(runs) == 3
    np.testing.assert_allclose(out[1], 3 * out[0], rtol=1e-5)
    with pytest.raises(BundleError, match="dynamic"):
        runtime.infer_slice(kspace[0], mask[0], NUM_ACS)


def test_dynamic_bundles_need_their_frame_count(tmp_path: Path) -> None:
    manifest = _manifest()
    assert rejection(manifest, ScanShape(COILS, HEIGHT, WIDTH, FRAMES, 4.0)) is None
    reason = rejection(manifest, ScanShape(COILS, HEIGHT, WIDTH, FRAMES + 1, 4.0))
    assert reason is not None
    assert f"x {FRAMES} frames" in reason
    assert f"x {FRAMES + 1} frames" in reason
    open_frames = write_bundle(
        tmp_path / "models", _manifest(geometry=BundleGeometry(ky=WIDTH, kx=HEIGHT, coils=COILS)),
        {MODEL_FILE: _sum_coils_graph()},
    )  # fmt: skip
    session, _ = open_session(open_frames, ["CPUExecutionProvider"])
    with pytest.raises(BundleError, match=r"must fix geometry\.frames"):
        warm_up(session, open_frames.manifest)


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory: pytest.TempPathFactory) -> TinyDynamicGraph:
    torch.set_num_threads(1)
    return export_tiny_vsharp_dynamic(tmp_path_factory.mktemp("graph"), frames=FRAMES, coils=COILS,
                                      height=HEIGHT, width=WIDTH)  # fmt: skip


def _channels(array: np.ndarray[Any, Any]) -> torch.Tensor:
    return torch.from_numpy(np.stack([array.real, array.imag], axis=-1).astype(np.float32))[None]


def test_exported_vsharp_dynamic_matches_torch_on_contract_inputs(
    tmp_path: Path, tiny_graph: TinyDynamicGraph
) -> None:
    from .dynamic_recon_fixtures import write_dynamic_recon_bundle

    bundle = write_dynamic_recon_bundle(tmp_path / "models", tiny_graph, num_acs=NUM_ACS)
    session, _ = open_session(bundle, ["CPUExecutionProvider"], intra_op_threads=1)
    warm_up(session, bundle.manifest)
    kspace, mask = _cine_slice(seed=3)
    images = OnnxRecon(session, bundle.manifest).infer_frames(kspace, mask, NUM_ACS)
    # The contract's inputs built here independently: frame-averaged ACS -> scale and maps.
    averaged = np.zeros_like(kspace[0])
    acs = slice(WIDTH // 2 - NUM_ACS // 2, WIDTH // 2 + NUM_ACS // 2)
    averaged[..., acs] = kspace[..., acs].mean(axis=0)
    scale = acs_scale(averaged, NUM_ACS)
    sens = acs_sensitivities(averaged, NUM_ACS)
    with torch.no_grad():
        expected = tiny_vsharp_dynamic()(
            _channels(kspace / scale), torch.from_numpy(mask.astype(np.float32))[None], _channels(sens)
        )[0].numpy()
    np.testing.assert_allclose(
        images, np.hypot(expected[..., 0], expected[..., 1]) * scale, rtol=1e-3, atol=1e-4 * scale
    )
