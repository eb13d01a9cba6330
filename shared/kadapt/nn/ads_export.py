"""ONNX export of the ADS cascade steps (docs/dynamic.md C2): one file per cascade, ``cascade-k.onnx``.

Each file computes :meth:`kadapt.nn.ads.ADSSampler.step_scores` for one cascade: inputs ``image`` float32
``(1, T, H, W, 2)`` (the zero-filled SENSE image so far, any scale: the graph divides by its mean magnitude)
and ``mask`` float32 ``(1, T, W)`` (2d: ``(1, T, H, W)``), output ``scores`` of the mask's shape, zero on
acquired entries, higher = acquire first. The serving side takes the exact top-k per frame of these scores
(no stochastic binarisation in a served graph, handbook "Sampling-mask mechanics"). Parity against PyTorch
is checked on a structured input (a moving synthetic phantom with the ACS + equispaced mask) and on random
inputs (:func:`kadapt.nn.export.random_like_inputs`). Imports onnxruntime (through
:mod:`kadapt.nn.export`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from kadapt.errors import InvalidInputError
from kadapt.kspace.preprocess import acs_start
from kadapt.nn.ads import ADSSampler
from kadapt.nn.export import DEFAULT_TOLERANCE, ExportReport, export_onnx

__all__ = [
    "ADS_INPUT_NAMES",
    "ADS_OUTPUT_NAMES",
    "AdsExport",
    "CascadeStep",
    "export_ads_steps",
    "structured_inputs",
]

ADS_INPUT_NAMES = ("image", "mask")
ADS_OUTPUT_NAMES = ("scores",)


class CascadeStep(nn.Module):
    """Cascade ``k`` of ``sampler`` as a module ``(image, mask) -> scores``, the exported graph."""

    def __init__(self, sampler: ADSSampler, k: int) -> None:
        super().__init__()
        self.sampler = sampler
        self.k = k

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        """``(1, T, H, W, 2)``, ``(1, T, W)`` / ``(1, T, H, W)`` -> scores, the mask's shape."""
        return self.sampler.step_scores(self.k, image, mask)


@dataclass(frozen=True)
class AdsExport:
    """What :func:`export_ads_steps` wrote: one :class:`ExportReport` per cascade (``reports[k]`` is
    ``cascade-k.onnx``) and the worst parity error over all of them."""

    reports: tuple[ExportReport, ...]
    max_relative_l2: float

    @property
    def paths(self) -> tuple[Path, ...]:
        """The ONNX files, cascade order."""
        return tuple(report.path for report in self.reports)


def structured_inputs(
    frames: int, height: int, width: int, num_acs: int, dim: str = "1d"
) -> tuple[Tensor, Tensor]:
    """A cine-like example: an ellipse whose radius beats over the frames, with a smooth phase, and the mask
    of the centred ``num_acs`` ACS lines plus every 4th line -> ``image (1, T, H, W, 2)``, ``mask``."""
    rows = torch.linspace(-1.0, 1.0, height).reshape(1, height, 1)
    cols = torch.linspace(-1.0, 1.0, width).reshape(1, 1, width)
    beat = 0.5 + 0.1 * torch.sin(torch.arange(frames, dtype=torch.float32) * 2.0 * math.pi / frames)
    radius = beat.reshape(frames, 1, 1)
    magnitude = ((rows / 0.8) ** 2 + (cols / 0.6) ** 2 < 1.0).float() * 0.5
    magnitude = magnitude + ((rows**2 + cols**2) < radius**2).float()
    phase = 0.7 * rows + 0.3 * cols
    image = torch.stack((magnitude * torch.cos(phase), magnitude * torch.sin(phase)), dim=-1)[None]
    lines = torch.zeros(width)
    lines[::4] = 1.0
    start = acs_start(width, num_acs)
    lines[start : start + num_acs] = 1.0
    mask = lines.expand(1, frames, width)
    if dim == "2d":
        mask = lines.reshape(1, 1, 1, width).expand(1, frames, height, width)
    return image.contiguous(), mask.contiguous()


def export_ads_steps(
    model: ADSSampler,
    out_dir: Path,
    frames: int,
    height: int,
    width: int,
    *,
    num_acs: int = 4,
    tolerance: float = DEFAULT_TOLERANCE,
    random_checks: int = 1,
    generator: torch.Generator | None = None,
) -> AdsExport:
    """Export every cascade of ``model`` to ``out_dir/cascade-k.onnx`` (dynamo, opset 18) and check parity
    (rel. L2 <= ``tolerance``, else :class:`kadapt.errors.BundleError`) on :func:`structured_inputs` and
    ``random_checks`` random input sets. ``frames``, ``height``, ``width`` must be the model's geometry."""
    if (frames, height, width) != (model.frames, model.height, model.width):
        raise InvalidInputError(
            f"export geometry {(frames, height, width)} differs from the model's "
            f"{(model.frames, model.height, model.width)}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    example = structured_inputs(frames, height, width, num_acs, model.dim)
    rng = generator if generator is not None else torch.Generator().manual_seed(0)
    reports = tuple(
        export_onnx(
            CascadeStep(model, k),
            example,
            out_dir / f"cascade-{k}.onnx",
            input_names=ADS_INPUT_NAMES,
            output_names=ADS_OUTPUT_NAMES,
            tolerance=tolerance,
            random_checks=random_checks,
            generator=rng,
        )
        for k in range(model.cascades)
    )
    return AdsExport(reports=reports, max_relative_l2=max(report.max_relative_l2 for report in reports))
