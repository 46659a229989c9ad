"""PAEC: the position mask by hand and against a plain loop, the floor penalty (zero above the floor; gradient only at
masked positions, also through the fused token statistics), the anchor H0, the ablations, edge cases, gradients."""
import math

import pytest
import torch

from entropy_rl.config import ConfigError
from entropy_rl.controllers import anchor_init, anchor_update
from entropy_rl.objectives import (RLBatch, get_objective, init_controller_state, make_objective_config,
                                   update_controller_state)
from entropy_rl.objectives.paec import position_mask
from entropy_rl.token_stats import TokenStats, token_stats


def make_stats(seed=0, B=4, T=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=dtype) * 3
    logp = (old + 0.4 * torch.randn(B, T, generator=g, dtype=dtype)).requires_grad_(True)
    ent = (torch.rand(B, T, generator=g, dtype=dtype) * 2).requires_grad_(True)
    size = torch.randint(1, 9, (B, T), generator=g)
    topp = torch.rand(B, T, generator=g, dtype=dtype) * torch.log(size.to(dtype))
    gap = torch.rand(B, T, generator=g, dtype=dtype) * 3
    gap[0, 1] = math.inf  # a single candidate
    stats = TokenStats(logp=logp, entropy=ent, topp_entropy=topp, topp_size=size, top2_gap=gap,
                       topp_overflow=torch.zeros(B, T, dtype=torch.bool))
    adv = torch.randn(B, 1, generator=g, dtype=dtype).expand(B, T).clone()
    mask = (torch.rand(B, T, generator=g) > 0.2).long()
    mask[:, 0] = 1
    return stats, RLBatch(old_logp=old, advantages=adv * mask, mask=mask)


def run_paec(batch, stats, state=None, **cfg):
    return get_objective("paec")(batch, stats, make_objective_config("paec", cfg), state or {})


def linear_quantile(values, q):
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def loop_mask(stats, mask, rho=0.8, w=0.5, temp=0.1, normalize=True):
    """Plain loops: z-scores (Bessel) over the valid tokens, the linear-interpolation quantile, the sigmoid."""
    m = mask.tolist()
    toks = [(i, t) for i in range(len(m)) for t in range(len(m[i])) if m[i][t]]
    hp, size, gap = stats.topp_entropy.tolist(), stats.topp_size.tolist(), stats.top2_gap.tolist()
    h = {p: (hp[p[0]][p[1]] / math.log(size[p[0]][p[1]]) if size[p[0]][p[1]] > 1 else 0.0) if normalize
         else hp[p[0]][p[1]] for p in toks}
    c = {p: math.exp(-gap[p[0]][p[1]]) for p in toks}

    def z(d):
        mu = sum(d.values()) / len(d)
        sd = math.sqrt(sum((x - mu) ** 2 for x in d.values()) / (len(d) - 1))
        return {p: (x - mu) / (sd + 1e-6) for p, x in d.items()}

    zh, zc = z(h), z(c)
    u = {p: (1 - w) * zh[p] + w * zc[p] for p in toks}
    q = linear_quantile(list(u.values()), rho)
    tau = min(x for x in u.values() if x >= q)
    out = [[0.0] * len(m[0]) for _ in m]
    for p in toks:
        if u[p] >= q:
            out[p[0]][p[1]] = 1 / (1 + math.exp(-(u[p] - tau) / temp))
    return out


def loop_grpo(logp, old, adv, mask):
    rows = []
    for i in range(len(mask)):
        ts = [t for t in range(len(mask[i])) if mask[i][t]]
        if ts:
            rows.append(sum(-min(math.exp(logp[i][t] - old[i][t]) * adv[i][t],
                                 min(max(math.exp(logp[i][t] - old[i][t]), 0.8), 1.2) * adv[i][t]) for t in ts) / len(ts))
    return sum(rows) / len(rows)


# ------------------------------------------------------------------------------------------------------- mask
def test_paec_position_mask_hand_computed():
    # 10 valid tokens with normalized top-p entropy 0.1 .. 1.0 (|V_p| = 4), padding with large values
    size = torch.full((2, 6), 4)
    norm = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 5.0], [0.6, 0.7, 0.8, 0.9, 1.0, 5.0]], dtype=torch.float64)
    stats = TokenStats(logp=torch.zeros(2, 6), entropy=torch.zeros(2, 6), topp_entropy=norm * math.log(4),
                       topp_size=size, top2_gap=torch.zeros(2, 6, dtype=torch.float64))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]])
    m, parts = position_mask(stats, mask, make_objective_config("paec", {"competition_weight": 0.0}))
    assert torch.allclose(parts["topp"][:, :5], norm[:, :5])
    sd = math.sqrt(sum((x / 10 - 0.55) ** 2 for x in range(1, 11)) / 9)
    top = 1 / (1 + math.exp(-(0.1 / (sd + 1e-6)) / 0.1))  # 0.1 above the 80 % position, T_m = 0.1
    want = torch.zeros(2, 6, dtype=torch.float64)
    want[1, 3], want[1, 4] = 0.5, top  # the top 20 % of 10 tokens: 0.9 (at tau) and 1.0
    assert torch.allclose(m, want, atol=1e-9) and top == pytest.approx(0.9646, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("cfg", [{}, {"competition_weight": 0.0}, {"competition_weight": 1.0, "rho": 0.5},
                                 {"normalize_topp": False, "mask_temperature": 0.5, "rho": 0.9}])
def test_position_mask_matches_plain_loop(seed, cfg):
    stats, batch = make_stats(seed, B=5, T=9)
    m, _ = position_mask(stats, batch.mask, make_objective_config("paec", cfg))
    names = {"competition_weight": "w", "mask_temperature": "temp", "normalize_topp": "normalize"}
    want = loop_mask(stats, batch.mask, **{names.get(k, k): v for k, v in cfg.items()})
    assert torch.allclose(m, torch.tensor(want, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    n_valid = int(batch.mask.sum())
    assert (m > 0).sum() >= math.ceil((1 - cfg.get("rho", 0.8)) * n_valid) - 1 and torch.all(m[batch.mask == 0] == 0)
    assert not m.requires_grad


def test_single_candidate_and_one_token_nucleus():
    stats = TokenStats(logp=torch.zeros(1, 3), entropy=torch.zeros(1, 3), topp_entropy=torch.tensor([[0.0, 0.5, 0.7]]),
                       topp_size=torch.tensor([[1, 2, 2]]), top2_gap=torch.tensor([[math.inf, 0.0, math.log(2)]]))
    _, parts = position_mask(stats, torch.ones(1, 3), make_objective_config("paec"))
    assert parts["topp"].tolist()[0] == pytest.approx([0.0, 0.5 / math.log(2), 0.7 / math.log(2)])
    assert parts["competition"].tolist()[0] == pytest.approx([0.0, 1.0, 0.5])  # tie: full competition


# ---------------------------------------------------------------------------------------------------- penalty
def test_penalty_is_zero_above_the_floor_and_before_the_anchor():
    stats, batch = make_stats(1)
    base, _ = get_objective("grpo")(batch, stats, make_objective_config("grpo"), {})
    for state in ({}, {"anchor": None}, {"anchor": 0.01}):  # no anchor yet, or the masked entropy is above 0.8 H0
        loss, m = run_paec(batch, stats, state)
        assert loss.item() == pytest.approx(base.item(), rel=1e-12) and m["loss/paec_penalty"].item() == 0.0
        loss.backward()
        g = stats.entropy.grad
        assert g is None if state.get("anchor") is None else (g is not None and torch.all(g == 0))
        stats.entropy.grad = None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_penalty_matches_loop_and_its_gradient_touches_only_masked_positions(seed):
    stats, batch = make_stats(seed, B=5, T=8)
    h0 = 3.0  # floor 2.4 lies above every entropy (< 2): the penalty is active
    loss, metrics = run_paec(batch, stats, {"anchor": h0}, coef=4.0)
    mk = loop_mask(stats, batch.mask)
    ent = stats.entropy.tolist()
    wsum = sum(map(sum, mk))
    h_bar = sum(mk[i][t] * ent[i][t] for i in range(5) for t in range(8)) / wsum
    pen = max(0.0, 0.8 * h0 - h_bar) ** 2
    want = loop_grpo(stats.logp.tolist(), batch.old_logp.tolist(), batch.advantages.tolist(), batch.mask.tolist())
    assert loss.item() == pytest.approx(want + 4.0 * pen, rel=1e-10)
    assert metrics["stats/paec_masked_entropy"].item() == pytest.approx(h_bar, rel=1e-10)
    assert metrics["stats/paec_floor"].item() == pytest.approx(2.4)
    loss.backward()
    g = stats.entropy.grad
    m = torch.tensor(mk, dtype=torch.float64)
    assert torch.allclose(g, -2 * 4.0 * (0.8 * h0 - h_bar) * m / wsum, rtol=1e-10, atol=1e-14)
    assert torch.equal(g != 0, m > 0) and 0 < (m > 0).sum() < batch.mask.sum()


def test_paec_gradcheck_with_active_penalty():
    stats, batch = make_stats(4)

    def f(lp, h):
        st = TokenStats(logp=lp, entropy=h, topp_entropy=stats.topp_entropy, topp_size=stats.topp_size,
                        top2_gap=stats.top2_gap)
        return run_paec(batch, st, {"anchor": 3.0}, coef=2.0, bonus_coef=0.1)[0]

    assert torch.autograd.gradcheck(f, (stats.logp, stats.entropy), eps=1e-6, atol=1e-8)


def test_penalty_gradient_reaches_hidden_states_only_at_masked_positions():
    g = torch.Generator().manual_seed(0)
    B, T, H, V = 4, 6, 8, 40
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64)
    ids, mask = torch.randint(0, V, (B, T), generator=g), torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0
    stats = token_stats(hidden, weight, ids, mask, top_p=0.9, top_k=16)
    batch = RLBatch(old_logp=stats.logp.detach(), advantages=torch.zeros(B, T, dtype=torch.float64), mask=mask)
    loss, _ = run_paec(batch, stats, {"anchor": 10.0})  # A = 0: only the penalty has a gradient
    loss.backward()
    m, _ = position_mask(stats, mask, make_objective_config("paec"))
    touched = hidden.grad.abs().sum(-1) > 0
    assert torch.equal(touched, m > 0) and touched.sum() == math.ceil(0.2 * (mask.sum().item() - 1))


def test_mask_and_penalty_ablations():
    stats, batch = make_stats(5)
    base, _ = get_objective("grpo")(batch, stats, make_objective_config("grpo"), {})
    off, m = run_paec(batch, stats, {"anchor": 3.0}, penalty=False)
    assert off.item() == pytest.approx(base.item(), rel=1e-12) and m["loss/paec_penalty"].item() > 0  # logged only
    loss, m = run_paec(batch, stats, {"anchor": 3.0}, position_mask=False)
    valid = batch.mask.double()
    h_bar = (stats.entropy.detach() * valid).sum() / valid.sum()
    assert m["stats/paec_masked_entropy"].item() == pytest.approx(h_bar.item(), rel=1e-12)
    assert loss.item() == pytest.approx(base.item() + 10.0 * (2.4 - h_bar.item()) ** 2, rel=1e-12)
    loss.backward()
    assert torch.equal(stats.entropy.grad != 0, batch.mask.bool())  # every valid position


def test_edges_empty_selection_equal_rewards_length_one():
    stats, batch = make_stats(6)
    empty = RLBatch(old_logp=batch.old_logp, advantages=batch.advantages * 0, mask=batch.mask * 0)
    loss, m = run_paec(empty, stats, {"anchor": 3.0})
    loss.backward()
    assert loss.item() == 0.0 and m["loss/paec_penalty"].item() == 0.0 and torch.all(stats.entropy.grad == 0)
    assert all(torch.isfinite(v) for v in m.values())
    one = torch.zeros_like(batch.mask)
    one[2, 0] = 1  # a single length-1 response: it is the whole selection
    st = TokenStats(logp=stats.logp.detach().requires_grad_(True), entropy=stats.entropy.detach().requires_grad_(True),
                    topp_entropy=stats.topp_entropy, topp_size=stats.topp_size, top2_gap=stats.top2_gap)
    loss, m = run_paec(RLBatch(old_logp=batch.old_logp, advantages=batch.advantages * 0, mask=one), st, {"anchor": 3.0})
    h = st.entropy[2, 0].item()
    assert m["stats/paec_masked_entropy"].item() == pytest.approx(h) and loss.item() == pytest.approx(10 * (2.4 - h) ** 2)


# ----------------------------------------------------------------------------------------------------- anchor
def test_anchor_is_the_mean_of_the_first_k_steps_then_frozen():
    s = anchor_init()
    for k, h in enumerate([0.4, 0.2, 0.3]):
        s = anchor_update(s, h, 4)
        assert s["anchor"] is None and s["anchor_steps"] == k + 1
    s = anchor_update(s, 0.5, 4)
    assert s["anchor"] == pytest.approx(0.35)
    assert anchor_update(s, 9.0, 4) == s  # frozen
    cfg = make_objective_config("paec", {"anchor_steps": 2})
    st = init_controller_state("paec", cfg)
    for h in (0.3, 0.1):
        st = update_controller_state("paec", st, cfg, {"stats/paec_masked_entropy": h})
    assert st["anchor"] == pytest.approx(0.2) and st["anchor_steps"] == 2
    with pytest.raises(ConfigError, match="rho"):
        make_objective_config("paec", {"rho": 1.0})
    with pytest.raises(ValueError, match="topp_entropy"):
        run_paec(RLBatch(old_logp=torch.zeros(1, 2), advantages=torch.zeros(1, 2), mask=torch.ones(1, 2)),
                 TokenStats(logp=torch.zeros(1, 2), entropy=torch.zeros(1, 2)))
