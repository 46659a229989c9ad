"""grpo_whitened, the worked example of docs/adding-an-objective.md: hand-computed case, float64 reference, edges."""
import torch

from entropy_rl.objectives.whitened import whiten

from conftest import run_objective

MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
ADV = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-1.5, -1.5, 0.0, 0.0]])


def test_grpo_whitened_hand_computed_2x4():
    # valid advantages 1, 1, 1, -1.5, -1.5: mean 0, population std sqrt((3 * 1 + 2 * 2.25) / 5) = sqrt(1.5)
    s = 1.5 ** 0.5
    a = whiten(ADV, MASK, 1e-8)
    assert torch.allclose(a, torch.tensor([[1 / s, 1 / s, 1 / s, 0.0], [-1.5 / s, -1.5 / s, 0.0, 0.0]]), atol=1e-6)
    logp = torch.zeros(2, 4, requires_grad=True)
    loss, m = run_objective("grpo_whitened", logp, torch.zeros(2, 4), ADV, MASK)
    # ratio 1: per-token loss -A'; seq-mean-token-mean: row means -1/s and 1.5/s, their mean 0.25/s
    assert torch.isclose(loss, torch.tensor(0.25 / s), atol=1e-6)
    assert torch.isclose(m["stats/adv_std_before_whitening"], torch.tensor(s), atol=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1 / (3 * s)] * 3 + [0.0], [1.5 / (2 * s)] * 2 + [0.0, 0.0]]) / 2,
                          atol=1e-6)


def test_grpo_whitened_matches_a_float64_loop():
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = (torch.rand(4, 6, generator=g) > 0.3).double()
    vals = [adv[i, j].item() for i in range(4) for j in range(6) if mask[i, j]]
    mean = sum(vals) / len(vals)
    std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
    ref = torch.tensor([[(adv[i, j].item() - mean) / (std + 1e-8) * mask[i, j].item() for j in range(6)]
                        for i in range(4)], dtype=torch.float64)
    assert torch.allclose(whiten(adv, mask, 1e-8), ref, atol=1e-12)


def test_grpo_whitened_edges_all_equal_and_all_masked():
    zero = torch.zeros(2, 4)
    loss, _ = run_objective("grpo_whitened", zero.clone().requires_grad_(), zero, torch.ones(2, 4), MASK)
    assert loss.item() == 0.0  # all-equal advantages whiten to 0
    loss, _ = run_objective("grpo_whitened", zero.clone().requires_grad_(), zero, ADV, torch.zeros(2, 4))
    assert loss.item() == 0.0 and torch.isfinite(loss)
