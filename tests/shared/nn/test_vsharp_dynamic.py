"""vSHARP 2D+t and the dynamic SENSE operators: adjointness, frame folding, outputs, gradients, scale, SMP."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import sigpy
import sigpy.mri
import torch
from numpy.typing import NDArray

from kadapt.errors import InvalidInputError
from kadapt.kspace.fft import fft2c
from kadapt.nn.losses import complex_magnitude
from kadapt.nn.physics import sense_adjoint, sense_forward
from kadapt.nn.physics_dynamic import (
    dynamic_sense_adjoint,
    dynamic_sense_forward,
    dynamic_sense_normal,
)
from kadapt.nn.smp import SensitivityMapPredictor, SensitivityRefinedRecon
from kadapt.nn.unet3d import UNet3D
from kadapt.nn.vsharp_dynamic import VSharpDynamic

T, C, N = 4, 2, 16


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_model(**overrides: object) -> VSharpDynamic:
    settings: dict[str, object] = {
        "num_steps": 2,
        "chans": 4,
        "initializer_channels": (4, 4),
        "initializer_dilations": (1, 2),
    }
    settings.update(overrides)
    return VSharpDynamic(**settings)  # type: ignore[arg-type]


def case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cine (1, T, N, N, 2) (a pulsing Shepp-Logan), masked k-space (1, T, C, N, N, 2), per-frame line mask
    (1, T, N) (ACS + frame-shifted equispaced lines), unit-RSS static sens (1, C, N, N, 2)."""
    base = sigpy.shepp_logan((N, N)).astype(np.complex64)
    frames = np.stack([base * (1.0 + 0.2 * np.sin(t)) for t in range(T)])
    maps = sigpy.mri.birdcage_maps((C, N, N)).astype(np.complex64)
    maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=0))
    mask = np.zeros((T, N), dtype=np.float32)
    for t in range(T):
        mask[t, t::4] = 1.0
    mask[:, N // 2 - 2 : N // 2 + 2] = 1.0
    kspace = fft2c(maps[None] * frames[:, None]) * mask[:, None, None, :]
    return _as_real(frames), _as_real(kspace), torch.from_numpy(mask)[None], _as_real(maps)


def _as_real(array: NDArray[np.complexfloating]) -> torch.Tensor:
    return torch.view_as_real(torch.from_numpy(array.astype(np.complex64)))[None]


def test_dynamic_operators_equal_the_2d_ones_frame_by_frame() -> None:
    image, kspace, mask, sens = case()
    forward = dynamic_sense_forward(image, sens, mask)
    adjoint = dynamic_sense_adjoint(kspace, sens, mask)
    for t in range(T):
        line = mask[:, t].reshape(1, 1, 1, N, 1)
        torch.testing.assert_close(forward[:, t], sense_forward(image[:, t], sens, line))
        torch.testing.assert_close(adjoint[:, t], sense_adjoint(kspace[:, t], sens, line))


@pytest.mark.parametrize("point_mask", [False, True])
def test_adjoint_and_normal_are_consistent(point_mask: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    _, _, mask, sens = case()
    if point_mask:
        mask = (torch.rand(1, T, N, N, generator=generator) < 0.4).float()
    x = torch.randn(1, T, N, N, 2, generator=generator)
    y = torch.randn(1, T, C, N, N, 2, generator=generator)
    lhs = (dynamic_sense_forward(x, sens, mask) * y).sum()
    rhs = (x * dynamic_sense_adjoint(y, sens, mask)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-4, atol=1e-4)
    normal = dynamic_sense_normal(x, sens, mask)
    reference = dynamic_sense_adjoint(dynamic_sense_forward(x, sens, mask), sens, mask)
    torch.testing.assert_close(normal, reference, rtol=1e-4, atol=1e-5)


def test_bad_masks_are_rejected() -> None:
    image, _, _, sens = case()
    with pytest.raises(InvalidInputError, match="dynamic mask"):
        dynamic_sense_forward(image, sens, torch.ones(1, T, N + 1))
    with pytest.raises(InvalidInputError, match=r"\(B, T\)"):
        dynamic_sense_forward(image, sens, torch.ones(1, T + 1, N))


def test_one_output_per_step_forward_is_the_last_and_denoiser_is_3d() -> None:
    _, kspace, mask, sens = case()
    model = small_model(num_steps=3).eval()
    assert isinstance(model.denoisers[0], UNet3D)
    with torch.no_grad():
        steps = model.unroll_outputs(kspace, mask, sens)
        final = model(kspace, mask, sens)
    assert len(steps) == 3
    assert all(s.shape == (1, T, N, N, 2) for s in steps)
    torch.testing.assert_close(final, steps[-1])


def test_gradients_reach_every_learned_piece() -> None:
    image, kspace, mask, sens = case()
    model = small_model()
    steps = model.unroll_outputs(kspace, mask, sens)
    weights = model.step_weights()
    target = complex_magnitude(image)
    terms = [w * (complex_magnitude(s) - target).abs().mean() for w, s in zip(weights, steps, strict=True)]
    loss: torch.Tensor = torch.stack(terms).sum()
    torch.autograd.backward(loss)
    for module in (model.denoisers[0], model.initializer):
        assert sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None) > 0
    assert model.rho_raw.grad is not None
    assert bool((model.rho_raw.grad.abs() > 0).all())


def test_normalisation_makes_it_scale_equivariant() -> None:
    _, kspace, mask, sens = case()
    model = small_model().eval()
    with torch.no_grad():
        base = model(kspace, mask, sens)
        scaled = model(500.0 * kspace, mask, sens)
    torch.testing.assert_close(scaled, 500.0 * base, rtol=1e-4, atol=1e-4 * 500.0 * float(base.abs().max()))


def test_a_few_training_steps_lower_the_loss() -> None:
    image, kspace, mask, sens = case()
    target = complex_magnitude(image)
    model = small_model()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        optimiser.zero_grad()
        loss: torch.Tensor = (complex_magnitude(model(kspace, mask, sens)) - target).abs().mean()
        torch.autograd.backward(loss)
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_the_smp_wrapper_refines_static_maps_for_the_dynamic_model() -> None:
    _, kspace, mask, sens = case()
    wrapped = SensitivityRefinedRecon(
        small_model(), SensitivityMapPredictor(chans=4, num_pool_layers=2)
    ).eval()
    with torch.no_grad():
        assert wrapped(kspace, mask, sens).shape == (1, T, N, N, 2)


def test_point_masks_work() -> None:
    _, kspace, _, sens = case()
    mask = torch.zeros(1, T, N, N)
    mask[..., ::2, :] = 1.0
    with torch.no_grad():
        assert small_model().eval()(kspace * mask[:, :, None, ..., None], mask, sens).shape == (1, T, N, N, 2)
