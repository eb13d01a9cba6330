"""torch learned-sampler mechanics: agreement with numpy, straight-through gradients, determinism."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kadapt.errors import InvalidAccelerationError, InvalidInputError
from kadapt.masks import acs_mask, mechanics, torch_ops


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_importing_kadapt_masks_pulls_in_no_torch() -> None:
    # The gateway uses masks and must not import torch (handbook architecture.md section 2).
    code = (
        "import sys, kadapt.masks, kadapt.masks.mechanics; "
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'torch'" not in loaded
    assert "'scipy'" not in loaded


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.95])
def test_loupe_rescale_agrees_with_numpy_and_hits_the_mean(sparsity: float) -> None:
    p = torch.rand(6, 48, generator=generator(0), dtype=torch.float64) ** torch.arange(1, 7).unsqueeze(-1)
    free = ~torch.from_numpy(np.stack([acs_mask(48, 8)] * 6))
    out = torch_ops.loupe_rescale(p, sparsity)
    np.testing.assert_allclose(out.numpy(), mechanics.loupe_rescale(p.numpy(), sparsity), atol=1e-12)
    np.testing.assert_allclose(out.mean(-1).numpy(), sparsity, atol=1e-12)
    assert out.min() >= 0
    assert out.max() <= 1
    masked = torch_ops.loupe_rescale(p, sparsity, free=free)
    np.testing.assert_allclose(
        masked.numpy(), mechanics.loupe_rescale(p.numpy(), sparsity, free=free.numpy()), atol=1e-12
    )


def test_loupe_rescale_per_item_sparsity_tensor_and_finite_gradients() -> None:
    p = torch.rand(3, 32, generator=generator(1), dtype=torch.float64)
    p[2] = 0.0  # an all-zero item: the guarded denominators keep gradients finite
    p.requires_grad_(True)
    s = torch.tensor([0.2, 0.7, 0.3], dtype=torch.float64)
    out = torch_ops.loupe_rescale(p, s)
    np.testing.assert_allclose(out.mean(-1).detach().numpy(), s.numpy(), atol=1e-12)
    out.sum().backward()
    assert p.grad is not None
    assert torch.isfinite(p.grad).all()
    with pytest.raises(InvalidInputError, match="sparsity"):
        torch_ops.loupe_rescale(p, -0.1)


def test_topk_plan_agrees_with_numpy_on_a_batch_with_ties() -> None:
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=(4, 5, 64)), 1)  # rounding creates many ties
    scores[0, 0, :10] = np.nan
    acquired = np.broadcast_to(acs_mask(64, 8), scores.shape).copy()
    acquired[1, :, :5] = True
    plan = torch_ops.topk_plan(torch.from_numpy(scores), torch.from_numpy(acquired), 20)
    assert plan.dtype == torch.bool
    np.testing.assert_array_equal(plan.numpy(), mechanics.topk_plan(scores, acquired, 20))
    assert (plan.sum(-1) == 20).all()


def test_topk_plan_gives_each_of_four_different_items_its_budget() -> None:
    # The DIRECT bug (only the first item of a batch rescaled): check every item.
    scores = torch.randn(4, 32, generator=generator(5))
    acquired = torch.zeros(4, 32, dtype=torch.bool)
    acquired[0, 14:18] = True
    acquired[1, :9] = True
    acquired[3, ::4] = True
    plan = torch_ops.topk_plan(scores, acquired, 10)
    assert plan.sum(-1).tolist() == [10, 10, 10, 10]
    assert bool((plan & acquired).eq(acquired).all())  # acquired lines stay


def test_topk_plan_rejects_over_budget_items() -> None:
    acquired = torch.zeros(2, 16, dtype=torch.bool)
    acquired[1, :6] = True
    with pytest.raises(InvalidAccelerationError, match="budget=5"):
        torch_ops.topk_plan(torch.zeros(2, 16), acquired, 5)
    with pytest.raises(InvalidAccelerationError, match="exceeds"):
        torch_ops.topk_plan(torch.zeros(16), torch.zeros(16, dtype=torch.bool), 17)


def test_straight_through_identity_has_identity_gradient() -> None:
    p = torch.tensor([0.1, 0.5, 0.49, 0.9], requires_grad=True)
    hard = torch_ops.straight_through_binarise(p)
    assert hard.tolist() == [0.0, 1.0, 0.0, 1.0]
    upstream = torch.tensor([1.0, -2.0, 3.0, 0.5])
    hard.backward(upstream)
    assert p.grad is not None
    torch.testing.assert_close(p.grad, upstream)


def test_stochastic_threshold_matches_the_slope_10_sigmoid_derivative() -> None:
    p = torch.rand(3, 40, generator=generator(11), dtype=torch.float64, requires_grad=True)
    hard = torch_ops.stochastic_threshold_binarise(p, generator(21))
    uniform = torch.rand(3, 40, generator=generator(21), dtype=torch.float64)  # the same draw
    torch.testing.assert_close(hard, (p > uniform).to(torch.float64))
    upstream = torch.randn(3, 40, generator=generator(4), dtype=torch.float64)
    hard.backward(upstream)
    z = 10.0 * (p.detach() - uniform)
    analytic = 10.0 * torch.exp(-z) / (1.0 + torch.exp(-z)) ** 2  # seed 004 Alg. A3
    assert p.grad is not None
    torch.testing.assert_close(p.grad, upstream * analytic)


def test_stochastic_binarisers_are_deterministic_for_equal_generators() -> None:
    p = torch.rand(8, 64, generator=generator(0))
    first = torch_ops.stochastic_threshold_binarise(p, generator(7))
    torch.testing.assert_close(first, torch_ops.stochastic_threshold_binarise(p, generator(7)))
    assert not torch.equal(first, torch_ops.stochastic_threshold_binarise(p, generator(8)))
    logits = torch.logit(p.clamp(0.01, 0.99))
    gumbel = torch_ops.gumbel_straight_through(logits, generator(7), tau=0.5)
    torch.testing.assert_close(gumbel, torch_ops.gumbel_straight_through(logits, generator(7), tau=0.5))
    assert not torch.equal(gumbel, torch_ops.gumbel_straight_through(logits, generator(9), tau=0.5))


def test_gumbel_straight_through_samples_bernoulli_with_soft_gradient() -> None:
    p = torch.full((20000,), 0.3, dtype=torch.float64)
    logits = torch.logit(p).requires_grad_(True)
    sample = torch_ops.gumbel_straight_through(logits, generator(2), tau=1.0)
    assert set(sample.unique().tolist()) <= {0.0, 1.0}
    assert abs(sample.mean().item() - 0.3) < 0.02  # at tau = 1 the threshold sample is Bernoulli(p)
    sample.sum().backward()
    assert logits.grad is not None
    assert (logits.grad > 0).all()
    with pytest.raises(InvalidInputError, match="tau"):
        torch_ops.gumbel_straight_through(logits, generator(2), tau=0.0)


def test_budget_split_is_shared_with_numpy() -> None:
    assert torch_ops.budget_split is mechanics.budget_split
    assert torch_ops.budget_split(41, 4) == [10, 10, 10, 11]


class _Planner(torch.nn.Module):
    def forward(self, scores: torch.Tensor, acquired: torch.Tensor) -> torch.Tensor:
        return torch_ops.topk_plan(scores, acquired, 20)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # emitted inside torch's exporter
def test_topk_plan_exports_to_onnx_with_identical_plans(tmp_path: Path) -> None:
    # Serving runs ONNX Runtime: the exported top-k must plan exactly what the eager one does.
    ort = pytest.importorskip("onnxruntime")
    acquired = torch.zeros(3, 64, dtype=torch.bool)
    acquired[:, 28:36] = True
    acquired[2, :4] = True
    program = torch.onnx.export(_Planner().eval(), (torch.randn(3, 64), acquired), dynamo=True, verbose=False)
    assert program is not None
    program.save(str(tmp_path / "planner.onnx"))
    session = ort.InferenceSession(str(tmp_path / "planner.onnx"), providers=["CPUExecutionProvider"])
    scores = np.round(np.random.default_rng(0).normal(size=(3, 64)), 1).astype(np.float32)  # ties
    scores[0, :5] = np.nan
    names = [node.name for node in session.get_inputs()]
    exported = session.run(None, {names[0]: scores, names[1]: acquired.numpy()})[0]
    np.testing.assert_array_equal(exported, mechanics.topk_plan(scores, acquired.numpy(), 20))
    np.testing.assert_array_equal(
        exported, torch_ops.topk_plan(torch.from_numpy(scores), acquired, 20).numpy()
    )
