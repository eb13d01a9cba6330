"""Torch training losses against the numpy metrics of kadapt.metrics, gradients, DualDomainLoss."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import sigpy
import sigpy.mri
import torch

from kadapt import metrics
from kadapt.errors import InvalidInputError
from kadapt.kspace.fft import fft2c
from kadapt.nn.losses import (
    DualDomainLoss,
    complex_magnitude,
    hfen,
    kspace_nmae,
    l1,
    laplacian_of_gaussian,
    nrmse,
    ssim,
    ssim_loss,
    unrolled_step_weights,
)
from kadapt.nn.physics import sense_forward


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Run on one intra-op thread: these tiny tensors gain nothing from two, and OpenMP spin-waiting beside
    another busy process made training steps about 100x slower on the 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def phantom_pair(slices: int = 3, height: int = 40, width: int = 36) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude gt (slices, H, W) (Shepp-Logan, a different scale per slice) and a noisy, blurred pred."""
    rng = np.random.default_rng(7)
    base = np.abs(sigpy.shepp_logan((height, width)))
    gt = np.stack([base * (1.0 + 0.5 * s) for s in range(slices)])
    pred = 0.8 * gt + 0.6 * np.roll(gt, 1, axis=-1) * 0.25 + 0.05 * rng.standard_normal(gt.shape)
    return gt, np.abs(pred)


def as_torch(x: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_ssim_agrees_with_the_numpy_metric_on_a_volume(dtype: torch.dtype, tolerance: float) -> None:
    gt, pred = phantom_pair()
    volume_max = float(gt.max())
    expected = metrics.ssim(gt, pred)
    # Slices of one volume share the volume maximum as data range (fastMRI evaluate.py).
    value = 1.0 - float(ssim_loss(as_torch(pred, dtype), as_torch(gt, dtype), data_range=volume_max))
    assert value == pytest.approx(expected, abs=tolerance)
    # Per item with the default data range (each item's own maximum) = the metric per one-slice volume.
    per_item = ssim(as_torch(pred, dtype), as_torch(gt, dtype))
    for index in range(gt.shape[0]):
        assert float(per_item[index]) == pytest.approx(metrics.ssim(gt[index], pred[index]), abs=tolerance)


def test_ssim_agrees_on_random_data_with_a_tensor_data_range() -> None:
    generator = np.random.default_rng(3)
    gt = generator.random((2, 16, 19))
    pred = gt + 0.2 * generator.standard_normal(gt.shape)
    data_range = torch.tensor([2.0, 3.0], dtype=torch.float64)
    values = ssim(as_torch(pred), as_torch(gt), data_range=data_range)
    for index in range(2):
        expected = metrics.ssim(gt[index], pred[index], maxval=float(data_range[index]))
        assert float(values[index]) == pytest.approx(expected, abs=1e-10)


def test_hfen_and_its_log_agree_with_the_numpy_metric() -> None:
    gt, pred = phantom_pair()
    np.testing.assert_allclose(
        laplacian_of_gaussian(as_torch(gt)).numpy(), metrics.laplacian_of_gaussian(gt), atol=1e-12
    )
    value = float(hfen(as_torch(pred[:1]), as_torch(gt[:1])))
    assert value == pytest.approx(metrics.hfen(gt[0], pred[0]), rel=1e-10)
    mean_of_slices = np.mean([metrics.hfen(gt[i], pred[i]) for i in range(gt.shape[0])])
    assert float(hfen(as_torch(pred, torch.float32), as_torch(gt, torch.float32))) == pytest.approx(
        mean_of_slices, rel=1e-5
    )


def test_nrmse_is_the_square_root_of_nmse_and_l1_is_the_mean_absolute_error() -> None:
    gt, pred = phantom_pair(slices=1)
    assert float(nrmse(as_torch(pred), as_torch(gt))) == pytest.approx(
        np.sqrt(metrics.nmse(gt, pred)), rel=1e-12
    )
    assert float(l1(as_torch(pred), as_torch(gt))) == pytest.approx(np.mean(np.abs(gt - pred)), rel=1e-12)
    # Complex layout (B, H, W, 2): NRMSE over real and imaginary parts = the complex relative error.
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(2, 8, 8, 2, generator=generator, dtype=torch.float64)
    prediction = target + 0.1 * torch.randn(2, 8, 8, 2, generator=generator, dtype=torch.float64)
    complex_target = torch.view_as_complex(target)
    complex_error = torch.view_as_complex(prediction) - complex_target
    expected = (complex_error.flatten(1).norm(dim=1) / complex_target.flatten(1).norm(dim=1)).mean()
    assert float(nrmse(prediction, target)) == pytest.approx(float(expected), rel=1e-12)


def test_losses_vanish_with_finite_gradients_at_identical_inputs() -> None:
    gt, _ = phantom_pair(slices=2)
    target = as_torch(gt)
    for loss in (nrmse, l1, hfen, ssim_loss):
        prediction = target.clone().requires_grad_(True)
        value = loss(prediction, target)
        value.backward()
        assert float(value.detach()) == pytest.approx(0.0, abs=1e-12), loss.__name__
        assert prediction.grad is not None
        assert torch.isfinite(prediction.grad).all(), loss.__name__


def test_losses_have_finite_nonzero_gradients_away_from_the_target() -> None:
    gt, pred = phantom_pair(slices=2)
    target = as_torch(gt, torch.float32)
    for loss in (nrmse, l1, hfen, ssim_loss):
        prediction = as_torch(pred, torch.float32).requires_grad_(True)
        loss(prediction, target).backward()
        assert prediction.grad is not None
        assert torch.isfinite(prediction.grad).all(), loss.__name__
        assert float(prediction.grad.abs().sum()) > 0.0, loss.__name__


def test_complex_magnitude_has_a_zero_gradient_at_zero() -> None:
    image = torch.zeros(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    complex_magnitude(image).sum().backward()
    assert image.grad is not None
    assert torch.equal(image.grad, torch.zeros_like(image))
    values = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    assert float(complex_magnitude(values)[0]) == 5.0


def multicoil_case(
    coils: int = 2, size: int = 32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image (1, H, W, 2), unit-RSS sens (1, C, H, W, 2), line mask (1, 1, 1, W, 1), masked k-space."""
    image = sigpy.shepp_logan((size, size)).astype(np.complex64)
    maps = sigpy.mri.birdcage_maps((coils, size, size)).astype(np.complex64)
    maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=0))
    line_mask = np.zeros(size, dtype=np.float32)
    line_mask[::3] = 1.0
    line_mask[size // 2 - 4 : size // 2 + 4] = 1.0
    kspace = fft2c(maps * image) * line_mask
    image_t = torch.view_as_real(torch.from_numpy(image))[None]
    sens_t = torch.view_as_real(torch.from_numpy(maps))[None]
    mask_t = torch.from_numpy(line_mask).reshape(1, 1, 1, size, 1)
    kspace_t = torch.view_as_real(torch.from_numpy(kspace.astype(np.complex64)))[None]
    return image_t, sens_t, mask_t, kspace_t


def test_kspace_nmae_matches_the_numpy_ratio_on_sampled_entries() -> None:
    image, sens, mask, kspace = multicoil_case()
    predicted = sense_forward(0.9 * image, sens, mask)
    value = float(kspace_nmae(predicted, kspace, mask))
    # The prediction is 0.9 x the data on every sampled entry: NMAE = 0.1 exactly.
    assert value == pytest.approx(0.1, rel=1e-5)
    sampled = mask[0, 0, 0, :, 0].numpy() > 0
    y = torch.view_as_complex(kspace[0]).numpy()[..., sampled]
    y_hat = torch.view_as_complex(predicted[0]).numpy()[..., sampled]
    assert value == pytest.approx(np.sum(np.abs(y_hat - y)) / np.sum(np.abs(y)), rel=1e-5)
    exact = sense_forward(image, sens, mask).requires_grad_(True)
    zero = kspace_nmae(exact, kspace, mask)
    zero.backward()
    assert float(zero.detach()) < 1e-6
    assert exact.grad is not None
    assert torch.isfinite(exact.grad).all()


def test_unrolled_step_weights_follow_seed_004() -> None:
    weights = unrolled_step_weights(8)
    assert len(weights) == 8
    assert weights[-1] == pytest.approx(1.0)
    assert weights[0] == pytest.approx(0.1)
    assert weights[3] == pytest.approx(10 ** ((4 - 8) / 7))
    assert unrolled_step_weights(1) == [1.0]
    with pytest.raises(InvalidInputError, match="num_steps"):
        unrolled_step_weights(0)


def test_dual_domain_loss_combines_the_seed_004_terms() -> None:
    image, sens, mask, kspace = multicoil_case()
    target = complex_magnitude(image)
    steps = [0.7 * image, 0.95 * image]
    loss = DualDomainLoss.seed004()
    terms = loss.terms(steps, target, kspace=kspace, sens=sens, mask=mask)
    weights = unrolled_step_weights(2)
    for name, function in (("ssim", ssim_loss), ("l1", l1), ("hfen", hfen)):
        values = [float(function(complex_magnitude(step), target)) for step in steps]
        expected = sum(w * v for w, v in zip(weights, values, strict=True))
        assert float(terms[name]) == pytest.approx(expected, rel=1e-5), name
    assert float(terms["kspace_nmae"]) == pytest.approx(0.05, rel=1e-4)
    expected_total = float(terms["ssim"] + terms["l1"] + terms["hfen"] + 3 * terms["kspace_nmae"])
    assert float(loss(steps, target, kspace=kspace, sens=sens, mask=mask)) == pytest.approx(expected_total)
    assert "nrmse" not in terms


def test_dual_domain_loss_gradients_and_the_seed_001_objective() -> None:
    image, sens, mask, kspace = multicoil_case()
    target = complex_magnitude(image)
    prediction = (0.8 * image).requires_grad_(True)
    DualDomainLoss.seed004()([prediction], target, kspace=kspace, sens=sens, mask=mask).backward()
    assert prediction.grad is not None
    assert torch.isfinite(prediction.grad).all()
    assert float(prediction.grad.abs().sum()) > 0
    seed001 = DualDomainLoss.seed001()
    expected = nrmse(complex_magnitude(prediction), target)
    assert float(seed001(prediction, target).detach()) == pytest.approx(float(expected.detach()))


def test_dual_domain_loss_rejects_bad_arguments() -> None:
    image, _, _, _ = multicoil_case()
    target = complex_magnitude(image)
    with pytest.raises(InvalidInputError, match="kspace, sens and mask"):
        DualDomainLoss()(image, target)
    with pytest.raises(InvalidInputError, match="non-negative"):
        DualDomainLoss(l1_weight=-1.0)
    with pytest.raises(InvalidInputError, match="step weights"):
        DualDomainLoss.seed001()([image, image], target, step_weights=[1.0])
    with pytest.raises(InvalidInputError, match="differ in shape"):
        l1(target, target[:, :-1])
    with pytest.raises(InvalidInputError, match="all-zero target"):
        nrmse(target, torch.zeros_like(target))
    with pytest.raises(InvalidInputError, match="data_range"):
        ssim(target, target, data_range=torch.ones(3))
