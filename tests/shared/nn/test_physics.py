"""SENSE physics on real tensors: complex arithmetic, adjointness, coil combination and CG."""

from __future__ import annotations

import pytest
import torch

from kadapt.errors import InvalidInputError
from kadapt.kspace.torch_fft import dfts_as_matmuls, fft2c, fft2c_real, ifft2c_real, matmul_dfts
from kadapt.nn.physics import (
    complex_abs,
    complex_abs_sq,
    complex_conj,
    complex_mul,
    conjugate_gradient,
    ky_projection,
    sense_adjoint,
    sense_expand,
    sense_forward,
    sense_normal,
    sense_reduce,
)

B, C, H, W = 2, 3, 16, 12


def _random(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def _line_mask(generator: torch.Generator) -> torch.Tensor:
    return (torch.rand((B, 1, 1, W, 1), generator=generator) < 0.5).to(torch.float64)


def _unit_rss_maps(generator: torch.Generator) -> torch.Tensor:
    maps = _random((B, C, H, W, 2), generator)
    rss = complex_abs_sq(maps).sum(dim=1, keepdim=True).sqrt()
    return maps / rss.unsqueeze(-1)


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Complex inner product <a, b> = sum conj(a) b, returned as (real, imag).
    return complex_mul(complex_conj(a), b).sum(dim=tuple(range(a.ndim - 1)))


def test_complex_arithmetic_matches_torch_complex() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = _random((4, 5, 2), g), _random((4, 5, 2), g)
    ca, cb = torch.view_as_complex(a), torch.view_as_complex(b)
    torch.testing.assert_close(torch.view_as_complex(complex_mul(a, b)), ca * cb)
    torch.testing.assert_close(torch.view_as_complex(complex_conj(a)), ca.conj())
    torch.testing.assert_close(complex_abs(a), ca.abs())
    torch.testing.assert_close(complex_abs_sq(a), ca.abs() ** 2)


def test_complex_abs_eps_gives_finite_gradient_at_zero() -> None:
    zero = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    complex_abs(zero, eps=1e-12).sum().backward()
    assert zero.grad is not None
    assert torch.isfinite(zero.grad).all()


def test_sense_forward_is_masked_fft_of_coil_images() -> None:
    g = torch.Generator().manual_seed(2)
    image, sens, mask = _random((B, H, W, 2), g), _random((B, C, H, W, 2), g), _line_mask(g)
    expected = mask[..., 0] * fft2c(torch.view_as_complex(sens) * torch.view_as_complex(image).unsqueeze(1))
    torch.testing.assert_close(torch.view_as_complex(sense_forward(image, sens, mask)), expected)


@pytest.mark.parametrize("mask_kind", ["lines", "points", "full"])
def test_sense_adjoint_is_the_adjoint_of_sense_forward(mask_kind: str) -> None:
    g = torch.Generator().manual_seed(3)
    image, sens = _random((B, H, W, 2), g), _random((B, C, H, W, 2), g)
    kspace = _random((B, C, H, W, 2), g)
    if mask_kind == "lines":
        mask = _line_mask(g)
    elif mask_kind == "points":
        mask = (torch.rand((B, 1, H, W, 1), generator=g) < 0.3).to(torch.float64)
    else:
        mask = torch.ones((1, 1, 1, 1, 1), dtype=torch.float64)
    lhs = _inner(sense_forward(image, sens, mask), kspace)
    rhs = _inner(image, sense_adjoint(kspace, sens, mask))
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-10)


def test_sense_expand_and_reduce_are_adjoint() -> None:
    g = torch.Generator().manual_seed(4)
    image, sens, coils = _random((B, H, W, 2), g), _random((B, C, H, W, 2), g), _random((B, C, H, W, 2), g)
    torch.testing.assert_close(
        _inner(sense_expand(image, sens), coils),
        _inner(image, sense_reduce(coils, sens)),
        rtol=1e-12,
        atol=1e-10,
    )


def test_sense_reduce_inverts_expand_for_unit_rss_maps() -> None:
    g = torch.Generator().manual_seed(5)
    image, sens = _random((B, H, W, 2), g), _unit_rss_maps(g)
    torch.testing.assert_close(sense_reduce(sense_expand(image, sens), sens), image)


def test_sense_normal_is_identity_when_fully_sampled_with_unit_rss_maps() -> None:
    g = torch.Generator().manual_seed(6)
    image, sens = _random((B, H, W, 2), g), _unit_rss_maps(g)
    full = torch.ones((B, 1, 1, W, 1), dtype=torch.float64)
    torch.testing.assert_close(sense_normal(image, sens, full), image)


def test_conjugate_gradient_solves_a_small_spd_system_like_a_dense_solve() -> None:
    g = torch.Generator().manual_seed(7)
    n = 2 * 3 * 2  # (H, W, 2) = (2, 3, 2) flattened: a real SPD matrix per batch item
    factors = _random((B, n, n), g)
    matrices = factors @ factors.transpose(1, 2) + 0.5 * torch.eye(n, dtype=torch.float64)
    rhs = _random((B, 2, 3, 2), g)

    def operator(x: torch.Tensor) -> torch.Tensor:
        return (matrices @ x.reshape(B, n, 1)).reshape(x.shape)

    solution = conjugate_gradient(operator, rhs, torch.zeros_like(rhs), iterations=3 * n)
    dense = torch.linalg.solve(matrices, rhs.reshape(B, n, 1)).reshape(rhs.shape)
    torch.testing.assert_close(solution, dense, rtol=1e-8, atol=1e-8)


def test_conjugate_gradient_stays_finite_after_convergence_and_per_item() -> None:
    g = torch.Generator().manual_seed(8)
    sens = _unit_rss_maps(g)
    mask = _line_mask(g)
    rhs = _random((B, H, W, 2), g)
    rhs[1] = 0.0  # the second item is solved by its initial guess: its steps must be zero, not NaN

    def operator(x: torch.Tensor) -> torch.Tensor:
        return sense_normal(x, sens, mask) + 0.1 * x

    solution = conjugate_gradient(operator, rhs, torch.zeros_like(rhs), iterations=60)
    assert torch.isfinite(solution).all()
    torch.testing.assert_close(solution[1], torch.zeros_like(solution[1]))
    torch.testing.assert_close(operator(solution), rhs, rtol=1e-7, atol=1e-7)


def test_conjugate_gradient_is_differentiable() -> None:
    g = torch.Generator().manual_seed(9)
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    rhs = _random((1, 4, 4, 2), g)
    solution = conjugate_gradient(lambda x: scale * x, rhs, torch.zeros_like(rhs), iterations=2)
    solution.sum().backward()
    # x = rhs / scale, so d(sum x)/d scale = -sum(rhs) / scale^2
    assert scale.grad is not None
    torch.testing.assert_close(scale.grad, -rhs.sum() / 4.0)


def test_shape_errors_name_the_bad_shape() -> None:
    g = torch.Generator().manual_seed(10)
    image, sens = _random((B, H, W, 2), g), _random((B, C, H, W, 2), g)
    with pytest.raises(InvalidInputError, match=r"\(2, 16, 12\)"):
        sense_expand(image[..., 0], sens)
    with pytest.raises(InvalidInputError, match="does not match sens"):
        sense_expand(image[:, :8], sens)
    with pytest.raises(InvalidInputError, match=r"mask must broadcast"):
        sense_forward(image, sens, torch.ones(W))
    with pytest.raises(InvalidInputError, match="does not broadcast"):
        sense_forward(image, sens, torch.ones(B, 1, 1, W + 1, 1, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="iterations"):
        conjugate_gradient(lambda x: x, image, image, iterations=-1)


def test_line_mask_normal_operator_uses_ky_only_and_equals_the_2d_composition() -> None:
    generator = torch.Generator().manual_seed(7)
    image, sens, mask = (
        _random((B, H, W, 2), generator),
        _random((B, C, H, W, 2), generator),
        _line_mask(generator),
    )
    composed = sense_adjoint(sense_forward(image, sens, mask), sens, mask)
    torch.testing.assert_close(sense_normal(image, sens, mask), composed, rtol=0, atol=1e-12)
    coil_images = sense_expand(image, sens)
    torch.testing.assert_close(
        ky_projection(coil_images, mask), ifft2c_real(mask * fft2c_real(coil_images)), rtol=0, atol=1e-12
    )


def test_ky_projection_and_dfts_trace_to_matmuls_with_the_same_values_under_onnx_export(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = torch.Generator().manual_seed(8)
    coil_images, mask = _random((B, C, H, W, 2), generator), _line_mask(generator)
    eager_projection = ky_projection(coil_images, mask)
    eager_fft, eager_ifft = fft2c_real(coil_images), ifft2c_real(coil_images)
    with dfts_as_matmuls():
        assert matmul_dfts()
        torch.testing.assert_close(ky_projection(coil_images, mask), eager_projection, rtol=0, atol=1e-12)
        torch.testing.assert_close(fft2c_real(coil_images), eager_fft, rtol=0, atol=1e-12)
        torch.testing.assert_close(ifft2c_real(coil_images), eager_ifft, rtol=0, atol=1e-12)
    assert not matmul_dfts()
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert matmul_dfts(), "torch's own export flag counts too"
