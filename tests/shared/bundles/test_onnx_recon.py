"""The ONNX recon-bundle runtime contract in the core: scan shapes, acceptance, sessions and inference
per slice on a hand-built graph (no torch), checked independently of the trainer's exporter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kadapt.bundles import Bundle, BundleGeometry, Manifest, utc_now, write_bundle
from kadapt.bundles.onnx_recon import (
    INPUT_NAMES,
    MODEL_FILE,
    OUTPUT_NAME,
    OnnxRecon,
    ScanShape,
    open_session,
    rejection,
    scan_shape,
    warm_up,
)
from kadapt.errors import BundleError, GeometryMismatchError
from kadapt.kspace.preprocess import acs_scale

COILS, HEIGHT, WIDTH, NUM_ACS = 3, 8, 16, 4


def _manifest(**changes: Any) -> Manifest:
    fields: dict[str, Any] = {
        "name": "sum-coils", "version": "1", "kind": "unet",
        "geometry": BundleGeometry(ky=WIDTH, kx=HEIGHT, coils=COILS), "accelerations": (4.0,),
        "num_acs": NUM_ACS, "normalisation": "acs-p99.5", "code_version": "test", "created": utc_now(),
    }  # fmt: skip
    return Manifest(**{**fields, **changes})


def _sum_coils_graph(input_names: tuple[str, ...] = INPUT_NAMES) -> bytes:
    """``image = sum over coils of masked_kspace * mask`` (real/imag kept): a stand-in reconstruction."""
    kspace_shape = [1, COILS, HEIGHT, WIDTH, 2]
    inputs = [
        helper.make_tensor_value_info(input_names[0], TensorProto.FLOAT, kspace_shape),
        helper.make_tensor_value_info(input_names[1], TensorProto.FLOAT, [1, 1, 1, WIDTH, 1]),
        helper.make_tensor_value_info(input_names[2], TensorProto.FLOAT, kspace_shape),
    ]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Mul", [input_names[0], input_names[1]], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axes"], [OUTPUT_NAME], keepdims=0),
    ]
    output = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, HEIGHT, WIDTH, 2])
    graph = helper.make_graph(nodes, "sum-coils", inputs, [output], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _bundle(tmp_path: Path, graph: bytes, **changes: Any) -> Bundle:
    return write_bundle(tmp_path / "models", _manifest(**changes), {MODEL_FILE: graph})


def _slice(seed: int = 0) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    kspace = rng.standard_normal((COILS, HEIGHT, WIDTH)) + 1j * rng.standard_normal((COILS, HEIGHT, WIDTH))
    mask = np.zeros(WIDTH, dtype=bool)
    mask[WIDTH // 2 - NUM_ACS // 2 : WIDTH // 2 + NUM_ACS // 2] = True
    return np.where(mask, kspace, 0).astype(np.complex64), mask


def test_scan_shape_and_acceptance() -> None:
    kspace = np.zeros((2, 1, COILS, HEIGHT, WIDTH), dtype=np.complex64)
    mask = np.zeros((2, 1, WIDTH), dtype=bool)
    mask[..., :4] = True
    shape = scan_shape(kspace, mask)
    assert shape == ScanShape(coils=COILS, height=HEIGHT, width=WIDTH, frames=1, acceleration=4.0)
    assert rejection(_manifest(), shape) is None
    # Rounded line budgets: within 10 % of a manifest R is that R.
    assert rejection(_manifest(), ScanShape(COILS, HEIGHT, WIDTH, 1, 4.3)) is None
    assert "at R 8" in str(rejection(_manifest(), ScanShape(COILS, HEIGHT, WIDTH, 1, 8.0)))
    assert "scan is 8x16x4" in str(rejection(_manifest(), ScanShape(4, HEIGHT, WIDTH, 1, 4.0)))
    with pytest.raises(GeometryMismatchError):
        scan_shape(kspace, mask[:, :, :-1])


def test_inference_follows_the_contract(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, _sum_coils_graph())
    session, providers = open_session(bundle, ["CPUExecutionProvider"], intra_op_threads=1)
    assert providers == ("CPUExecutionProvider",)
    assert warm_up(session, bundle.manifest) >= 0.0
    seen: list[float] = []
    runtime = OnnxRecon(session, bundle.manifest, on_run=seen.append)
    kspace, mask = _slice()
    image = runtime.infer_slice(kspace, mask, NUM_ACS)
    # The graph sums normalised coils; the runtime multiplies the magnitude back by the ACS scale.
    assert acs_scale(kspace, NUM_ACS) != pytest.approx(1.0)
    np.testing.assert_allclose(image, np.abs(kspace.sum(axis=0)), rtol=1e-5, atol=1e-6)
    assert image.dtype == np.float32
    assert len(seen) == 1
    volume = np.stack([kspace, 10 * kspace])[:, None]
    masks = np.broadcast_to(mask, (2, 1, WIDTH))
    images = runtime.reconstruct(volume, masks, NUM_ACS)
    assert images.shape == (2, 1, HEIGHT, WIDTH)
    np.testing.assert_allclose(images[1, 0], 10 * images[0, 0], rtol=1e-5)


def test_sessions_refuse_foreign_graphs_and_open_geometries(tmp_path: Path) -> None:
    foreign = _bundle(tmp_path, _sum_coils_graph(("kspace", "mask", "maps")))
    with pytest.raises(BundleError, match="expected inputs"):
        open_session(foreign, ["CPUExecutionProvider"])
    coil_agnostic = _bundle(
        tmp_path, _sum_coils_graph(), version="2", geometry=BundleGeometry(ky=WIDTH, kx=HEIGHT)
    )
    session, _ = open_session(coil_agnostic, ["CPUExecutionProvider"])
    with pytest.raises(BundleError, match="must fix kx and coils"):
        warm_up(session, coil_agnostic.manifest)
