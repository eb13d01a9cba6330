"""Seed 003's diffusion-prior pattern learner on tiny data: Gumbel straight-through, budgets, ACS, the
eq. 14-15 step, DPS (Alg. 1) and the data path."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from kadapt.errors import InvalidInputError
from kadapt.nn.physics import complex_abs, complex_mul, sense_adjoint
from kadapt.nn.score import EDMDenoiser, ScoreNetConfig
from kadapt.nn.unet import channels_last_to_image
from kadapt.trainer.diffusion import (
    PatternConfig,
    ScoreTrainConfig,
    dps_recon,
    learn_diffusion_pattern,
    pattern_step,
    train_score,
)
from kadapt.trainer.diffusion_data import DiffusionSlice, load_diffusion_slices, stack_images
from kadapt.trainer.diffusion_dps import DPSConfig, data_consistency, edm_sigma_steps
from kadapt.trainer.diffusion_pattern import BernoulliPattern, measure, posterior_mean, served_pattern

SIZE = 32
COILS = 2
NUM_ACS = 4
TINY = ScoreNetConfig(base_channels=8, levels=2, embedding_dim=16, groups=4)


def tiny_denoiser(seed: int = 0) -> EDMDenoiser:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EDMDenoiser(TINY).eval()


def smooth_image(generator: torch.Generator) -> torch.Tensor:
    """A complex image ``(SIZE, SIZE)`` with a smooth blob and phase, max magnitude 1."""
    grid = torch.linspace(-1, 1, SIZE)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    centre = torch.rand(2, generator=generator) * 0.6 - 0.3
    magnitude = torch.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / 0.3)
    phase = 0.5 * xx + torch.rand(1, generator=generator) * yy
    image = torch.polar(magnitude / magnitude.max(), phase)
    return image


def coil_maps() -> torch.Tensor:
    """Two smooth coil maps ``(COILS, SIZE, SIZE)`` complex with unit root-sum-of-squares."""
    grid = torch.linspace(0, 1, SIZE)
    ramp = grid[None, :].expand(SIZE, SIZE)
    maps = torch.stack((torch.polar(1 + ramp, 0.2 * ramp), torch.polar(2 - ramp, -0.3 * ramp)))
    return maps / maps.abs().pow(2).sum(0).sqrt()


def tiny_slices(count: int, seed: int = 0) -> list[DiffusionSlice]:
    generator = torch.Generator().manual_seed(seed)
    maps = coil_maps()
    slices = []
    for index in range(count):
        image = smooth_image(generator)
        kspace = torch.fft.fftshift(
            torch.fft.fft2(torch.fft.ifftshift(maps * image, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)
        )
        arrays = [tensor.numpy().astype(np.complex64) for tensor in (kspace, maps, image)]
        slices.append(DiffusionSlice("synthetic", index, *arrays))
    return slices


def real(array: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(array).to(torch.float32)


# -- the pattern distribution (eq. 16-17) ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lines", "points"])
def test_gumbel_straight_through_sample_is_binary_and_passes_gradients_to_the_logits(kind: str) -> None:
    pattern = BernoulliPattern(kind, SIZE, SIZE, 4.0, NUM_ACS)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(0)
    masks = pattern.sample(3, generator)
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    weights = torch.randn(masks.shape, generator=generator)
    (masks * weights).sum().backward()  # type: ignore[no-untyped-call]
    grad = pattern.logits.grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    free = ~pattern.acs_pattern
    assert float(grad[free].abs().sum()) > 0


@pytest.mark.parametrize("kind", ["lines", "points"])
def test_acs_is_always_sampled(kind: str) -> None:
    pattern = BernoulliPattern(kind, SIZE, SIZE, 8.0, NUM_ACS)  # type: ignore[arg-type]
    with torch.no_grad():
        pattern.logits.fill_(-30.0)  # every free location almost never sampled
    masks = pattern.sample(16, torch.Generator().manual_seed(1))
    acs = pattern.acs_pattern
    per_item = masks[:, 0, 0, :, 0] if kind == "lines" else masks[:, 0, :, :, 0]
    assert bool((per_item[:, acs] == 1).all())
    assert int(acs.sum()) == (NUM_ACS if kind == "lines" else NUM_ACS**2)


@pytest.mark.parametrize("kind", ["lines", "points"])
@pytest.mark.parametrize("acceleration", [2.0, 4.0, 8.0])
@pytest.mark.parametrize("fill", ["low", "high", "random"])
def test_budget_exact_in_expectation_and_when_served(kind: str, acceleration: float, fill: str) -> None:
    pattern = BernoulliPattern(kind, SIZE, SIZE, acceleration, NUM_ACS)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # both branches of eq. 16: mean above and below the target sparsity
        if fill == "random":
            pattern.logits.copy_(torch.randn(pattern.logits.shape, generator=generator) * 3)
        else:
            pattern.logits.fill_(-4.0 if fill == "low" else 4.0)
    expected = SIZE / acceleration if kind == "lines" else SIZE * SIZE / acceleration
    assert pattern.budget == round(expected)
    torch.testing.assert_close(
        pattern.probabilities().sum(), torch.tensor(float(pattern.budget)), rtol=1e-5, atol=1e-4
    )
    served = pattern.served_mask()
    assert int(served.sum()) == pattern.budget
    assert bool(served[pattern.acs_pattern.numpy()].all())
    for other in (2.0, 4.0):  # one score vector serves every R
        size = SIZE if kind == "lines" else SIZE * SIZE
        assert int(served_pattern(pattern.scores(), kind, NUM_ACS, other).sum()) == round(size / other)  # type: ignore[arg-type]


def test_served_pattern_rejects_a_shape_of_the_other_kind() -> None:
    with pytest.raises(InvalidInputError):
        served_pattern(np.zeros((SIZE, SIZE), np.float32), "lines", NUM_ACS, 4.0)
    with pytest.raises(InvalidInputError):
        BernoulliPattern("spiral", SIZE, SIZE, 4.0, NUM_ACS)  # type: ignore[arg-type]


# -- the one-step posterior mean (eq. 14-15) ------------------------------------------------------------


def test_posterior_mean_without_likelihood_is_the_denoiser_and_needs_a_tracked_input() -> None:
    denoiser = tiny_denoiser()
    images = stack_images(tiny_slices(2))
    sens = real(torch.from_numpy(np.stack([coil_maps().numpy()] * 2)))
    mask = torch.ones((1, 1, 1, SIZE, 1))
    sigma = torch.full((2, 1, 1, 1), 0.4)
    noisy = images.clone().requires_grad_(True)
    y = measure(images, sens, mask)
    with torch.no_grad():
        expected = denoiser(noisy, sigma)
    torch.testing.assert_close(posterior_mean(denoiser, noisy, sigma, y, sens, mask, 0.0).detach(), expected)
    with pytest.raises(InvalidInputError, match="requires_grad"):
        posterior_mean(denoiser, images, sigma, y, sens, mask, 1.0)


def test_measure_is_the_multicoil_sense_operator() -> None:
    slices = tiny_slices(1)
    image = stack_images(slices)
    sens = real(torch.from_numpy(slices[0].sens))[None]
    full = measure(image, sens, torch.ones((1, 1, 1, SIZE, 1)))
    torch.testing.assert_close(full, real(torch.from_numpy(slices[0].kspace))[None], atol=1e-5, rtol=1e-5)
    coil_images = complex_mul(sens, channels_last_to_image(image).unsqueeze(1))
    assert coil_images.shape == (1, COILS, SIZE, SIZE, 2)


@pytest.mark.parametrize(("kind", "operator"), [("lines", "single-coil"), ("points", "multi-coil")])
def test_one_pattern_learning_step_changes_the_logits(kind: str, operator: str) -> None:
    denoiser = tiny_denoiser()
    for parameter in denoiser.parameters():
        parameter.requires_grad_(False)
    slices = tiny_slices(2)
    config = PatternConfig(acceleration=4.0, num_acs=NUM_ACS, kind=kind, batch_size=2, operator=operator)  # type: ignore[arg-type]
    pattern = BernoulliPattern(config.kind, SIZE, SIZE, config.acceleration, config.num_acs)
    optimiser = torch.optim.Adam(pattern.parameters(), lr=config.lr)
    images = stack_images(slices)
    sens = real(torch.from_numpy(np.stack([item.sens for item in slices])))
    if operator == "single-coil":
        sens = torch.stack((torch.ones(1, 1, SIZE, SIZE), torch.zeros(1, 1, SIZE, SIZE)), dim=-1)
    before = pattern.logits.detach().clone()
    loss = pattern_step(denoiser, pattern, optimiser, images, sens, config, torch.Generator().manual_seed(3))
    assert np.isfinite(loss)
    changed = (pattern.logits.detach() - before).abs()
    assert float(changed[~pattern.acs_pattern].max()) > 0
    assert all(parameter.grad is None for parameter in denoiser.parameters())


def test_learn_diffusion_pattern_is_deterministic_and_shaped() -> None:
    denoiser = tiny_denoiser()
    slices = tiny_slices(3)
    config = PatternConfig(acceleration=4.0, num_acs=NUM_ACS, steps=3)
    first = learn_diffusion_pattern(denoiser, slices, config, torch.Generator().manual_seed(4))
    second = learn_diffusion_pattern(denoiser, slices, config, torch.Generator().manual_seed(4))
    assert first.shape == (SIZE,)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    points = PatternConfig(acceleration=4.0, num_acs=NUM_ACS, steps=2, kind="points", operator="multi-coil")
    assert learn_diffusion_pattern(denoiser, slices, points, torch.Generator().manual_seed(4)).shape == (
        SIZE,
        SIZE,
    )
    with pytest.raises(InvalidInputError, match="operator"):
        learn_diffusion_pattern(
            denoiser, slices, PatternConfig(4.0, NUM_ACS, operator="x"), torch.Generator()
        )


# -- score training and DPS (Alg. 1) --------------------------------------------------------------------


def test_train_score_runs_and_is_reproducible() -> None:
    images = stack_images(tiny_slices(4))
    config = ScoreTrainConfig(steps=3, batch_size=2, network=TINY)
    losses: list[float] = []
    first = train_score(
        images, config, torch.Generator().manual_seed(5), on_step=lambda _, loss: losses.append(loss)
    )
    second = train_score(images, config, torch.Generator().manual_seed(5))
    assert len(losses) == 3
    assert all(np.isfinite(losses))
    assert not first.training
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_edm_sigma_schedule_descends_from_sigma_max_to_zero() -> None:
    levels = edm_sigma_steps(DPSConfig(steps=10))
    assert len(levels) == 11
    assert levels[0] == pytest.approx(80.0)
    assert levels[-2] == pytest.approx(0.002)
    assert levels[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(levels))


def test_dps_runs_and_improves_data_consistency_over_its_start() -> None:
    denoiser = tiny_denoiser()
    slices = tiny_slices(2)
    kspace = real(torch.from_numpy(np.stack([item.kspace for item in slices])))
    sens = real(torch.from_numpy(np.stack([item.sens for item in slices])))
    mask = torch.from_numpy(
        served_pattern(np.zeros(SIZE, np.float32), "lines", NUM_ACS, 2.0).astype(np.float32)
    )
    mask = mask[None, None, None, :, None]
    config = DPSConfig(steps=8)
    result = dps_recon(denoiser, kspace * mask, mask, sens, torch.Generator().manual_seed(6), config)
    assert result.shape == (2, SIZE, SIZE, 2)
    assert torch.isfinite(result).all()
    # Alg. 1 line 1 with the same generator seed: x_N ~ N(0, sigma_max^2), on y's scale like the result.
    start = torch.randn((2, 2, SIZE, SIZE), generator=torch.Generator().manual_seed(6)) * config.sigma_max
    scale = complex_abs(sense_adjoint(kspace * mask, sens, mask)).amax(dim=(1, 2)).reshape(-1, 1, 1, 1)
    start_image = channels_last_to_image(start) * scale
    before = data_consistency(start_image, kspace, mask, sens)
    after = data_consistency(result, kspace, mask, sens)
    assert bool((after < 0.1 * before).all()), (before, after)


def test_load_diffusion_slices_crops_and_scales(tiny_dataset: Path) -> None:
    slices = load_diffusion_slices(tiny_dataset, "train", num_acs=NUM_ACS, size=SIZE, max_slices=2)
    assert len(slices) == 2
    for item in slices:
        assert item.kspace.shape[-2:] == (SIZE, SIZE)
        assert item.image.shape == (SIZE, SIZE)
        assert np.abs(item.image).max() == pytest.approx(1.0)
    assert stack_images(slices).shape == (2, 2, SIZE, SIZE)
