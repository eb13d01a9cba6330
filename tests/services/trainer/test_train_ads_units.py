"""``kadapt train ads`` pieces without a full run: mask budgets, end-to-end gradients, family masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kadapt.masks import acs_mask, line_budget
from kadapt.trainer.ads_config import make_ads_config
from kadapt.trainer.ads_data import CineBatch, centre_crop, family_masks
from kadapt.trainer.ads_loop import build_training_model
from kadapt.trainer.ads_model import FramePattern, training_step_loss
from kadapt.trainer.config import build_loss

T, C, H, W, NUM_ACS = 4, 2, 16, 16, 2


def _batch(size: int = 2) -> CineBatch:
    generator = torch.Generator().manual_seed(0)
    kspace = torch.randn(size, T, C, H, W, 2, generator=generator)
    sens = torch.randn(size, C, H, W, 2, generator=generator) * 0.5
    return CineBatch(kspace, sens, torch.rand(size, T, H, W, generator=generator) + 0.1)


@pytest.mark.parametrize("unified", [False, True])
def test_opt_pattern_serves_exact_budgets_and_samples_with_acs(unified: bool) -> None:
    pattern = FramePattern(T, W, unified=unified, generator=torch.Generator().manual_seed(1))
    served = pattern.masks(3, 4.0, NUM_ACS, train=False, generator=None)
    assert served.shape == (3, T, W)
    assert set(served.sum(dim=-1).flatten().tolist()) == {float(line_budget(W, 4.0, NUM_ACS))}
    acs = torch.from_numpy(acs_mask(W, NUM_ACS))
    assert bool(served[..., acs].eq(1.0).all())
    if unified:
        assert bool((served == served[:, :1]).all())
    sampled = pattern.masks(3, 4.0, NUM_ACS, train=True, generator=torch.Generator().manual_seed(2))
    assert bool(sampled[..., acs].eq(1.0).all())
    assert set(sampled.flatten().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("spec", ["ads", "opt"])
def test_a_training_step_reaches_the_learned_sampler(spec: str, tmp_path: Path) -> None:
    """End to end (seed 004): the recon loss's gradient flows through the straight-through masks."""
    config = make_ads_config(tmp_path, spec, tmp_path / "m" / "x" / "1", quick=True, num_acs=NUM_ACS)
    model = build_training_model(config, (T, C, H, W), NUM_ACS)
    batch = _batch()
    mask = model.learned_masks(batch, 4.0, train=True, generator=torch.Generator().manual_seed(0))
    terms = training_step_loss(model, build_loss("seed004", {}), batch, mask)
    assert set(terms) >= {"ssim", "l1", "hfen", "kspace_nmae", "total"}
    terms["total"].backward()  # type: ignore[no-untyped-call]
    assert model.sampler is not None
    gradients = [p.grad for p in model.sampler.parameters() if p.grad is not None]
    assert gradients
    assert any(float(g.abs().sum()) > 0 for g in gradients)


def test_ads_served_masks_have_the_exact_budget_in_every_frame(tmp_path: Path) -> None:
    config = make_ads_config(tmp_path, "ads", tmp_path / "m" / "x" / "1", quick=True, num_acs=NUM_ACS)
    model = build_training_model(config, (T, C, H, W), NUM_ACS).eval()
    batch = _batch()
    for acceleration in (4.0, 6.0, 8.0):
        rounds = model.ads_masks(batch, acceleration, train=False, generator=None)
        assert len(rounds) == 2
        final = rounds[-1]
        assert set(final.sum(dim=-1).flatten().tolist()) == {float(line_budget(W, acceleration, NUM_ACS))}
        assert bool((rounds[0] <= final).all())  # rounds only add lines


def test_family_masks_broadcast_1d_and_draw_kt_per_frame() -> None:
    rng = np.random.default_rng(0)
    lines = family_masks("equispaced", 2, T, W, 4.0, NUM_ACS, rng)
    assert lines.shape == (2, T, W)
    assert bool((lines == lines[:, :1]).all())
    kt = family_masks("kt-equispaced", 2, T, W, 4.0, NUM_ACS, rng)
    assert kt.shape == (2, T, W)
    assert set(kt.sum(axis=-1).flatten().tolist()) == {line_budget(W, 4.0, NUM_ACS)}
    assert not bool((kt == kt[:, :1]).all())  # kt-equispaced shifts its lines over the frames


def test_centre_crop_keeps_two_thirds_per_axis() -> None:
    images = np.arange(2 * 96 * 96, dtype=np.float32).reshape(2, 96, 96)
    cropped = centre_crop(images)
    assert cropped.shape == (2, 64, 64)
    assert cropped[0, 0, 0] == images[0, 16, 16]
