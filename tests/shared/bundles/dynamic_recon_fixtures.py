"""Tiny dynamic reconstruction bundles for tests (issue 5, contract C3): a small
:class:`kadapt.nn.vsharp_dynamic.VSharpDynamic` with random weights, exported with
:func:`kadapt.nn.export.export_onnx` (parity checked) and written with :func:`kadapt.bundles.write_bundle`
as kind ``vsharp``, ``geometry.frames`` set, ``training.dynamic`` true, inputs ``masked_kspace``
``(1, T, C, H, W, 2)``, ``mask`` ``(1, T, W)``, ``sens`` ``(1, C, H, W, 2)``, output ``image``
``(1, T, H, W, 2)``.

Importable by other tests (``from tests.shared.bundles.dynamic_recon_fixtures import ...``). Exporting
takes seconds, so :func:`export_tiny_vsharp_dynamic` exports once and :func:`write_dynamic_recon_bundle`
writes that graph under as many manifests (samplers, names) as a test needs. The default name
``tiny-vsharp/1`` is the recon the tiny ADS bundles of ``ads_fixtures`` point to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kadapt.bundles import Bundle, BundleGeometry, Manifest, TensorSpec, utc_now, write_bundle
from kadapt.nn.export import export_onnx
from kadapt.nn.vsharp_dynamic import VSharpDynamic

ACCELERATIONS = (4.0, 6.0, 8.0)
INPUT_NAMES = ("masked_kspace", "mask", "sens")


@dataclass(frozen=True)
class TinyDynamicGraph:
    """An exported tiny dynamic recon graph and its geometry / tensor specs."""

    path: Path
    frames: int
    coils: int
    height: int
    width: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int | None
    max_relative_l2: float


def tiny_vsharp_dynamic(seed: int = 0) -> VSharpDynamic:
    """A one-step vSHARP 2D+t with 4-channel 3D U-Nets, its default initialisation drawn under a forked
    torch RNG seeded with ``seed`` (the same weights every call; the global RNG is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = VSharpDynamic(
            num_steps=1, num_gradient_steps=1, chans=4, num_pool_layers=1,
            initializer_channels=(4, 4), initializer_dilations=(1, 2),
        )  # fmt: skip
    return model.eval()


def export_tiny_vsharp_dynamic(
    workdir: Path, *, frames: int = 4, coils: int = 2, height: int = 16, width: int = 24, seed: int = 0
) -> TinyDynamicGraph:
    """Export :func:`tiny_vsharp_dynamic` at ``(T, C, H, W)`` to ``workdir/model.onnx`` (parity checked)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, frames, width)
    mask[..., width // 2 - 1 : width // 2 + 1] = 1.0
    mask[:, :, ::3] = 1.0
    sens = torch.randn(1, coils, height, width, 2, generator=generator)
    sens = sens / sens.square().sum(dim=(1, 4), keepdim=True).sqrt()
    kspace = (
        torch.randn(1, frames, coils, height, width, 2, generator=generator) * mask[:, :, None, None, :, None]
    )
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "model.onnx"
    with torch.no_grad():
        report = export_onnx(
            tiny_vsharp_dynamic(seed), (kspace, mask, sens), path, input_names=INPUT_NAMES,
            output_names=("image",), generator=generator,
        )  # fmt: skip
    return TinyDynamicGraph(
        path,
        frames,
        coils,
        height,
        width,
        report.inputs,
        report.outputs,
        report.opset,
        report.max_relative_l2,
    )


def write_dynamic_recon_bundle(
    repository: Path,
    graph: TinyDynamicGraph,
    name: str = "tiny-vsharp",
    version: str = "1",
    *,
    num_acs: int = 2,
    sampler: str | None = None,
    pattern: str | None = None,
    scores: np.ndarray[Any, Any] | None = None,
    accelerations: Sequence[float] = ACCELERATIONS,
    validation_ssim: float | None = None,
) -> Bundle:
    """Write ``graph`` as the dynamic ``vsharp`` bundle ``name/version``. ``sampler``: None (an ADS
    recon), mask families (comma list, as ``kadapt train ads`` writes), or ``"opt"`` with ``scores``
    ``(T, W)`` written as ``pattern.npy``; ``pattern`` (``frame-specific`` / ``unified``) if given."""
    training: dict[str, Any] = {"dynamic": True, "description": "tiny dynamic vsharp test bundle"}
    if sampler is not None:
        training["sampler"] = sampler
    if pattern is not None:
        training["pattern"] = pattern
    files: dict[str, bytes | Path] = {"model.onnx": graph.path}
    if scores is not None:
        pattern_path = repository / f".staging-{name}-{version}-pattern.npy"
        pattern_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(pattern_path, np.asarray(scores, dtype=np.float32))
        files["pattern.npy"] = pattern_path
    manifest = Manifest(
        name=name,
        version=version,
        kind="vsharp",
        geometry=BundleGeometry(ky=graph.width, kx=graph.height, coils=graph.coils, frames=graph.frames),
        accelerations=tuple(accelerations),
        num_acs=num_acs,
        inputs=graph.inputs,
        outputs=graph.outputs,
        normalisation="acs-p99.5 of the frame-averaged ACS",
        opset=graph.opset,
        training=training,
        validation={} if validation_ssim is None else {"ssim": validation_ssim},
        code_version="test",
        created=utc_now(),
    )
    try:
        return write_bundle(repository, manifest, files)
    finally:
        if scores is not None:
            (repository / f".staging-{name}-{version}-pattern.npy").unlink(missing_ok=True)
