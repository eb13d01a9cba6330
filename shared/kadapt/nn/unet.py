"""fastMRI's U-Net (Ronneberger et al. as used in the fastMRI baseline) and an image-domain recon wrapper.

:class:`UNet` follows fastMRI's ``models/unet.py``: ``num_pool_layers`` levels of :class:`ConvBlock`
(2x conv3x3 without bias, InstanceNorm2d, LeakyReLU 0.2, Dropout2d) with average-pool downsampling,
transpose-conv upsampling, skip concatenations and a final 1x1 conv. Odd sizes work like fastMRI's: after
an upsampling the feature map is reflect-padded by one row/column on the bottom/right when it is one short
of its skip connection.

:class:`UNetRecon` is the U-Net as a reconstruction model (handbook science.md: "input zero-filled / SENSE
image"): the SENSE-combined zero-filled image ``A^H y``, normalised per item, refined residually.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

from kadapt.errors import InvalidInputError
from kadapt.nn.physics import sense_adjoint

__all__ = [
    "ConvBlock",
    "TransposeConvBlock",
    "UNet",
    "UNetRecon",
    "channels_last_to_image",
    "image_to_channels",
]


def image_to_channels(image: Tensor) -> Tensor:
    """Complex image as real ``(B, H, W, 2)`` -> CNN input ``(B, 2, H, W)`` (channel 0 real, 1 imaginary).

    The same channel order as :func:`kadapt.kspace.torch_fft.complex_to_channels` for one coil.
    """
    return image.permute(0, 3, 1, 2)


def channels_last_to_image(channels: Tensor) -> Tensor:
    """CNN output ``(B, 2, H, W)`` -> complex image as real ``(B, H, W, 2)``.

    The inverse of :func:`image_to_channels`.
    """
    return channels.permute(0, 2, 3, 1)


class ConvBlock(nn.Module):
    """Two (conv3x3, InstanceNorm2d, LeakyReLU 0.2, Dropout2d) layers: ``(B, in, H, W) -> (B, out, H, W)``."""

    def __init__(self, in_chans: int, out_chans: int, drop_prob: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_chans, out_chans, kernel_size=3, padding=1, bias=False),
            nn.InstanceNorm2d(out_chans),
            nn.LeakyReLU(negative_slope=0.2),
            nn.Dropout2d(drop_prob),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            nn.InstanceNorm2d(out_chans),
            nn.LeakyReLU(negative_slope=0.2),
            nn.Dropout2d(drop_prob),
        )

    def forward(self, image: Tensor) -> Tensor:
        """``(B, in_chans, H, W) -> (B, out_chans, H, W)``."""
        result: Tensor = self.layers(image)
        return result


class TransposeConvBlock(nn.Module):
    """Upsampling by 2: transpose conv 2x2 stride 2, InstanceNorm2d, LeakyReLU 0.2.
    ``(B, in, H, W) -> (B, out, 2H, 2W)``."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.ConvTranspose2d(in_chans, out_chans, kernel_size=2, stride=2, bias=False),
            nn.InstanceNorm2d(out_chans),
            nn.LeakyReLU(negative_slope=0.2),
        )

    def forward(self, image: Tensor) -> Tensor:
        """``(B, in_chans, H, W) -> (B, out_chans, 2H, 2W)``."""
        result: Tensor = self.layers(image)
        return result


class UNet(nn.Module):
    """fastMRI's U-Net: ``(B, in_chans, H, W) -> (B, out_chans, H, W)`` real tensors.

    ``H`` and ``W`` must be at least ``2 ** num_pool_layers``; odd sizes are fine (reflect padding after
    upsampling, as fastMRI does). ``chans`` is the width of the first level, doubled at every pool.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        chans: int = 32,
        num_pool_layers: int = 4,
        drop_prob: float = 0.0,
    ) -> None:
        super().__init__()
        if min(in_chans, out_chans, chans, num_pool_layers) < 1:
            raise InvalidInputError(
                f"UNet needs positive in_chans, out_chans, chans, num_pool_layers; got "
                f"{in_chans}, {out_chans}, {chans}, {num_pool_layers}"
            )
        if not 0.0 <= drop_prob < 1.0:
            raise InvalidInputError(f"UNet drop_prob must be in [0, 1), got {drop_prob}")
        self.in_chans = in_chans
        self.out_chans = out_chans
        self.num_pool_layers = num_pool_layers
        self.down_sample_layers = nn.ModuleList([ConvBlock(in_chans, chans, drop_prob)])
        width = chans
        for _ in range(num_pool_layers - 1):
            self.down_sample_layers.append(ConvBlock(width, width * 2, drop_prob))
            width *= 2
        self.bottleneck = ConvBlock(width, width * 2, drop_prob)
        self.up_transpose_conv = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for _ in range(num_pool_layers - 1):
            self.up_transpose_conv.append(TransposeConvBlock(width * 2, width))
            self.up_conv.append(ConvBlock(width * 2, width, drop_prob))
            width //= 2
        self.up_transpose_conv.append(TransposeConvBlock(width * 2, width))
        self.up_conv.append(
            nn.Sequential(ConvBlock(width * 2, width, drop_prob), nn.Conv2d(width, out_chans, kernel_size=1))
        )

    def forward(self, image: Tensor) -> Tensor:
        """``(B, in_chans, H, W) -> (B, out_chans, H, W)``."""
        smallest = 2**self.num_pool_layers
        if image.ndim != 4 or image.shape[1] != self.in_chans:
            raise InvalidInputError(f"UNet needs (B, {self.in_chans}, H, W), got shape {tuple(image.shape)}")
        if image.shape[-2] < smallest or image.shape[-1] < smallest:
            raise InvalidInputError(
                f"UNet with {self.num_pool_layers} pools needs H, W >= {smallest}, got {tuple(image.shape)}"
            )
        skips: list[Tensor] = []
        output = image
        for layer in self.down_sample_layers:
            output = layer(output)
            skips.append(output)
            output = functional.avg_pool2d(output, kernel_size=2, stride=2, padding=0)
        output = self.bottleneck(output)
        for transpose_conv, conv in zip(self.up_transpose_conv, self.up_conv, strict=True):
            skip = skips.pop()
            output = transpose_conv(output)
            # Flooring in avg_pool2d loses one row/column at an odd size; fastMRI reflect-pads it back.
            pad_right = int(output.shape[-1] != skip.shape[-1])
            pad_bottom = int(output.shape[-2] != skip.shape[-2])
            if pad_right or pad_bottom:
                output = functional.pad(output, [0, pad_right, 0, pad_bottom], mode="reflect")
            output = conv(torch.cat([output, skip], dim=1))
        result: Tensor = output
        return result


class UNetRecon(nn.Module):
    """U-Net reconstruction following the :class:`kadapt.nn.modl.ReconModel` convention.

    ``forward(masked_kspace (B, C, H, W, 2), mask (B, 1, H, W, 1)-broadcastable, sens (B, C, H, W, 2))``
    -> image ``(B, H, W, 2)``: ``x_0 = A^H y`` (SENSE-combined zero-filled image), normalised per item by
    its standard deviation (as fastMRI's NormUnet does, so one model serves any data scale), refined by
    ``x_0 + UNet(x_0)`` and scaled back.
    """

    def __init__(self, chans: int = 32, num_pool_layers: int = 4, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.unet = UNet(2, 2, chans=chans, num_pool_layers=num_pool_layers, drop_prob=drop_prob)

    def forward(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> Tensor:
        """``(B, C, H, W, 2), (B, 1, H, W, 1)``-broadcastable, ``(B, C, H, W, 2) -> (B, H, W, 2)``."""
        zero_filled = sense_adjoint(masked_kspace, sens, mask)
        scale = zero_filled.std(dim=(1, 2, 3), keepdim=True) + 1e-12
        normalised = zero_filled / scale
        refined = normalised + channels_last_to_image(self.unet(image_to_channels(normalised)))
        return refined * scale
