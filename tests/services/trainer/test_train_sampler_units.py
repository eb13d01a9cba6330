"""kadapt train sampler, the parts: label BCE, straight-through plans, LOUPE masks, energy-density
ordering, served fixed-mask plans against the sampler's own policy, config checks, label discovery."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional

from kadapt.errors import InvalidAccelerationError, InvalidInputError
from kadapt.masks import acs_lines, acs_mask, line_budget, make_mask
from kadapt.nn.mnet import MNet, MNetGeometry
from kadapt.sampler.domain.policies import FixedMaskBundlePolicy
from kadapt.schemas import PlanRequest
from kadapt.trainer.data import SliceDataset
from kadapt.trainer.labels.store import LabelSet, data_fingerprint, label_path, save_labels
from kadapt.trainer.population import (
    LoupeLines,
    energy_density_scores,
    served_fixed_plan,
    write_fixed_mask_bundle,
)
from kadapt.trainer.sampler_config import ZeroFilledSense, make_sampler_config
from kadapt.trainer.sampler_labels import find_labels
from kadapt.trainer.sampler_loop import MNetLearner, label_bce, straight_through_plan

WIDTH, NUM_ACS = 16, 4


def test_label_bce_ignores_the_acs_lines() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((3, WIDTH), generator=generator, requires_grad=True)
    labels = (torch.rand((3, WIDTH), generator=generator) > 0.5).float()
    acs = torch.from_numpy(acs_mask(WIDTH, NUM_ACS))
    loss = label_bce(logits, labels, NUM_ACS)
    # Seed 001 eq. 4 over the free lines only.
    expected = functional.binary_cross_entropy_with_logits(logits[:, ~acs], labels[:, ~acs])
    assert torch.allclose(loss, expected)
    # Any logits and labels on the ACS lines: the same loss.
    moved_logits = logits.detach().clone()
    moved_logits[:, acs] = 50.0
    flipped = labels.clone()
    flipped[:, acs] = 1.0 - flipped[:, acs]
    assert torch.allclose(label_bce(moved_logits, flipped, NUM_ACS), loss.detach())
    loss.backward()  # type: ignore[no-untyped-call]
    assert logits.grad is not None
    assert torch.count_nonzero(logits.grad[:, acs]) == 0
    assert torch.all(logits.grad[:, ~acs] != 0)


def test_straight_through_plan_is_the_exact_budget_top_k_and_passes_gradients() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn((4, WIDTH), generator=generator, requires_grad=True)
    budget = line_budget(WIDTH, 2.0, NUM_ACS)  # 8 lines: 4 of the 12 free ones
    masks = straight_through_plan(logits, NUM_ACS, budget)
    assert torch.all(masks.detach().sum(dim=1) == budget)
    assert torch.all(masks.detach()[:, acs_lines(WIDTH, NUM_ACS)] == 1)
    free = ~acs_mask(WIDTH, NUM_ACS)
    for row, mask in zip(logits.detach().numpy(), masks.detach().numpy(), strict=True):
        best = np.flatnonzero(free)[np.argsort(-row[free], kind="stable")[: budget - NUM_ACS]]
        assert set(np.flatnonzero(mask)) == set(best) | set(acs_lines(WIDTH, NUM_ACS))
    weights = torch.arange(WIDTH, dtype=torch.float32)
    (masks * weights).sum().backward()  # type: ignore[no-untyped-call]
    assert logits.grad is not None
    assert torch.count_nonzero(logits.grad[:, ~torch.from_numpy(free)]) == 0  # ACS: no gradient
    assert torch.count_nonzero(logits.grad[:, torch.from_numpy(free)]) > 0


@pytest.mark.parametrize("binariser", ["topk", "bernoulli"])
def test_loupe_masks_keep_the_acs_and_the_budget(binariser: str) -> None:
    loupe = LoupeLines(WIDTH, slope=5.0, generator=torch.Generator().manual_seed(2))
    budget = line_budget(WIDTH, 2.0, NUM_ACS)  # 8 lines: 4 of the 12 free ones

    def draw(seed: int) -> torch.Tensor:
        return loupe.sample_masks(
            256, NUM_ACS, budget, binariser=binariser, generator=torch.Generator().manual_seed(seed)
        )

    masks = draw(3)
    assert torch.all(masks[:, acs_lines(WIDTH, NUM_ACS)] == 1)
    assert torch.equal(masks, draw(3))  # explicit generator: reproducible
    counts = masks.detach().sum(dim=1)
    if binariser == "topk":
        assert torch.all(counts == budget)
    else:  # LOUPE rescaling (seed 000 eq. 7): the budget holds in expectation
        assert abs(float(counts.mean()) - budget) < 0.5
    (masks * torch.arange(WIDTH, dtype=torch.float32)).sum().backward()  # type: ignore[no-untyped-call]
    assert loupe.logits.grad is not None
    assert torch.count_nonzero(loupe.logits.grad) > 0


def test_energy_density_scores_are_a_reproducible_nested_order() -> None:
    profile = np.exp(-np.abs(np.arange(WIDTH) - WIDTH // 2) / 2.0)
    profile[0] = 0.0
    scores = energy_density_scores(profile, np.random.default_rng(5))
    assert np.array_equal(scores, energy_density_scores(profile, np.random.default_rng(5)))
    assert np.unique(scores).size == WIDTH
    assert scores[0] == scores.min()  # zero energy: taken last
    plans = {r: served_fixed_plan(scores, NUM_ACS, r) for r in (2.0, 4.0)}
    for acceleration, plan in plans.items():
        assert plan.sum() == line_budget(WIDTH, acceleration, NUM_ACS)
        assert plan[acs_lines(WIDTH, NUM_ACS)].all()
    assert np.all(plans[2.0][plans[4.0]])  # one score vector: the R = 4 mask sits inside the R = 2 one


def test_served_fixed_plan_matches_the_sampler_policy_with_ties(tmp_path: Path) -> None:
    # Tied scores (a boolean-like pattern) exercise the sampler's centre tie-break.
    scores = np.zeros(WIDTH, dtype=np.float32)
    scores[[0, 3, 12, 15]] = 1.0
    bundle = write_fixed_mask_bundle(
        scores, tmp_path, name="tied", version="1", accelerations=(2.0, 4.0), num_acs=NUM_ACS,
        training={"description": "test"}, validation={}, code_version="test",
    )  # fmt: skip
    policy = FixedMaskBundlePolicy(bundle)
    for acceleration in (2.0, 4.0):
        request = PlanRequest(
            scan_id="s", policy="tied", width=WIDTH, height=8, coils=2, acceleration=acceleration,
            num_acs=NUM_ACS, acquired=tuple(int(ky) for ky in acs_lines(WIDTH, NUM_ACS)),
            deadline_unix_ms=1e15,
        )  # fmt: skip
        served = policy.plan(request, 0.0).lines
        assert served == tuple(
            int(ky) for ky in np.flatnonzero(served_fixed_plan(scores, NUM_ACS, acceleration))
        )


def test_config_refuses_bad_input(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "energy-density" / "1"
    with pytest.raises(InvalidInputError, match="mask family's name"):
        make_sampler_config("energy-density", tiny_dataset, (4.0,), out)
    with pytest.raises(InvalidInputError, match="needs --labels"):
        make_sampler_config("mnet", tiny_dataset, (4.0,), tmp_path / "m" / "mnet" / "1")
    with pytest.raises(InvalidInputError, match="label-cache"):
        make_sampler_config("mnet", tiny_dataset, (4.0,), tmp_path / "m" / "mnet" / "1", labels="icd")
    with pytest.raises(InvalidAccelerationError, match=r"R = \[1.0\]"):
        make_sampler_config("loupe", tiny_dataset, (1.0,), tmp_path / "m" / "loupe-pop" / "1")
    with pytest.raises(InvalidInputError, match="unknown sampler method 'greedy'"):
        make_sampler_config("greedy", tiny_dataset, (4.0,), tmp_path / "m" / "greedy-pop" / "1")
    bad = tmp_path / "loupe.yaml"
    bad.write_text("loupe:\n  binariser: gumbel\n")
    with pytest.raises(InvalidInputError, match=r"unknown loupe\.binariser 'gumbel'"):
        make_sampler_config(
            "loupe", tiny_dataset, (4.0,), tmp_path / "m" / "loupe-pop" / "1", config_file=bad
        )


def _labels(
    train: SliceDataset, acceleration: float, settings: dict[str, object], volume: str | None = None
) -> LabelSet:
    rng = np.random.default_rng(0)
    masks = make_mask("random", width=32, acceleration=acceleration, num_acs=4, rng=rng, batch=len(train))
    return LabelSet(
        method="icd", acceleration=acceleration, num_acs=4, width=32,
        masks=np.asarray(masks, dtype=np.bool_).reshape(len(train), 32),
        volumes=tuple(volume or item.volume for item in train.slices),
        slices=np.asarray([item.slice_index for item in train.slices], dtype=np.int64),
        settings=settings, metrics={},
    )  # fmt: skip


def test_find_labels_takes_only_labels_of_this_train_split(tiny_dataset: Path, tmp_path: Path) -> None:
    train = SliceDataset(tiny_dataset, "train", 4)
    cache = tmp_path / "cache"
    fingerprint = data_fingerprint(
        tuple(item.volume for item in train.slices),
        np.asarray([item.slice_index for item in train.slices], dtype=np.int64),
        [item.kspace for item in train.slices],
    )
    assert find_labels(cache, "icd", 4.0, train) is None
    save_labels(label_path(cache, "train", "icd", 4.0, 4, "other0"), _labels(train, 4.0, {"data": "0" * 64}))
    save_labels(
        label_path(cache, "train", "icd", 4.0, 4, "other1"), _labels(train, 4.0, {}, volume="nowhere")
    )
    assert find_labels(cache, "icd", 4.0, train) is None  # another dataset's fingerprint / volumes
    good = save_labels(
        label_path(cache, "train", "icd", 4.0, 4, "ours"), _labels(train, 4.0, {"data": fingerprint})
    )
    found = find_labels(cache, "icd", 4.0, train)
    assert found is not None
    assert found.path == good
    assert sorted(found.indices.tolist()) == list(range(len(train)))
    assert found.summary["count"] == len(train)
    assert found.summary["generated"] is False
    assert find_labels(cache, "icd", 3.0, train) is None  # another R
    assert find_labels(cache, "mask-backward", 4.0, train) is None  # another method


def test_mnet_learns_its_label_masks(tiny_dataset: Path) -> None:
    # One label for every slice: BCE (eq. 2) must drive the served plan onto it despite the recon term.
    train = SliceDataset(tiny_dataset, "train", 4)
    label = acs_mask(32, 4)
    label[[2, 9, 25, 30]] = True  # round(32 / 4) = 8 lines
    labels = torch.from_numpy(np.stack([label] * len(train)).astype(np.float32))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mnet = MNet(MNetGeometry(32, 32, 4, 4), virtual_coils=2, channels=(8, 8), hidden=32)
    learner = MNetLearner(
        mnet, ZeroFilledSense(), co_trained=False, sampler_lr=5e-3, recon_lr=1e-3, recon_weight=0.1,
        sampler_updates=1,
    )  # fmt: skip
    first = learner.train_step(train.slices, 4.0, labels)
    for _ in range(30):
        last = learner.train_step(train.slices, 4.0, labels)
    assert last["bce"] < 0.01 * first["bce"]
    assert math.isnan(last["recon_loss"])  # a frozen recon is never updated
    np.testing.assert_array_equal(learner.plan(train.slices, 4.0), np.stack([label] * len(train)))
