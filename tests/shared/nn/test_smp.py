"""SMP: the torch ACS estimate against kadapt.kspace.coils, unit-RSS refinement, gradients, ONNX parity."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sigpy
import sigpy.mri
import torch

from kadapt.errors import InvalidAccelerationError, InvalidInputError
from kadapt.kspace.coils import acs_sensitivities
from kadapt.kspace.fft import fft2c
from kadapt.nn.smp import SensitivityMapPredictor, acs_sensitivity_estimate, normalise_sensitivities


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Run on one intra-op thread: these tiny tensors gain nothing from two, and OpenMP spin-waiting beside
    another busy process made training steps about 100x slower on the 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """|<a, b>| / (||a|| ||b||) of the flattened arrays (1 = equal up to one complex factor)."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    return float(np.abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)))


def phantom_kspace(coils: int, height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """Fully sampled k-space (coil, H, W) complex64 of a Shepp-Logan phantom under birdcage maps."""
    image = scale * sigpy.shepp_logan((height, width)).astype(np.complex64)
    maps = sigpy.mri.birdcage_maps((coils, height, width)).astype(np.complex64)
    return fft2c(maps * image).astype(np.complex64)


def to_real(x: np.ndarray) -> torch.Tensor:
    return torch.view_as_real(torch.from_numpy(np.ascontiguousarray(x)))


def rss_squared(maps: torch.Tensor) -> torch.Tensor:
    return (maps * maps).sum(dim=(1, 4))


def test_acs_estimate_matches_the_numpy_acs_sensitivities() -> None:
    kspaces = [phantom_kspace(8, 48, 40), phantom_kspace(8, 48, 40, scale=3.0)[:, :, ::-1]]
    batch = torch.stack([to_real(k) for k in kspaces])
    # Undersampling outside the ACS block must not matter: only the block is read.
    mask = torch.zeros(1, 1, 1, 40, 1)
    mask[..., ::4, :] = 1.0
    mask[..., 20 - 6 : 20 + 6, :] = 1.0
    maps = acs_sensitivity_estimate(batch * mask, num_acs=12)
    assert maps.shape == batch.shape
    for index, kspace in enumerate(kspaces):
        expected = acs_sensitivities(kspace, num_acs=12)
        ours = torch.view_as_complex(maps[index].contiguous()).numpy()
        support = np.abs(expected).sum(axis=0) > 0
        assert correlation(ours[:, support], expected[:, support]) > 0.99
        np.testing.assert_allclose(ours, expected, atol=2e-5)


def test_acs_estimate_has_unit_rss_on_the_object_and_zero_outside() -> None:
    maps = acs_sensitivity_estimate(to_real(phantom_kspace(4, 32, 32))[None], num_acs=8)
    energy = rss_squared(maps)[0]
    inside = energy > 0
    assert inside.float().mean() > 0.3
    torch.testing.assert_close(energy[inside], torch.ones_like(energy[inside]), atol=1e-5, rtol=0)
    assert float(energy[0, 0]) == 0.0


def test_acs_estimate_rejects_bad_arguments() -> None:
    kspace = to_real(phantom_kspace(2, 16, 16))[None]
    with pytest.raises(InvalidAccelerationError, match="num_acs=0"):
        acs_sensitivity_estimate(kspace, num_acs=0)
    with pytest.raises(InvalidInputError, match=r"\(B, C, H, W, 2\)"):
        acs_sensitivity_estimate(kspace[0], num_acs=4)
    with pytest.raises(InvalidInputError, match="relative_threshold"):
        acs_sensitivity_estimate(kspace, num_acs=4, relative_threshold=1.5)


def test_normalise_sensitivities_guards_zero_pixels() -> None:
    maps = torch.zeros(1, 2, 4, 4, 2, requires_grad=True)
    with torch.no_grad():
        maps[0, 0, 1, 1, 0] = 3.0
        maps[0, 1, 1, 1, 1] = 4.0
    normalised = normalise_sensitivities(maps)
    normalised.sum().backward()
    assert maps.grad is not None
    assert torch.isfinite(maps.grad).all()
    torch.testing.assert_close(normalised[0, :, 1, 1], torch.tensor([[0.6, 0.0], [0.0, 0.8]]))
    assert float(normalised.detach().abs().sum()) == pytest.approx(1.4)


def small_predictor() -> SensitivityMapPredictor:
    return SensitivityMapPredictor(chans=8, num_pool_layers=2).eval()


def test_predictor_outputs_unit_rss_maps_and_passes_gradients() -> None:
    model = small_predictor()
    initial = acs_sensitivity_estimate(to_real(phantom_kspace(2, 32, 32))[None], num_acs=8)
    refined = model(initial)
    assert refined.shape == (1, 2, 32, 32, 2)
    energy = rss_squared(refined)[0]
    support = rss_squared(initial)[0] > 0
    torch.testing.assert_close(energy[support].detach(), torch.ones_like(energy[support]), atol=1e-5, rtol=0)
    assert torch.equal(energy[~support].detach(), torch.zeros_like(energy[~support]))
    model.train()
    refined = model(initial)
    (refined[..., 0].sum() - refined[..., 1].pow(2).sum()).backward()
    gradients = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in gradients)
    assert sum(float(g.abs().sum()) for g in gradients if g is not None) > 0


def test_direct_predictor_differs_from_residual_and_from_kspace_runs() -> None:
    kspace = to_real(phantom_kspace(2, 32, 32))[None]
    residual = small_predictor()
    direct = small_predictor()
    direct.residual = False
    direct.load_state_dict(residual.state_dict())
    with torch.no_grad():
        from_kspace = residual.from_kspace(kspace, num_acs=8)
        expected = residual(acs_sensitivity_estimate(kspace, num_acs=8))
        torch.testing.assert_close(from_kspace, expected)
        assert not torch.allclose(direct.from_kspace(kspace, num_acs=8), expected)


def test_predictor_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    from kadapt.nn.export import export_onnx

    model = small_predictor()
    initial = acs_sensitivity_estimate(to_real(phantom_kspace(2, 32, 32))[None], num_acs=8)
    report = export_onnx(
        model, (initial,), tmp_path / "smp.onnx", input_names=["sens_initial"], output_names=["sens"]
    )
    assert (tmp_path / "smp.onnx").is_file()
    assert report.max_relative_l2 <= 1e-4


class AcsToRefinedMaps(torch.nn.Module):
    """k-space (B, C, H, W, 2) -> refined maps: the ACS estimate and SMP in one served graph."""

    def __init__(self, predictor: SensitivityMapPredictor, num_acs: int) -> None:
        super().__init__()
        self.predictor = predictor
        self.num_acs = num_acs

    def forward(self, kspace: torch.Tensor) -> torch.Tensor:
        return self.predictor.from_kspace(kspace, self.num_acs)


def test_acs_estimate_and_predictor_export_as_one_graph(tmp_path: Path) -> None:
    from kadapt.nn.export import export_onnx

    kspace = to_real(phantom_kspace(2, 32, 32))[None]
    report = export_onnx(
        AcsToRefinedMaps(small_predictor(), num_acs=8),
        (kspace,),
        tmp_path / "acs_smp.onnx",
        input_names=["kspace"],
        output_names=["sens"],
    )
    assert report.max_relative_l2 <= 1e-4
