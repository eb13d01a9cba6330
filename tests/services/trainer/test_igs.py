"""IGS (seed 002 Alg. 1, eq. 9) on tiny synthetic task data (32 x 32, 2 coils, 4 slices): one round picks
the arg-min of an independently computed accumulated gradient among the free lines, for every task loss;
lines are never picked twice; the served top-k is the IGS pattern with an exact budget at every R; the
fixed-mask bundle round-trips (also through the sampler's SamplerMasks); the task models learn; a frozen
learned recon runs in the loop with its ACS scale and maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from torch.nn import functional

from kadapt.bundles import load_bundle
from kadapt.bundles.sampler_masks import SamplerMasks, served_fixed_plan
from kadapt.errors import InvalidInputError
from kadapt.kspace.coils import acs_sensitivities, sense_combine
from kadapt.kspace.fft import fft2c, ifft2c
from kadapt.kspace.preprocess import acs_scale
from kadapt.masks import acs_mask, line_budget
from kadapt.nn.losses import ssim
from kadapt.nn.unet import UNetRecon
from kadapt.trainer.igs import (
    LearnedRecon,
    TaskSample,
    accumulated_gradient,
    evaluate_pattern,
    learn_igs,
    make_classifier,
    make_segmenter,
    next_line,
    train_task_model,
    validate_igs,
    write_igs_bundle,
)

SIZE = 32
COILS = 2
SLICES = 4
NUM_ACS = 2


def make_samples(task: str, seed: int = 0) -> list[TaskSample]:
    """Ellipse "heads" with a bright disc (the structure to segment) and, on odd slices, a small bright
    lesion (the class to detect); two smooth complex coil maps; smooth image phase."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float64) / SIZE - 0.5
    sens = np.stack(
        [
            np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.3) * np.exp(1j * np.pi * (ax * xx + ay * yy))
            for cx, cy, ax, ay in ((-0.3, 0.0, 0.5, 0.2), (0.3, 0.1, -0.3, 0.4))
        ]
    )
    samples = []
    for index in range(SLICES):
        a, b = rng.uniform(0.3, 0.42, size=2)
        head = (xx / a) ** 2 + (yy / b) ** 2 <= 1
        cx, cy = rng.uniform(-0.15, 0.15, size=2)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= rng.uniform(0.08, 0.14) ** 2
        image = head * rng.uniform(0.8, 1.2) + disc * 1.5
        lesion = index % 2
        if lesion:
            lx, ly = rng.uniform(-0.2, 0.2, size=2)
            image = image + ((xx - lx) ** 2 + (yy - ly) ** 2 <= 0.05**2) * 2.0
        phase = np.exp(1j * np.pi * rng.uniform(-0.3, 0.3) * (xx + yy))
        kspace = fft2c(sens * image * phase).astype(np.complex64)
        target = (np.abs(image) * np.sqrt((np.abs(sens) ** 2).sum(axis=0))).astype(np.float32)
        label: int | NDArray[np.int64] | None = None
        if task == "segmentation":
            label = disc.astype(np.int64)
        elif task == "classification":
            label = lesion
        samples.append(TaskSample(kspace, target, label))
    return samples


def centred_idft(size: int) -> NDArray[np.complex128]:
    eye = np.eye(size)
    shifted = np.fft.ifftshift(eye, axes=0)
    return np.fft.fftshift(np.fft.ifft(shifted, axis=0, norm="ortho"), axes=0)


def reference_gradient(
    samples: list[TaskSample], pattern: NDArray[np.bool_], loss: str, model: torch.nn.Module | None
) -> NDArray[np.float64]:
    """dL/dw of the mean loss, one sample at a time, with float64 DFT matrices instead of torch.fft."""
    inverse = torch.from_numpy(centred_idft(SIZE))
    mask = torch.tensor(pattern, dtype=torch.float64, requires_grad=True)
    total = torch.zeros((), dtype=torch.float64)
    for kspace, target, label in samples:
        coil_images = inverse @ (torch.from_numpy(kspace.astype(np.complex128)) * mask) @ inverse.T
        rss = coil_images.abs().square().sum(dim=0).sqrt()
        reference = torch.from_numpy(target.astype(np.float64))
        if loss == "l1":
            value = (rss - reference).abs().mean()
        elif loss == "ssim":
            value = 1.0 - ssim(rss[None], reference[None])[0]
        elif loss == "dice":
            assert model is not None
            probabilities = model(rss[None].float()).softmax(dim=1)[0, 1]
            truth = torch.from_numpy(np.asarray(label)).to(probabilities.dtype)
            value = 1.0 - (2 * (probabilities * truth).sum() + 1) / (probabilities.sum() + truth.sum() + 1)
        else:
            assert model is not None
            value = functional.cross_entropy(model(rss[None].float()), torch.tensor([int(label)]))  # type: ignore[arg-type]
        total = total + value
    (gradient,) = torch.autograd.grad(total / len(samples), mask)
    return gradient.numpy()


def task_for(loss: str) -> tuple[list[TaskSample], torch.nn.Module | None]:
    if loss == "dice":
        return make_samples("segmentation"), make_segmenter(2, seed=1, chans=4, num_pool_layers=2).eval()
    if loss == "cross-entropy":
        return make_samples("classification"), make_classifier(2, seed=1, chans=4, num_pool_layers=2).eval()
    return make_samples("reconstruction"), None


@pytest.mark.parametrize("loss", ["l1", "ssim", "dice", "cross-entropy"])
def test_one_round_picks_the_argmin_of_the_accumulated_gradient(loss: str) -> None:
    samples, model = task_for(loss)
    pattern = acs_mask(SIZE, NUM_ACS)
    expected = reference_gradient(samples, pattern, loss, model)
    gradient, _, count = accumulated_gradient(samples, pattern, loss, task_model=model, batch_size=3)
    assert count == SLICES
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(gradient, expected, rtol=1e-3, atol=1e-4 * scale)
    free = np.flatnonzero(~pattern)
    ranked = free[np.argsort(expected[free], kind="stable")]
    best = int(ranked[0])
    assert expected[ranked[1]] - expected[best] > 1e-3 * scale  # the arg-min is not a float tie
    _, history = learn_igs(
        samples, loss, accelerations=[4.0], num_acs=NUM_ACS, task_model=model, batch_size=3, picks=1
    )
    assert history.order == (best,)
    assert np.array_equal(history.gradients[0], gradient)  # the whole (W,) gradient is kept


def test_next_line_skips_taken_lines_and_breaks_ties_towards_the_centre() -> None:
    pattern = acs_mask(SIZE, NUM_ACS)
    pattern[3] = True
    gradient = np.zeros(SIZE)
    gradient[pattern] = -10.0  # taken lines with the most negative gradient are never picked again
    gradient[[5, SIZE - 5, SIZE // 2 + 3, SIZE // 2 - 3]] = -1.0
    assert next_line(gradient, pattern) == SIZE // 2 - 3  # nearest W // 2, then the lower ky
    with pytest.raises(InvalidInputError):
        next_line(gradient, np.ones(SIZE, dtype=np.bool_))


def test_a_full_run_picks_every_free_line_once_and_serves_exact_nested_budgets() -> None:
    samples = make_samples("reconstruction")
    accelerations = [2.0, 3.0, 4.0, 8.0, 16.0]
    scores, history = learn_igs(samples, "l1", accelerations=accelerations, num_acs=NUM_ACS, batch_size=4)
    assert len(history.order) == line_budget(SIZE, 2.0, NUM_ACS) - NUM_ACS
    assert len(set(history.order)) == len(history.order)
    assert not acs_mask(SIZE, NUM_ACS)[list(history.order)].any()
    assert len(history.losses) == len(history.order)
    assert history.losses[-1] < history.losses[0]
    previous = acs_mask(SIZE, NUM_ACS)
    for acceleration in sorted(accelerations, reverse=True):
        budget = line_budget(SIZE, acceleration, NUM_ACS)
        served = served_fixed_plan(scores, NUM_ACS, acceleration)
        assert served.sum() == budget
        assert np.array_equal(served, history.pattern(budget))
        assert np.all(served[previous])  # nested: a smaller budget's lines stay
        previous = served
    _, everything = learn_igs(
        samples, "l1", accelerations=[2.0], num_acs=NUM_ACS, batch_size=4, picks=SIZE - NUM_ACS
    )
    assert sorted(everything.order) == sorted(np.flatnonzero(~acs_mask(SIZE, NUM_ACS)).tolist())


def test_the_bundle_round_trips_to_the_igs_prefix(tmp_path: Path) -> None:
    samples = make_samples("reconstruction")
    accelerations = [4.0, 8.0]
    scores, history = learn_igs(samples, "ssim", accelerations=accelerations, num_acs=NUM_ACS)
    validation = validate_igs(samples, scores, "ssim", accelerations=accelerations, num_acs=NUM_ACS)
    assert set(validation) == {"R4", "R8", "centre-only/R4", "centre-only/R8"}
    written = write_igs_bundle(
        scores, history, tmp_path, name="igs-recon-ssim", version="1", accelerations=accelerations,
        recon="zero-filled-rss", data={"source": "synthetic test slices"},
        validation={key: dict(entry) for key, entry in validation.items()}, code_version="test",
    )  # fmt: skip
    bundle = load_bundle(tmp_path, "igs-recon-ssim", "1")
    assert bundle.manifest == written.manifest
    assert bundle.manifest.kind == "fixed-mask"
    training = bundle.manifest.training
    assert (training["method"], training["task"], training["loss"]) == ("igs", "reconstruction", "ssim")
    assert training["order"] == list(history.order)
    loaded = np.load(bundle.file("mask.npy"))
    served = SamplerMasks(bundle).masks_for(samples[0].kspace, accelerations, NUM_ACS)  # the sampler's view
    for acceleration in accelerations:
        budget = line_budget(SIZE, acceleration, NUM_ACS)
        assert np.array_equal(served_fixed_plan(loaded, NUM_ACS, acceleration), history.pattern(budget))
        assert np.array_equal(served[acceleration], history.pattern(budget))
    with pytest.raises(InvalidInputError, match="mask family"):
        write_igs_bundle(
            scores, history, tmp_path, name="equispaced", version="1", accelerations=accelerations,
            recon="zero-filled-rss", data={}, validation={}, code_version="test",
        )  # fmt: skip
    with pytest.raises(InvalidInputError):  # R = 2 needs more lines than the run picked
        write_igs_bundle(
            scores, history, tmp_path, name="igs-bad", version="1", accelerations=[2.0],
            recon="zero-filled-rss", data={}, validation={}, code_version="test",
        )  # fmt: skip


def test_task_models_learn_and_score_patterns() -> None:
    generator = torch.Generator().manual_seed(0)
    segmentation = make_samples("segmentation")
    segmenter = make_segmenter(2, seed=0, chans=8, num_pool_layers=2)
    losses = train_task_model(
        segmenter, segmentation, "dice", steps=20, batch_size=4, lr=3e-3, generator=generator
    )
    assert not segmenter.training
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    classification = make_samples("classification")
    classifier = make_classifier(2, seed=0, chans=8, num_pool_layers=2)
    losses = train_task_model(
        classifier, classification, "cross-entropy", steps=20, batch_size=4, lr=3e-3, generator=generator
    )
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    full = np.ones(SIZE, dtype=np.bool_)
    metrics = evaluate_pattern(classification, "cross-entropy", full, task_model=classifier)
    assert set(metrics) == {"loss", "accuracy", "f1"}
    dice = evaluate_pattern(segmentation, "dice", full, task_model=segmenter)
    assert 0.0 <= dice["dice"] <= 1.0


def test_bad_inputs_are_refused() -> None:
    samples = make_samples("segmentation")
    segmenter = make_segmenter(2, seed=0, chans=4, num_pool_layers=2)
    with pytest.raises(InvalidInputError, match="training mode"):
        learn_igs(samples, "dice", accelerations=[4.0], num_acs=NUM_ACS, task_model=segmenter)
    with pytest.raises(InvalidInputError, match="needs a frozen task model"):
        learn_igs(samples, "dice", accelerations=[4.0], num_acs=NUM_ACS)
    with pytest.raises(InvalidInputError, match="re-iterable"):
        learn_igs(iter(samples), "l1", accelerations=[4.0], num_acs=NUM_ACS)
    with pytest.raises(InvalidInputError, match="unknown IGS task loss"):
        learn_igs(samples, "psnr", accelerations=[4.0], num_acs=NUM_ACS)


def test_a_learned_recon_runs_in_the_loop_with_acs_scale_and_maps() -> None:
    samples = make_samples("reconstruction")
    model = UNetRecon(chans=4, num_pool_layers=2).eval()
    for parameter in model.parameters():  # U-Net output 0: the model returns its zero-filled SENSE input
        parameter.data.zero_()
    recon = LearnedRecon(model, NUM_ACS)
    pattern = acs_mask(SIZE, NUM_ACS)
    pattern[[3, 20]] = True
    kspace = samples[0].kspace * pattern
    output = recon(torch.from_numpy(kspace[None]), torch.from_numpy(pattern.astype(np.float32)))
    image = output[0].detach().numpy()
    scale = acs_scale(kspace, NUM_ACS)
    maps = acs_sensitivities(kspace / scale, NUM_ACS)
    expected = np.abs(sense_combine(ifft2c(kspace / scale), maps)) * scale
    np.testing.assert_allclose(image, expected, rtol=1e-4, atol=1e-5 * expected.max())
    _, history = learn_igs(
        samples, "l1", accelerations=[8.0], num_acs=NUM_ACS, recon=recon, batch_size=2, picks=2
    )
    assert len(history.order) == 2
    assert np.all(np.isfinite(history.gradients[0]))
    assert np.abs(history.gradients[0]).max() > 0
    with pytest.raises(InvalidInputError, match="training mode"):
        LearnedRecon(UNetRecon(chans=4, num_pool_layers=2), NUM_ACS)
