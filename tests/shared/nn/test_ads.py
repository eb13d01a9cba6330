"""ADS sampler (seed 004 sec. 2.3, Alg. A1-A5): the budget contract in eval and train mode, gradients,
scores, cascades."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from kadapt.errors import InvalidAccelerationError, InvalidInputError
from kadapt.nn.ads import ADSSampler, top_new_per_frame

T, H, W, C = 4, 16, 16, 2


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def sampler(**overrides: object) -> ADSSampler:
    settings: dict[str, object] = {"chans": 4, "mlp_hidden": 16}
    settings.update(overrides)
    return ADSSampler(T, H, W, **settings)  # type: ignore[arg-type]


def two_items(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch of 2 with different acquired masks (item 1 holds more lines, differently in every frame)."""
    kspace = torch.randn(2, T, C, H, W, 2, generator=generator)
    sens = torch.randn(2, C, H, W, 2, generator=generator)
    image = torch.randn(2, T, H, W, 2, generator=generator)
    mask = torch.zeros(2, T, W)
    mask[..., W // 2 - 2 : W // 2 + 2] = 1.0
    for t in range(T):
        mask[1, t, t::5] = 1.0
    return kspace, sens, image, mask


@pytest.mark.parametrize("pattern", ["frame-specific", "unified"])
def test_eval_plan_adds_exactly_the_budget_in_every_frame_of_every_item(pattern: str) -> None:
    generator = torch.Generator().manual_seed(0)
    _, _, image, mask = two_items(generator)
    if pattern == "unified":
        mask = mask[:, :1].expand(2, T, W).clone()
    model = sampler(pattern=pattern).eval()
    new = model.plan_step(0, image, mask, 3, train=False)
    assert new.shape == mask.shape
    assert bool(((new == 0) | (new == 1)).all())
    torch.testing.assert_close(new.sum(dim=-1), mask.sum(dim=-1) + 3)  # item 1 too (no DIRECT first-item bug)
    assert bool((new >= mask).all()), "acquired lines are kept"
    if pattern == "unified":
        assert bool((new == new[:, :1]).all()), "unified: the same lines in every frame"


def test_eval_plan_takes_the_top_scores_among_free_lines() -> None:
    generator = torch.Generator().manual_seed(1)
    _, _, image, mask = two_items(generator)
    model = sampler().eval()
    with torch.no_grad():
        scores = model.step_scores(0, image, mask)
    new = model.plan_step(0, image, mask, 2, train=False)
    added = (new - mask).bool()
    free_scores = scores.masked_fill(mask.bool(), float("-inf"))
    assert bool((scores[mask.bool()] == 0).all()), "acquired entries score zero"
    assert bool((scores[~mask.bool()] > 0).all()), "softplus scores are positive on free entries"
    best = free_scores.topk(2, dim=-1).values.min(dim=-1).values
    assert bool((scores.masked_fill(~added, float("inf")).min(dim=-1).values >= best).all())


def test_top_new_per_frame_ties_go_to_the_lower_index_and_never_repick() -> None:
    scores = torch.tensor([[[1.0, 5.0, 5.0, 5.0, float("nan")]]])
    acquired = torch.tensor([[[False, True, False, False, False]]])
    chosen = top_new_per_frame(scores, acquired, 2)
    assert chosen.tolist() == [[[False, True, True, True, False]]]
    with pytest.raises(InvalidAccelerationError):
        top_new_per_frame(scores, acquired, 5)


@pytest.mark.parametrize("pattern", ["frame-specific", "unified"])
def test_train_plan_expects_the_budget_per_frame_and_keeps_acquired(pattern: str) -> None:
    generator = torch.Generator().manual_seed(2)
    _, _, image, mask = two_items(generator)
    if pattern == "unified":
        mask = mask[:, :1].expand(2, T, W).clone()
    model = sampler(pattern=pattern)
    counts = []
    for _ in range(300):
        new = model.plan_step(0, image, mask, 3, train=True, generator=generator)
        assert bool((new >= mask).all())
        if pattern == "unified":
            assert bool((new == new[:, :1]).all())
        counts.append((new - mask).sum(-1))
    mean = torch.stack(counts).detach().mean(dim=0)
    # E[count] = 3 per frame and item; 300 draws give a standard error below 0.1.
    assert bool(((mean - 3.0).abs() < 0.5).all()), mean


def test_straight_through_gradient_reaches_every_cascade_encoder() -> None:
    generator = torch.Generator().manual_seed(3)
    kspace, sens, _, mask = two_items(generator)
    model = sampler()
    masks = model(kspace, mask, sens, [2, 3], train=True, generator=generator)
    assert len(masks) == 2
    # A loss on the final mask's acquired data reaches cascade 0 through cascade 1's input image too.
    (masks[-1] * torch.linspace(0.0, 1.0, W)).sum().backward()
    for cascade in model.cascade_steps:
        grads = [p.grad for p in cascade.get_submodule("encoder").parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_forward_eval_gives_cumulative_exact_budgets() -> None:
    generator = torch.Generator().manual_seed(4)
    kspace, sens, _, mask = two_items(generator)
    masks = sampler().eval()(kspace, mask, sens, [2, 3], train=False)
    torch.testing.assert_close(masks[0].sum(-1), mask.sum(-1) + 2)
    torch.testing.assert_close(masks[1].sum(-1), mask.sum(-1) + 5)
    assert bool((masks[1] >= masks[0]).all())


def test_scores_are_scale_free() -> None:
    generator = torch.Generator().manual_seed(5)
    _, _, image, mask = two_items(generator)
    model = sampler().eval()
    with torch.no_grad():
        torch.testing.assert_close(model.step_scores(1, image, mask), model.step_scores(1, 1e4 * image, mask))


def test_2d_point_masks() -> None:
    generator = torch.Generator().manual_seed(6)
    _, _, image, _ = two_items(generator)
    mask = torch.zeros(2, T, H, W)
    mask[..., H // 2 - 2 : H // 2 + 2, W // 2 - 2 : W // 2 + 2] = 1.0
    model = sampler(dim="2d").eval()
    new = model.plan_step(0, image, mask, 10, train=False)
    torch.testing.assert_close(new.sum(dim=(-2, -1)), torch.full((2, T), 26.0))
    train = model.plan_step(0, image, mask, 10, train=True, generator=generator)
    assert train.shape == mask.shape


def test_bad_calls_are_rejected() -> None:
    generator = torch.Generator().manual_seed(7)
    kspace, sens, image, mask = two_items(generator)
    model = sampler()
    with pytest.raises(InvalidInputError, match="Generator"):
        model.plan_step(0, image, mask, 2, train=True)
    with pytest.raises(InvalidInputError, match="cascade"):
        model.step_scores(2, image, mask)
    with pytest.raises(InvalidInputError, match="mask"):
        model.step_scores(0, image, mask[..., :-1])
    with pytest.raises(InvalidInputError, match="one entry per cascade"):
        model(kspace, mask, sens, [2], train=False)
    with pytest.raises(InvalidInputError, match="unknown"):
        sampler(pattern="static")
