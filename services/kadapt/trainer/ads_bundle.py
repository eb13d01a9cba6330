"""Export of a ``kadapt train ads`` run (docs/dynamic.md C3; docs/trainer.md "train ads").

- The dynamic reconstruction bundle at ``--out`` (kind ``vsharp``, ``training.dynamic = true``):
  ``model.onnx`` with inputs ``masked_kspace (1, T, C, H, W, 2)`` (divided by the ACS scale of the
  frame-averaged ACS), ``mask (1, T, W)`` float32, ``sens (1, C, H, W, 2)`` (frame-averaged ACS maps, the
  SMP refines them inside the graph) and output ``image (1, T, H, W, 2)`` on the normalised scale. For
  ``--sampler opt`` it also holds ``pattern.npy``, the learned scores ``(T, W)`` float32 (served as the
  top-k per frame).
- For ``--sampler ads`` the cascade bundle (kind ``ads``) at ``<repo>/<name>-sampler/<version>``:
  ``cascade-0.onnx`` .. ``cascade-{N-1}.onnx`` (:func:`kadapt.nn.ads_export.export_ads_steps`) and
  ``training.ads = {cascades, pattern, dim, init, recon: "<name>/<version>"}`` naming the recon bundle.
Both manifests record the ONNX-vs-PyTorch parity error (relative L2) in ``validation``.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import JsonValue

from kadapt.bundles import Bundle, BundleGeometry, Manifest, utc_now, write_bundle
from kadapt.data.build import code_version
from kadapt.errors import InvalidInputError
from kadapt.nn.ads import ADSSampler
from kadapt.nn.ads_export import export_ads_steps
from kadapt.nn.export import export_onnx
from kadapt.trainer.ads_config import AdsTrainConfig
from kadapt.trainer.ads_data import CineSlice, apply_mask, family_masks, make_cine_batch
from kadapt.trainer.ads_model import AdsTrainingModel, FramePattern

RECON_INPUT_NAMES = ("masked_kspace", "mask", "sens")
RECON_OUTPUT_NAMES = ("image",)
RECON_FILE = "model.onnx"
PATTERN_FILE = "pattern.npy"
RECON_NORMALISATION = "acs-p99.5 (frame-averaged ACS)"
ADS_NORMALISATION = "mean-magnitude (inside the graph)"
PARITY_TOLERANCE = 1e-4


def _example_mask(model: AdsTrainingModel, config: AdsTrainConfig, item: CineSlice) -> torch.Tensor:
    """A served mask ``(1, T, W)`` of the run's sampler for ``item`` at the first R (export example)."""
    batch = make_cine_batch([item])
    acceleration = config.accelerations[0]
    if model.sampler is not None:
        with torch.no_grad():
            return model.learned_masks(batch, acceleration, train=False, generator=None)
    frames, _coils, _height, width = item.kspace.shape
    rng = np.random.default_rng(config.seed)
    drawn = family_masks(config.families[0], 1, frames, width, acceleration, model.num_acs, rng)
    return torch.from_numpy(drawn.astype(np.float32))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_ads_bundles(
    model: AdsTrainingModel,
    config: AdsTrainConfig,
    geometry: tuple[int, int, int, int],
    example: CineSlice,
    num_acs: int,
    training: dict[str, Any],
    validation: dict[str, dict[str, float]],
) -> tuple[Bundle, Bundle | None]:
    """Export ``model`` (CPU, best weights) at ``geometry = (T, C, H, W)``; returns ``(recon bundle, ads
    bundle or None)``, both loaded back and checksum-verified. Parity above 1e-4 raises BundleError."""
    frames, coils, height, width = geometry
    model.eval()
    mask = _example_mask(model, config, example)
    batch = make_cine_batch([example])
    inputs = (apply_mask(batch.kspace, mask), mask, batch.sens)
    generator = torch.Generator().manual_seed(config.seed)
    metrics: dict[str, JsonValue] = {key: dict(entry) for key, entry in validation.items()}
    with tempfile.TemporaryDirectory(prefix="kadapt-ads-export-") as scratch:
        onnx_path = Path(scratch) / RECON_FILE
        report = export_onnx(
            model.recon, inputs, onnx_path, input_names=RECON_INPUT_NAMES, output_names=RECON_OUTPUT_NAMES,
            tolerance=PARITY_TOLERANCE, generator=generator,
        )  # fmt: skip
        files: dict[str, bytes | Path] = {RECON_FILE: onnx_path}
        if isinstance(model.sampler, FramePattern):
            files[PATTERN_FILE] = _npy(model.sampler.scores().detach().numpy().astype(np.float32))
        recon_training: dict[str, Any] = {**training, "dynamic": True}
        if model.sampler is not None:  # the bench labels rows by it: "frame-specific" | "unified"
            recon_training["pattern"] = config.pattern
        if isinstance(model.sampler, FramePattern):
            recon_training["pattern_file"] = PATTERN_FILE
        manifest = Manifest(
            name=config.bundle_name,
            version=config.bundle_version,
            kind="vsharp",
            geometry=BundleGeometry(ky=width, kx=height, coils=coils, frames=frames),
            accelerations=config.accelerations,
            num_acs=num_acs,
            inputs=report.inputs,
            outputs=report.outputs,
            normalisation=RECON_NORMALISATION,
            opset=report.opset,
            training=recon_training,
            validation={**metrics, "onnx_max_relative_l2": report.max_relative_l2},
            code_version=code_version(),
            created=utc_now(),
        )
        recon_bundle = write_bundle(config.repository, manifest, files)
    sampler_bundle = None
    if isinstance(model.sampler, ADSSampler):
        sampler_bundle = _write_sampler_bundle(model.sampler, config, geometry, num_acs, training, metrics)
    return recon_bundle, sampler_bundle


def _write_sampler_bundle(
    sampler: ADSSampler,
    config: AdsTrainConfig,
    geometry: tuple[int, int, int, int],
    num_acs: int,
    training: dict[str, Any],
    metrics: dict[str, JsonValue],
) -> Bundle:
    frames, _coils, height, width = geometry
    if sampler.dim != "1d":
        raise InvalidInputError("only 1d ADS samplers are exported (serving plans lines)")
    out = config.sampler_out
    with tempfile.TemporaryDirectory(prefix="kadapt-ads-export-") as scratch:
        export = export_ads_steps(
            sampler, Path(scratch), frames, height, width, num_acs=num_acs, tolerance=PARITY_TOLERANCE,
            generator=torch.Generator().manual_seed(config.seed),
        )  # fmt: skip
        first = export.reports[0]
        ads_block: dict[str, JsonValue] = {
            "cascades": sampler.cascades,
            "pattern": sampler.pattern,
            "dim": sampler.dim,
            "init": config.init,
            "recon": f"{config.bundle_name}/{config.bundle_version}",
        }
        manifest = Manifest(
            name=out.parent.name,
            version=out.name,
            kind="ads",
            geometry=BundleGeometry(ky=width, kx=height, coils=None, frames=frames),
            accelerations=config.accelerations,
            num_acs=num_acs,
            inputs=first.inputs,
            outputs=first.outputs,
            normalisation=ADS_NORMALISATION,
            opset=first.opset,
            training={**training, "ads": ads_block, "sampler_model": config.sampler_params},
            validation={
                **metrics,
                "onnx_max_relative_l2": export.max_relative_l2,
                "onnx_relative_l2_per_cascade": [report.max_relative_l2 for report in export.reports],
            },
            code_version=code_version(),
            created=utc_now(),
        )
        files: dict[str, bytes | Path] = {path.name: path for path in export.paths}
        return write_bundle(config.repository, manifest, files)
