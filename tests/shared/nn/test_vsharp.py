"""vSHARP (2D): per-step outputs, learned pieces receive gradients, scale handling, training, ONNX parity."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sigpy
import sigpy.mri
import torch

from kadapt.errors import InvalidInputError
from kadapt.kspace.fft import fft2c
from kadapt.nn.losses import DualDomainLoss, complex_magnitude, unrolled_step_weights
from kadapt.nn.modl import ReconModel
from kadapt.nn.physics import sense_adjoint
from kadapt.nn.vsharp import LagrangeMultiplierInitializer, VSharp2D

SIZE = 32
COILS = 2


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Run on one intra-op thread: these tiny tensors gain nothing from two, and OpenMP spin-waiting beside
    another busy process made training steps about 100x slower on the 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_vsharp(**overrides: object) -> VSharp2D:
    settings: dict[str, object] = {
        "num_steps": 2,
        "num_gradient_steps": 2,
        "chans": 8,
        "num_pool_layers": 2,
        "initializer_channels": (8, 8),
        "initializer_dilations": (1, 2),
    }
    settings.update(overrides)
    return VSharp2D(**settings)  # type: ignore[arg-type]


def case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image (1, H, W, 2), masked k-space (1, C, H, W, 2), line mask (1, 1, 1, W, 1), unit-RSS sens."""
    image = sigpy.shepp_logan((SIZE, SIZE)).astype(np.complex64)
    maps = sigpy.mri.birdcage_maps((COILS, SIZE, SIZE)).astype(np.complex64)
    maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=0))
    line_mask = np.zeros(SIZE, dtype=np.float32)
    line_mask[::4] = 1.0
    line_mask[SIZE // 2 - 3 : SIZE // 2 + 3] = 1.0
    kspace = (fft2c(maps * image) * line_mask).astype(np.complex64)
    return (
        torch.view_as_real(torch.from_numpy(image))[None],
        torch.view_as_real(torch.from_numpy(kspace))[None],
        torch.from_numpy(line_mask).reshape(1, 1, 1, SIZE, 1),
        torch.view_as_real(torch.from_numpy(maps))[None],
    )


def test_unrolled_outputs_have_one_image_per_step_and_forward_is_the_last() -> None:
    _, kspace, mask, sens = case()
    model = small_vsharp(num_steps=3).eval()
    with torch.no_grad():
        steps = model.unroll_outputs(kspace, mask, sens)
        final = model(kspace, mask, sens)
    assert len(steps) == 3
    assert all(step.shape == (1, SIZE, SIZE, 2) for step in steps)
    torch.testing.assert_close(final, steps[-1])
    assert all(torch.isfinite(step).all() for step in steps)
    assert model.step_weights() == unrolled_step_weights(3)
    recon_model: ReconModel = model
    assert recon_model(kspace, mask, sens).shape == (1, SIZE, SIZE, 2)


def test_penalties_and_step_sizes_start_positive_at_their_initial_values() -> None:
    model = small_vsharp(rho_init=0.25, step_size_init=0.5)
    torch.testing.assert_close(model.rho.detach(), torch.full((2,), 0.25))
    torch.testing.assert_close(model.step_sizes.detach(), torch.full((2,), 0.5))
    assert small_vsharp(share_rho=True).rho.shape == (1,)


@pytest.mark.parametrize("share_denoiser", [True, False])
def test_gradients_reach_rho_step_sizes_initializer_and_every_denoiser(share_denoiser: bool) -> None:
    image, kspace, mask, sens = case()
    model = small_vsharp(share_denoiser=share_denoiser)
    assert len(model.denoisers) == (1 if share_denoiser else 2)
    steps = model.unroll_outputs(kspace, mask, sens)
    loss = DualDomainLoss.seed004()(steps, complex_magnitude(image), kspace=kspace, sens=sens, mask=mask)
    loss.backward()
    assert model.rho_raw.grad is not None
    assert model.step_size_raw.grad is not None
    # Every step's penalty and every gradient step's size influences the output.
    assert bool((model.rho_raw.grad.abs() > 0).all())
    assert bool((model.step_size_raw.grad.abs() > 0).all())
    for module in (*model.denoisers, model.initializer):
        gradients = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in gradients)
        assert sum(float(g.abs().sum()) for g in gradients if g is not None) > 0


def test_normalisation_makes_the_reconstruction_scale_equivariant() -> None:
    _, kspace, mask, sens = case()
    model = small_vsharp().eval()
    with torch.no_grad():
        base = model(kspace, mask, sens)
        scaled = model(1000.0 * kspace, mask, sens)
    torch.testing.assert_close(scaled, 1000.0 * base, rtol=1e-4, atol=1e-4 * float(base.abs().max()) * 1000)


def test_a_few_training_steps_lower_the_dual_domain_loss() -> None:
    image, kspace, mask, sens = case()
    target = complex_magnitude(image)
    model = small_vsharp()
    loss_function = DualDomainLoss.seed004()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        optimiser.zero_grad()
        loss = loss_function(
            model.unroll_outputs(kspace, mask, sens), target, kspace=kspace, sens=sens, mask=mask
        )
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    # The reconstruction beats the zero-filled image it starts from.
    with torch.no_grad():
        final = complex_magnitude(model(kspace, mask, sens))
    zero_filled = complex_magnitude(sense_adjoint(kspace, sens, mask))
    assert float((final - target).norm()) < float((zero_filled - target).norm())


def test_initializer_keeps_the_image_size() -> None:
    initializer = LagrangeMultiplierInitializer(channels=(4, 4, 4), dilations=(1, 2, 4))
    generator = torch.Generator().manual_seed(0)
    output = initializer(torch.randn(2, 2, 17, 12, generator=generator))
    assert output.shape == (2, 2, 17, 12)


def test_bad_configurations_are_rejected() -> None:
    with pytest.raises(InvalidInputError, match="num_steps"):
        small_vsharp(num_steps=0)
    with pytest.raises(InvalidInputError, match="rho_init"):
        small_vsharp(rho_init=0.0)
    with pytest.raises(InvalidInputError, match="equal length"):
        LagrangeMultiplierInitializer(channels=(4, 4), dilations=(1,))


def test_final_image_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    from kadapt.nn.export import export_onnx

    _, kspace, mask, sens = case()
    model = small_vsharp()
    report = export_onnx(
        model,
        (kspace, mask, sens),
        tmp_path / "vsharp.onnx",
        input_names=["masked_kspace", "mask", "sens"],
        output_names=["image"],
    )
    assert report.outputs[0].shape == (1, SIZE, SIZE, 2)
    assert report.max_relative_l2 <= 1e-4
