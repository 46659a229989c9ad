"""Entropy bonus (fixed and adaptive) and the 80/20 high-entropy mask: hand-computed cases, float64 loop references,
gradients, edge cases, the rho = 1 reduction, the TRL quantile threshold, the controller, and the statistic scope."""
import math

import pytest
import torch

from conftest import run_objective as run_obj  # the shared helper

from entropy_rl.config import ConfigError
from entropy_rl.controllers import adaptive_coef_applied, adaptive_coef_init, adaptive_coef_update
from entropy_rl.objectives import (RLBatch, StatScope, agg_denominator, get_objective, init_controller_state,
                                   make_objective_config, update_controller_state)
from entropy_rl.objectives.entropy import high_entropy_mask
from entropy_rl.token_stats import TokenStats


def case(seed=0, B=4, T=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=dtype) * 3
    logp = (old + 0.4 * torch.randn(B, T, generator=g, dtype=dtype)).requires_grad_(True)
    ent = (torch.rand(B, T, generator=g, dtype=dtype) * 2).requires_grad_(True)
    adv = torch.randn(B, 1, generator=g, dtype=dtype).expand(B, T).clone()
    mask = (torch.rand(B, T, generator=g) > 0.25).long()
    mask[:, 0] = 1
    return logp, old, ent, adv * mask, mask


def clip_term(lp, o, a, lo, hi):
    r = math.exp(lp - o)
    return -min(r * a, min(max(r, 1 - lo), 1 + hi) * a)


# ----------------------------------------------------------------------------------------------- entropy bonus
def reference_bonus(logp, old, ent, adv, mask, alpha):
    """float64 loops: seq-mean-token-mean of (clipped surrogate - alpha * H)."""
    rows = []
    for i in range(len(mask)):
        idx = [t for t in range(len(mask[i])) if mask[i][t]]
        if idx:
            rows.append(sum(clip_term(logp[i][t], old[i][t], adv[i][t], 0.2, 0.2) - alpha * ent[i][t] for t in idx) / len(idx))
    return sum(rows) / len(rows)


def test_entropy_bonus_hand_computed_2x4():
    logp = torch.zeros(2, 4)
    ent = torch.tensor([[0.5, 1.0, 1.5, 9.0], [2.0, 9.0, 9.0, 9.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    loss, m = run_obj("entropy_bonus", logp, logp, adv, mask, ent, adaptive=False, coef=0.1)
    pg = (-1.0 + 1.0) / 2  # ratio 1: per-row means -1 and +1
    h = (1.0 + 2.0) / 2  # per-row mean entropies 1.0 and 2.0
    assert loss.item() == pytest.approx(pg - 0.1 * h)
    assert m["loss/entropy"].item() == pytest.approx(h) and m["stats/entropy_coef"].item() == pytest.approx(0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_bonus_matches_float64_loop(seed):
    logp, old, ent, adv, mask = case(seed)
    loss, _ = run_obj("entropy_bonus", logp, old, adv, mask, ent, adaptive=False, coef=0.05)
    want = reference_bonus(logp.tolist(), old.tolist(), ent.tolist(), adv.tolist(), mask.tolist(), 0.05)
    assert loss.item() == pytest.approx(want, rel=1e-12)


def test_entropy_bonus_gradcheck_and_entropy_gradient():
    logp, old, ent, adv, mask = case(3)
    f = lambda lp, h: run_obj("entropy_bonus", lp, old, adv, mask, h, adaptive=False, coef=0.05)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (logp, ent), eps=1e-6, atol=1e-8)
    loss = f(logp, ent)
    loss.backward()
    n = mask.sum(-1, keepdim=True).double()
    assert torch.allclose(ent.grad, -0.05 * mask / n / mask.shape[0])  # -alpha / |o_i| / B on valid tokens


def test_entropy_bonus_edges_all_equal_rewards_length_one_all_masked():
    logp = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    ent = torch.tensor([[0.4, 7.0], [9.0, 9.0], [0.2, 0.6]], dtype=torch.float64, requires_grad=True)
    adv = torch.zeros(3, 2, dtype=torch.float64)  # all rewards equal -> A = 0: only the bonus acts
    mask = torch.tensor([[1, 0], [0, 0], [1, 1]])
    loss, _ = run_obj("entropy_bonus", logp, logp.detach(), adv, mask, ent, adaptive=False, coef=1.0)
    assert loss.item() == pytest.approx(-(0.4 + 0.4) / 2)  # rows: length 1 (0.4), all-masked (skipped), mean 0.4
    loss.backward()
    assert torch.all(logp.grad == 0) and ent.grad[1].tolist() == [0.0, 0.0] and ent.grad[0, 1] == 0


def test_adaptive_coefficient_gate_and_state():
    logp, old, ent, adv, mask = case(5)
    base, _ = run_obj("grpo", logp, old, adv, mask)
    # no entropy measured yet: no bonus (and the initial state is what init_controller_state gives)
    cfg = dict(adaptive=True, coef=0.3, target=0.5, coef_max=1.0)
    state0 = init_controller_state("entropy_bonus", make_objective_config("entropy_bonus", cfg))
    assert state0 == {"entropy_coef": 0.3, "entropy_last": None}
    loss, m = run_obj("entropy_bonus", logp, old, adv, mask, ent, state=state0, **cfg)
    assert loss.item() == pytest.approx(base.item()) and m["stats/entropy_coef"].item() == 0.0
    # previous entropy below target: the controller's coefficient applies; above: none
    low = {"entropy_coef": 0.3, "entropy_last": 0.4}
    loss, m = run_obj("entropy_bonus", logp, old, adv, mask, ent, state=low, **cfg)
    assert loss.item() == pytest.approx(base.item() - 0.3 * m["loss/entropy"].item())
    high = {"entropy_coef": 0.3, "entropy_last": 0.6}
    assert run_obj("entropy_bonus", logp, old, adv, mask, ent, state=high, **cfg)[1]["stats/entropy_coef"] == 0.0


def test_adaptive_coefficient_moves_toward_target_within_bounds():
    kw = dict(target=0.2, delta=0.05, lo=0.0, hi=0.12)
    s = adaptive_coef_init(0.0)
    s = adaptive_coef_update(s, 0.1, **kw)  # below target: up
    assert s["entropy_coef"] == pytest.approx(0.05) and adaptive_coef_applied(s, 0.2) == pytest.approx(0.05)
    s = adaptive_coef_update(s, 0.15, **kw)
    s = adaptive_coef_update(s, 0.15, **kw)
    assert s["entropy_coef"] == pytest.approx(0.12)  # capped at hi
    s = adaptive_coef_update(s, 0.3, **kw)  # above target: down, and the gate closes
    assert s["entropy_coef"] == pytest.approx(0.07) and adaptive_coef_applied(s, 0.2) == 0.0
    for _ in range(5):
        s = adaptive_coef_update(s, 0.3, **kw)
    assert s["entropy_coef"] == 0.0  # floored at lo
    # through the registry hook, on a step's log row
    cfg = make_objective_config("entropy_bonus", {"target": 0.2, "delta": 0.01, "coef": 0.02, "coef_max": 0.5})
    st = init_controller_state("entropy_bonus", cfg)
    up = update_controller_state("entropy_bonus", st, cfg, {"stats/entropy": 0.1})
    down = update_controller_state("entropy_bonus", st, cfg, {"stats/entropy": 0.3})
    assert up["entropy_coef"] == pytest.approx(0.03) and down["entropy_coef"] == pytest.approx(0.01)
    fixed = make_objective_config("entropy_bonus", {"adaptive": False, "coef": 0.02})
    assert init_controller_state("entropy_bonus", fixed) == {}
    assert update_controller_state("entropy_bonus", {"step": 3}, fixed, {"stats/entropy": 0.1}) == {"step": 3}


def test_entropy_bonus_config_is_validated():
    with pytest.raises(ConfigError, match="coef_min/coef_max"):
        make_objective_config("entropy_bonus", {"coef_min": 0.5, "coef_max": 0.1})
    with pytest.raises(ConfigError, match="initial coefficient"):
        make_objective_config("entropy_bonus", {"coef": 2.0})


# ------------------------------------------------------------------------------------------------- 80/20 mask
def trl_quantile(values, q):
    """torch.quantile's default (linear interpolation) as a plain loop, the threshold TRL uses."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def test_threshold_hand_computed():
    ent = torch.tensor([[0.1, 0.8, 0.3, 0.0], [0.5, 0.2, 0.7, 0.9]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])  # valid: 0.1 0.8 0.3 0.5 0.2 0.7
    keep, tau = high_entropy_mask(ent, mask, 0.2)  # quantile(0.8) at position 4 of 0..5: between 0.5 and 0.7
    assert tau.item() == pytest.approx(0.7)
    assert keep.tolist() == [[False, True, False, False], [False, False, True, False]]  # padding never kept
    assert high_entropy_mask(ent, mask, 1.0)[0].tolist() == mask.bool().tolist()


@pytest.mark.parametrize("n", [1, 2, 5, 7, 10, 33, 100])
@pytest.mark.parametrize("rho", [0.05, 0.2, 0.3, 0.5, 1.0])
def test_threshold_selects_what_trl_quantile_selects(n, rho):
    g = torch.Generator().manual_seed(n)
    ent = torch.rand(1, n, generator=g, dtype=torch.float64)
    ent[0, : n // 3] = ent[0, n // 2]  # ties, including at the threshold
    mask = torch.ones(1, n, dtype=torch.long)
    keep, _ = high_entropy_mask(ent, mask, rho)
    thr = trl_quantile(ent[0].tolist(), 1 - rho)
    assert keep[0].tolist() == [h >= thr for h in ent[0].tolist()]


def reference_8020(logp, old, ent, adv, mask, rho):
    vals = [ent[i][t] for i in range(len(mask)) for t in range(len(mask[i])) if mask[i][t]]
    thr = trl_quantile(vals, 1 - rho)
    s = sum(clip_term(logp[i][t], old[i][t], adv[i][t], 0.2, 0.28) * (ent[i][t] >= thr)
            for i in range(len(mask)) for t in range(len(mask[i])) if mask[i][t])
    return s / len(vals)  # the denominator counts every valid token


def test_high_entropy_mask_hand_computed_2x4():
    old = torch.zeros(2, 4)
    logp = torch.tensor([[0.0, math.log(1.5), 0.0, 0.0], [math.log(0.5), 0.0, 0.0, 0.0]])
    ent = torch.tensor([[0.1, 0.9, 0.2, 5.0], [0.8, 0.3, 5.0, 5.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-2.0, -2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    loss, m = run_obj("high_entropy_mask", logp, old, adv, mask, ent, rho=0.4)
    # 5 valid tokens, quantile(0.6) at position 2.4 -> tokens >= 0.8 are kept: (0,1) and (1,0)
    assert loss.item() == pytest.approx((-1.28 + 1.6) / 5, rel=1e-6)
    assert m["stats/mask_frac"].item() == pytest.approx(2 / 5)
    assert m["stats/entropy_threshold"].item() == pytest.approx(0.8)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rho", [0.2, 0.5])
def test_high_entropy_mask_matches_float64_loop(seed, rho):
    logp, old, ent, adv, mask = case(seed)
    loss, _ = run_obj("high_entropy_mask", logp, old, adv, mask, ent, rho=rho)
    want = reference_8020(logp.tolist(), old.tolist(), ent.tolist(), adv.tolist(), mask.tolist(), rho)
    assert loss.item() == pytest.approx(want, rel=1e-12)


def test_high_entropy_mask_rho_one_equals_unmasked_dapo():
    logp, old, ent, adv, mask = case(6)
    a, _ = run_obj("high_entropy_mask", logp, old, adv, mask, ent, rho=1.0)
    b, _ = run_obj("dapo", logp, old, adv, mask)
    assert a.item() == b.item()


def test_high_entropy_mask_gradients():
    logp, old, ent, adv, mask = case(7)
    f = lambda lp: run_obj("high_entropy_mask", lp, old, adv, mask, ent.detach())[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (logp,), eps=1e-6, atol=1e-8)
    loss, _ = run_obj("high_entropy_mask", logp, old, adv, mask, ent)
    loss.backward()
    keep, _ = high_entropy_mask(ent, mask, 0.2)
    assert torch.all(logp.grad[~keep] == 0) and ent.grad is None  # the mask is detached


def test_high_entropy_mask_edges():
    # all-masked batch: an empty selection, zero loss and gradient
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    loss, m = run_obj("high_entropy_mask", logp, logp.detach(), torch.ones(2, 3, dtype=torch.float64),
                      torch.zeros(2, 3, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and m["stats/mask_frac"].item() == 0.0 and torch.all(logp.grad == 0)
    # a length-1 response and an all-masked row: one valid token, always kept
    loss, m = run_obj("high_entropy_mask", torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([[3.0, 0], [1, 1]]),
                      torch.tensor([[1, 0], [0, 0]]), torch.tensor([[0.01, 9.0], [9.0, 9.0]]))
    assert loss.item() == pytest.approx(-3.0) and m["stats/mask_frac"].item() == 1.0
    # all rewards equal in the group: A = 0, no gradient through the kept tokens either
    logp = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    loss, _ = run_obj("high_entropy_mask", logp, logp.detach() + 0.1, torch.zeros(2, 3, dtype=torch.float64),
                      torch.ones(2, 3, dtype=torch.long), torch.rand(2, 3, dtype=torch.float64))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logp.grad == 0)
    with pytest.raises(ConfigError, match="rho"):
        make_objective_config("high_entropy_mask", {"rho": 0.0})
    with pytest.raises(ConfigError, match="stat_scope: invalid value 'global'"):
        make_objective_config("high_entropy_mask", {"stat_scope": "global"})


def micro_losses(name, logp, old, ent, adv, mask, n_micro, scope_kind, **cfg):
    """The loop's gradient accumulation: micro-batch losses weighted by their share of the denominator."""
    agg = make_objective_config(name, cfg).agg
    scope = StatScope(logp=logp.detach(), entropy=ent.detach(), old_logp=old, advantages=adv, mask=mask)
    full = RLBatch(old_logp=old, advantages=adv, mask=mask)
    total, out = agg_denominator(mask, agg), 0.0
    for rows in torch.arange(mask.shape[0]).view(n_micro, -1):
        micro = full.select(rows, scope if scope_kind == "minibatch" else None)
        stats = TokenStats(logp=logp[rows], entropy=ent[rows])
        loss, _ = get_objective(name)(micro, stats, make_objective_config(name, {**cfg, "stat_scope": scope_kind}), {})
        out = out + loss * agg_denominator(micro.mask, agg) / total
    return out


def test_minibatch_scope_under_accumulation_equals_the_whole_batch():
    logp, old, ent, adv, mask = case(8, B=6, T=5)
    whole, _ = run_obj("high_entropy_mask", logp, old, adv, mask, ent)
    acc = micro_losses("high_entropy_mask", logp, old, ent, adv, mask, 3, "minibatch")
    assert acc.item() == pytest.approx(whole.item(), rel=1e-12)
    g1 = torch.autograd.grad(whole, logp)[0]
    g2 = torch.autograd.grad(acc, logp)[0]
    assert torch.allclose(g1, g2, rtol=1e-12, atol=1e-15)
    # per-micro-batch thresholds (TRL/verl) select other tokens
    per_micro = micro_losses("high_entropy_mask", logp, old, ent, adv, mask, 3, "microbatch")
    assert per_micro.item() != pytest.approx(whole.item(), rel=1e-6)
