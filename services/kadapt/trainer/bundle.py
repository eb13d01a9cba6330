"""Export a trained reconstruction model as a bundle the recon service serves (architecture.md section 6).

The bundle contract (docs/trainer.md): ``<repository>/<name>/<version>/`` with ``manifest.json``,
``model.onnx`` and ``model.pt`` (TorchScript). Graph inputs, in order: ``masked_kspace`` float32
``(1, C, H, W, 2)`` divided by the ACS scale, ``mask`` float32 ``(1, 1, 1, W, 1)``, ``sens`` float32
``(1, C, H, W, 2)`` (ACS maps); output ``image`` float32 ``(1, H, W, 2)`` in the normalised scale.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import JsonValue
from torch import nn

from kadapt.bundles import Bundle, BundleGeometry, Manifest, utc_now, write_bundle
from kadapt.bundles.onnx_recon import INPUT_NAMES, MODEL_FILE, OUTPUT_NAME
from kadapt.data.build import code_version
from kadapt.nn.export import export_onnx, export_torchscript
from kadapt.trainer.config import TrainConfig
from kadapt.trainer.data import Batch

__all__ = ["INPUT_NAMES", "NORMALISATION", "ONNX_FILE", "OUTPUT_NAMES", "write_recon_bundle"]

# The I/O names and file come from the one runtime contract (kadapt.bundles.onnx_recon) the services run.
OUTPUT_NAMES = (OUTPUT_NAME,)
NORMALISATION = "acs-p99.5"
PARITY_TOLERANCE = 1e-4
ONNX_FILE = MODEL_FILE
TORCHSCRIPT_FILE = "model.pt"


def write_recon_bundle(
    model: nn.Module,
    config: TrainConfig,
    *,
    geometry: tuple[int, int, int],
    num_acs: int,
    example: Batch,
    training: dict[str, Any],
    validation: dict[str, dict[str, float]],
) -> Bundle:
    """Export ``model`` (CPU) at ``geometry = (C, H, W)`` on ``example`` (a batch of one real validation
    slice), check ONNX Runtime and TorchScript parity (relative L2 <= 1e-4 on the example and one random
    input set), and write the bundle to ``config.out``; returns it loaded and checksum-verified."""
    inputs = (example.masked_kspace, example.mask, example.sens)
    generator = torch.Generator().manual_seed(config.seed)
    with tempfile.TemporaryDirectory(prefix="kadapt-export-") as scratch:
        onnx_path, script_path = Path(scratch) / ONNX_FILE, Path(scratch) / TORCHSCRIPT_FILE
        onnx_report = export_onnx(
            model,
            inputs,
            onnx_path,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            tolerance=PARITY_TOLERANCE,
            generator=generator,
        )
        script_report = export_torchscript(
            model,
            inputs,
            script_path,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            tolerance=PARITY_TOLERANCE,
            generator=generator,
        )
        coils, height, width = geometry
        metrics: dict[str, JsonValue] = {key: dict(entry) for key, entry in validation.items()}
        metrics["onnx_max_relative_l2"] = onnx_report.max_relative_l2
        metrics["torchscript_max_relative_l2"] = script_report.max_relative_l2
        manifest = Manifest(
            name=config.bundle_name,
            version=config.bundle_version,
            kind=config.model,
            geometry=BundleGeometry(ky=width, kx=height, coils=coils),
            accelerations=config.accelerations,
            num_acs=num_acs,
            inputs=onnx_report.inputs,
            outputs=onnx_report.outputs,
            normalisation=NORMALISATION,
            opset=onnx_report.opset,
            training=training,
            validation=metrics,
            code_version=code_version(),
            created=utc_now(),
        )
        return write_bundle(
            config.repository, manifest, {ONNX_FILE: onnx_path, TORCHSCRIPT_FILE: script_path}
        )
