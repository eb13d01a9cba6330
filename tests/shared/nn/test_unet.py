"""fastMRI's U-Net and the U-Net reconstruction wrapper."""

from __future__ import annotations

import pytest
import torch

from kadapt.errors import InvalidInputError
from kadapt.nn.physics import sense_adjoint
from kadapt.nn.unet import UNet, UNetRecon


@pytest.mark.parametrize(("height", "width"), [(32, 32), (33, 35), (17, 20), (8, 8)])
def test_unet_keeps_the_spatial_size_including_odd_sizes(height: int, width: int) -> None:
    g = torch.Generator().manual_seed(0)
    unet = UNet(3, 5, chans=8, num_pool_layers=2)
    output = unet(torch.randn((2, 3, height, width), generator=g))
    assert output.shape == (2, 5, height, width)
    assert torch.isfinite(output).all()


def test_unet_structure_follows_fastmri() -> None:
    unet = UNet(2, 2, chans=8, num_pool_layers=3)
    assert len(unet.down_sample_layers) == 3
    assert len(unet.up_transpose_conv) == 3
    widths = [block.layers[0].out_channels for block in unet.down_sample_layers]
    assert widths == [8, 16, 32]
    assert unet.bottleneck.layers[0].out_channels == 64
    norms = [m for m in unet.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert norms, "fastMRI's blocks use instance norm"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in unet.modules())
    assert all(
        m.bias is None for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    )


def test_unet_gradients_reach_the_first_layer() -> None:
    g = torch.Generator().manual_seed(1)
    unet = UNet(2, 2, chans=8, num_pool_layers=2)
    unet(torch.randn((1, 2, 16, 16), generator=g)).square().mean().backward()
    first = unet.down_sample_layers[0].layers[0].weight
    assert first.grad is not None
    assert first.grad.abs().sum() > 0


def test_unet_rejects_wrong_channels_and_too_small_images() -> None:
    unet = UNet(2, 2, chans=4, num_pool_layers=3)
    with pytest.raises(InvalidInputError, match=r"\(1, 3, 16, 16\)"):
        unet(torch.zeros(1, 3, 16, 16))
    with pytest.raises(InvalidInputError, match="H, W >= 8"):
        unet(torch.zeros(1, 2, 16, 7))
    with pytest.raises(InvalidInputError, match="drop_prob"):
        UNet(2, 2, drop_prob=1.5)


def test_unet_recon_follows_the_recon_model_convention_and_is_scale_equivariant() -> None:
    g = torch.Generator().manual_seed(2)
    model = UNetRecon(chans=8, num_pool_layers=2).eval()
    kspace = torch.randn((1, 2, 32, 24, 2), generator=g)
    sens = torch.randn((1, 2, 32, 24, 2), generator=g)
    mask = torch.zeros((1, 1, 1, 24, 1))
    mask[..., ::3, :] = 1.0
    with torch.no_grad():
        image = model(kspace * mask, mask, sens)
        scaled = model(10.0 * kspace * mask, mask, sens)
        zero_filled = sense_adjoint(kspace * mask, sens, mask)
    assert image.shape == (1, 32, 24, 2)
    # Per-item normalisation: the network sees the same input at any data scale.
    torch.testing.assert_close(scaled, 10.0 * image, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(image, zero_filled)
