"""MoDL: shapes, gradients, and the limits that pin down its data consistency (seed 001 eq. 7)."""

from __future__ import annotations

import pytest
import torch

from kadapt.errors import InvalidInputError
from kadapt.nn.modl import MoDL, ReconModel, magnitude
from kadapt.nn.physics import complex_abs, complex_abs_sq, sense_adjoint, sense_forward
from kadapt.nn.unet import UNet

B, C, H, W = 1, 2, 32, 32


def _problem(
    g: torch.Generator, dtype: torch.dtype = torch.float32, every: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A smooth-ish image, unit-RSS maps, an equispaced line mask with a 4-line centre; returns
    (image (B, H, W, 2), sens (B, C, H, W, 2), mask (B, 1, 1, W, 1), masked k-space (B, C, H, W, 2))."""
    image = torch.nn.functional.avg_pool2d(
        torch.randn((B, 2, H + 2, W + 2), generator=g, dtype=dtype), 3, stride=1
    ).permute(0, 2, 3, 1)
    sens = torch.randn((B, C, H, W, 2), generator=g, dtype=dtype)
    sens = sens / complex_abs_sq(sens).sum(dim=1, keepdim=True).sqrt().unsqueeze(-1)
    mask = torch.zeros((B, 1, 1, W, 1), dtype=dtype)
    mask[..., ::every, :] = 1.0
    mask[..., W // 2 - 2 : W // 2 + 2, :] = 1.0
    return image, sens, mask, sense_forward(image, sens, mask)


def test_modl_output_shapes_and_all_unrolls() -> None:
    g = torch.Generator().manual_seed(0)
    _, sens, mask, kspace = _problem(g)
    model = MoDL(num_unrolls=2, cg_iterations=3, denoiser_channels=8)
    outputs = model.unroll_outputs(kspace, mask, sens)
    assert len(outputs) == 2
    assert all(out.shape == (B, H, W, 2) for out in outputs)
    torch.testing.assert_close(model(kspace, mask, sens), outputs[-1])
    assert magnitude(outputs[-1]).shape == (B, H, W)
    recon: ReconModel = model  # the protocol is structural
    assert recon(kspace, mask, sens).shape == (B, H, W, 2)


def test_modl_lambda_starts_at_005_and_stays_positive() -> None:
    model = MoDL(num_unrolls=1, cg_iterations=1, denoiser_channels=4)
    torch.testing.assert_close(model.regularisation, torch.tensor(0.05))
    with torch.no_grad():
        model.lambda_raw.fill_(-50.0)
    assert model.regularisation > 0


def test_gradients_reach_lambda_and_every_denoiser_layer() -> None:
    g = torch.Generator().manual_seed(1)
    target, sens, mask, kspace = _problem(g)
    model = MoDL(num_unrolls=2, cg_iterations=3, denoiser_channels=8)
    # Move off the identity initialisation so gradients reach the early layers too.
    with torch.no_grad():
        model.denoiser.body[-1].weight.normal_(0.0, 0.01, generator=g)
    (model(kspace, mask, sens) - target).square().mean().backward()
    assert model.lambda_raw.grad is not None
    assert model.lambda_raw.grad.abs() > 0
    convs = [m for m in model.denoiser.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    for conv in convs:
        assert conv.weight.grad is not None
        assert conv.weight.grad.abs().sum() > 0


def test_weights_are_shared_across_unrolls() -> None:
    small = MoDL(num_unrolls=1, cg_iterations=2, denoiser_channels=8)
    large = MoDL(num_unrolls=4, cg_iterations=2, denoiser_channels=8)
    count = sum(p.numel() for p in small.parameters())
    assert count == sum(p.numel() for p in large.parameters())


def test_fully_sampled_data_with_exact_maps_reconstructs_the_image() -> None:
    g = torch.Generator().manual_seed(2)
    image, sens, _, _ = _problem(g, torch.float64)
    full = torch.ones((B, 1, 1, W, 1), dtype=torch.float64)
    kspace = sense_forward(image, sens, full)
    model = MoDL(num_unrolls=1, cg_iterations=5, denoiser_channels=8).double()
    torch.testing.assert_close(model(kspace, full, sens), image, rtol=1e-8, atol=1e-8)


def test_small_lambda_gives_data_consistency_on_the_sampled_lines() -> None:
    g = torch.Generator().manual_seed(3)
    _, sens, mask, _ = _problem(g, torch.float64, every=3)
    # Data the operator can explain (a different image than the denoiser would suggest).
    measured = sense_forward(torch.randn((B, H, W, 2), generator=g, dtype=torch.float64), sens, mask)
    model = MoDL(num_unrolls=1, cg_iterations=60, lambda_init=1e-8, denoiser_channels=8).double()
    recon = model(measured, mask, sens)
    # lambda -> 0: x solves the least-squares problem, so it reproduces the acquired lines.
    relative = (sense_forward(recon, sens, mask) - measured).norm() / measured.norm()
    assert relative < 1e-3
    zero_filled = sense_adjoint(measured, sens, mask)
    relative_zero_filled = (sense_forward(zero_filled, sens, mask) - measured).norm() / measured.norm()
    assert relative_zero_filled > 0.1


def test_large_lambda_with_identity_denoiser_keeps_the_zero_filled_image() -> None:
    g = torch.Generator().manual_seed(4)
    _, sens, mask, kspace = _problem(g, torch.float64)
    model = MoDL(num_unrolls=2, cg_iterations=4, lambda_init=1e6, denoiser_channels=8).double()
    # The last conv starts at zero: D is the identity, so x_{k+1} ~= x_k = A^H y.
    zero_filled = sense_adjoint(kspace, sens, mask)
    torch.testing.assert_close(model(kspace, mask, sens), zero_filled, rtol=1e-5, atol=1e-5)


def test_modl_improves_on_zero_filled_with_an_identity_denoiser_and_small_lambda() -> None:
    g = torch.Generator().manual_seed(5)
    image, sens, mask, kspace = _problem(g, torch.float64)
    model = MoDL(num_unrolls=3, cg_iterations=10, lambda_init=0.05, denoiser_channels=8).double()
    error_zero_filled = complex_abs(sense_adjoint(kspace, sens, mask) - image).norm()
    error_modl = complex_abs(model(kspace, mask, sens) - image).norm()
    assert error_modl < 0.9 * error_zero_filled


def test_unet_denoiser_option() -> None:
    g = torch.Generator().manual_seed(6)
    _, sens, mask, kspace = _problem(g)
    model = MoDL(num_unrolls=2, cg_iterations=2, denoiser="unet", denoiser_channels=4, unet_pool_layers=2)
    assert isinstance(model.denoiser.body, UNet)
    assert model(kspace, mask, sens).shape == (B, H, W, 2)


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="num_unrolls"):
        MoDL(num_unrolls=0)
    with pytest.raises(InvalidInputError, match="lambda_init"):
        MoDL(lambda_init=0.0)
    with pytest.raises(InvalidInputError, match="'rnn'"):
        MoDL(denoiser="rnn")  # type: ignore[arg-type]
