"""MNet: the single-pass scan-adaptive sampler (seeds 000 and 001) in two configurations.

Both read the ACS block of one scan, real layout ``acs (B, C, H, num_acs, 2)`` (fastMRI axes: readout kx
along H, the ``num_acs`` central ky lines last, then real / imaginary), and return one logit per ky line
``(B, W)``. Serving keeps the ACS and takes the top-k logits among the free lines
(:func:`kadapt.masks.mechanics.topk_plan`), so the logits of ACS lines are never used.

- :class:`MNet`, the efficient form: the network sees only the ACS block itself -- the same information
  the published network gets, without the zero padding to ``H x W`` (handbook science.md, "MNet"). A
  strided convolution first shrinks the readout axis (the ACS block is low resolution anyway, handbook
  architecture.md section 9), a few convolutions run over ``(H / s, num_acs)``, mean and max pooling over
  the readout keep one feature vector per ACS line, and an MLP maps them to ``W`` logits.
- :class:`MNetFaithful`, the published configuration for comparison (seed 000 section 3.1, figure 2):
  double convolution + four U-Net down blocks on the zero-padded ``H x W`` low-frequency k-space (two
  channels, real / imaginary; coil-averaged as seed 001 eq. 2), average pooling and four fully
  connected layers -- 79.9 M parameters at ``320 x 320`` (``FAITHFUL_HIDDEN`` widths).

Coils (``coil_handling``):

- ``"average"`` -- the complex mean over coils, seed 001 eq. 2 ("z_i, the low-frequency k-space averaged
  across coils"). Chosen over a mean of magnitudes because it is linear (the ACS scale normalisation
  commutes with it) and keeps the phase, i.e. the k-space of one virtual coil with the summed
  sensitivities; its cost is that coil phases can partly cancel.
- ``"mixing"`` -- a learned 1x1 complex coil mixing ``C -> virtual_coils`` as the first layer, seed 000
  remark 6 ("a learnable convolution across coils ... as a first step"), the default for multi-coil.

Normalisation is inside the graph: the input is divided by the 99.5th percentile of ``|ACS|`` over all
coils (:func:`kadapt.kspace.preprocess.acs_scale` semantics, seed 004 eq. B1) computed with a top-k, so
the scanner's arbitrary intensity scale does not matter and a bundle needs no preprocessing outside.

Bundles: manifest kind ``mnet``, input ``acs`` float32 ``(1, C, H, num_acs, 2)``, output ``scores``
``(1, W)``, written by :mod:`kadapt.nn.mnet_bundle`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional

from kadapt.errors import InvalidInputError
from kadapt.kspace.preprocess import ACS_SCALE_PERCENTILE, acs_start
from kadapt.kspace.torch_fft import ifft2c_real

__all__ = [
    "FAITHFUL_CHANNELS",
    "FAITHFUL_HIDDEN",
    "CoilHandling",
    "MNet",
    "MNetFaithful",
    "MNetGeometry",
    "acs_percentile_scale",
    "count_parameters",
    "mnet_example_inputs",
    "randomise_parameters",
]

CoilHandling = Literal["average", "mixing"]
ModelT = TypeVar("ModelT", bound=nn.Module)
FaithfulInput = Literal["kspace", "image"]

# log1p(gain * |z|) compresses k-space's dynamic range (centre ~1 after normalisation, periphery ~1e-3).
_LOG_MAGNITUDE_GAIN = 100.0
_TINY_SCALE = 1e-12


@dataclass(frozen=True)
class MNetGeometry:
    """The scan geometry a model is built for: ``width`` W ky lines, ``height`` H readout samples,
    ``coils`` C and the ``num_acs`` central ky lines it reads. The ONNX graph is static in all four."""

    width: int
    height: int
    coils: int
    num_acs: int

    def __post_init__(self) -> None:
        if min(self.width, self.height, self.coils, self.num_acs) < 1:
            raise InvalidInputError(f"MNet geometry needs positive sizes, got {self}")
        if self.num_acs >= self.width:
            raise InvalidInputError(f"num_acs={self.num_acs} leaves no free line in W={self.width}")

    @property
    def input_shape(self) -> tuple[int, int, int, int, int]:
        """The model input ``(1, C, H, num_acs, 2)``."""
        return (1, self.coils, self.height, self.num_acs, 2)


def acs_percentile_scale(acs: Tensor, percentile: float = ACS_SCALE_PERCENTILE) -> Tensor:
    """``(B, C, H, A, 2)`` -> ``(B,)``: the ``percentile`` of ``|acs|`` over coils, H and A per item.

    Equals ``numpy.percentile(abs(acs), percentile)`` (linear interpolation between the two bracketing
    order statistics) but uses a top-k of the largest values, which exports to ONNX (``TopK``).
    """
    real, imag = acs[..., 0], acs[..., 1]
    magnitude = torch.sqrt(real * real + imag * imag).flatten(1)
    count = magnitude.shape[1]
    position = percentile / 100.0 * (count - 1)
    lower = math.floor(position)
    fraction = position - lower
    largest = torch.topk(magnitude, k=count - lower, dim=1).values  # descending; the last is a[lower]
    below = largest[:, -1]
    if fraction == 0.0 or count - lower < 2:
        return below
    return below + fraction * (largest[:, -2] - below)


def normalise_acs(acs: Tensor) -> Tensor:
    """``(B, C, H, A, 2)`` divided by its per-item :func:`acs_percentile_scale` (guarded against 0)."""
    scale = torch.clamp(acs_percentile_scale(acs), min=_TINY_SCALE)
    return acs / scale[:, None, None, None, None]


def _check_acs(acs: Tensor, geometry: MNetGeometry, who: str) -> None:
    expected = (geometry.coils, geometry.height, geometry.num_acs, 2)
    if acs.ndim != 5 or tuple(acs.shape[1:]) != expected:
        raise InvalidInputError(
            f"{who} expects acs (B, {', '.join(map(str, expected))}), got {tuple(acs.shape)}"
        )


class ComplexCoilMixing(nn.Module):
    """A learned 1x1 complex map over coils, ``(B, C, H, A, 2) -> (B, V, H, A, 2)`` (seed 000 remark 6).

    ``out_v = sum_c w_vc x_c`` with complex ``w``, written as one real ``(2V, 2C)`` matrix
    ``[[Re w, -Im w], [Im w, Re w]]`` on the stacked real and imaginary parts (exports as a MatMul).
    """

    def __init__(self, coils: int, virtual_coils: int) -> None:
        super().__init__()
        self.real = nn.Parameter(torch.randn(virtual_coils, coils) / math.sqrt(coils))
        self.imag = nn.Parameter(torch.zeros(virtual_coils, coils))

    def forward(self, acs: Tensor) -> Tensor:
        """``(B, C, H, A, 2) -> (B, V, H, A, 2)``."""
        real, imag = self.mix_parts(acs[..., 0], acs[..., 1])
        return torch.stack((real, imag), dim=-1)

    def mix_parts(self, real: Tensor, imag: Tensor) -> tuple[Tensor, Tensor]:
        """Real and imaginary parts ``(B, C, H, A)`` each -> the mixed ones ``(B, V, H, A)`` each."""
        block = torch.cat(
            (torch.cat((self.real, -self.imag), dim=1), torch.cat((self.imag, self.real), dim=1)), dim=0
        )
        mixed = torch.einsum("vc,bcha->bvha", block, torch.cat((real, imag), dim=1))  # (B, 2V, H, A)
        mixed_real, mixed_imag = torch.chunk(mixed, 2, dim=1)
        return mixed_real, mixed_imag


def _features(real: Tensor, imag: Tensor) -> Tensor:
    """Real and imaginary parts ``(B, V, H, A)`` -> ``(B, 3V, H, A)``: real, imaginary, log1p(gain |z|)."""
    magnitude = torch.sqrt(real * real + imag * imag)
    return torch.cat((real, imag, torch.log1p(_LOG_MAGNITUDE_GAIN * magnitude)), dim=1)


class MNet(nn.Module):
    """The efficient MNet: ``acs (B, C, H, num_acs, 2)`` float -> ``scores (B, W)`` logits.

    ``readout_stride`` shrinks H in the first (``(2s - 1) x 3``) convolution; ``channels`` are the widths
    of the convolutions that follow (each halves H with stride ``(2, 1)`` and keeps the ACS lines);
    pooling over the readout (mean and max) leaves ``2 * channels[-1]`` features per ACS line, and an MLP
    (``hidden``) maps the ``2 * channels[-1] * num_acs`` features to ``W`` logits.
    """

    def __init__(
        self,
        geometry: MNetGeometry,
        *,
        coil_handling: CoilHandling = "mixing",
        virtual_coils: int = 4,
        readout_stride: int = 4,
        channels: tuple[int, ...] = (32, 32, 64),
        hidden: int = 256,
    ) -> None:
        super().__init__()
        if coil_handling not in ("average", "mixing"):
            raise InvalidInputError(f"coil_handling must be 'average' or 'mixing', got {coil_handling!r}")
        if min(virtual_coils, readout_stride, hidden, *channels) < 1 or not channels:
            raise InvalidInputError(
                f"MNet needs positive sizes: virtual_coils={virtual_coils}, readout_stride={readout_stride}, "
                f"channels={channels}, hidden={hidden}"
            )
        self.geometry = geometry
        self.coil_handling = coil_handling
        self.mixing = ComplexCoilMixing(geometry.coils, virtual_coils) if coil_handling == "mixing" else None
        combined = virtual_coils if coil_handling == "mixing" else 1
        layers: list[nn.Module] = [
            nn.Conv2d(3 * combined, channels[0], kernel_size=(2 * readout_stride - 1, 3),
                      stride=(readout_stride, 1), padding=(readout_stride - 1, 1)),
            nn.ReLU(),
        ]  # fmt: skip
        for before, after in itertools.pairwise(channels):
            layers += [nn.Conv2d(before, after, kernel_size=3, stride=(2, 1), padding=1), nn.ReLU()]
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(2 * channels[-1] * geometry.num_acs, hidden),
            nn.ReLU(),
            nn.Linear(hidden, geometry.width),
        )

    def forward(self, acs: Tensor) -> Tensor:
        """``acs (B, C, H, num_acs, 2)`` float32 -> ``scores (B, W)`` (logits; higher = acquire)."""
        _check_acs(acs, self.geometry, "MNet")
        # The scale divides after the coil combination (both are linear): the same function as
        # normalising first, with fewer exported ops and elements (about 0.1 ms less per plan at 320 lines).
        scale = torch.clamp(acs_percentile_scale(acs), min=_TINY_SCALE)[:, None, None, None]
        real, imag = acs[..., 0], acs[..., 1]
        if self.mixing is not None:
            real, imag = self.mixing.mix_parts(real, imag)
        else:  # seed 001 eq. 2: averaged across coils
            real, imag = real.mean(dim=1, keepdim=True), imag.mean(dim=1, keepdim=True)
        encoded = self.encoder(_features(real / scale, imag / scale))  # (B, F, H', A)
        pooled = torch.cat((encoded.mean(dim=2), encoded.amax(dim=2)), dim=1)  # (B, 2F, A)
        scores: Tensor = self.head(pooled.flatten(1))
        return scores


def _double_conv(before: int, after: int) -> nn.Sequential:
    # The "Double-Conv" of seed 000 figure 2: two 3x3 convolutions keeping the size, BN, ReLU.
    return nn.Sequential(
        nn.Conv2d(before, after, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(after),
        nn.ReLU(),
        nn.Conv2d(after, after, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(after),
        nn.ReLU(),
    )


FAITHFUL_CHANNELS = (64, 128, 256, 512, 1024)
# The paper gives neither FC widths nor a formula; these put the 320 x 320 model at 79.9 M parameters.
FAITHFUL_HIDDEN = (590, 512, 512)


class MNetFaithful(nn.Module):
    """The published MNet (seed 000 section 3.1): ``acs (B, C, H, num_acs, 2)`` -> ``scores (B, W)``.

    The ACS block is normalised and averaged across coils (seed 001 eq. 2), zero-padded into its columns
    of an ``H x W`` array (``input_domain="kspace"``, as the paper feeds it; ``"image"`` transforms that
    array to the zero-filled image first), then: double conv -> four down blocks (3x3 max pool stride 2,
    double conv; widths 64 .. 1024) -> 2x2 average pool -> four fully connected layers -> ``W`` logits.
    Needs ``H, W >= 32``.
    """

    def __init__(
        self,
        geometry: MNetGeometry,
        *,
        input_domain: FaithfulInput = "kspace",
        channels: tuple[int, ...] = FAITHFUL_CHANNELS,
        hidden: tuple[int, ...] = FAITHFUL_HIDDEN,
    ) -> None:
        super().__init__()
        if input_domain not in ("kspace", "image"):
            raise InvalidInputError(f"input_domain must be 'kspace' or 'image', got {input_domain!r}")
        if min(geometry.height, geometry.width) < 2 ** len(channels):
            raise InvalidInputError(f"MNetFaithful needs H, W >= {2 ** len(channels)}, got {geometry}")
        self.geometry = geometry
        self.input_domain = input_domain
        self.inc = _double_conv(2, channels[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=2, padding=1), _double_conv(before, after))
            for before, after in itertools.pairwise(channels)
        )
        rows, cols = geometry.height, geometry.width
        for _ in channels[1:]:
            rows, cols = (rows + 1) // 2, (cols + 1) // 2  # 3x3 max pool, stride 2, padding 1
        features = channels[-1] * (rows // 2) * (cols // 2)
        widths = (features, *hidden, geometry.width)
        fully_connected: list[nn.Module] = []
        for before, after in itertools.pairwise(widths):
            fully_connected += [nn.Linear(before, after), nn.ReLU()]
        self.head = nn.Sequential(*fully_connected[:-1])  # logits: no ReLU after the last layer
        start = acs_start(geometry.width, geometry.num_acs)
        self.acs_columns = (start, geometry.width - start - geometry.num_acs)  # zero padding left, right

    def forward(self, acs: Tensor) -> Tensor:
        """``acs (B, C, H, num_acs, 2)`` float32 -> ``scores (B, W)`` (logits)."""
        _check_acs(acs, self.geometry, "MNetFaithful")
        combined = normalise_acs(acs).mean(dim=1)  # (B, H, A, 2)
        left, right = self.acs_columns
        padded = functional.pad(combined, (0, 0, left, right))  # (B, H, W, 2): zero-filled low frequencies
        if self.input_domain == "image":
            padded = ifft2c_real(padded)
        encoded = self.inc(padded.permute(0, 3, 1, 2))
        for block in self.down:
            encoded = block(encoded)
        pooled = functional.avg_pool2d(encoded, kernel_size=2)
        scores: Tensor = self.head(pooled.flatten(1))
        return scores


def count_parameters(model: nn.Module) -> int:
    """The number of trainable parameters of ``model``."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def randomise_parameters(model: ModelT, generator: torch.Generator) -> ModelT:
    """Redraw every parameter of ``model`` from ``generator`` (no global seeding; returns ``model``).

    Weights ``U(-b, b)`` with ``b = 1 / sqrt(fan_in)`` (PyTorch's default scale), biases likewise from
    their layer's fan-in; batch-norm scales 1 and shifts 0. Untrained-but-deterministic models for tests
    and latency benchmarks, never a bundle passed off as learned.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
                continue
            weight = getattr(module, "weight", None)
            fan_in = weight[0].numel() if isinstance(weight, Tensor) and weight.ndim > 1 else None
            for parameter in module.parameters(recurse=False):
                fan = fan_in or (parameter.shape[-1] if parameter.ndim > 1 else parameter.numel())
                bound = 1.0 / math.sqrt(max(1, fan))
                parameter.copy_(torch.rand(parameter.shape, generator=generator) * (2 * bound) - bound)
    return model


def mnet_example_inputs(geometry: MNetGeometry, generator: torch.Generator) -> tuple[Tensor]:
    """One example input ``(acs,)`` with ``acs (1, C, H, num_acs, 2)`` float32: random complex coil data
    under a k-space-like ``1 / (1 + |k|)`` decay from the centre (so the percentile scale and the log
    magnitude see realistic dynamic range), for export and parity checks."""
    batch, coils, height, num_acs, _ = geometry.input_shape
    kx = torch.arange(height, dtype=torch.float32) - height // 2
    ky = torch.arange(num_acs, dtype=torch.float32) - num_acs // 2
    decay = 1.0 / (1.0 + torch.sqrt(kx[:, None] ** 2 + ky[None, :] ** 2))
    noise = torch.randn((batch, coils, height, num_acs, 2), generator=generator)
    return (noise * decay[None, None, :, :, None] * 1000.0,)
