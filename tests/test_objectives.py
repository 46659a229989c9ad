"""GRPO loss, aggregation and advantages: hand-computed cases, a float64 loop reference, gradients, edge cases."""
import math

import pytest
import torch

from entropy_rl.advantages import dr_grpo_advantage, get_advantage, grpo_advantage, rloo_advantage
from entropy_rl.objectives import RLBatch, agg_loss, get_objective, make_objective_config, register_objective
from entropy_rl.objectives.common import clipped_surrogate, k3_kl
from entropy_rl.objectives.registry import ObjectiveConfig
from entropy_rl.token_stats import TokenStats


# ---------------------------------------------------------------------------------------------- aggregation
def test_agg_modes_hand_computed():
    loss = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert agg_loss(loss, mask, "token-mean").item() == pytest.approx((1 + 2 + 3 + 10) / 4)
    assert agg_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((6 / 3 + 10 / 1) / 2)
    assert agg_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 10) / 2)
    assert agg_loss(loss, mask, "seq-mean-token-sum-norm", l_max=8).item() == pytest.approx(16 / (2 * 8))


def test_agg_all_masked_row_is_ignored_and_empty_batch_is_zero():
    loss = torch.tensor([[1.0, 3.0], [100.0, 100.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [0, 0]])
    assert agg_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx(2.0)
    empty = agg_loss(loss, torch.zeros_like(mask), "token-mean")
    empty.backward()
    assert empty.item() == 0.0 and torch.all(loss.grad == 0)


def test_agg_unknown_mode_and_missing_lmax():
    with pytest.raises(ValueError, match="unknown loss aggregation mode 'mean'"):
        agg_loss(torch.zeros(1, 1), torch.ones(1, 1), "mean")
    with pytest.raises(ValueError, match="constant l_max"):
        agg_loss(torch.zeros(1, 1), torch.ones(1, 1), "seq-mean-token-sum-norm")


def test_sum_norm_does_not_change_with_padding():
    torch.manual_seed(0)
    loss, mask = torch.randn(3, 5), (torch.rand(3, 5) > 0.3).long()
    padded_loss = torch.cat([loss, torch.randn(3, 7)], 1)
    padded_mask = torch.cat([mask, torch.zeros(3, 7, dtype=torch.long)], 1)
    a = agg_loss(loss, mask, "seq-mean-token-sum-norm", l_max=16)
    b = agg_loss(padded_loss, padded_mask, "seq-mean-token-sum-norm", l_max=16)
    assert a.item() == pytest.approx(b.item())


# ----------------------------------------------------------------------------------------------- advantages
def test_grpo_advantage_hand_computed():
    adv = grpo_advantage(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), 4)
    std = math.sqrt(((0.75**2) + 3 * (0.25**2)) / 3)  # unbiased
    assert adv[:4].tolist() == pytest.approx([0.75 / (std + 1e-6)] + [-0.25 / (std + 1e-6)] * 3)
    assert adv[4:].tolist() == [0.0] * 4  # all-equal group: no signal


def test_dr_grpo_and_rloo_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert dr_grpo_advantage(r, 4).tolist() == [0.5, -0.5, -0.5, 0.5]
    assert rloo_advantage(r, 4).tolist() == pytest.approx([1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3])
    with pytest.raises(KeyError, match="valid: grpo, dr_grpo, rloo"):
        get_advantage("ppo")
    with pytest.raises(ValueError, match="G=3"):
        grpo_advantage(torch.zeros(4), 3)


# --------------------------------------------------------------------------------------------------- GRPO
def reference_grpo(logp, old, adv, mask, eps_lo, eps_hi, ref=None, beta=0.0):
    """Plain float64 loops: DeepSeekMath's seq-mean-token-mean clipped objective (as a loss)."""
    total, rows = 0.0, 0
    for i in range(len(mask)):
        n = sum(mask[i])
        if n == 0:
            continue
        s = 0.0
        for t in range(len(mask[i])):
            if not mask[i][t]:
                continue
            r = math.exp(logp[i][t] - old[i][t])
            term = min(r * adv[i][t], min(max(r, 1 - eps_lo), 1 + eps_hi) * adv[i][t])
            kl = 0.0
            if ref is not None:
                d = ref[i][t] - logp[i][t]
                kl = math.exp(d) - d - 1
            s += -term + beta * kl
        total += s / n
        rows += 1
    return total / rows


def grpo_case(dtype=torch.float64, seed=0, B=4, T=6):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=dtype) * 3
    logp = (old + 0.4 * torch.randn(B, T, generator=g, dtype=dtype)).requires_grad_(True)
    ref = old + 0.2 * torch.randn(B, T, generator=g, dtype=dtype)
    adv = torch.randn(B, 1, generator=g, dtype=dtype).expand(B, T).clone()
    mask = (torch.rand(B, T, generator=g) > 0.25).long()
    mask[:, 0] = 1
    return logp, old, ref, adv * mask, mask


def run_grpo(logp, old, adv, mask, ref=None, **cfg):
    stats = TokenStats(logp=logp, entropy=torch.zeros_like(logp))
    batch = RLBatch(old_logp=old, advantages=adv, mask=mask, ref_logp=ref)
    return get_objective("grpo")(batch, stats, make_objective_config("grpo", cfg), {})


def test_grpo_hand_computed_2x4():
    # ratios exp(0)=1, exp(ln 1.5)=1.5 (clipped at 1.2 for A>0), exp(ln 0.5)=0.5 (clipped at 0.8 for A<0)
    old = torch.zeros(2, 4)
    logp = torch.tensor([[0.0, math.log(1.5), 0.0, 0.0], [math.log(0.5), 0.0, 0.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-2.0, -2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    loss, m = run_grpo(logp, old, adv, mask)
    row0 = (-1.0 - 1.2 - 1.0) / 3  # max(-A r, -A clip(r)): A>0 picks the clipped 1.2
    row1 = (-(-2.0) * 0.8 + 2.0) / 2  # A<0, r=0.5: max(1.0, 1.6) = 1.6 (the pessimistic bound)
    assert loss.item() == pytest.approx((row0 + row1) / 2)
    assert m["stats/clip_frac"].item() == pytest.approx(2 / 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_matches_float64_loop(seed, beta):
    logp, old, ref, adv, mask = grpo_case(seed=seed)
    loss, _ = run_grpo(logp, old, adv, mask, ref=ref, kl_coef=beta, clip_high=0.28)
    want = reference_grpo(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.28, ref.tolist(), beta)
    assert loss.item() == pytest.approx(want, rel=1e-12)


def test_grpo_gradient_matches_finite_differences():
    logp, old, ref, adv, mask = grpo_case(seed=3)
    f = lambda lp: run_grpo(lp, old, adv, mask, ref=ref, kl_coef=0.1)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (logp,), eps=1e-6, atol=1e-8)


def test_grpo_gradient_is_zero_where_clipped_or_masked():
    old = torch.zeros(1, 3)
    logp = torch.tensor([[math.log(1.5), 0.0, 0.0]], requires_grad=True)
    adv = torch.ones(1, 3)
    loss, _ = run_grpo(logp, old, adv, torch.tensor([[1, 1, 0]]))
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([0.0, -0.5, 0.0])  # clipped token and masked token: no gradient


def test_grpo_all_equal_rewards_give_zero_loss_and_gradient():
    rewards = torch.ones(4)
    adv = grpo_advantage(rewards, 4)[:, None].expand(4, 3).clone()
    logp = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss, _ = run_grpo(logp, logp.detach() - 0.1, adv.double(), torch.ones(4, 3, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logp.grad == 0)


def test_grpo_length_one_and_all_masked_rows():
    logp = torch.tensor([[-0.5, 0.0], [-1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-0.5, 0.0], [-1.0, -1.0]], dtype=torch.float64)
    adv = torch.tensor([[2.0, 0.0], [5.0, 5.0]], dtype=torch.float64)
    loss, _ = run_grpo(logp, old, adv, torch.tensor([[1, 0], [0, 0]]))
    assert loss.item() == pytest.approx(-2.0)  # only the length-1 row counts
    loss.backward()
    assert logp.grad[1].tolist() == [0.0, 0.0]


def test_grpo_kl_needs_reference_and_k3_is_nonnegative():
    logp, old, ref, adv, mask = grpo_case()
    with pytest.raises(ValueError, match="ref_logp"):
        run_grpo(logp, old, adv, mask, kl_coef=0.1)
    assert torch.all(k3_kl(logp.detach(), ref) >= 0)
    assert torch.allclose(k3_kl(ref, ref), torch.zeros_like(ref))


def test_dual_clip_bounds_negative_advantage_loss():
    loss, _ = clipped_surrogate(torch.tensor([[math.log(10.0)]]), torch.zeros(1, 1), torch.tensor([[-1.0]]), 0.2, 0.2, 3.0)
    assert loss.item() == pytest.approx(3.0)  # unclipped would be 10


def test_registry_is_strict():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class C(ObjectiveConfig):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        register_objective("grpo", C)(lambda *a: None)
    with pytest.raises(TypeError):
        register_objective("x", dict)
