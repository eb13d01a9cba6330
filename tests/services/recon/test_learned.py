"""Learned reconstructions served from ONNX bundles: a tiny real bundle (kadapt.nn U-Net with random
weights, exported with kadapt.nn.export) at 32x32x4 coils, R 4, served by the method registry, the worker
and the app (readiness, /v1/models), checked against the same torch model."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from kadapt.bundles import BundleGeometry, Manifest, utc_now, write_bundle
from kadapt.jobs.blobs import BlobStore
from kadapt.jobs.queue import MemoryJobQueue
from kadapt.kspace.coils import acs_sensitivities
from kadapt.kspace.fft import fft2c
from kadapt.kspace.preprocess import acs_scale
from kadapt.nn.export import export_onnx
from kadapt.nn.unet import UNetRecon
from kadapt.recon.api.app import create_app
from kadapt.recon.domain.learned import load_learned, scan_shape
from kadapt.recon.domain.methods import default_registry
from kadapt.recon.domain.worker import ReconMetrics, ReconWorker
from kadapt.schemas.jobs import ReconJob, ReconResult, ReconStatus

from .conftest import serve, settings_for

SIZE = 32
COILS = 4
NUM_ACS = 6
ACCELERATION = 4.0


def phantom_kspace(size: int = SIZE, coils: int = COILS) -> NDArray[np.complex64]:
    """Fully sampled Shepp-Logan x birdcage k-space ``(coil, size, size)`` complex64."""
    import sigpy
    import sigpy.mri

    image = sigpy.shepp_logan((size, size)).astype(np.complex64) * np.float32(300.0)
    maps = sigpy.mri.birdcage_maps((coils, size, size)).astype(np.complex64)
    return fft2c(maps * image).astype(np.complex64)


def line_mask(width: int, acceleration: float, num_acs: int = NUM_ACS) -> NDArray[np.bool_]:
    """ACS block plus equispaced lines, ``round(width / acceleration)`` lines in all: ``(width,)``."""
    mask = np.zeros(width, dtype=bool)
    start = width // 2 - num_acs // 2
    mask[start : start + num_acs] = True
    free = np.flatnonzero(~mask)
    extra = round(width / acceleration) - num_acs
    mask[free[np.linspace(0, free.size - 1, extra).round().astype(int)]] = True
    return mask


def contract_inputs(
    kspace: NDArray[np.complex64], mask: NDArray[np.bool_], num_acs: int = NUM_ACS
) -> tuple[tuple[torch.Tensor, ...], float]:
    """The bundle contract's graph inputs for one slice ``(C, H, W)`` (independently of the service)."""
    masked = np.where(mask[None, None, :], kspace, 0).astype(np.complex64)
    scale = acs_scale(masked, num_acs)
    sens = acs_sensitivities(masked, num_acs)

    def channels(array: NDArray[Any]) -> torch.Tensor:
        return torch.from_numpy(np.stack([array.real, array.imag], axis=-1).astype(np.float32))[None]

    mask_in = torch.from_numpy(mask.astype(np.float32).reshape(1, 1, 1, -1, 1))
    return (channels(masked / scale), mask_in, channels(sens)), scale


def random_unet(seed: int) -> UNetRecon:
    """A tiny U-Net with random weights from an explicit generator (no global seeding)."""
    model = UNetRecon(chans=8, num_pool_layers=2)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def export_tiny_unet(workdir: Path, model: UNetRecon) -> tuple[Path, Manifest]:
    """Export ``model`` at 32x32x4 on phantom inputs; returns ``model.onnx`` and a manifest template."""
    kspace = phantom_kspace()
    inputs, _ = contract_inputs(kspace, line_mask(SIZE, ACCELERATION))
    path = workdir / "model.onnx"
    report = export_onnx(
        model,
        inputs,
        path,
        input_names=["masked_kspace", "mask", "sens"],
        output_names=["image"],
        generator=torch.Generator().manual_seed(1),
    )
    manifest = Manifest(
        name="unet-tiny",
        version="1",
        kind="unet",
        geometry=BundleGeometry(ky=SIZE, kx=SIZE, coils=COILS),
        accelerations=(ACCELERATION,),
        num_acs=NUM_ACS,
        inputs=report.inputs,
        outputs=report.outputs,
        normalisation="acs-p99.5",
        opset=report.opset,
        validation={"ssim": 0.5, "max_relative_l2": report.max_relative_l2},
        code_version="test",
        created=utc_now(),
    )
    return path, manifest


def add_bundle(
    repository: Path, onnx: Path, template: Manifest, name: str, version: str, **fields: Any
) -> Path:
    """Write ``template`` as bundle ``name/version`` (``fields`` override manifest fields)."""
    manifest = Manifest.model_validate({**template.model_dump(), "name": name, "version": version, **fields})
    return write_bundle(repository, manifest, {"model.onnx": onnx}).path


def stage_scan(
    store: BlobStore,
    job_id: str,
    method: str,
    *,
    size: int = SIZE,
    acceleration: float = ACCELERATION,
    slices: int = 1,
) -> tuple[ReconJob, NDArray[np.complex64], NDArray[np.bool_]]:
    """Blobs of a ``(slices, 1, COILS, size, size)`` undersampled phantom (slice s scaled by 10**s) and
    the job naming ``method``; returns the job, k-space and mask."""
    full = phantom_kspace(size)
    mask = np.broadcast_to(line_mask(size, acceleration), (slices, 1, size)).copy()
    kspace = np.stack([full * np.float32(10.0**s) for s in range(slices)])[:, None]
    kspace = np.where(mask[:, :, None, None, :], kspace, 0).astype(np.complex64)
    kspace_path, kspace_sha = store.put_array(f"scans/{job_id}/kspace", kspace)
    mask_path, mask_sha = store.put_array(f"scans/{job_id}/mask", mask)
    job = ReconJob(
        job_id=job_id,
        scan_id=f"scan-{job_id}",
        method=method,
        num_acs=NUM_ACS,
        acceleration=acceleration,
        kspace_path=kspace_path,
        kspace_sha256=kspace_sha,
        mask_path=mask_path,
        mask_sha256=mask_sha,
    )
    return job, kspace, mask


@dataclass(frozen=True)
class Bundles:
    """A repository with ``unet-tiny/1`` (ssim 0.5), ``unet-tiny/2`` (ssim 0.7, same graph) and
    ``unet-wide/1`` (accepts 64x64x4 at R 4, 8; never loadable on a 32x32 graph in practice, only listed),
    plus the torch model they were exported from."""

    repository: Path
    model: UNetRecon
    onnx: Path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    workdir = tmp_path_factory.mktemp("learned")
    model = random_unet(seed=3)
    onnx, template = export_tiny_unet(workdir, model)
    repository = workdir / "models"
    add_bundle(repository, onnx, template, "unet-tiny", "1")
    add_bundle(repository, onnx, template, "unet-tiny", "2", validation={"ssim": 0.7})
    return Bundles(repository, model, onnx)


def torch_reference(model: UNetRecon, kspace: NDArray[np.complex64], mask: NDArray[np.bool_]) -> NDArray[Any]:
    """The torch model on the contract's inputs for every slice: magnitude ``(slice, 1, H, W)`` * s."""
    out = []
    for s in range(kspace.shape[0]):
        inputs, scale = contract_inputs(kspace[s, 0], mask[s, 0])
        with torch.no_grad():
            image = model(*inputs)[0].numpy()
        out.append(np.hypot(image[..., 0], image[..., 1]) * scale)
    return np.stack(out)[:, None]


async def run_job(
    tmp_path: Path, repository: Path, method: str, requested: tuple[str, ...] = (), **scan: Any
) -> tuple[ReconResult, NDArray[np.complex64], NDArray[np.bool_], NDArray[Any] | None, CollectorRegistry]:
    """One job through a real :class:`ReconWorker` whose registry serves ``repository``'s bundles."""
    store = BlobStore(tmp_path / "blobs")
    job, kspace, mask = stage_scan(store, "job-1", method, **scan)
    registry = default_registry(repository)
    registry.attach_learned(load_learned(repository, requested))
    metrics = CollectorRegistry()
    queue = MemoryJobQueue()
    worker = ReconWorker(queue, store, "w", methods=registry, metrics=ReconMetrics.create(metrics))
    await queue.enqueue(job)
    (delivery,) = await queue.claim("w", 1, 0)
    result = await worker.process(delivery)
    assert result is not None
    assert result.status == ReconStatus.done, result.error
    images = None
    if result.images_path is not None and result.images_sha256 is not None:
        images = store.get_array(result.images_path, result.images_sha256)
    return result, kspace, mask, images, metrics


@pytest.mark.parametrize("method", ["unet-tiny/1", "unet-tiny"])
async def test_a_job_naming_the_bundle_is_reconstructed_by_it_as_torch_would(
    tmp_path: Path, bundles: Bundles, method: str
) -> None:
    result, kspace, mask, images, metrics = await run_job(tmp_path, bundles.repository, method, slices=2)
    expected_ref = "unet-tiny/1" if method == "unet-tiny/1" else "unet-tiny/2"  # bare name: newest
    assert (result.method_requested, result.method_used, result.fallback_reason) == (
        method,
        expected_ref,
        None,
    )
    assert images is not None
    assert images.shape == (2, 1, SIZE, SIZE)
    assert images.dtype == np.float32
    reference = torch_reference(bundles.model, kspace, mask)
    relative = np.linalg.norm(images - reference) / np.linalg.norm(reference)
    assert relative < 1e-4
    # Slice 1 is slice 0 x 10: the ACS normalisation makes the served image scale with the input.
    np.testing.assert_allclose(images[1], images[0] * 10.0, rtol=1e-3, atol=1e-3 * float(images[1].max()))
    assert metrics.get_sample_value("kadapt_recon_fallbacks_total") == 0


async def test_auto_picks_the_best_bundle_accepting_the_scan(tmp_path: Path, bundles: Bundles) -> None:
    repository = tmp_path / "models"
    shutil.copytree(bundles.repository, repository)
    template = Manifest.model_validate_json((repository / "unet-tiny" / "1" / "manifest.json").read_text())
    # Higher SSIM but for another matrix: never picked for a 32x32 scan.
    add_bundle(
        repository,
        bundles.onnx,
        template,
        "unet-big",
        "1",
        validation={"ssim": 0.99},
        geometry={"ky": 64, "kx": 64, "coils": 4},
    )
    for method in ("auto", "learned"):
        result, *_ = await run_job(tmp_path / method, repository, method)
        assert (result.method_used, result.fallback_reason) == ("unet-tiny/2", None)


async def test_auto_ranks_the_trainers_per_mask_validation_by_mean_ssim(
    tmp_path: Path, bundles: Bundles
) -> None:
    # The trainer writes {"<mask>/R<R>": {psnr, ssim, nmse}}; the mean SSIM ranks, not the newest created.
    repository = tmp_path / "models"
    template = Manifest.model_validate_json(
        (bundles.repository / "unet-tiny" / "1" / "manifest.json").read_text()
    )
    mixed = {"vd-random/R4": {"psnr": 30.0, "ssim": 0.84}, "mnet/R4": {"psnr": 31.0, "ssim": 0.86}}
    specialised = {"vd-random/R4": {"psnr": 30.5, "ssim": 0.845}, "onnx_max_relative_l2": 1e-6}
    add_bundle(repository, bundles.onnx, template, "mixed", "1", validation=mixed)
    later = template.model_copy(update={"created": template.created + timedelta(hours=1)})
    add_bundle(repository, bundles.onnx, later, "specialised", "1", validation=specialised)
    result, *_ = await run_job(tmp_path / "auto", repository, "learned")
    assert (result.method_used, result.fallback_reason) == ("mixed/1", None)


@pytest.mark.parametrize(
    ("scan", "expected"),
    [
        ({"size": 64}, "bundle 'unet-tiny/1' accepts 32x32x4 at R 4; scan is 64x64x4 at R 4"),
        ({"acceleration": 2.0}, "bundle 'unet-tiny/1' accepts 32x32x4 at R 4; scan is 32x32x4 at R 2"),
    ],
)
async def test_geometry_or_acceleration_mismatch_falls_back_to_cg_sense(
    tmp_path: Path, bundles: Bundles, scan: dict[str, Any], expected: str
) -> None:
    result, _, _, images, metrics = await run_job(tmp_path, bundles.repository, "unet-tiny/1", **scan)
    assert result.method_used == "cg-sense"
    assert result.fallback_reason is not None
    assert expected in result.fallback_reason
    assert images is not None
    assert np.all(np.isfinite(images))
    assert metrics.get_sample_value("kadapt_recon_fallbacks_total") == 1
    auto, *_ = await run_job(tmp_path / "auto", bundles.repository, "auto", **scan)
    assert auto.method_used == "cg-sense"
    assert auto.fallback_reason is not None
    assert "no loaded bundle accepts the scan" in auto.fallback_reason


@pytest.mark.parametrize(
    ("method", "requested", "expected"),
    [
        ("unet-tiny/9", (), "'unet-tiny/9' names a model bundle, but no learned reconstruction"),
        ("ghost", ("ghost",), "'ghost' names a model bundle, but no learned reconstruction"),
        ("unet-tiny", ("unet-tiny/1", "unet-tiny/2"), None),
        ("unet-tiny/1", ("unet-tiny/2",), "'unet-tiny/1' names a model bundle, but no learned"),
    ],
)
async def test_missing_or_unloaded_bundles_fall_back_with_the_reason(
    tmp_path: Path, bundles: Bundles, method: str, requested: tuple[str, ...], expected: str | None
) -> None:
    result, *_ = await run_job(tmp_path, bundles.repository, method, requested)
    if expected is None:
        assert result.method_used == "unet-tiny/2"
    else:
        assert result.method_used == "cg-sense"
        assert result.fallback_reason is not None
        assert expected in result.fallback_reason


def test_a_choice_with_the_scan_shape_is_final_at_once(bundles: Bundles) -> None:
    registry = default_registry(bundles.repository)
    registry.attach_learned(load_learned(bundles.repository))
    kspace = np.zeros((1, 1, COILS, SIZE, SIZE), np.complex64)
    shape = scan_shape(kspace, line_mask(SIZE, 4.0)[None, None])
    assert registry.choose("auto", shape).method.name == "unet-tiny/2"
    wrong = scan_shape(kspace, line_mask(SIZE, 8.0, num_acs=2)[None, None])
    assert registry.choose("unet-tiny/1", wrong).method.name == "cg-sense"


async def test_the_app_serves_loaded_bundles_and_lists_them(tmp_path: Path, bundles: Bundles) -> None:
    settings = settings_for(tmp_path, model_repository=bundles.repository, bundles=["unet-tiny/2"])
    app = create_app(settings, queue=MemoryJobQueue())
    async with serve(app) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        (listed,) = ready.json()["bundles"]
        assert (listed["ref"], listed["state"], listed["explicit"]) == ("unet-tiny/2", "loaded", True)
        models = (await client.get("/v1/models")).json()
        assert models["providers_requested"] == ["CPUExecutionProvider"]
        (bundle,) = models["bundles"]
        assert bundle["providers"] == ["CPUExecutionProvider"]
        assert (bundle["kind"], bundle["accelerations"], bundle["num_acs"]) == ("unet", [4.0], NUM_ACS)
        assert bundle["geometry"] == {"ky": SIZE, "kx": SIZE, "coils": COILS, "frames": None}
        assert bundle["validation"]["ssim"] == 0.7
        assert bundle["warmup_ms"] > 0
        methods = {m["name"]: m["kind"] for m in (await client.get("/v1/methods")).json()}
        assert methods["unet-tiny/2"] == "learned"

        job, *_ = stage_scan(BlobStore(tmp_path / "blobs"), "api-job", "auto")
        assert (await client.post("/v1/jobs", json=job.model_dump(mode="json"))).status_code == 202
        for _ in range(500):
            response = await client.get("/v1/jobs/api-job")
            if response.status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert response.json()["method_used"] == "unet-tiny/2"
        text = (await client.get("/metrics")).text
        assert 'kadapt_recon_inference_seconds_count{bundle="unet-tiny/2"} 1.0' in text


@pytest.mark.parametrize("explicit", [True, False])
async def test_a_tampered_model_is_refused(tmp_path: Path, bundles: Bundles, explicit: bool) -> None:
    repository = tmp_path / "models"
    shutil.copytree(bundles.repository, repository)
    with (repository / "unet-tiny" / "1" / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    requested = ["unet-tiny/1", "unet-tiny/2"] if explicit else []
    settings = settings_for(tmp_path, model_repository=repository, bundles=requested)
    app = create_app(settings, queue=MemoryJobQueue())
    async with serve(app) as client:
        ready = await client.get("/readyz")
        models = (await client.get("/v1/models")).json()
    states = {b["ref"]: (b["state"], b.get("reason") or "") for b in models["bundles"]}
    assert states["unet-tiny/2"][0] == "loaded"
    assert states["unet-tiny/1"][0] == "failed"
    assert states["unet-tiny/1"][1].startswith("checksum-mismatch: bundle unet-tiny/1: file 'model.onnx'")
    if explicit:
        assert ready.status_code == 503
        problem = ready.json()
        assert "unet-tiny/1" in problem["detail"]
        assert "checksum-mismatch" in problem["detail"]
        assert {b["ref"]: b["state"] for b in problem["bundles"]} == {
            "unet-tiny/1": "failed",
            "unet-tiny/2": "loaded",
        }
    else:
        # Discovered implicitly: listed as failed, but the service serves the rest.
        assert ready.status_code == 200


@pytest.mark.parametrize("strict", [True, False])
async def test_a_requested_provider_that_fell_back_fails_readiness_in_strict_mode(
    tmp_path: Path, bundles: Bundles, strict: bool
) -> None:
    settings = settings_for(
        tmp_path,
        model_repository=bundles.repository,
        bundles=["unet-tiny/2"],
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        strict_providers=strict,
    )
    app = create_app(settings, queue=MemoryJobQueue())
    async with serve(app) as client:
        ready = await client.get("/readyz")
        models = (await client.get("/v1/models")).json()
    assert models["providers_requested"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert models["bundles"][0]["providers"] == ["CPUExecutionProvider"]
    if strict:
        assert ready.status_code == 503
        assert "CUDAExecutionProvider" in ready.json()["detail"]
    else:
        assert ready.status_code == 200
