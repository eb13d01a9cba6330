"""A small score / denoiser network with EDM preconditioning (Karras et al. 2022, VE noise), for seed 003.

Seed 003 (Ravula et al.) trains an EDM score network on complex MVUE images as two real channels
(appendix B.1) and uses it as the prior of its pattern learner (eq. 14-15) and of DPS (Alg. 1). Here:

- input and output ``(B, 2, H, W)``: channel 0 the real, channel 1 the imaginary part of the complex,
  coil-combined image (:func:`kadapt.nn.unet.image_to_channels` converts from the physics layout
  ``(B, H, W, 2)``). Two channels, not magnitude, because the forward operator ``A = M F S`` is linear in
  the complex image; a magnitude prior could not be combined with the measurement likelihood;
- VE noise ``x_t = x_0 + sigma n``; the denoiser is EDM's preconditioned
  ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` with ``c_skip = sd^2 / (sigma^2 + sd^2)``,
  ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``, ``c_in = 1 / sqrt(sigma^2 + sd^2)``,
  ``c_noise = ln(sigma) / 4`` (EDM Table 1, ``sd = sigma_data``), trained with the weight
  ``lambda = (sigma^2 + sd^2) / (sigma sd)^2`` (:func:`edm_loss`);
- the score is Tweedie's ``s(x; sigma) = (D(x; sigma) - x) / sigma^2`` (seed 003 eq. 6-7), so
  ``x_t + sigma^2 s(x_t) = D(x_t)`` -- the one-step posterior mean is the denoiser output itself.

:class:`ScoreUNet` is the raw network ``F``: a two-level residual U-Net with GroupNorm, SiLU and an
additive noise embedding per block. It has no normalisation that could not take a second derivative
(the pattern learner back-propagates through ``grad_x ||A D(x) - y||^2``), runs at 64x64 on two CPU
cores, and is the same code at full size (``base_channels`` and ``levels`` grow it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional

from kadapt.errors import InvalidInputError

__all__ = [
    "EDMDenoiser",
    "ScoreNetConfig",
    "ScoreUNet",
    "edm_coefficients",
    "edm_loss",
    "load_denoiser",
    "save_denoiser",
]


@dataclass(frozen=True)
class ScoreNetConfig:
    """Hyper-parameters of :class:`ScoreUNet` and the EDM wrapper (saved with the weights).

    ``channels`` 2 (real, imaginary); ``levels`` resolutions (each halves H and W, so H and W must be
    divisible by ``2 ** (levels - 1)``); ``sigma_data`` EDM's data standard deviation (0.5, EDM's default,
    fits images scaled to max magnitude 1)."""

    channels: int = 2
    base_channels: int = 32
    levels: int = 3
    embedding_dim: int = 64
    groups: int = 8
    sigma_data: float = 0.5


def edm_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM preconditioning (Karras et al. 2022, Table 1, VE): ``(c_skip, c_out, c_in, c_noise)``, each
    shaped like ``sigma`` (any shape, > 0)."""
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1.0 / total.sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


class _NoiseEmbedding(nn.Module):
    """Sinusoidal embedding of ``c_noise (B,)`` followed by a two-layer MLP -> ``(B, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        half = self.dim // 2
        frequencies = torch.exp(
            -math.log(10_000.0) * torch.arange(half, dtype=c_noise.dtype, device=c_noise.device) / half
        )
        angles = c_noise[:, None] * frequencies[None, :] * 1000.0 / 4.0
        embedded = torch.cat((angles.sin(), angles.cos()), dim=1)
        result: Tensor = self.mlp(embedded)
        return result


class _ResidualBlock(nn.Module):
    """Norm, SiLU, conv3x3, + noise embedding, norm, SiLU, conv3x3; residual (1x1 if widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed = nn.Linear(embedding_dim, out_channels)
        self.norm2 = nn.GroupNorm(min(groups, out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip: nn.Module = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        h = self.conv1(functional.silu(self.norm1(x)))
        h = h + self.embed(embedding)[:, :, None, None]
        h = self.conv2(functional.silu(self.norm2(h)))
        result: Tensor = self.skip(x) + h
        return result


class ScoreUNet(nn.Module):
    """The raw network ``F(x; c_noise)``: ``(B, channels, H, W)`` and ``(B,)`` -> ``(B, channels, H, W)``.

    ``levels`` resolutions with ``base_channels * (1, 2, 2, ...)`` features, one residual block per level
    on each side, average-pool down, nearest-neighbour up, skip concatenation."""

    def __init__(self, config: ScoreNetConfig) -> None:
        super().__init__()
        if config.levels < 1 or config.base_channels < 1 or config.embedding_dim % 2:
            raise InvalidInputError(f"invalid score network config {config}")
        self.config = config
        widths = [config.base_channels * (1 if level == 0 else 2) for level in range(config.levels)]
        self.widths = widths
        self.embedding = _NoiseEmbedding(config.embedding_dim)
        self.head = nn.Conv2d(config.channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        previous = widths[0]
        for width in widths:
            self.down.append(_ResidualBlock(previous, width, config.embedding_dim, config.groups))
            previous = width
        self.middle = _ResidualBlock(previous, previous, config.embedding_dim, config.groups)
        self.up = nn.ModuleList()
        for width in reversed(widths):
            self.up.append(_ResidualBlock(previous + width, width, config.embedding_dim, config.groups))
            previous = width
        self.tail_norm = nn.GroupNorm(min(config.groups, previous), previous)
        self.tail = nn.Conv2d(previous, config.channels, 3, padding=1)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        """``x (B, channels, H, W)``, ``c_noise (B,)`` -> ``(B, channels, H, W)``."""
        factor = 2 ** (len(self.widths) - 1)
        if x.ndim != 4 or x.shape[1] != self.config.channels or x.shape[-1] % factor or x.shape[-2] % factor:
            raise InvalidInputError(
                f"score network needs (B, {self.config.channels}, H, W) with H, W divisible by {factor}, "
                f"got {tuple(x.shape)}"
            )
        embedding = self.embedding(c_noise)
        h = self.head(x)
        skips: list[Tensor] = []
        for level, block in enumerate(self.down):
            if level > 0:
                h = functional.avg_pool2d(h, 2)
            h = block(h, embedding)
            skips.append(h)
        h = self.middle(h, embedding)
        for level, block in enumerate(self.up):
            skip = skips.pop()
            if level > 0:
                h = functional.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat((h, skip), dim=1), embedding)
        result: Tensor = self.tail(functional.silu(self.tail_norm(h)))
        return result


class EDMDenoiser(nn.Module):
    """EDM-preconditioned denoiser ``D(x; sigma)`` around :class:`ScoreUNet`, and its score.

    ``x (B, channels, H, W)``; ``sigma`` a float, a ``(B,)`` or a ``(B, 1, 1, 1)`` tensor (> 0)."""

    def __init__(self, config: ScoreNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or ScoreNetConfig()
        self.net = ScoreUNet(self.config)

    def _sigma(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        value = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        return value.reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """``D(x; sigma)`` ``(B, channels, H, W)``: the denoised estimate ``E[x_0 | x_t = x]``."""
        s = self._sigma(x, sigma)
        c_skip, c_out, c_in, c_noise = edm_coefficients(s, self.config.sigma_data)
        output: Tensor = c_skip * x + c_out * self.net(c_in * x, c_noise.reshape(-1))
        return output

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """``s(x; sigma) = (D(x; sigma) - x) / sigma^2`` (Tweedie, seed 003 eq. 6-7)."""
        s = self._sigma(x, sigma)
        result: Tensor = (self(x, s) - x) / s**2
        return result


def edm_loss(
    denoiser: EDMDenoiser,
    clean: Tensor,
    generator: torch.Generator,
    *,
    p_mean: float = -1.2,
    p_std: float = 1.2,
) -> Tensor:
    """EDM's training loss on clean images ``(B, channels, H, W)``: ``ln sigma ~ N(p_mean, p_std^2)``,
    ``E[lambda(sigma) ||D(x_0 + sigma n; sigma) - x_0||^2]`` with ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``
    (mean over batch and pixels). Noise from ``generator``."""
    batch = clean.shape[0]
    normal = torch.randn((batch, 1, 1, 1), generator=generator, dtype=clean.dtype, device=clean.device)
    sigma = (normal * p_std + p_mean).exp()
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=clean.device) * sigma
    sd = denoiser.config.sigma_data
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    loss: Tensor = (weight * (denoiser(clean + noise, sigma) - clean) ** 2).mean()
    return loss


def save_denoiser(denoiser: EDMDenoiser, path: Path) -> None:
    """Write the config and weights to ``path`` (``torch.save`` of plain tensors and numbers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(denoiser.config), "state": denoiser.state_dict()}, path)


def load_denoiser(path: Path) -> EDMDenoiser:
    """Read a denoiser written by :func:`save_denoiser` (``weights_only`` loading, no pickled code)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "config" not in payload or "state" not in payload:
        raise InvalidInputError(f"{path} is not a saved score network")
    denoiser = EDMDenoiser(ScoreNetConfig(**payload["config"]))
    denoiser.load_state_dict(payload["state"])
    return denoiser.eval()
