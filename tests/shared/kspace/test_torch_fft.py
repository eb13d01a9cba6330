"""Torch FFTs and the channel converters: Parseval, adjointness, numpy agreement, real layout, ONNX."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from kadapt.errors import InvalidInputError
from kadapt.kspace import fft as numpy_fft
from kadapt.kspace.torch_fft import (
    channels_to_complex,
    complex_to_channels,
    fft2c,
    fft2c_real,
    ifft2c,
    ifft2c_real,
)


def complex_tensor(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype)


@pytest.mark.parametrize("shape", [(4, 16, 12), (2, 3, 15, 9)])
def test_fft2c_preserves_energy(shape: tuple[int, ...]) -> None:
    x = complex_tensor(shape, seed=0)
    assert torch.linalg.vector_norm(fft2c(x)).item() == pytest.approx(
        torch.linalg.vector_norm(x).item(), rel=1e-5
    )
    assert torch.linalg.vector_norm(ifft2c(x)).item() == pytest.approx(
        torch.linalg.vector_norm(x).item(), rel=1e-5
    )


@pytest.mark.parametrize("shape", [(16, 12), (3, 15, 9)])
def test_ifft2c_is_the_adjoint_and_inverse_of_fft2c(shape: tuple[int, ...]) -> None:
    x = complex_tensor(shape, seed=1, dtype=torch.complex128)
    y = complex_tensor(shape, seed=2, dtype=torch.complex128)
    forward_side = torch.vdot(fft2c(x).flatten(), y.flatten()).item()
    adjoint_side = torch.vdot(x.flatten(), ifft2c(y).flatten()).item()
    assert forward_side == pytest.approx(adjoint_side, rel=1e-10)
    torch.testing.assert_close(ifft2c(fft2c(x)), x)


@pytest.mark.parametrize("shape", [(2, 16, 12), (15, 9)])
def test_torch_and_numpy_transforms_agree(shape: tuple[int, ...]) -> None:
    x = complex_tensor(shape, seed=3)
    np.testing.assert_allclose(fft2c(x).numpy(), numpy_fft.fft2c(x.numpy()), atol=1e-5)
    np.testing.assert_allclose(ifft2c(x).numpy(), numpy_fft.ifft2c(x.numpy()), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 16, 12), (15, 9)])
def test_real_layout_matches_complex_transforms(shape: tuple[int, ...]) -> None:
    x = complex_tensor(shape, seed=4)
    real_layout = torch.view_as_real(x)
    torch.testing.assert_close(fft2c_real(real_layout), torch.view_as_real(fft2c(x)))
    torch.testing.assert_close(ifft2c_real(real_layout), torch.view_as_real(ifft2c(x)))
    torch.testing.assert_close(ifft2c_real(fft2c_real(real_layout)), real_layout, atol=1e-5, rtol=1e-5)


def test_real_layout_accepts_non_contiguous_input_and_carries_gradients() -> None:
    x = torch.randn(3, 2, 8, 6, generator=torch.Generator().manual_seed(5)).permute(0, 2, 3, 1)
    x.requires_grad_(True)
    assert not x.is_contiguous()
    out = fft2c_real(x)
    out.square().sum().backward()
    # Orthonormal transform: d/dx ||F x||^2 = 2 x.
    assert x.grad is not None
    torch.testing.assert_close(x.grad, 2 * x.detach(), atol=1e-5, rtol=1e-5)


def test_complex_to_channels_puts_real_parts_first() -> None:
    x = complex_tensor((2, 3, 4, 5), seed=6)
    channels = complex_to_channels(x)
    assert channels.shape == (2, 6, 4, 5)
    assert channels.dtype == torch.float32
    torch.testing.assert_close(channels[:, :3], x.real)
    torch.testing.assert_close(channels[:, 3:], x.imag)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 1, 8, 8), (2, 2, 4, 6, 6)])
def test_channel_converters_round_trip(shape: tuple[int, ...]) -> None:
    x = complex_tensor(shape, seed=7)
    back = channels_to_complex(complex_to_channels(x))
    assert back.dtype == torch.complex64
    assert torch.equal(back, x)
    channels = torch.randn((2, 6, 4, 4), generator=torch.Generator().manual_seed(8))
    assert torch.equal(complex_to_channels(channels_to_complex(channels)), channels)


@pytest.mark.parametrize(
    ("function", "bad"),
    [
        (fft2c, torch.zeros(4, 4)),
        (fft2c_real, torch.zeros(4, 4, 3)),
        (ifft2c_real, torch.zeros(4, 4, 2, dtype=torch.complex64)),
        (complex_to_channels, torch.zeros(4, 4, dtype=torch.complex64)),
        (channels_to_complex, torch.zeros(3, 4, 4)),
        (channels_to_complex, torch.zeros(2, 4, 4, dtype=torch.int64)),
    ],
)
def test_wrong_layouts_raise_invalid_input(function: object, bad: torch.Tensor) -> None:
    with pytest.raises(InvalidInputError, match=r"shape|dtype"):
        function(bad)  # type: ignore[operator]


class _KspaceRoundTrip(torch.nn.Module):
    """A model-shaped user of the real layout: image -> k-space -> weighted -> image."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return ifft2c_real(fft2c_real(image) * 0.5 + 0.1)


def test_real_layout_exports_with_the_dynamo_exporter_and_matches_onnxruntime() -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    model = _KspaceRoundTrip().eval()
    image = torch.randn(1, 4, 24, 20, 2, generator=torch.Generator().manual_seed(9))
    with warnings.catch_warnings():
        # torch's exporter internals emit deprecation FutureWarnings of their own.
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(model, (image,), dynamo=True, opset_version=18, verbose=False)
    assert program is not None
    session = onnxruntime.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (exported,) = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    np.testing.assert_allclose(exported, model(image).numpy(), atol=1e-4)
