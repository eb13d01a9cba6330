"""3D U-Net over (T, H, W): shapes, frame pooling, odd sizes, gradients, rejected configurations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from kadapt.errors import InvalidInputError
from kadapt.nn.unet3d import Conv2Plus1D, ConvBlock3D, UNet3D, channels_to_image_3d, image_to_channels_3d


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize(
    ("pool_frames", "shape"), [(False, (4, 16, 16)), (False, (3, 17, 15)), (True, (4, 16, 16))]
)
def test_output_keeps_the_input_size(pool_frames: bool, shape: tuple[int, int, int]) -> None:
    generator = torch.Generator().manual_seed(0)
    model = UNet3D(6, 2, chans=4, num_pool_layers=2, pool_frames=pool_frames)
    output = model(torch.randn(2, 6, *shape, generator=generator))
    assert output.shape == (2, 2, *shape)
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("shape", [(4, 16, 16), (3, 17, 15)])
def test_factorised_unet_keeps_the_size_and_mixes_frames(shape: tuple[int, int, int]) -> None:
    generator = torch.Generator().manual_seed(3)
    model = UNet3D(2, 2, chans=4, num_pool_layers=2, factorised=True).eval()
    assert any(isinstance(m, Conv2Plus1D) for m in model.modules())
    assert not any(isinstance(m, torch.nn.Conv3d) and m.kernel_size == (3, 3, 3) for m in model.modules())
    x = torch.randn(1, 2, *shape, generator=generator)
    y = x.clone()
    y[:, :, 0] += 1.0
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 2, *shape)
        assert not torch.allclose(out[:, :, 2], model(y)[:, :, 2])


def test_2plus1d_conv_is_a_3x3_then_a_temporal_conv() -> None:
    generator = torch.Generator().manual_seed(4)
    conv = Conv2Plus1D(2, 3)
    x = torch.randn(2, 2, 4, 8, 8, generator=generator)
    spatial = torch.stack([conv.spatial(x[:, :, t]) for t in range(4)], dim=2)
    torch.testing.assert_close(conv(x), conv.temporal(spatial))


def test_every_parameter_gets_a_gradient() -> None:
    generator = torch.Generator().manual_seed(1)
    model = UNet3D(2, 2, chans=4, num_pool_layers=2)
    model(torch.randn(1, 2, 4, 16, 16, generator=generator)).square().mean().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())


def test_frames_are_mixed_by_the_3d_convolutions() -> None:
    # Changing frame 0 changes the output of frame 3: the denoiser sees time, not frames one by one.
    generator = torch.Generator().manual_seed(2)
    model = UNet3D(2, 2, chans=4, num_pool_layers=1).eval()
    x = torch.randn(1, 2, 4, 16, 16, generator=generator)
    y = x.clone()
    y[:, :, 0] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model(x)[:, :, 3], model(y)[:, :, 3])


def test_channel_layout_round_trips() -> None:
    image = torch.arange(2 * 3 * 4 * 5 * 2, dtype=torch.float32).reshape(2, 3, 4, 5, 2)
    channels = image_to_channels_3d(image)
    assert channels.shape == (2, 2, 3, 4, 5)
    torch.testing.assert_close(channels[:, 1], image[..., 1])
    torch.testing.assert_close(channels_to_image_3d(channels), image)


def test_relu_block_for_the_ads_encoder_is_non_negative() -> None:
    block = ConvBlock3D(2, 3, layers=1, negative_slope=0.0)
    assert float(block(torch.randn(1, 2, 2, 8, 8)).detach().min()) >= 0.0


def test_bad_inputs_and_configurations_are_rejected() -> None:
    with pytest.raises(InvalidInputError, match="positive"):
        UNet3D(2, 2, chans=0)
    with pytest.raises(InvalidInputError, match="needs"):
        UNet3D(2, 2, chans=4)(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(InvalidInputError, match="pools"):
        UNet3D(2, 2, chans=4, num_pool_layers=3)(torch.zeros(1, 2, 4, 4, 16))
    with pytest.raises(InvalidInputError, match="divisible"):
        UNet3D(2, 2, chans=4, num_pool_layers=2, pool_frames=True)(torch.zeros(1, 2, 3, 16, 16))
