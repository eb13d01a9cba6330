"""Write an MNet (or the faithful configuration) as an ``mnet`` bundle the sampler serves.

The runtime contract (docs/sampler.md, "MNet bundles"): ``<repository>/<name>/<version>/`` with
``manifest.json`` and ``model.onnx``; manifest kind ``mnet``, geometry ``ky = W``, ``kx = H``,
``coils = C``, ``num_acs``; graph input ``acs`` float32 ``(1, C, H, num_acs, 2)`` (the raw ACS k-space,
real / imaginary last; normalised inside the graph), output ``scores`` float32 ``(1, W)`` (one logit per
ky line). ``training.fallback`` optionally names the policy the sampler serves when the model cannot
answer (a ``fixed-mask`` bundle or a 1d mask family; default ``vd-random``).

Used by the trainer (learned bundles) and by tests and ``kadapt bench plan-latency`` (random weights,
described as such in ``training.description``). Imports onnxruntime through :mod:`kadapt.nn.export`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import JsonValue

from kadapt.bundles import Bundle, BundleGeometry, Manifest, utc_now, write_bundle
from kadapt.errors import InvalidInputError
from kadapt.nn.export import DEFAULT_TOLERANCE, export_onnx
from kadapt.nn.mnet import MNet, MNetFaithful, count_parameters, mnet_example_inputs

__all__ = [
    "MNET_INPUT_NAME",
    "MNET_MODEL_FILE",
    "MNET_NORMALISATION",
    "MNET_OUTPUT_NAME",
    "export_mnet_bundle",
]

MNET_INPUT_NAME = "acs"
MNET_OUTPUT_NAME = "scores"
MNET_MODEL_FILE = "model.onnx"
MNET_NORMALISATION = "acs-p99.5 (in graph)"


def _architecture(model: MNet | MNetFaithful) -> dict[str, JsonValue]:
    if isinstance(model, MNetFaithful):
        return {"model": "mnet-faithful", "input_domain": model.input_domain, "coil_handling": "average"}
    return {"model": "mnet", "coil_handling": model.coil_handling}


def export_mnet_bundle(
    model: MNet | MNetFaithful,
    repository: Path,
    *,
    name: str,
    version: str = "1",
    accelerations: Sequence[float],
    training: dict[str, JsonValue],
    code_version: str,
    validation: dict[str, JsonValue] | None = None,
    generator: torch.Generator | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
) -> Bundle:
    """Export ``model`` (CPU, eval mode) to ONNX (dynamo, opset 18) at its geometry, check parity
    (relative L2 <= ``tolerance`` on an example and one random ``(1, C, H, num_acs, 2)`` input drawn
    from ``generator``), and write the bundle ``name/version`` into ``repository``.

    ``training`` must carry a ``description`` (shown by ``GET /v1/policies``; say "untrained" for random
    weights). Returns the bundle loaded back, checksums verified. Raises
    :class:`kadapt.errors.BundleError` on a parity failure, :class:`InvalidInputError` without a
    description.
    """
    if not isinstance(training.get("description"), str):
        raise InvalidInputError(f"bundle {name!r}: training needs a 'description' string, got {training!r}")
    geometry = model.geometry
    rng = generator if generator is not None else torch.Generator().manual_seed(0)
    example = mnet_example_inputs(geometry, rng)
    with tempfile.TemporaryDirectory(prefix="kadapt-mnet-export-") as scratch:
        path = Path(scratch) / MNET_MODEL_FILE
        report = export_onnx(
            model,
            example,
            path,
            input_names=(MNET_INPUT_NAME,),
            output_names=(MNET_OUTPUT_NAME,),
            tolerance=tolerance,
            generator=rng,
        )
        metrics: dict[str, JsonValue] = dict(validation or {})
        metrics["onnx_max_relative_l2"] = report.max_relative_l2
        described: dict[str, JsonValue] = {
            **training,
            "architecture": _architecture(model),
            "parameters": count_parameters(model),
        }
        manifest = Manifest(
            name=name,
            version=version,
            kind="mnet",
            geometry=BundleGeometry(ky=geometry.width, kx=geometry.height, coils=geometry.coils),
            accelerations=tuple(float(r) for r in accelerations),
            num_acs=geometry.num_acs,
            inputs=report.inputs,
            outputs=report.outputs,
            normalisation=MNET_NORMALISATION,
            opset=report.opset,
            training=described,
            validation=metrics,
            code_version=code_version,
            created=utc_now(),
        )
        return write_bundle(repository, manifest, {MNET_MODEL_FILE: path}, overwrite=overwrite)
