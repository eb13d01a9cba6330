"""EDM score network (seed 003): preconditioning identities, Tweedie consistency, second derivatives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kadapt.errors import InvalidInputError
from kadapt.nn.score import (
    EDMDenoiser,
    ScoreNetConfig,
    edm_coefficients,
    edm_loss,
    load_denoiser,
    save_denoiser,
)

TINY = ScoreNetConfig(base_channels=8, levels=2, embedding_dim=16, groups=4)
SIGMAS = torch.tensor([0.002, 0.05, 0.3, 1.0, 5.0, 80.0], dtype=torch.float64)


def tiny_denoiser(seed: int = 0) -> EDMDenoiser:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EDMDenoiser(TINY).eval()


def test_edm_preconditioning_identities() -> None:
    sd = 0.5
    c_skip, c_out, c_in, c_noise = edm_coefficients(SIGMAS, sd)
    weight = (SIGMAS**2 + sd**2) / (SIGMAS * sd) ** 2
    ones = torch.ones_like(SIGMAS)
    # Unit-variance network input, skip and output weights that sum to the data variance, unit loss weight.
    torch.testing.assert_close(c_in**2 * (SIGMAS**2 + sd**2), ones)
    torch.testing.assert_close(c_skip + c_out**2 / sd**2, ones)
    torch.testing.assert_close(weight * c_out**2, ones)
    torch.testing.assert_close(c_noise, SIGMAS.log() / 4)
    # The effective training target (x0 - c_skip x) / c_out has unit variance for x0 ~ (0, sd^2).
    target_variance = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * SIGMAS**2) / c_out**2
    torch.testing.assert_close(target_variance, ones)


def test_denoiser_is_identity_at_vanishing_noise_and_tweedie_holds() -> None:
    denoiser = tiny_denoiser()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn((2, 2, 16, 16), generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(denoiser(x, 1e-6), x, atol=1e-5, rtol=0)
        sigma = torch.tensor([0.3, 2.0]).reshape(2, 1, 1, 1)
        # eq. 6-7: x + sigma^2 s(x) is the denoised estimate D(x).
        torch.testing.assert_close(
            x + sigma**2 * denoiser.score(x, sigma), denoiser(x, sigma), atol=1e-5, rtol=1e-5
        )


def test_second_derivative_through_the_network_is_finite() -> None:
    denoiser = tiny_denoiser()
    x = torch.randn((1, 2, 16, 16), generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    weights = torch.ones(1, requires_grad=True)
    (first,) = torch.autograd.grad((weights * denoiser(x, 0.5) ** 2).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(first.pow(2).sum(), weights)
    assert torch.isfinite(second).all()
    assert float(second.abs().sum()) > 0


def test_edm_loss_is_finite_and_deterministic_given_the_generator() -> None:
    denoiser = tiny_denoiser()
    clean = torch.randn((3, 2, 16, 16), generator=torch.Generator().manual_seed(3)) * 0.5
    first = edm_loss(denoiser, clean, torch.Generator().manual_seed(4))
    second = edm_loss(denoiser, clean, torch.Generator().manual_seed(4))
    assert torch.isfinite(first)
    assert float(first.detach()) == float(second.detach())


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    denoiser = tiny_denoiser(5)
    path = tmp_path / "score.pt"
    save_denoiser(denoiser, path)
    loaded = load_denoiser(path)
    x = torch.randn((1, 2, 16, 16), generator=torch.Generator().manual_seed(6))
    assert loaded.config == TINY
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 0.7), denoiser(x, 0.7))


def test_rejects_a_wrong_input_shape() -> None:
    with pytest.raises(InvalidInputError, match="divisible"):
        tiny_denoiser()(torch.zeros((1, 2, 15, 16)), 1.0)
    with pytest.raises(InvalidInputError, match="score network needs"):
        tiny_denoiser()(torch.zeros((1, 1, 16, 16)), 1.0)
