"""Clip-Cov, KL-Cov and the annealed covariance regularizer: hand-computed cases, float64 loop references,
gradients, edge cases, the reductions (r = 0, coefficient 0), determinism of the random subset, annealing, scope."""
import math

import pytest
import torch

from entropy_rl.config import ConfigError
from entropy_rl.controllers import anneal_scale
from entropy_rl.objectives import RLBatch, StatScope, agg_denominator, get_objective, make_objective_config
from entropy_rl.objectives.covariance import clip_cov_selection, token_covariance
from entropy_rl.token_stats import TokenStats


def run_obj(name, logp, old, adv, mask, state=None, seed=0, scope=None, **cfg):
    stats = TokenStats(logp=logp, entropy=torch.zeros_like(logp))
    batch = RLBatch(old_logp=old, advantages=adv, mask=mask, seed=seed, scope=scope)
    return get_objective(name)(batch, stats, make_objective_config(name, cfg), state or {})


def case(seed=0, B=4, T=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g, dtype=dtype) * 4).requires_grad_(True)
    old = logp.detach() + 0.3 * torch.randn(B, T, generator=g, dtype=dtype)
    adv = 1.5 * torch.randn(B, 1, generator=g, dtype=dtype).expand(B, T).clone()
    mask = (torch.rand(B, T, generator=g) > 0.25).long()
    mask[:, 0] = 1
    return logp, old, adv * mask, mask


def hand_case():
    """2x4, 5 valid tokens; mean A = 0, mean logp = -0.8; cov = 0.7 0.6 0.5 | 3.3 -0.6 (only (1,0) in (1, 5))."""
    logp = torch.tensor([[-0.1, -0.2, -0.3, 0.0], [-3.0, -0.4, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-1.5, -1.5, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    return logp, adv, mask


def loop_cov(logp, adv, mask):
    idx = [(i, t) for i in range(len(mask)) for t in range(len(mask[i])) if mask[i][t]]
    mu_l = sum(logp[i][t] for i, t in idx) / len(idx)
    mu_a = sum(adv[i][t] for i, t in idx) / len(idx)
    return {(i, t): (logp[i][t] - mu_l) * (adv[i][t] - mu_a) for i, t in idx}


def clip_term(lp, o, a, lo, hi):
    r = math.exp(lp - o)
    return -min(r * a, min(max(r, 1 - lo), 1 + hi) * a)


def test_token_covariance_hand_computed():
    logp, adv, mask = hand_case()
    cov = token_covariance(logp, adv, mask)
    want = torch.tensor([[0.7, 0.6, 0.5, 0.0], [3.3, -0.6, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(cov, want, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------------- Clip-Cov
def test_clip_cov_hand_computed_2x4():
    logp, adv, mask = hand_case()
    loss, m = run_obj("clip_cov", logp, logp.detach(), adv, mask, clip_ratio=0.5)
    assert loss.item() == pytest.approx((-3.0 + 1.5) / 5)  # ratio 1; token (1,0) detached, still counted in N
    assert m["stats/cov_selected_frac"].item() == pytest.approx(1 / 5)
    assert m["stats/cov_mean"].item() == pytest.approx(0.9)
    loss.backward()
    want = torch.tensor([[-0.2, -0.2, -0.2, 0.0], [0.0, 0.3, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(logp.grad, want, atol=1e-12, rtol=0)  # the detached token gets no gradient


def test_clip_cov_skips_tokens_already_clipped_by_ppo():
    logp, adv, mask = hand_case()
    old = logp.detach().clone()
    old[1, 0] += math.log(2.0)  # ratio 0.5 < 1 - 0.2 with A < 0: PPO clips it, so it is no candidate
    loss, m = run_obj("clip_cov", logp, old, adv, mask, clip_ratio=0.5, clip_low=0.2, clip_high=0.2)
    base, _ = run_obj("dapo", logp, old, adv, mask, clip_high=0.2)
    assert m["stats/cov_selected_frac"].item() == 0.0 and loss.item() == pytest.approx(base.item())


def test_clip_cov_with_r_zero_equals_its_base_loss():
    logp, old, adv, mask = case(1)
    a, m = run_obj("clip_cov", logp, old, adv, mask, clip_ratio=0.0)
    b, _ = run_obj("dapo", logp, old, adv, mask, clip_low=1.0, clip_high=1.0)  # the same clipped surrogate, token-mean
    assert a.item() == b.item() and m["stats/cov_selected_frac"].item() == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_clip_cov_matches_float64_loop_when_every_candidate_is_taken(seed):
    logp, old, adv, mask = case(seed)
    lp, o, a, mk = logp.tolist(), old.tolist(), adv.tolist(), mask.tolist()
    cov = loop_cov(lp, a, mk)
    cand = {k for k, c in cov.items()
            if 1.0 < c < 5.0 and not clip_term(lp[k[0]][k[1]], o[k[0]][k[1]], a[k[0]][k[1]], 0.2, 0.2)
            > -math.exp(lp[k[0]][k[1]] - o[k[0]][k[1]]) * a[k[0]][k[1]]}
    assert cand, "the case should have candidates"
    want = sum(clip_term(lp[i][t], o[i][t], a[i][t], 0.2, 0.2) for (i, t) in cov if (i, t) not in cand) / len(cov)
    loss, m = run_obj("clip_cov", logp, old, adv, mask, clip_ratio=1.0, clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert m["stats/cov_selected_frac"].item() == pytest.approx(len(cand) / len(cov))


def test_clip_cov_random_subset_is_seeded_and_sized():
    logp, old, adv, mask = case(2, B=8, T=10)
    scope = StatScope(logp=logp.detach(), entropy=logp.detach(), old_logp=old, advantages=adv, mask=mask)
    everything = clip_cov_selection(scope, 1.0, 1.0, 1.0, 1.0, 5.0, seed=0)
    n_cand = int(everything.sum())
    assert n_cand >= 4
    picks = [clip_cov_selection(scope, 1.0, 1.0, 0.03, 1.0, 5.0, seed=s) for s in range(6)]
    n = max(int(0.03 * int(mask.sum())), 1)
    assert all(int(p.sum()) == min(n, n_cand) and not (p & ~everything).any() for p in picks)
    assert torch.equal(picks[0], clip_cov_selection(scope, 1.0, 1.0, 0.03, 1.0, 5.0, seed=0))
    assert len({tuple(p.flatten().nonzero().flatten().tolist()) for p in picks}) > 1


def test_clip_cov_gradients_and_edges():
    logp, old, adv, mask = case(4)
    f = lambda lp: run_obj("clip_cov", lp, old, adv, mask, clip_ratio=0.1, seed=3)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (logp,), eps=1e-6, atol=1e-8)
    # all-equal rewards: A = 0, cov = 0, no candidate; an all-masked batch: an empty selection and zero loss
    z = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    loss, m = run_obj("clip_cov", z, z.detach() - 0.2, torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3))
    assert loss.item() == 0.0 and m["stats/cov_selected_frac"].item() == 0.0
    loss, m = run_obj("clip_cov", z, z.detach(), torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, 3))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(z.grad == 0)
    # a length-1 response next to an all-masked row: its one token has cov 0, so it keeps its gradient
    loss, _ = run_obj("clip_cov", torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([[2.0, 0], [7, 7]]),
                      torch.tensor([[1, 0], [0, 0]]), clip_ratio=1.0)
    assert loss.item() == pytest.approx(-2.0)
    with pytest.raises(ConfigError, match="dual clipping"):
        make_objective_config("clip_cov", {"clip_ratio_c": 3.0})


# ---------------------------------------------------------------------------------------------------- KL-Cov
def reference_kl_cov(logp, old, adv, mask, k, coef):
    cov = loop_cov(logp, adv, mask)
    n = 0 if k == 0 else max(1, int(len(cov) * k))
    top = set(sorted(cov, key=lambda key: -cov[key])[:n])
    s = 0.0
    for (i, t) in cov:
        lr = logp[i][t] - old[i][t]
        s += -adv[i][t] * math.exp(lr) + (coef * abs(lr) if (i, t) in top else 0.0)
    return s / len(cov)


def test_kl_cov_hand_computed_2x4():
    logp, adv, mask = hand_case()
    old = logp.detach().clone()
    old[1, 0] -= math.log(1.2)  # ratio 1.2 on the top-covariance token
    loss, m = run_obj("kl_cov", logp, old, adv, mask, k=0.1)  # max(int(0.5), 1) = 1 token
    want = (-3.0 + 1.5 * 1.2 + 1.0 * math.log(1.2) + 1.5) / 5
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert m["stats/cov_selected_frac"].item() == pytest.approx(1 / 5)
    assert m["loss/cov_kl"].item() == pytest.approx(math.log(1.2) / 5)
    loss.backward()
    assert logp.grad[1, 0].item() == pytest.approx((1.5 * 1.2 + 1.0) / 5)  # d/dlogp (-A r + beta |log r|)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [0.05, 0.2])
def test_kl_cov_matches_float64_loop(seed, k):
    logp, old, adv, mask = case(seed)
    loss, _ = run_obj("kl_cov", logp, old, adv, mask, k=k, coef=0.7)
    want = reference_kl_cov(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), k, 0.7)
    assert loss.item() == pytest.approx(want, rel=1e-12)


def test_kl_cov_with_zero_coefficient_is_the_unclipped_policy_gradient():
    logp, old, adv, mask = case(5)
    loss, m = run_obj("kl_cov", logp, old, adv, mask, coef=0.0, k=0.3)
    ratio = torch.exp(logp - old)
    assert loss.item() == pytest.approx(((-adv * ratio) * mask).sum().item() / mask.sum().item(), rel=1e-12)
    assert m["stats/clip_frac"].item() == 0.0  # no PPO clipping at all


def test_kl_cov_gradcheck_and_edges():
    logp, old, adv, mask = case(6)
    f = lambda lp: run_obj("kl_cov", lp, old, adv, mask, k=0.2)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (logp,), eps=1e-6, atol=1e-8)
    # k = 0: an empty selection, the unclipped PG
    a, m = run_obj("kl_cov", logp, old, adv, mask, k=0.0)
    b, _ = run_obj("kl_cov", logp, old, adv, mask, coef=0.0)
    assert a.item() == b.item() and m["stats/cov_selected_frac"].item() == 0.0
    # all rewards equal: A = 0, so only the penalty of the (cov = 0) selected token remains
    z = torch.zeros(1, 4, dtype=torch.float64)
    loss, _ = run_obj("kl_cov", z, z - 0.5, z, torch.ones(1, 4), k=0.25)
    assert loss.item() == pytest.approx(0.5 / 4)
    # all-masked batch and a length-1 response
    loss, m = run_obj("kl_cov", torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2, 2), torch.zeros(2, 2))
    assert loss.item() == 0.0 and m["stats/cov_selected_frac"].item() == 0.0
    loss, _ = run_obj("kl_cov", torch.zeros(2, 2), torch.full((2, 2), -0.1), torch.tensor([[2.0, 0], [5, 5]]),
                      torch.tensor([[1, 0], [0, 0]]))
    assert loss.item() == pytest.approx(-2.0 * math.exp(0.1) + 0.1)
    with pytest.raises(ConfigError, match="a fraction, not a percent"):
        make_objective_config("kl_cov", {"k": 2.0})


# ---------------------------------------------------------------------------------------------- cov_annealed
def test_anneal_scale_schedules():
    assert [anneal_scale(s, 11, "linear", 0.5) for s in (0, 5, 6, 8, 10)] == pytest.approx([1, 1, 0.8, 0.4, 0])
    assert anneal_scale(5, 11, "cosine", 0.0) == pytest.approx(0.5)
    assert anneal_scale(10, 11, "cosine", 0.5, final=0.2) == pytest.approx(0.2)
    assert anneal_scale(10, 11, "constant", 0.5) == 1.0
    values = [anneal_scale(s, 50, "cosine", 0.3) for s in range(50)]
    assert all(a >= b for a, b in zip(values, values[1:])) and values[0] == 1.0 and values[-1] == 0.0
    with pytest.raises(ValueError, match="valid: constant, linear, cosine"):
        anneal_scale(0, 10, "exp", 0.5)


def test_cov_annealed_hand_computed_schedule_follows_kl_cov_then_decays_to_the_unbiased_loss():
    logp, old, adv, mask = case(7)
    kw = dict(k=0.2, coef=0.8, schedule="linear", anneal_start=0.5)
    first, m0 = run_obj("cov_annealed", logp, old, adv, mask, state={"step": 0, "total_steps": 11}, **kw)
    assert first.item() == run_obj("kl_cov", logp, old, adv, mask, k=0.2, coef=0.8)[0].item()
    assert run_obj("cov_annealed", logp, old, adv, mask, **kw)[0].item() == first.item()  # no state: the first step
    mid, m8 = run_obj("cov_annealed", logp, old, adv, mask, state={"step": 8, "total_steps": 11}, **kw)
    assert m8["stats/cov_coef"].item() == pytest.approx(0.8 * 0.4)
    assert mid.item() == pytest.approx(run_obj("kl_cov", logp, old, adv, mask, k=0.2, coef=0.32)[0].item(), rel=1e-12)
    last, _ = run_obj("cov_annealed", logp, old, adv, mask, state={"step": 10, "total_steps": 11}, **kw)
    assert last.item() == run_obj("kl_cov", logp, old, adv, mask, coef=0.0)[0].item()
    # the Clip-Cov variant anneals r, down to its base loss
    cc = dict(regularizer="clip_cov", clip_ratio=0.5, schedule="cosine", anneal_start=0.0)
    end, m = run_obj("cov_annealed", logp, old, adv, mask, state={"step": 4, "total_steps": 5}, **cc)
    assert end.item() == run_obj("clip_cov", logp, old, adv, mask, clip_ratio=0.0)[0].item()
    start, _ = run_obj("cov_annealed", logp, old, adv, mask, state={"step": 0, "total_steps": 5}, **cc)
    assert start.item() == run_obj("clip_cov", logp, old, adv, mask, clip_ratio=0.5)[0].item()
    assert make_objective_config("cov_annealed", kw).uses_total_steps
    assert not make_objective_config("cov_annealed", {"schedule": "constant"}).uses_total_steps
    with pytest.raises(ConfigError, match="regularizer: invalid value 'entropy'"):
        make_objective_config("cov_annealed", {"regularizer": "entropy"})


# ------------------------------------------------------------------------------------------- statistic scope
@pytest.mark.parametrize("name,cfg", [("kl_cov", {"k": 0.1}), ("clip_cov", {"clip_ratio": 0.05})])
def test_minibatch_scope_under_accumulation_equals_the_whole_batch(name, cfg):
    logp, old, adv, mask = case(9, B=6, T=8)
    whole, _ = run_obj(name, logp, old, adv, mask, seed=11, **cfg)
    scope = StatScope(logp=logp.detach(), entropy=torch.zeros_like(old), old_logp=old, advantages=adv, mask=mask)
    full = RLBatch(old_logp=old, advantages=adv, mask=mask, seed=11)
    total, acc, per_micro = agg_denominator(mask, "token-mean"), 0.0, 0.0
    for rows in torch.arange(6).view(3, 2):
        w = agg_denominator(mask[rows], "token-mean") / total
        stats = TokenStats(logp=logp[rows], entropy=torch.zeros_like(old[rows]))
        fn = get_objective(name)
        acc = acc + w * fn(full.select(rows, scope), stats, make_objective_config(name, cfg), {})[0]
        micro_cfg = make_objective_config(name, {**cfg, "stat_scope": "microbatch"})
        per_micro = per_micro + w * fn(full.select(rows), stats, micro_cfg, {})[0]
    assert acc.item() == pytest.approx(whole.item(), rel=1e-12)
    assert per_micro.item() != pytest.approx(whole.item(), rel=1e-6)  # verl's per-micro-batch statistics differ
