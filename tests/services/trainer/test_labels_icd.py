"""ICD labels (seed 001 / SUNO): exact budgets, a loss that never rises, the known optimum, batching."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from kadapt.errors import InvalidInputError
from kadapt.kspace.fft import fft2c
from kadapt.masks import acs_lines, line_budget, make_mask
from kadapt.nn.losses import hfen, nrmse, ssim
from kadapt.nn.physics import sense_adjoint
from kadapt.nn.unet import UNetRecon
from kadapt.trainer.data import PreparedSlice, SliceDataset
from kadapt.trainer.labels.icd import coordinate_descent, generate_icd, icd_settings
from kadapt.trainer.labels.scoring import (
    CandidateScorer,
    MaskLoss,
    ModuleReconstructor,
    SliceProblem,
    ZeroFilledSense,
    line_images,
)

ACS = 4


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def train_slices(tiny_dataset: Path) -> SliceDataset:
    """The tiny build's train split: 2 slices, 4 coils, 32 x 32."""
    return SliceDataset(tiny_dataset, "train", ACS)


@dataclass(frozen=True)
class Slices:
    slices: list[PreparedSlice]


def known_optimum(width: int = 32, height: int = 24, acceleration: float = 4.0) -> tuple[Slices, np.ndarray]:
    """One single-coil slice (maps 1, target the image itself) whose k-space lives on the ACS block and
    ``budget - num_acs`` known lines: with zero-filled recon that mask reconstructs it exactly."""
    rng = np.random.default_rng(11)
    budget = line_budget(width, acceleration, ACS)
    acs = acs_lines(width, ACS)
    outside = np.setdiff1d(np.arange(width), acs)
    chosen = np.sort(rng.choice(outside, size=budget - ACS, replace=False))
    optimum = np.zeros(width, dtype=bool)
    optimum[acs] = True
    optimum[chosen] = True
    kspace = np.zeros((1, height, width), dtype=np.complex64)
    energy = rng.standard_normal((height, optimum.sum())) + 1j * rng.standard_normal((height, optimum.sum()))
    kspace[0][:, optimum] = energy.astype(np.complex64)
    image = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace[0]), norm="ortho"))
    assert np.allclose(fft2c(image[None]), kspace, atol=1e-5)
    item = PreparedSlice(
        "synthetic", 0, kspace, np.ones((1, height, width), np.complex64), image.astype(np.complex64), 1.0
    )
    return Slices([item]), optimum


@pytest.mark.parametrize("loss", ["nrmse", "ssim", "nmae", "hfen", {"nrmse": 1.0, "ssim": 0.5}])
@pytest.mark.parametrize("acceleration", [4.0, 3.0])
def test_every_label_has_the_exact_budget_and_the_acs(
    train_slices: SliceDataset, loss: str | dict[str, float], acceleration: float
) -> None:
    labels = generate_icd(
        train_slices, acceleration=acceleration, num_acs=ACS, loss=loss, sweeps=1, candidates_batch=64,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    budget = line_budget(32, acceleration, ACS)
    assert labels.masks.shape == (2, 32)
    assert (labels.masks.sum(axis=1) == budget).all()
    assert labels.masks[:, acs_lines(32, ACS)].all()
    assert labels.metrics["mean_label_loss"] <= labels.metrics["mean_start_loss"]
    assert labels.volumes == tuple(item.volume for item in train_slices.slices)


def test_the_loss_never_rises_sweep_by_sweep(train_slices: SliceDataset) -> None:
    rng = np.random.default_rng(5)
    for item in train_slices.slices:
        objective = MaskLoss(item, ZeroFilledSense(), {"nrmse": 1.0, "hfen": 0.3}, 32)
        start = make_mask("random", width=32, acceleration=4.0, num_acs=ACS, rng=rng)
        result = coordinate_descent(objective, start, num_acs=ACS, sweeps=4, rng=rng)
        assert np.all(np.diff(result.losses) <= 0.0), result.losses
        assert result.losses[-1] < result.losses[0]
        assert result.moves > 0
        # Re-scored from scratch the label is as good as its history says, and better than the start.
        fresh = objective.losses(np.stack([start, result.mask]))
        assert fresh[1] == pytest.approx(result.losses[-1], rel=1e-4)
        assert fresh[1] < fresh[0]
        assert result.mask.sum() == start.sum()
        assert result.mask[acs_lines(32, ACS)].all()


def test_icd_finds_the_known_optimum() -> None:
    dataset, optimum = known_optimum()
    labels = generate_icd(
        dataset, acceleration=4.0, num_acs=ACS, sweeps=3, candidates_batch=16, rng=np.random.default_rng(2)
    )
    np.testing.assert_array_equal(labels.masks[0], optimum)
    assert labels.metrics["mean_label_loss"] < 1e-5 < labels.metrics["mean_start_loss"]
    assert labels.metrics["loss_per_sweep"][-1] == labels.metrics["mean_label_loss"]


def test_linear_shortcut_matches_batched_reconstructions(train_slices: SliceDataset) -> None:
    sizes: list[int] = []

    def counted(masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> Tensor:
        sizes.append(masked_kspace.shape[0])
        return sense_adjoint(masked_kspace, sens, mask)

    common = {"acceleration": 4.0, "num_acs": ACS, "loss": "ssim", "sweeps": 2, "candidates_batch": 10}
    fast = generate_icd(train_slices, rng=np.random.default_rng(9), **common)  # type: ignore[arg-type]
    batched = generate_icd(train_slices, reconstruct=counted, rng=np.random.default_rng(9), **common)  # type: ignore[arg-type]
    np.testing.assert_array_equal(fast.masks, batched.masks)
    np.testing.assert_allclose(fast.per_slice["label_loss"], batched.per_slice["label_loss"], rtol=1e-4)
    # Many candidates per call: 24 free lines per move go as 10 + 10 + 4.
    assert max(sizes) == 10
    assert sizes.count(10) > sizes.count(1)
    assert batched.metrics["evaluations"] == sum(sizes)
    assert batched.settings["reconstructor"] == {"callable": counted.__qualname__}


def test_line_images_sum_to_the_zero_filled_sense_image(train_slices: SliceDataset) -> None:
    item = train_slices.slices[0]
    mask = make_mask("vd-random", width=32, acceleration=3.0, num_acs=ACS, rng=np.random.default_rng(1))
    lines = line_images(item)
    combined = torch.einsum("j,jhw->hw", torch.from_numpy(mask.astype(np.complex64)), lines)
    problem = SliceProblem.from_slice(item)
    line_mask = torch.from_numpy(mask.astype(np.float32))[None, None, None, :, None]
    reference = sense_adjoint(problem.kspace[None] * line_mask, problem.sens[None], line_mask)[0]
    np.testing.assert_allclose(torch.view_as_real(combined).numpy(), reference.numpy(), atol=1e-5)


def test_candidate_scores_agree_with_the_training_losses() -> None:
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(24, 20, generator=generator) + 0.1
    prediction = target + 0.1 * torch.randn(5, 24, 20, generator=generator)
    expanded = target.expand(5, 24, 20)
    scorer = CandidateScorer({"ssim": 1.0}, target)
    np.testing.assert_allclose(
        scorer.ssim(prediction), ssim(prediction, expanded, data_range=float(target.max())), rtol=1e-5
    )
    for name, loss in (("nrmse", nrmse), ("hfen", hfen)):
        per_item = CandidateScorer({name: 1.0}, target)(prediction)
        individually = [float(loss(prediction[k : k + 1], target[None])) for k in range(5)]
        np.testing.assert_allclose(per_item.numpy(), individually, rtol=1e-5)
    nmae = CandidateScorer({"nmae": 2.0}, target)(prediction)
    expected = 2.0 * (prediction - target).abs().sum(dim=(1, 2)) / target.abs().sum()
    np.testing.assert_allclose(nmae.numpy(), expected.numpy(), rtol=1e-5)


def test_a_trained_module_can_be_the_fixed_reconstructor(train_slices: SliceDataset) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = UNetRecon(chans=4, num_pool_layers=2)
    labels = generate_icd(
        train_slices, acceleration=4.0, num_acs=ACS, reconstruct=ModuleReconstructor(module), sweeps=1,
        candidates_batch=24, rng=np.random.default_rng(0),
    )  # fmt: skip
    assert (labels.masks.sum(axis=1) == 8).all()
    assert labels.settings["reconstructor"]["module"] == "UNetRecon"
    assert len(labels.settings["reconstructor"]["weights_sha256"]) == 64


def test_settings_are_reproducible_and_name_what_changed(train_slices: SliceDataset) -> None:
    common = {"acceleration": 4.0, "num_acs": ACS, "sweeps": 1, "candidates_batch": 8}
    first = icd_settings(train_slices, rng=np.random.default_rng(1), **common)  # type: ignore[arg-type]
    labels = generate_icd(train_slices, rng=np.random.default_rng(1), **common)  # type: ignore[arg-type]
    assert labels.settings == first
    again = generate_icd(train_slices, rng=np.random.default_rng(1), **common)  # type: ignore[arg-type]
    np.testing.assert_array_equal(again.masks, labels.masks)  # deterministic under one seed
    assert icd_settings(train_slices, rng=np.random.default_rng(2), **common) != first  # type: ignore[arg-type]
    given = icd_settings(train_slices, rng=np.random.default_rng(1), start_masks=labels.masks, **common)  # type: ignore[arg-type]
    assert given["start"].startswith("given:")


def test_bad_arguments_are_named(train_slices: SliceDataset) -> None:
    with pytest.raises(InvalidInputError, match="psnr"):
        generate_icd(train_slices, acceleration=4.0, num_acs=ACS, loss="psnr", rng=np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="sweeps"):
        generate_icd(train_slices, acceleration=4.0, num_acs=ACS, sweeps=0, rng=np.random.default_rng(0))
    wrong = np.zeros((2, 32), dtype=bool)
    wrong[:, :8] = True
    with pytest.raises(InvalidInputError, match="start mask 0"):
        generate_icd(
            train_slices, acceleration=4.0, num_acs=ACS, start_masks=wrong, rng=np.random.default_rng(0)
        )
