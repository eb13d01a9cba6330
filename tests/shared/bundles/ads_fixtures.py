"""Tiny ``ads`` bundles for tests: a small torch module per cascade step honouring the export contract
(``image (1, T, H, W, 2)``, ``mask (1, T, W)`` -> ``scores (1, T, W)``, docs/bundles.md), exported with
:func:`kadapt.nn.export.export_onnx` and written with :func:`kadapt.bundles.write_bundle`.

Importable by other tests (``from tests.shared.bundles.ads_fixtures import write_tiny_ads_bundle``). The
step looks at the image like a real encoder would, so different images give different plans: per frame
and ky line, the energy of the image's column (normalised by its mean magnitude, scale-free like the real
step), mixed across lines by a fixed random matrix, plus a per-(frame, line) bias; softplus; acquired
lines zeroed. ``unified`` steps average over frames, so every frame gets one row.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kadapt.bundles import Bundle, BundleGeometry, Manifest, utc_now, write_bundle
from kadapt.masks import acs_mask
from kadapt.nn.export import export_onnx

ACCELERATIONS = (4.0, 6.0, 8.0)


class TinyAdsStep(nn.Module):
    """One cascade step: ``(image (1, T, H, W, 2), mask (1, T, W)) -> scores (1, T, W)`` >= 0, zero on
    acquired lines. Parameters drawn from ``generator`` (deterministic)."""

    def __init__(self, frames: int, width: int, *, unified: bool, generator: torch.Generator) -> None:
        super().__init__()
        self.unified = unified
        self.mix = nn.Parameter(torch.randn(width, width, generator=generator) / width**0.5)
        self.bias = nn.Parameter(torch.randn(frames, width, generator=generator))

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        magnitude = torch.sqrt(image[..., 0] ** 2 + image[..., 1] ** 2 + 1e-12)  # (1, T, H, W)
        magnitude = magnitude / (magnitude.mean() + 1e-6)
        column_energy = magnitude.mean(dim=2)  # (1, T, W)
        logits = column_energy @ self.mix + self.bias[None]
        if self.unified:
            logits = logits.mean(dim=1, keepdim=True).expand_as(mask)
        return nn.functional.softplus(logits) * (1.0 - mask)


def tiny_ads_manifest(
    name: str,
    *,
    frames: int,
    height: int,
    width: int,
    num_acs: int,
    cascades: int,
    pattern: str,
    version: str = "1",
    init: str = "acs",
    dim: str = "1d",
    fallback: str | None = None,
    inputs: Any = (),
    outputs: Any = (),
) -> Manifest:
    """The manifest of a tiny ``ads`` bundle (files filled in by :func:`write_bundle`)."""
    training: dict[str, Any] = {
        "ads": {"cascades": cascades, "pattern": pattern, "dim": dim, "init": init, "recon": "tiny-vsharp/1"},
        "description": f"tiny ads test bundle ({pattern})",
    }
    if fallback is not None:
        training["fallback"] = fallback
    return Manifest(
        name=name,
        version=version,
        kind="ads",
        geometry=BundleGeometry(ky=width, kx=height, coils=None, frames=frames),
        accelerations=ACCELERATIONS,
        num_acs=num_acs,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        normalisation="mean-magnitude (inside the graph)",
        opset=18,
        training=training,
        code_version="test",
        created=utc_now(),
    )


def write_tiny_ads_bundle(
    repository: Path,
    name: str = "tiny-ads",
    *,
    frames: int = 4,
    height: int = 16,
    width: int = 24,
    num_acs: int = 2,
    cascades: int = 2,
    pattern: str = "frame-specific",
    seed: int = 0,
    init: str = "acs",
    dim: str = "1d",
    fallback: str | None = None,
    version: str = "1",
) -> Bundle:
    """Export ``cascades`` :class:`TinyAdsStep` graphs (parity-checked) and write them as an ``ads``
    bundle ``name/version`` in ``repository``; returns it loaded and verified."""
    generator = torch.Generator().manual_seed(seed)
    staging = repository / f".staging-{name}-{version}"
    staging.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes | Path] = {}
    report = None
    for step in range(cascades):
        model = TinyAdsStep(frames, width, unified=pattern == "unified", generator=generator)
        image = torch.randn(1, frames, height, width, 2, generator=generator)
        mask = torch.zeros(1, frames, width)
        mask[..., torch.from_numpy(acs_mask(width, num_acs))] = 1.0
        path = staging / f"cascade-{step}.onnx"
        report = export_onnx(
            model, (image, mask), path, input_names=("image", "mask"), output_names=("scores",)
        )
        files[path.name] = path
    if report is None:
        raise ValueError(f"an ads bundle needs cascades >= 1, got {cascades}")
    manifest = tiny_ads_manifest(
        name,
        frames=frames,
        height=height,
        width=width,
        num_acs=num_acs,
        cascades=cascades,
        pattern=pattern,
        version=version,
        init=init,
        dim=dim,
        fallback=fallback,
        inputs=report.inputs,
        outputs=report.outputs,
    )
    try:
        return write_bundle(repository, manifest, files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_ads_sampler_bundle(
    repository: Path,
    model: Any,
    name: str = "ads-real",
    *,
    num_acs: int = 2,
    version: str = "1",
) -> Bundle:
    """Export a real :class:`kadapt.nn.ads.ADSSampler` with :func:`kadapt.nn.ads.export_ads_steps` and
    write it as an ``ads`` bundle (init ``acs``)."""
    from kadapt.nn.ads import export_ads_steps

    staging = repository / f".staging-{name}-{version}"
    try:
        export = export_ads_steps(model, staging, model.frames, model.height, model.width, num_acs=num_acs)
        manifest = tiny_ads_manifest(
            name,
            frames=model.frames,
            height=model.height,
            width=model.width,
            num_acs=num_acs,
            cascades=model.cascades,
            pattern=model.pattern,
            version=version,
            dim=model.dim,
            inputs=export.reports[0].inputs,
            outputs=export.reports[0].outputs,
        )
        return write_bundle(repository, manifest, {path.name: path for path in export.paths})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
