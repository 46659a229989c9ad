"""ERPO: hand-computed cases, bucket and group statistics against plain loops, the whole objective against a float64
loop reference, the gate's per-response sum preservation, gradients, edge cases, the rollout scope and the switches;
EP-GRPO's options (cumulative-entropy buckets, the process signal of zero-variance groups) and the binding
diagnostics."""
import math

import pytest
import torch

from entropy_rl.config import ConfigError
from entropy_rl.objectives import RLBatch, get_objective, make_objective_config
from entropy_rl.objectives.erpo import entropy_buckets, erpo_advantages, relative_buckets, segment_zscore
from entropy_rl.token_stats import TokenStats


def run_erpo(batch, logp, entropy=None, **cfg):
    stats = TokenStats(logp=logp, entropy=torch.zeros_like(logp) if entropy is None else entropy)
    return get_objective("erpo")(batch, stats, make_objective_config("erpo", cfg), {})


def case(seed=0, groups=3, G=4, T=7, dtype=torch.float64, shuffle=False, flat_reward=1.0):
    """Groups of G responses with one A per response (equal rewards ``flat_reward`` in the last group: A = 0; the
    other groups' rewards all differ), random lengths including a length-1 and an all-masked response."""
    g = torch.Generator().manual_seed(seed)
    B = groups * G
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[1], lengths[2] = 1, 0
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    a = torch.randn(B, generator=g, dtype=dtype)
    a[-G:] = 0.0
    rewards = torch.rand(B, generator=g, dtype=dtype)
    rewards[-G:] = flat_reward
    adv = a[:, None] * mask
    old = -torch.rand(B, T, generator=g, dtype=dtype) * 3 * mask
    ref = (old + 0.5 * torch.randn(B, T, generator=g, dtype=dtype)) * mask
    ent = torch.rand(B, T, generator=g, dtype=dtype) * 2 * mask
    logp = ((old + 0.3 * torch.randn(B, T, generator=g, dtype=dtype)) * mask).requires_grad_(True)
    gid = torch.arange(B) // G
    if shuffle:  # group ids need not be contiguous or start at 0
        perm = torch.randperm(B, generator=g)
        adv, old, ref, ent, mask, gid = adv[perm], old[perm], ref[perm], ent[perm], mask[perm], 7 + 3 * gid[perm]
        rewards = rewards[perm]
        logp = logp.detach()[perm].requires_grad_(True)
    batch = RLBatch(old_logp=old, advantages=adv, mask=mask, ref_logp=ref, group_ids=gid, old_entropy=ent,
                    rewards=rewards)
    return batch, logp


# ------------------------------------------------------------------------------------------- plain loop reference
def loop_zscores(values, keys, eps, min_count):
    """values, keys: dicts over tokens; z-score within each key (Bessel std), 0 for keys with < min_count tokens."""
    out = {}
    for k in set(keys.values()):
        toks = [p for p in values if keys[p] == k]
        n = len(toks)
        mu = sum(values[p] for p in toks) / n
        sd = math.sqrt(sum((values[p] - mu) ** 2 for p in toks) / (n - 1)) if n > 1 else 0.0
        for p in toks:
            out[p] = (values[p] - mu) / (sd + eps) if n >= min_count else 0.0
    return out


def loop_cumulative_buckets(h, K):
    """The cumulative-entropy bucket of each of a row's valid entropies ``h`` (a list); position if they sum to 0."""
    cum = [sum(max(x, 0.0) for x in h[:k + 1]) for k in range(len(h))]
    if not h or cum[-1] <= 0:
        return [min(math.floor(K * k / len(h)), K - 1) for k in range(len(h))]
    return [min(math.floor(K * c / cum[-1]), K - 1) for c in cum]


def loop_erpo_adv(b, gamma=5.0, K=10, eta=0.2, beta=0.1, gate=True, on_adv=True, on_prog=True, synthesis=True,
                  norm="buckets", min_tok=2, eps=1e-6, coord="position", zv="drop"):
    mask, adv, ent = b.mask.tolist(), b.advantages.tolist(), b.old_entropy.tolist()
    lp, ref, gid = b.old_logp.tolist(), b.ref_logp.tolist(), b.group_ids.tolist()
    rows = {i: [t for t in range(len(mask[i])) if mask[i][t]] for i in range(len(mask))}
    toks = [(i, t) for i in rows for t in rows[i]]
    z = loop_zscores({p: ent[p[0]][p[1]] for p in toks}, {p: gid[p[0]] for p in toks}, eps, 1)
    W = {p: 1 / (1 + math.exp(-gamma * z[p])) if gate else 1.0 for p in toks}
    s = {p: beta * (lp[p[0]][p[1]] - ref[p[0]][p[1]]) for p in toks}
    bucket = {(i, t): min(math.floor(K * k / len(rows[i])), K - 1) for i in rows for k, t in enumerate(rows[i])}
    if coord == "cumulative_entropy":
        cum = {i: loop_cumulative_buckets([ent[i][t] for t in ts], K) for i, ts in rows.items()}
        bucket = {(i, t): cum[i][k] for i in rows for k, t in enumerate(rows[i])}
    rew = b.rewards.tolist() if b.rewards is not None else None
    if norm == "buckets":
        st = loop_zscores(s, {p: (gid[p[0]], bucket[p]) for p in toks}, eps, min_tok)
    elif norm == "group":
        st = loop_zscores(s, {p: gid[p[0]] for p in toks}, eps, min_tok)
    else:
        st = s
    out = [[0.0] * len(mask[0]) for _ in mask]
    for i, ts in rows.items():
        if not ts:
            continue
        a = adv[i][ts[0]]
        sgn = (a > 0) - (a < 0)
        if zv == "process" and a == 0 and len({rew[j] for j in range(len(mask)) if gid[j] == gid[i]}) == 1:
            sgn = 1 if rew[i] > 0 else -1  # a zero-variance group: all correct +1, all wrong -1
        sw = sum(W[(i, t)] for t in ts)
        for t in ts:
            p = (i, t)
            base = len(ts) * W[p] / sw * a if gate and on_adv else a
            out[i][t] = base + (eta * (W[p] if gate and on_prog else 1.0) * sgn * st[p] if synthesis else 0.0)
    return out


def loop_grpo_loss(logp, old, adv, mask, lo=0.2, hi=0.2):
    rows = []
    for i in range(len(mask)):
        ts = [t for t in range(len(mask[i])) if mask[i][t]]
        if ts:
            terms = []
            for t in ts:
                r = math.exp(logp[i][t] - old[i][t])
                terms.append(-min(r * adv[i][t], min(max(r, 1 - lo), 1 + hi) * adv[i][t]))
            rows.append(sum(terms) / len(ts))
    return sum(rows) / len(rows)


# ------------------------------------------------------------------------------------------------- statistics
def test_relative_buckets_hand_computed():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    assert relative_buckets(mask, 2).tolist() == [[0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 1], [0] * 5]
    assert relative_buckets(mask, 10).tolist()[2] == [0, 2, 4, 6, 8]  # floor(10 t / 5)
    assert relative_buckets(mask, 1).sum() == 0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("K,min_count", [(1, 1), (3, 2), (10, 2), (4, 3)])
def test_bucket_statistics_match_plain_loop(seed, K, min_count):
    b, _ = case(seed, shuffle=seed % 2 == 1)
    x = b.old_logp - b.ref_logp
    _, g = torch.unique(b.group_ids, return_inverse=True)
    keys = g[:, None] * K + relative_buckets(b.mask, K)
    z, size = segment_zscore(x, b.mask, keys, int(g.max() + 1) * K, 1e-6, min_count)
    m, xl = b.mask.tolist(), x.tolist()
    toks = [(i, t) for i in range(len(m)) for t in range(len(m[i])) if m[i][t]]
    n_valid = {i: sum(m[i]) for i in range(len(m))}
    rank = {(i, t): sum(m[i][:t]) for i, t in toks}
    key = {p: (b.group_ids[p[0]].item(), min(math.floor(K * rank[p] / n_valid[p[0]]), K - 1)) for p in toks}
    want = loop_zscores({p: xl[p[0]][p[1]] for p in toks}, key, 1e-6, min_count)
    for p in toks:
        assert z[p].item() == pytest.approx(want[p], rel=1e-10, abs=1e-12)
        assert size[p].item() == sum(1 for q in toks if key[q] == key[p])
    assert torch.all(z[b.mask == 0] == 0)


def test_erpo_hand_computed_2x4():
    # one group; valid entropies 1 3 2 | 2 2: mean 2, Bessel std sqrt(0.5), z = -sqrt2, sqrt2, 0 | 0 0
    # gamma = ln 3 / sqrt 2 makes gamma z = -+ln 3, so W = 1/4, 3/4, 1/2 | 1/2, 1/2
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    ent = torch.tensor([[1.0, 3.0, 2.0, 0.0], [2.0, 2.0, 0.0, 0.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-1.0, -1.0, 0.0, 0.0]], dtype=torch.float64)
    old = torch.tensor([[-1.0, -0.5, -2.0, 0.0], [-1.0, -3.0, 0.0, 0.0]], dtype=torch.float64)
    ref = old - torch.tensor([[0.2, 0.0, 0.4, 0.0], [0.6, 0.2, 0.0, 0.0]], dtype=torch.float64)
    batch = RLBatch(old_logp=old, advantages=adv, mask=mask, ref_logp=ref, group_ids=torch.tensor([0, 0]),
                    old_entropy=ent)
    cfg = dict(gamma=math.log(3) / math.sqrt(2), eps=1e-12, beta_p=0.5, progress_norm="none")
    loss, m = run_erpo(batch, old.clone().requires_grad_(True), **cfg)
    # gated: 3 W / 1.5 = 0.5 1.5 1.0 | -1 -1; s = 0.1 0 0.2 | 0.3 0.1; eta W sgn(A) s = .005 0 .02 | -.03 -.01
    a_want = [[0.505, 1.5, 1.02, 0.0], [-1.03, -1.01, 0.0, 0.0]]
    a, _ = erpo_advantages(adv, mask, ent, old, ref, torch.tensor([0, 0]), make_objective_config("erpo", cfg))
    assert torch.allclose(a, torch.tensor(a_want, dtype=torch.float64), atol=1e-9)
    assert loss.item() == pytest.approx((-(0.505 + 1.5 + 1.02) / 3 + (1.03 + 1.01) / 2) / 2, abs=1e-9)
    assert m["stats/erpo_gate_mean"].item() == pytest.approx((0.25 + 0.75 + 0.5 + 0.5 + 0.5) / 5)


def test_erpo_bucket_normalization_hand_computed():
    # K = 2: row 0 (3 tokens) has buckets 0 0 1, row 1 (2 tokens) 0 1; s = 0.1 0 0.2 | 0.3 0.1
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    old = torch.tensor([[0.1, 0.0, 0.2, 0.0], [0.3, 0.1, 0.0, 0.0]], dtype=torch.float64)
    a, parts = erpo_advantages(torch.ones(2, 4, dtype=torch.float64) * mask, mask, torch.ones(2, 4, dtype=torch.float64),
                               old, torch.zeros_like(old), torch.tensor([4, 4]),
                               make_objective_config("erpo", {"beta_p": 1.0, "n_buckets": 2, "eps": 1e-12}))
    sd0 = math.sqrt(((0.1 - 0.4 / 3) ** 2 + (0.4 / 3) ** 2 + (0.3 - 0.4 / 3) ** 2) / 2)  # bucket 0: 0.1 0 0.3
    sd1 = math.sqrt(0.05**2 * 2 / 1)  # bucket 1: 0.2 0.1
    want = [[(0.1 - 0.4 / 3) / sd0, (0 - 0.4 / 3) / sd0, 0.05 / sd1, 0], [(0.3 - 0.4 / 3) / sd0, -0.05 / sd1, 0, 0]]
    assert torch.allclose(parts["s_tilde"], torch.tensor(want, dtype=torch.float64), atol=1e-9)
    # equal entropies: W = 1/2 everywhere, the gated advantage stays 1; A = 1 + 0.2 * 0.5 * s~
    assert torch.allclose(a, (1 + 0.1 * parts["s_tilde"]) * mask, atol=1e-12)


VARIANTS = [
    {},
    {"gate": False},
    {"synthesis": False},
    {"progress_norm": "group"},
    {"progress_norm": "none", "gate_on_progress": False},
    {"gate_on_advantage": False, "n_buckets": 3, "min_bucket_tokens": 1, "gamma": 2.0, "eta": 0.7},
    {"progress_coord": "cumulative_entropy"},
    {"progress_coord": "cumulative_entropy", "n_buckets": 3, "zero_variance": "process"},
    {"zero_variance": "process"},
    {"zero_variance": "process", "progress_norm": "group", "gate_on_progress": False},
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant", VARIANTS)
def test_erpo_matches_float64_loop(seed, variant):
    b, logp = case(seed, shuffle=seed == 2)
    loss, _ = run_erpo(b, logp, **variant)
    names = {"gate_on_advantage": "on_adv", "gate_on_progress": "on_prog", "progress_norm": "norm", "n_buckets": "K",
             "min_bucket_tokens": "min_tok", "progress_coord": "coord", "zero_variance": "zv"}
    a_want = loop_erpo_adv(b, **{names.get(k, k): v for k, v in variant.items()})
    a, _ = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids,
                           make_objective_config("erpo", variant), b.rewards)
    assert torch.allclose(a, torch.tensor(a_want, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    want = loop_grpo_loss(logp.tolist(), b.old_logp.tolist(), a_want, b.mask.tolist())
    assert loss.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gate_preserves_the_advantage_sum_of_every_response(seed):
    b, _ = case(seed, shuffle=True)
    cfg = make_objective_config("erpo", {"synthesis": False, "gamma": 3.0 + seed})
    a, parts = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids, cfg)
    n = b.mask.sum(-1).double()
    a_row = (b.advantages * b.mask).sum(-1) / n.clamp(min=1)
    assert torch.allclose(a.sum(-1), n * a_row, rtol=1e-12, atol=1e-12)  # sum_t A_t = |o_i| A_i
    spread = parts["W"][b.mask.bool()]
    assert spread.max() - spread.min() > 0.1  # the gate really redistributes
    assert not torch.allclose(a, b.advantages)


def test_erpo_gradient_is_the_clipped_surrogate_with_fixed_advantages():
    b, logp = case(4)
    f = lambda lp: run_erpo(b, lp, clip_high=0.28)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (logp,), eps=1e-6, atol=1e-8)  # A_ERPO does not depend on logp (rollout)
    a, _ = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids,
                           make_objective_config("erpo"))
    stats = TokenStats(logp=logp, entropy=torch.zeros_like(logp))
    grpo_cfg = make_objective_config("grpo", {"clip_high": 0.28})
    base, _ = get_objective("grpo")(RLBatch(old_logp=b.old_logp, advantages=a, mask=b.mask), stats, grpo_cfg, {})
    assert f(logp).item() == pytest.approx(base.item(), rel=1e-12)


def test_erpo_edges_equal_rewards_length_one_all_masked_empty():
    b, logp = case(5)
    loss, _ = run_erpo(b, logp)
    loss.backward()
    a, _ = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids,
                           make_objective_config("erpo"))
    assert torch.all(a[-4:] == 0) and torch.all(logp.grad[-4:] == 0)  # equal rewards: sgn(0) = 0, no signal at all
    gated, _ = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids,
                               make_objective_config("erpo", {"synthesis": False}))
    assert gated[1, 0].item() == pytest.approx(b.advantages[1, 0].item(), rel=1e-12)  # length 1: |o| W / W = 1
    assert relative_buckets(b.mask, 10)[1, 0] == 0 and torch.isfinite(a[1, 0])
    assert torch.all(a[2] == 0) and torch.all(logp.grad[2] == 0) and torch.isfinite(loss)  # all-masked row
    empty = RLBatch(old_logp=b.old_logp, advantages=b.advantages * 0, mask=b.mask * 0, ref_logp=b.ref_logp,
                    group_ids=b.group_ids, old_entropy=b.old_entropy)
    lp = logp.detach().clone().requires_grad_(True)
    loss, m = run_erpo(empty, lp)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(lp.grad == 0) and all(torch.isfinite(v) for v in m.values())


def test_rollout_scope_pools_whole_groups():
    b, logp = case(6)
    rows = torch.tensor([0, 5, 6, 11, 3])  # a mini-batch that splits every group
    full, _ = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids,
                              make_objective_config("erpo"))
    mini = b.select(rows)
    mini.rollout, mini.rollout_rows = b, rows
    lp = logp.detach()[rows].clone().requires_grad_(True)
    loss, _ = run_erpo(mini, lp)
    want = loop_grpo_loss(lp.tolist(), mini.old_logp.tolist(), full[rows].tolist(), mini.mask.tolist())
    assert loss.item() == pytest.approx(want, rel=1e-12)
    alone, _ = run_erpo(b.select(rows), lp)  # pooled over the rows present only: a different advantage
    assert abs(alone.item() - loss.item()) > 1e-6
    micro = mini.select(torch.tensor([1, 3]))  # micro-batches keep their rows in the rollout
    assert micro.rollout is b and micro.rollout_rows.tolist() == [5, 11]


def test_current_stats_and_old_reference():
    b, logp = case(7)
    ent = torch.rand(b.mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cur = dict(stats_from="current", progress_ref="old")
    loss, m = run_erpo(b, logp, ent, **cur)
    moved = RLBatch(old_logp=logp.detach(), advantages=b.advantages, mask=b.mask, ref_logp=b.old_logp,
                    group_ids=b.group_ids, old_entropy=ent)
    a, _ = erpo_advantages(b.advantages, b.mask, ent, logp.detach(), b.old_logp, b.group_ids,
                           make_objective_config("erpo", cur))
    want = loop_grpo_loss(logp.tolist(), b.old_logp.tolist(), loop_erpo_adv(moved), b.mask.tolist())
    assert torch.allclose(a, torch.tensor(loop_erpo_adv(moved), dtype=torch.float64), atol=1e-12)
    assert loss.item() == pytest.approx(want, rel=1e-10)
    assert m["stats/erpo_progress"].item() == pytest.approx(m["stats/erpo_progress_old"].item(), rel=1e-12)
    with pytest.raises(ConfigError, match="progress_ref: 'old' needs stats_from: current"):
        make_objective_config("erpo", {"progress_ref": "old"})


def test_gate_and_synthesis_off_is_grpo_and_missing_inputs_fail():
    b, logp = case(8)
    loss, _ = run_erpo(b, logp, gate=False, synthesis=False)
    stats = TokenStats(logp=logp, entropy=torch.zeros_like(logp))
    base, _ = get_objective("grpo")(b, stats, make_objective_config("grpo"), {})
    assert loss.item() == pytest.approx(base.item(), rel=1e-12)
    with pytest.raises(ValueError, match="group_ids"):
        run_erpo(RLBatch(old_logp=b.old_logp, advantages=b.advantages, mask=b.mask, ref_logp=b.ref_logp,
                         old_entropy=b.old_entropy), logp)
    with pytest.raises(ValueError, match="old_entropy"):
        run_erpo(RLBatch(old_logp=b.old_logp, advantages=b.advantages, mask=b.mask, ref_logp=b.ref_logp,
                         group_ids=b.group_ids), logp)
    with pytest.raises(ConfigError, match="progress_norm"):
        make_objective_config("erpo", {"progress_norm": "bucket"})


# ------------------------------------------------------------------ EP-GRPO options (arXiv 2605.04960) and diagnostics
def test_cumulative_entropy_buckets_hand_computed():
    # row 0: H = 1 0 1 2, shares c = .25 .25 .5 1, K = 2: floor(2c) = 0 0 1 2 -> 0 0 1 1 (the edge c = 1/2 opens
    # bucket 1; c = 1 is clamped to K - 1). Row 1: padding entropies are ignored, c = .75 1. Row 2: the valid
    # entropies sum to 0 -> position buckets of 3 tokens. Row 3: a slightly negative H counts as 0, c = 0 .5 1 1.
    ent = torch.tensor([[1.0, 0.0, 1.0, 2.0], [3.0, 1.0, 9.0, 9.0], [0.0, 0.0, 0.0, 5.0], [-1e-9, 1.0, 1.0, 0.0],
                        [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert entropy_buckets(ent, mask, 2).tolist() == [[0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 1], [0] * 4]
    assert entropy_buckets(ent, mask, 4).tolist()[0] == [1, 1, 2, 3]  # floor(4c) = 1 1 2 4 -> K - 1
    assert entropy_buckets(ent, mask, 1).sum() == 0
    assert entropy_buckets(ent, mask, 2)[2].tolist() == relative_buckets(mask, 2)[2].tolist()  # the fallback
    # constant entropy: c_t = (t + 1) / |o|, one token later than the position buckets floor(K t / |o|)
    flat = torch.ones(1, 4, dtype=torch.float64)
    assert entropy_buckets(flat, torch.ones(1, 4), 2).tolist() == [[0, 1, 1, 1]]
    assert relative_buckets(torch.ones(1, 4), 2).tolist() == [[0, 0, 1, 1]]


def test_cumulative_buckets_feed_the_progress_z_scores():
    b, _ = case(9)
    cfg = make_objective_config("erpo", {"progress_coord": "cumulative_entropy", "n_buckets": 3})
    _, parts = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids, cfg)
    _, g = torch.unique(b.group_ids, return_inverse=True)
    keys = g[:, None] * 3 + entropy_buckets(b.old_entropy, b.mask, 3)
    want, _ = segment_zscore(cfg.beta_p * (b.old_logp - b.ref_logp) * b.mask, b.mask, keys, int(g.max() + 1) * 3,
                             cfg.eps, cfg.min_bucket_tokens)
    assert torch.allclose(parts["s_tilde"], want, rtol=1e-12, atol=1e-12)
    pos, _ = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids,
                             make_objective_config("erpo", {"n_buckets": 3}))
    assert not torch.allclose(pos, erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp,
                                                   b.group_ids, cfg)[0])
    # only the bucket normalization reads the coordinate
    for norm in ("group", "none"):
        a_cum, _ = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids,
                                   make_objective_config("erpo", {"progress_coord": "cumulative_entropy",
                                                                  "progress_norm": norm}))
        a_pos, _ = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids,
                                   make_objective_config("erpo", {"progress_norm": norm}))
        assert torch.equal(a_cum, a_pos)


def test_defaults_are_position_buckets_and_drop():
    cfg = make_objective_config("erpo")
    assert cfg.progress_coord == "position" and cfg.zero_variance == "drop" and not cfg.dynamic_sampling
    assert cfg == make_objective_config("erpo", {"progress_coord": "position", "zero_variance": "drop"})
    b, logp = case(3)
    a, parts = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids, cfg,
                               b.rewards)
    no_rewards, _ = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids, cfg)
    assert torch.equal(a, no_rewards) and torch.all(parts["process"] == 0)  # drop never reads the rewards


def process_batch():
    """Three groups of two responses (3 and 2 tokens, equal entropies: W = 1/2): group 4 all correct (rewards 1 1),
    group 5 all wrong (0 0), both A = 0; group 6 mixed (1 0), A = +1 / -1. s = 0.1 0 0.2 | 0.3 0.1 in every group."""
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]] * 3)
    s = torch.tensor([[0.1, 0.0, 0.2, 0.0], [0.3, 0.1, 0.0, 0.0]] * 3, dtype=torch.float64)
    old = -torch.ones(6, 4, dtype=torch.float64) * mask
    a = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0], dtype=torch.float64)
    return RLBatch(old_logp=old, advantages=a[:, None] * mask, mask=mask, ref_logp=old - s, group_ids=torch.tensor(
        [4, 4, 5, 5, 6, 6]), old_entropy=torch.ones(6, 4, dtype=torch.float64) * mask,
        rewards=torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)), s


def test_process_signal_of_zero_variance_groups_hand_computed():
    b, s = process_batch()
    cfg = {"beta_p": 1.0, "progress_norm": "none", "eta": 0.2}
    proc_cfg = make_objective_config("erpo", {**cfg, "zero_variance": "process"})
    a, parts = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids, proc_cfg,
                               b.rewards)
    # eta W sgn_g s = 0.2 * 0.5 * (+-1) * s: + in the all-correct group, - in the all-wrong one
    assert torch.allclose(a[:2], 0.1 * s[:2], atol=1e-12) and torch.allclose(a[2:4], -0.1 * s[2:4], atol=1e-12)
    assert torch.all(a[0, [0, 2]] > 0) and torch.all(a[2, [0, 2]] < 0)
    assert torch.all((a - 0.2 * parts["psi"])[:4] == 0)  # the advantage part is 0: A_ERPO = eta * Psi
    drop, dparts = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids,
                                   make_objective_config("erpo", cfg), b.rewards)
    assert torch.all(drop[:4] == 0) and torch.all(dparts["psi"][:4] == 0)  # drop: exact zeros
    assert torch.equal(a[4:], drop[4:])  # the mixed group is untouched: 1 + 0.1 s, -1 - 0.1 s
    assert torch.allclose(drop[4:], torch.tensor([[1.01, 1.0, 1.02, 0.0], [-1.03, -1.01, 0.0, 0.0]],
                                                 dtype=torch.float64), atol=1e-12)
    # the objective: 8 of the 15 tokens get a signal (the two tokens with s = 0 do not); gradients flow there
    for mode, frac in (("process", 8 / 15), ("drop", 0.0)):
        lp = b.old_logp.clone().requires_grad_(True)
        loss, m = run_erpo(b, lp, **cfg, zero_variance=mode)
        loss.backward()
        assert m["stats/erpo_zero_var_frac"].item() == pytest.approx(frac, abs=1e-12)
        assert (lp.grad[:4].abs().sum() > 0) == (mode == "process")
        # ratio 1, seq-mean-token-mean: loss = -mean over rows of each row's token-mean A
        want = -sum((a if mode == "process" else drop)[i, :n].mean().item() for i, n in enumerate([3, 2] * 3)) / 6
        assert loss.item() == pytest.approx(want, abs=1e-12)
    # no signal without synthesis or with eta = 0
    for off in ({"synthesis": False}, {"eta": 0.0}):
        _, m = run_erpo(b, b.old_logp.clone().requires_grad_(True), **{**cfg, **off}, zero_variance="process")
        assert m["stats/erpo_zero_var_frac"].item() == 0.0


def test_zero_variance_needs_agreeing_rewards_and_zero_advantage():
    # a mini-batch under stats_from: current that holds only the two correct rows of a group 1 1 0 0: their rewards
    # agree among the rows present but A > 0, so they are no zero-variance group
    b, _ = process_batch()
    mixed = RLBatch(old_logp=b.old_logp[:2], advantages=b.advantages[4:5].expand(2, 4) * b.mask[:2], mask=b.mask[:2],
                    ref_logp=b.ref_logp[:2], group_ids=torch.tensor([0, 0]), old_entropy=b.old_entropy[:2],
                    rewards=torch.tensor([1.0, 1.0], dtype=torch.float64))
    cfg = {"stats_from": "current", "progress_norm": "none", "beta_p": 1.0}
    lp = mixed.old_logp.clone().requires_grad_(True)
    ent = mixed.old_entropy
    proc, mp = run_erpo(mixed, lp, ent, **cfg, zero_variance="process")
    drop, _ = run_erpo(mixed, lp, ent, **cfg)
    assert proc.item() == drop.item() and mp["stats/erpo_zero_var_frac"].item() == 0.0
    # rewards are required by process only
    no_rewards = RLBatch(old_logp=b.old_logp, advantages=b.advantages, mask=b.mask, ref_logp=b.ref_logp,
                         group_ids=b.group_ids, old_entropy=b.old_entropy)
    run_erpo(no_rewards, b.old_logp.clone().requires_grad_(True))
    with pytest.raises(ValueError, match="rewards"):
        run_erpo(no_rewards, b.old_logp.clone().requires_grad_(True), zero_variance="process")


def test_process_uses_the_rollout_rewards_of_whole_groups():
    b, logp = case(6, flat_reward=0.0)  # the last group all wrong: sgn_g = -1
    cfg = make_objective_config("erpo", {"zero_variance": "process"})
    full, parts = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids, cfg,
                                  b.rewards)
    zv = parts["process"].bool()
    assert zv[-4:].any() and not zv[:-4].any()
    assert torch.equal(torch.sign(full[-4:][zv[-4:]]), -torch.sign(parts["s_tilde"][-4:][zv[-4:]]))
    rows = torch.tensor([0, 5, 11, 3, 9])
    mini = b.select(rows)
    mini.rollout, mini.rollout_rows = b, rows
    lp = logp.detach()[rows].clone().requires_grad_(True)
    loss, m = run_erpo(mini, lp, zero_variance="process")
    want = loop_grpo_loss(lp.tolist(), mini.old_logp.tolist(), full[rows].tolist(), mini.mask.tolist())
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert m["stats/erpo_zero_var_frac"].item() == pytest.approx(
        (parts["process"][rows].sum() / b.mask[rows].sum()).item(), rel=1e-12)


@pytest.mark.parametrize("variant", [{}, {"zero_variance": "process"},
                                     {"zero_variance": "process", "progress_coord": "cumulative_entropy"}])
def test_gradient_with_the_new_options_is_the_clipped_surrogate(variant):
    b, logp = case(4)
    f = lambda lp: run_erpo(b, lp, clip_high=0.28, **variant)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (logp,), eps=1e-6, atol=1e-8)
    a, _ = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids,
                           make_objective_config("erpo", variant), b.rewards)
    stats = TokenStats(logp=logp, entropy=torch.zeros_like(logp))
    base, _ = get_objective("grpo")(RLBatch(old_logp=b.old_logp, advantages=a, mask=b.mask), stats,
                                    make_objective_config("grpo", {"clip_high": 0.28}), {})
    assert f(logp).item() == pytest.approx(base.item(), rel=1e-12)
    f(logp).backward()
    assert (logp.grad[-4:].abs().sum() > 0) == (variant.get("zero_variance") == "process")  # the all-correct group


def test_gate_sd_is_the_population_std_over_valid_tokens():
    b, logp = case(2, shuffle=True)
    _, m = run_erpo(b, logp)
    _, parts = erpo_advantages(b.advantages, b.mask, b.old_entropy, b.old_logp, b.ref_logp, b.group_ids,
                               make_objective_config("erpo"))
    w = parts["W"][b.mask.bool()]
    assert m["stats/erpo_gate_sd"].item() == pytest.approx(torch.std(w, correction=0).item(), rel=1e-12)
    assert m["stats/erpo_gate_sd"].item() > 0.1
    _, off = run_erpo(b, logp, gate=False)
    assert off["stats/erpo_gate_sd"].item() == 0.0  # W = 1: no spread
    rows = torch.tensor([1, 4, 7, 10])  # a mini-batch: the spread of its own tokens' W (pooled from the rollout)
    mini = b.select(rows)
    mini.rollout, mini.rollout_rows = b, rows
    _, mm = run_erpo(mini, logp.detach()[rows])
    want = torch.std(parts["W"][rows][b.mask[rows].bool()], correction=0).item()
    assert mm["stats/erpo_gate_sd"].item() == pytest.approx(want, rel=1e-12)
    empty = RLBatch(old_logp=b.old_logp, advantages=b.advantages * 0, mask=b.mask * 0, ref_logp=b.ref_logp,
                    group_ids=b.group_ids, old_entropy=b.old_entropy, rewards=b.rewards)
    _, me = run_erpo(empty, logp.detach(), zero_variance="process")
    assert me["stats/erpo_gate_sd"].item() == 0.0 and me["stats/erpo_zero_var_frac"].item() == 0.0


def test_every_logged_key_is_registered():
    from entropy_rl.objectives import POLICY_METRICS
    from entropy_rl.objectives.registry import get_spec
    b, logp = case(1)
    for variant in ({}, {"zero_variance": "process", "progress_coord": "cumulative_entropy"}):
        _, m = run_erpo(b, logp, **variant)
        assert {"stats/erpo_gate_sd", "stats/erpo_zero_var_frac"} <= set(m)
        assert set(m) <= set(get_spec("erpo").metrics) | set(POLICY_METRICS), set(m) - set(get_spec("erpo").metrics)


def test_new_options_reject_bad_values_naming_the_key():
    with pytest.raises(ConfigError, match="progress_coord"):
        make_objective_config("erpo", {"progress_coord": "entropy"})
    with pytest.raises(ConfigError, match="zero_variance"):
        make_objective_config("erpo", {"zero_variance": "keep"})
    with pytest.raises(ConfigError, match="zero_variance: 'process' acts on no group with dynamic_sampling"):
        make_objective_config("erpo", {"zero_variance": "process", "dynamic_sampling": True})
    make_objective_config("erpo", {"dynamic_sampling": True})  # drop with dynamic sampling: allowed
