"""REPO, REPO-R and ADAPO: hand-computed cases (the worked check of docs/methods.md §9), the clamps, float64 loop
references, gradients, edge cases, the ζ and ε_high controllers within their bounds, and the log-prob precision."""
import math

import pytest
import torch

from conftest import run_objective as run_obj  # the shared helper

from entropy_rl.config import ConfigError
from entropy_rl.controllers import clip_high_update, zeta_update
from entropy_rl.objectives import (init_controller_state, make_objective_config,
                                   update_controller_state)
from entropy_rl.objectives.repo import repo_advantage
from entropy_rl.token_stats import TokenStats
from entropy_rl.rl import logprob_precision


def case(seed=0, B=4, T=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=dtype) * 6
    logp = (old + 0.4 * torch.randn(B, T, generator=g, dtype=dtype)).requires_grad_(True)
    ent = (torch.rand(B, T, generator=g, dtype=dtype) * 2).requires_grad_(True)
    adv = torch.randn(B, 1, generator=g, dtype=dtype).expand(B, T).clone()
    mask = (torch.rand(B, T, generator=g) > 0.25).long()
    mask[:, 0] = 1
    return logp, old, ent, adv * mask, mask


def loop_adv(lp, h, a, zeta, centered, rescale, positive_only=False):
    l_ = max(lp, -20.0) + (h if centered else 0.0)
    if not rescale:
        return a - zeta * l_
    if a > 0:
        return max(a * (1 - zeta * l_), 0.0)
    if a < 0:
        return a if positive_only else min(a * (1 + zeta * l_), 0.0)
    return 0.0


def loop_dapo(logp, old, adv, mask, lo=0.2, hi=0.28):
    """token-mean of the clipped surrogate, plain loops"""
    terms = []
    for i in range(len(mask)):
        for t in range(len(mask[i])):
            if mask[i][t]:
                r = math.exp(logp[i][t] - old[i][t])
                terms.append(-min(r * adv[i][t], min(max(r, 1 - lo), 1 + hi) * adv[i][t]))
    return sum(terms) / len(terms)


# ------------------------------------------------------------------------------------------- the advantages
def test_repo_r_worked_check_and_clamps():
    # docs/methods.md §9: zeta = 0.1, log pi = -3: A = 2 -> 2.6, A = -2 -> -1.4
    lp, a, m = torch.tensor([[-3.0, -3.0, -3.0]]), torch.tensor([[2.0, -2.0, 0.0]]), torch.ones(1, 3)
    out = repo_advantage(a, lp, torch.zeros(1, 3), m, 0.1, centered=False, rescale=True)
    assert out.tolist()[0] == pytest.approx([2.6, -1.4, 0.0])
    # 1 + zeta log pi < 0 would turn a penalty into a reward: clamped at 0 (and likewise for A > 0, zeta < 0)
    assert repo_advantage(a, lp, torch.zeros(1, 3), m, 0.5, centered=False, rescale=True).tolist()[0] == [5.0, 0.0, 0.0]
    assert repo_advantage(a, lp, torch.zeros(1, 3), m, -0.5, centered=False, rescale=True).tolist()[0] == [0.0, -5.0, 0.0]
    # log pi clamped below at -20; positive_only leaves A < 0 alone
    far = repo_advantage(a, torch.full((1, 3), -50.0), torch.zeros(1, 3), m, 0.01, centered=False, rescale=True)
    assert far.tolist()[0] == pytest.approx([2.4, -1.6, 0.0])
    pos = repo_advantage(a, lp, torch.zeros(1, 3), m, 0.1, centered=False, rescale=True, positive_only=True)
    assert pos.tolist()[0] == pytest.approx([2.6, -2.0, 0.0])


def test_repo_centred_advantage_hand_computed_2x4():
    lp = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-3.0, -0.1, 0.0, 0.0]])
    h = torch.tensor([[0.5, 1.0, 0.25, 9.0], [2.0, 0.1, 9.0, 9.0]])
    a = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = repo_advantage(a, lp, h, m, 0.1, centered=True, rescale=False)  # A - 0.1 (log pi + H)
    assert torch.allclose(out, torch.tensor([[1.05, 1.1, 1.025, 0.0], [0.1, 0.0, 0.0, 0.0]]))
    loss, metrics = run_obj("repo", lp, lp, a, m, h, state={"zeta": 0.1})  # ratio 1: token-mean of -A'
    assert loss.item() == pytest.approx(-(1.05 + 1.1 + 1.025 + 0.1 + 0.0) / 5)
    assert metrics["stats/zeta"].item() == pytest.approx(0.1)
    assert metrics["stats/repo_adv_shift"].item() == pytest.approx((0.05 + 0.1 + 0.025 + 0.1) / 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name,centered,positive_only,zeta", [
    ("repo", True, False, 0.03), ("repo", False, False, -0.02), ("repo_r", False, False, 0.05),
    ("repo_r", True, False, 0.04), ("repo_r", False, True, 0.05), ("repo_r", False, False, -0.05)])
def test_repo_matches_float64_loop(seed, name, centered, positive_only, zeta):
    logp, old, ent, adv, mask = case(seed)
    cfg = {"centered": centered, **({"positive_only": positive_only} if name == "repo_r" else {})}
    loss, _ = run_obj(name, logp, old, adv, mask, ent, state={"zeta": zeta}, **cfg)
    lp, h, a, m = logp.tolist(), ent.tolist(), adv.tolist(), mask.tolist()
    a2 = [[loop_adv(lp[i][t], h[i][t], a[i][t], zeta, centered, name == "repo_r", positive_only) for t in range(len(m[0]))]
          for i in range(len(m))]
    assert loss.item() == pytest.approx(loop_dapo(lp, old.tolist(), a2, m), rel=1e-12)


def test_repo_gradient_is_the_surrogate_with_fixed_advantages_and_never_reaches_entropy():
    logp, old, ent, adv, mask = case(3)
    loss, _ = run_obj("repo_r", logp, old, adv, mask, ent, state={"zeta": 0.05}, centered=True)
    loss.backward()
    a2 = repo_advantage(adv, logp, ent, mask, 0.05, centered=True, rescale=True)
    lp = logp.detach().clone().requires_grad_(True)
    f = lambda x: run_obj("dapo", x, old, a2, mask)[0]  # noqa: E731
    f(lp).backward()
    assert torch.allclose(logp.grad, lp.grad, rtol=1e-12, atol=0) and ent.grad is None
    assert torch.autograd.gradcheck(f, (lp.detach().requires_grad_(True),), eps=1e-6, atol=1e-8)


def test_repo_edges_equal_rewards_length_one_all_masked():
    logp = torch.tensor([[-2.0, 0.0], [-1.0, -1.0], [-0.5, -4.0]], dtype=torch.float64, requires_grad=True)
    ent = torch.full((3, 2), 0.3, dtype=torch.float64)
    adv = torch.zeros(3, 2, dtype=torch.float64)  # all rewards equal
    mask = torch.tensor([[1, 0], [0, 0], [1, 1]])
    loss, _ = run_obj("repo_r", logp, logp.detach(), adv, mask, ent, state={"zeta": 0.05})
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logp.grad == 0)  # REPO-R: beta = zeta |A| = 0
    lp = logp.detach().clone().requires_grad_(True)
    loss, _ = run_obj("repo", lp, lp.detach(), adv, mask, ent, state={"zeta": 0.05})
    loss.backward()  # plain REPO acts on zero-advantage tokens too: A' = -zeta (log pi + H)
    assert loss.item() == pytest.approx(0.05 * ((-2.0 + 0.3) + (-0.5 + 0.3) + (-4.0 + 0.3)) / 3)
    assert torch.all(lp.grad[1] == 0) and lp.grad[0, 1] == 0 and lp.grad[0, 0] != 0  # masked: no gradient
    empty, _ = run_obj("repo", lp, lp.detach(), adv, mask * 0, ent)
    assert empty.item() == 0.0


# ------------------------------------------------------------------------------------------------ ζ controller
def test_zeta_doubles_below_and_halves_above_target_within_bounds():
    kw = dict(lo=1e-4, hi=0.05)
    z = 1e-3
    for want in (2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 0.05, 0.05):  # below target: doubles, capped at zeta_max
        z = zeta_update(z, 0.1, 0.2, **kw)
        assert z == want
    for want in (0.025, 0.0125, 0.00625):  # above target: halves
        z = zeta_update(z, 0.3, 0.2, **kw)
        assert z == want
    assert zeta_update(0.00015, 0.3, 0.2, **kw) == -1e-4  # halved below zeta_min: flips to -zeta_min
    assert zeta_update(-1e-4, 0.3, 0.2, **kw) == -2e-4 and zeta_update(-0.04, 0.3, 0.2, **kw) == -0.05
    assert zeta_update(-4e-4, 0.1, 0.2, **kw) == -2e-4 and zeta_update(-1.5e-4, 0.1, 0.2, **kw) == 1e-4
    assert zeta_update(0.0, 0.1, 0.2, **kw) == 1e-4 and zeta_update(0.0, 0.3, 0.2, **kw) == -1e-4
    assert zeta_update(3e-3, 0.2, 0.2, **kw) == 3e-3  # at the target: unchanged
    # unsigned: stays within [zeta_min, zeta_max]
    assert zeta_update(1.5e-4, 0.3, 0.2, signed=False, **kw) == 1e-4 and zeta_update(0.04, 0.1, 0.2, signed=False, **kw) == 0.05


def test_zeta_controller_through_the_registry_applies_from_the_next_step():
    logp, old, ent, adv, mask = case(4)
    cfg = make_objective_config("repo_r", {})
    st = init_controller_state("repo_r", cfg)
    assert st == {"zeta": 1e-3, "entropy_target": None}
    st = update_controller_state("repo_r", st, cfg, {"stats/entropy": 0.5})  # the first step sets the target
    assert st == {"zeta": 1e-3, "entropy_target": 0.5}
    st = update_controller_state("repo_r", st, cfg, {"stats/entropy": 0.4})
    assert st == {"zeta": 2e-3, "entropy_target": 0.5}
    _, m = run_obj("repo_r", logp, old, adv, mask, ent, state=st)
    assert m["stats/zeta"].item() == pytest.approx(2e-3)
    st = update_controller_state("repo_r", st, cfg, {"stats/entropy": 0.6})
    assert st["zeta"] == 1e-3
    fixed = make_objective_config("repo", {"target_entropy": 0.1})
    assert update_controller_state("repo", init_controller_state("repo", fixed), fixed, {"stats/entropy": 0.3})["zeta"] == 5e-4
    off = make_objective_config("repo", {"adaptive": False, "zeta": 0.5})
    assert init_controller_state("repo", off) == {} and run_obj("repo", logp, old, adv, mask, ent, **{
        "adaptive": False, "zeta": 0.5})[1]["stats/zeta"].item() == 0.5
    with pytest.raises(ConfigError, match="zeta"):
        make_objective_config("repo_r", {"zeta": 0.5})
    with pytest.raises(ConfigError, match="zeta_min"):
        make_objective_config("repo_r", {"zeta_min": 0.0})


# ------------------------------------------------------------------------------------------------------ ADAPO
def test_clip_high_controller_within_bounds():
    kw = dict(factor=1.1, lo=0.2, hi=0.5)
    assert clip_high_update(0.28, 0.1, 0.2, **kw) == pytest.approx(0.308)
    assert clip_high_update(0.28, 0.3, 0.2, **kw) == pytest.approx(0.28 / 1.1)
    assert clip_high_update(0.48, 0.1, 0.2, **kw) == 0.5 and clip_high_update(0.21, 0.3, 0.2, **kw) == 0.2
    assert clip_high_update(0.3, 0.2, 0.2, **kw) == 0.3
    cfg = make_objective_config("adapo", {})
    st = init_controller_state("adapo", cfg)
    for h, want in ((0.5, 0.28), (0.4, 0.28 * 1.1), (0.4, 0.28 * 1.21), (0.9, 0.28 * 1.1)):
        st = update_controller_state("adapo", st, cfg, {"stats/entropy": h})
        assert st["clip_high"] == pytest.approx(want) and st["entropy_target"] == 0.5
    with pytest.raises(ConfigError, match="clip_high"):
        make_objective_config("adapo", {"clip_high": 0.6})


def test_adapo_hand_computed_clip_from_the_controller_and_matches_dapo():
    # r = 1.5 with A > 0 is clipped at 1 + eps_high
    old = torch.zeros(1, 2, dtype=torch.float64)
    logp = torch.tensor([[math.log(1.5), 0.0]], dtype=torch.float64, requires_grad=True)
    adv, mask = torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2)
    loss, m = run_obj("adapo", logp, old, adv, mask, state={"clip_high": 0.4})
    assert loss.item() == pytest.approx(-(1.4 + 1.0) / 2) and m["stats/clip_high"].item() == pytest.approx(0.4)
    assert run_obj("adapo", logp, old, adv, mask)[0].item() == pytest.approx(-(1.28 + 1.0) / 2)  # initial 0.28
    logp2, old2, _, adv2, mask2 = case(5)
    for eps in (0.2, 0.28, 0.45):
        a = run_obj("adapo", logp2, old2, adv2, mask2, state={"clip_high": eps})[0]
        want = loop_dapo(logp2.tolist(), old2.tolist(), adv2.tolist(), mask2.tolist(), hi=eps)
        assert a.item() == pytest.approx(want, rel=1e-12)
    fixed = run_obj("adapo", logp2, old2, adv2, mask2, state={"clip_high": 0.45}, adaptive=False)[0]
    assert fixed.item() == pytest.approx(run_obj("dapo", logp2, old2, adv2, mask2)[0].item(), rel=1e-12)


# --------------------------------------------------------------------------------------------- precision option
def test_logprob_precision_rounds_to_bf16_and_keeps_gradients():
    lp = (-torch.rand(3, 5, generator=torch.Generator().manual_seed(0)) * 8).requires_grad_(True)
    st = TokenStats(logp=lp, entropy=torch.zeros_like(lp))
    assert logprob_precision(st, "float32") is st
    r = logprob_precision(st, "bfloat16")
    assert r.logp.dtype == torch.float32 and torch.equal(r.logp, lp.detach().bfloat16().float())
    assert not torch.equal(r.logp, lp.detach())  # the rounding is real (8 significant bits)
    assert (r.logp - lp).abs().max() <= 8 * 2.0**-9  # within half a bf16 ulp for |log p| < 8
    r.logp.sum().backward()
    assert torch.all(lp.grad == 1)
    assert make_objective_config("adapo", {"logprob_dtype": "bfloat16"}).logprob_dtype == "bfloat16"
    with pytest.raises(ConfigError, match="logprob_dtype: invalid value 'fp8'"):
        make_objective_config("grpo", {"logprob_dtype": "fp8"})
