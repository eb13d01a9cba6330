"""A 3D U-Net over (T, H, W) for cine data: the vSHARP 2D+t denoiser (seed 004 section 2.4, "3D U-Net
denoisers for cine", handbook science.md) and the building blocks of the ADS encoder (section 2.3).

The same design as :mod:`kadapt.nn.unet` (fastMRI's U-Net) with 3D layers: each level is a
:class:`ConvBlock3D` (2x conv 3x3x3 without bias, InstanceNorm3d, LeakyReLU 0.2, Dropout3d), average-pool
downsampling, transpose-conv upsampling, skip concatenations, a final 1x1x1 conv. Pooling runs over H and W
only by default (``pool_frames=False``): cine stacks have few frames (T = 8 here), so halving T at every
level would leave nothing to convolve; ``pool_frames=True`` pools T too (T must then be divisible by
``2 ** num_pool_layers``). Odd H / W are reflect-padded after upsampling, as fastMRI does.
``factorised=True`` replaces every 3x3x3 conv by a (2+1)D pair, a 3x3 conv over (H, W) with the frames
folded into the batch then a 3x1x1 conv over T (:class:`Conv2Plus1D`): the same receptive field, and about
6x faster on CPU, where PyTorch's 3D convolution has no oneDNN kernel (``slow_conv3d``).
Tensors: ``(B, channels, T, H, W)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

from kadapt.errors import InvalidInputError

__all__ = ["Conv2Plus1D", "ConvBlock3D", "UNet3D", "channels_to_image_3d", "image_to_channels_3d"]


def image_to_channels_3d(image: Tensor) -> Tensor:
    """Dynamic complex image ``(B, T, H, W, 2)`` -> CNN input ``(B, 2, T, H, W)`` (real, imaginary)."""
    return image.permute(0, 4, 1, 2, 3)


def channels_to_image_3d(channels: Tensor) -> Tensor:
    """CNN output ``(B, 2, T, H, W)`` -> dynamic complex image ``(B, T, H, W, 2)``; inverse of
    :func:`image_to_channels_3d`."""
    return channels.permute(0, 2, 3, 4, 1)


class Conv2Plus1D(nn.Module):
    """(2+1)D conv without bias: 3x3 over (H, W) per frame, then 3x1x1 over T: ``(B, in, T, H, W)`` in."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(in_chans, out_chans, kernel_size=3, padding=1, bias=False)
        self.temporal = nn.Conv3d(out_chans, out_chans, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_chans, T, H, W) -> (B, out_chans, T, H, W)``."""
        batch, chans, frames, height, width = x.shape
        folded = x.transpose(1, 2).reshape(batch * frames, chans, height, width)
        spatial = self.spatial(folded).reshape(batch, frames, -1, height, width).transpose(1, 2)
        result: Tensor = self.temporal(spatial)
        return result


class ConvBlock3D(nn.Module):
    """``layers`` x (conv 3x3x3, InstanceNorm3d, activation, Dropout3d): ``(B, in, T, H, W)`` -> ``out`` ch.

    ``negative_slope`` 0.2 is fastMRI's LeakyReLU; 0 gives the plain ReLU of seed 004's ADS encoder;
    ``factorised`` uses :class:`Conv2Plus1D` instead of a full 3x3x3 conv.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        drop_prob: float = 0.0,
        layers: int = 2,
        negative_slope: float = 0.2,
        factorised: bool = False,
    ) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        previous = in_chans
        for _ in range(layers):
            modules += [
                Conv2Plus1D(previous, out_chans)
                if factorised
                else nn.Conv3d(previous, out_chans, kernel_size=3, padding=1, bias=False),
                nn.InstanceNorm3d(out_chans),
                nn.LeakyReLU(negative_slope) if negative_slope > 0.0 else nn.ReLU(),
                nn.Dropout3d(drop_prob),
            ]
            previous = out_chans
        self.layers = nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_chans, T, H, W) -> (B, out_chans, T, H, W)``."""
        result: Tensor = self.layers(x)
        return result


class _Up3D(nn.Module):
    """Transpose conv (stride = pool kernel), InstanceNorm3d, LeakyReLU 0.2: doubles H, W (T if pooled)."""

    def __init__(self, in_chans: int, out_chans: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.ConvTranspose3d(in_chans, out_chans, kernel_size=kernel, stride=kernel, bias=False),
            nn.InstanceNorm3d(out_chans),
            nn.LeakyReLU(0.2),
        )

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.layers(x)
        return result


class UNet3D(nn.Module):
    """3D U-Net: ``(B, in_chans, T, H, W) -> (B, out_chans, T, H, W)``.

    ``chans`` is the first level's width, doubled at every pool; H and W must be at least
    ``2 ** num_pool_layers`` (T too with ``pool_frames``).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        chans: int = 8,
        num_pool_layers: int = 2,
        drop_prob: float = 0.0,
        pool_frames: bool = False,
        factorised: bool = False,
    ) -> None:
        super().__init__()
        if min(in_chans, out_chans, chans, num_pool_layers) < 1:
            raise InvalidInputError(
                f"UNet3D needs positive in_chans, out_chans, chans, num_pool_layers; got "
                f"{in_chans}, {out_chans}, {chans}, {num_pool_layers}"
            )
        if not 0.0 <= drop_prob < 1.0:
            raise InvalidInputError(f"UNet3D drop_prob must be in [0, 1), got {drop_prob}")
        self.in_chans = in_chans
        self.num_pool_layers = num_pool_layers
        self.pool_frames = pool_frames
        self.kernel = (2, 2, 2) if pool_frames else (1, 2, 2)
        self.down = nn.ModuleList([ConvBlock3D(in_chans, chans, drop_prob, factorised=factorised)])
        width = chans
        for _ in range(num_pool_layers - 1):
            self.down.append(ConvBlock3D(width, width * 2, drop_prob, factorised=factorised))
            width *= 2
        self.bottleneck = ConvBlock3D(width, width * 2, drop_prob, factorised=factorised)
        self.up_transpose = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for _ in range(num_pool_layers):
            self.up_transpose.append(_Up3D(width * 2, width, self.kernel))
            self.up_conv.append(ConvBlock3D(width * 2, width, drop_prob, factorised=factorised))
            width //= 2
        self.head = nn.Conv3d(chans, out_chans, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_chans, T, H, W) -> (B, out_chans, T, H, W)``."""
        if x.ndim != 5 or x.shape[1] != self.in_chans:
            raise InvalidInputError(f"UNet3D needs (B, {self.in_chans}, T, H, W), got {tuple(x.shape)}")
        smallest = 2**self.num_pool_layers
        if min(x.shape[-2:]) < smallest or (self.pool_frames and x.shape[2] % smallest):
            raise InvalidInputError(
                f"UNet3D with {self.num_pool_layers} pools needs H, W >= {smallest}"
                f"{' and T divisible by it' if self.pool_frames else ''}, got {tuple(x.shape)}"
            )
        skips: list[Tensor] = []
        output = x
        for block in self.down:
            output = block(output)
            skips.append(output)
            output = functional.avg_pool3d(output, kernel_size=self.kernel, stride=self.kernel)
        output = self.bottleneck(output)
        for transpose, conv in zip(self.up_transpose, self.up_conv, strict=True):
            skip = skips.pop()
            output = transpose(output)
            pad_right = int(output.shape[-1] != skip.shape[-1])
            pad_bottom = int(output.shape[-2] != skip.shape[-2])
            if pad_right or pad_bottom:
                output = functional.pad(output, [0, pad_right, 0, pad_bottom, 0, 0], mode="reflect")
            output = conv(torch.cat([output, skip], dim=1))
        result: Tensor = self.head(output)
        return result
