"""Dynamic (cine) recon bundles served by the recon worker (issue 5, contract C3): a tiny exported
VSharpDynamic bundle reconstructs whole cine slices, ``auto`` prefers it on scans of its frame count over a
frame-agnostic bundle with a higher validation SSIM, and refuses other frame counts with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from onnx import TensorProto, helper
from tests.shared.bundles.dynamic_recon_fixtures import export_tiny_vsharp_dynamic, write_dynamic_recon_bundle

from kadapt.bundles import BundleGeometry, Manifest, load_bundle, utc_now, write_bundle
from kadapt.bundles.onnx_recon import OnnxRecon, open_session
from kadapt.jobs.blobs import BlobStore
from kadapt.jobs.queue import MemoryJobQueue
from kadapt.kspace.fft import fft2c
from kadapt.masks import make_mask
from kadapt.recon.domain.learned import load_learned
from kadapt.recon.domain.methods import default_registry
from kadapt.recon.domain.worker import ReconWorker
from kadapt.schemas.jobs import ReconJob, ReconResult, ReconStatus

FRAMES, COILS, HEIGHT, WIDTH, NUM_ACS = 4, 2, 16, 24, 2
DYNAMIC_REF = "tiny-vsharp/1"
STATIC_REF = "static-sum/1"


def _static_graph() -> bytes:
    """A frame-agnostic stand-in recon: ``image = sum over coils of masked_kspace * mask``."""
    shape = [1, COILS, HEIGHT, WIDTH, 2]
    inputs = [
        helper.make_tensor_value_info("masked_kspace", TensorProto.FLOAT, shape),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 1, WIDTH, 1]),
        helper.make_tensor_value_info("sens", TensorProto.FLOAT, shape),
    ]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Mul", ["masked_kspace", "mask"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axes"], ["image"], keepdims=0),
    ]
    output = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, HEIGHT, WIDTH, 2])
    graph = helper.make_graph(nodes, "static-sum", inputs, [output], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny-vsharp/1`` (dynamic, T = 4, validation SSIM 0.5) and ``static-sum/1`` (frame-agnostic, 0.99)."""
    torch.set_num_threads(1)
    workdir = tmp_path_factory.mktemp("dynamic-recon")
    graph = export_tiny_vsharp_dynamic(
        workdir / "graph", frames=FRAMES, coils=COILS, height=HEIGHT, width=WIDTH
    )
    models = workdir / "models"
    write_dynamic_recon_bundle(models, graph, num_acs=NUM_ACS, validation_ssim=0.5)
    static = Manifest(
        name="static-sum", version="1", kind="unet",
        geometry=BundleGeometry(ky=WIDTH, kx=HEIGHT, coils=COILS), accelerations=(4.0, 6.0, 8.0),
        num_acs=NUM_ACS, validation={"ssim": 0.99}, code_version="test", created=utc_now(),
    )  # fmt: skip
    write_bundle(models, static, {"model.onnx": _static_graph()})
    return models


def _cine_scan(frames: int, slices: int = 2) -> tuple[NDArray[np.complex64], NDArray[np.bool_]]:
    """Undersampled cine k-space ``(slices, frames, C, H, W)`` (slice s scaled by 10**s) and kt masks."""
    rng = np.random.default_rng(0)
    rows, cols = np.meshgrid(np.linspace(-1, 1, HEIGHT), np.linspace(-1, 1, WIDTH), indexing="ij")
    images = np.stack([(rows**2 / 0.6 + cols**2 / (0.3 + 0.05 * t) < 1.0) * 1.0 for t in range(frames)])
    coils = np.stack(
        [np.exp(-((rows - 0.5 * np.cos(c)) ** 2 + (cols - 0.5 * np.sin(c)) ** 2)) for c in range(COILS)]
    )
    full = fft2c(images[:, None] * coils[None]).astype(np.complex64)
    kspace = np.stack([full * np.float32(10.0**s) for s in range(slices)])
    mask = make_mask("kt-equispaced", width=WIDTH, acceleration=4.0, num_acs=NUM_ACS, rng=rng, frames=frames)
    masks = np.broadcast_to(mask, (slices, frames, WIDTH)).copy()
    return np.where(masks[:, :, None, None, :], kspace, 0).astype(np.complex64), masks


async def _run(
    tmp_path: Path, repository: Path, method: str, frames: int
) -> tuple[ReconResult, Any, Any, Any]:
    store = BlobStore(tmp_path / "blobs")
    kspace, mask = _cine_scan(frames)
    kspace_path, kspace_sha = store.put_array("scans/j/kspace", kspace)
    mask_path, mask_sha = store.put_array("scans/j/mask", mask)
    job = ReconJob(
        job_id="j", scan_id="scan-j", method=method, num_acs=NUM_ACS, acceleration=4.0,
        kspace_path=kspace_path, kspace_sha256=kspace_sha, mask_path=mask_path, mask_sha256=mask_sha,
    )  # fmt: skip
    registry = default_registry(repository)
    registry.attach_learned(load_learned(repository))
    queue = MemoryJobQueue()
    worker = ReconWorker(queue, store, "w", methods=registry)
    await queue.enqueue(job)
    (delivery,) = await queue.claim("w", 1, 0)
    result = await worker.process(delivery)
    assert result is not None
    assert result.status == ReconStatus.done, result.error
    assert result.images_path is not None
    assert result.images_sha256 is not None
    return result, store.get_array(result.images_path, result.images_sha256), kspace, mask


@pytest.mark.parametrize("method", ["auto", "tiny-vsharp"])
async def test_cine_scans_are_reconstructed_by_the_dynamic_bundle(
    tmp_path: Path, repository: Path, method: str
) -> None:
    result, images, kspace, mask = await _run(tmp_path, repository, method, FRAMES)
    # auto: the bundle fixed to 4 frames beats the frame-agnostic one despite its lower validation SSIM.
    assert (result.method_used, result.fallback_reason) == (DYNAMIC_REF, None)
    assert images.shape == (2, FRAMES, HEIGHT, WIDTH)
    assert images.dtype == np.float32
    bundle = load_bundle(repository, "tiny-vsharp", "1")
    session, _ = open_session(bundle, ["CPUExecutionProvider"])
    expected = OnnxRecon(session, bundle.manifest).infer_frames(kspace[0], mask[0], NUM_ACS)
    np.testing.assert_allclose(images[0], expected, rtol=1e-4, atol=1e-4 * float(expected.max()))
    # Slice 1 is slice 0 x 10: the frame-averaged ACS normalisation makes the image scale with the input.
    np.testing.assert_allclose(images[1], 10 * images[0], rtol=1e-3, atol=1e-3 * float(images[1].max()))


async def test_other_frame_counts_go_to_frame_agnostic_bundles_or_fall_back(
    tmp_path: Path, repository: Path
) -> None:
    auto, images, *_ = await _run(tmp_path / "auto", repository, "auto", FRAMES - 1)
    assert (auto.method_used, auto.fallback_reason) == (STATIC_REF, None)
    assert images.shape == (2, FRAMES - 1, HEIGHT, WIDTH)
    named, *_ = await _run(tmp_path / "named", repository, "tiny-vsharp/1", FRAMES - 1)
    assert named.method_used == "cg-sense"
    assert named.fallback_reason is not None
    assert f"accepts {HEIGHT}x{WIDTH}x{COILS} x {FRAMES} frames" in named.fallback_reason
    assert f"scan is {HEIGHT}x{WIDTH}x{COILS} x {FRAMES - 1} frames" in named.fallback_reason
