"""Fused token statistics against a plain float64 reference (full logits, log_softmax, explicit entropy, explicit
sorted top-p), values and gradients, across chunkings, temperatures, ties, an overflowing nucleus and masks."""
import dataclasses
import math

import pytest
import torch

import entropy_rl.token_stats as ts
from entropy_rl.token_stats import TokenStats, token_stats, token_stats_flat


def reference(hidden, weight, ids, temperature, bias=None, top_p=0.9, top_k=256):
    """Everything in float64 from the full [N, V] logits; the nucleus by an explicit loop over sorted rows."""
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    z = z / temperature
    logq = torch.log_softmax(z, -1)
    logp = logq.gather(-1, ids[:, None]).squeeze(-1)
    ent = -(logq.exp() * logq).sum(-1)
    V = z.shape[1]
    topp_ent, size, overflow, gap = [], [], [], []
    for row in logq.detach():
        lp = torch.sort(row, descending=True).values[: min(top_k, V)].tolist()
        nucleus, mass = [], 0.0
        for x in lp:  # add tokens until the mass reaches top_p (the crossing token included), at most K
            nucleus.append(x)
            mass += math.exp(x)
            if mass >= top_p:
                break
        topp_ent.append(-sum(math.exp(x) / mass * (x - math.log(mass)) for x in nucleus))
        size.append(len(nucleus))
        overflow.append(mass < top_p and top_k < V)
        gap.append(lp[0] - lp[1])
    f64 = dict(dtype=torch.float64)
    return dict(logp=logp, entropy=ent, lse=torch.logsumexp(z, -1).detach(), topp_entropy=torch.tensor(topp_ent, **f64),
                topp_size=torch.tensor(size), topp_overflow=torch.tensor(overflow), top2_gap=torch.tensor(gap, **f64))


TOL = {torch.float64: 1e-6, torch.float32: 1e-4}


def check_values(st: TokenStats, ref: dict, rtol: float):
    for name in ("logp", "entropy", "lse", "topp_entropy", "top2_gap"):
        torch.testing.assert_close(getattr(st, name).double(), ref[name].detach(), rtol=rtol, atol=rtol, msg=name)
    assert torch.equal(st.topp_size, ref["topp_size"]) and torch.equal(st.topp_overflow, ref["topp_overflow"])


def check_grads(pairs, rtol):
    for got, want in pairs:
        scale = want.grad.abs().max().item()
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=rtol, atol=rtol * scale)


def leaves(*ts_, dtype):
    return [t.detach().to(dtype).requires_grad_(True) for t in ts_]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,chunk,vchunk,V", [(37, 8, 7, 50), (16, 16, 64, 50), (5, 64, 50, 50), (33, 32, 16, 50),
                                             (21, 16, 400, 600)])  # the last: grouped top-K search in wide tiles
@pytest.mark.parametrize("temperature,with_bias", [(1.0, True), (0.7, False), (1.3, True)])
def test_values_and_gradients_match_float64(dtype, n, chunk, vchunk, V, temperature, with_bias):
    g = torch.Generator().manual_seed(n + chunk)
    H, scale = 12, 0.5 if V < 100 else 1.5  # sharper logits for the wide vocabulary: nuclei both under and over K
    hidden, weight = leaves(torch.randn(n, H, generator=g), torch.randn(V, H, generator=g) * scale, dtype=dtype)
    bias = leaves(torch.randn(V, generator=g), dtype=dtype)[0] if with_bias else None
    ids = torch.randint(0, V, (n,), generator=g)
    st = token_stats_flat(hidden, weight, ids, temperature, bias, top_p=0.8, top_k=10, chunk_size=chunk,
                          vocab_chunk_size=vchunk)
    assert st.logp.dtype == dtype and st.logp.shape == (n,)
    r_h, r_w = leaves(hidden, weight, dtype=torch.float64)
    r_b = leaves(bias, dtype=torch.float64)[0] if with_bias else None
    ref = reference(r_h, r_w, ids, temperature, r_b, top_p=0.8, top_k=10)
    check_values(st, ref, TOL[dtype])
    assert st.topp_size.unique().numel() > 1  # the nucleus size varies across rows here
    c1, c2 = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    ((st.logp.double() * c1).sum() + (st.entropy.double() * c2).sum()).backward()
    ((ref["logp"] * c1).sum() + (ref["entropy"] * c2).sum()).backward()
    check_grads([(hidden, r_h), (weight, r_w)] + ([(bias, r_b)] if with_bias else []), TOL[dtype])


@pytest.mark.parametrize("c,k", [(1000, 7), (4099, 16), (40, 8)])
def test_grouped_topk_values_are_exact_with_ties(c, k):
    g = torch.Generator().manual_seed(c)
    for z in (torch.randn(6, c, generator=g), torch.randint(0, 5, (6, c), generator=g).float()):  # many ties
        z[0, -1] = 100.0  # a maximum among the leftover columns
        want = torch.topk(z, k, dim=1).values
        torch.testing.assert_close(ts._topk_values(z, k).sort(1, descending=True).values, want, rtol=0, atol=0)


def test_read_only_fields_carry_no_gradient_and_no_grad_mode_works():
    hidden, weight = torch.randn(6, 4, requires_grad=True), torch.randn(9, 4, requires_grad=True)
    st = token_stats_flat(hidden, weight, torch.zeros(6, dtype=torch.long))
    assert st.logp.requires_grad and st.entropy.requires_grad
    assert not any(t.requires_grad for t in (st.lse, st.topp_entropy, st.top2_gap, st.topp_size, st.topp_overflow))
    with torch.no_grad():
        assert not token_stats_flat(hidden, weight, torch.zeros(6, dtype=torch.long)).logp.requires_grad


def test_ties_in_the_top_two():
    """Two vocabulary rows equal and dominant: gap 0 (also when the pair is split across vocabulary tiles)."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(7, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(20, 8, generator=g, dtype=torch.float64) * 0.1
    weight[3] = weight[15] = hidden.mean(0) * 2  # the same logit for tokens 3 and 15, and the largest for most rows
    ids = torch.arange(7) % 20
    for vchunk in (20, 8):
        st = token_stats_flat(hidden, weight, ids, 0.9, top_p=0.5, top_k=4, vocab_chunk_size=vchunk)
        ref = reference(hidden, weight, ids, 0.9, top_p=0.5, top_k=4)
        check_values(st, ref, 1e-6)
        tied = ref["top2_gap"] < 1e-12
        assert tied.sum() >= 4 and torch.all(st.top2_gap[tied].abs() < 1e-12)
        assert torch.all(st.topp_size[tied] >= 2)  # two tied tokens of about half the mass each: both in the nucleus


def test_nucleus_larger_than_k_sets_the_flag():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(8, 6, generator=g, dtype=torch.float64)
    hidden[::2] *= 0.01  # near-uniform rows: the 0.9-nucleus needs far more than K = 5 tokens
    hidden[1::2] *= 10.0  # peaked rows: a nucleus of one or two tokens
    weight = torch.randn(40, 6, generator=g, dtype=torch.float64)
    ids = torch.zeros(8, dtype=torch.long)
    st = token_stats_flat(hidden, weight, ids, top_p=0.9, top_k=5, vocab_chunk_size=16)
    ref = reference(hidden, weight, ids, 1.0, top_p=0.9, top_k=5)
    check_values(st, ref, 1e-6)
    assert st.topp_overflow[::2].all() and not st.topp_overflow[1::2].any()
    assert torch.all(st.topp_size[::2] == 5) and torch.all(st.topp_size[1::2] < 5)
    # top_k = 30 > 16: the nucleus is sorted in two stages (16 first, 30 for the rows not closed by then)
    st = token_stats_flat(hidden, weight, ids, top_p=0.9, top_k=30)
    check_values(st, reference(hidden, weight, ids, 1.0, top_p=0.9, top_k=30), 1e-6)
    assert st.topp_overflow[::2].all() and torch.all(st.topp_size[::2] == 30)
    # top_k >= V never overflows, and top_p = 1 then keeps the whole vocabulary: topp_entropy = entropy
    full = token_stats_flat(hidden, weight, ids, top_p=1.0, top_k=100)
    assert not full.topp_overflow.any()
    torch.testing.assert_close(full.topp_entropy[::2], full.entropy[::2])


def test_entropy_gradient_at_selected_positions_equals_the_masked_full_gradient(monkeypatch):
    g = torch.Generator().manual_seed(3)
    n, H, V = 29, 10, 60
    hidden, weight = leaves(torch.randn(n, H, generator=g), torch.randn(V, H, generator=g), dtype=torch.float64)
    ids = torch.randint(0, V, (n,), generator=g)
    sel = torch.rand(n, generator=g) < 0.3
    rows_seen = []
    real = ts._logits
    monkeypatch.setattr(ts, "_logits", lambda h, *a: rows_seen.append(h.shape[0]) or real(h, *a))
    st = token_stats_flat(hidden, weight, ids, 0.8, chunk_size=8, vocab_chunk_size=25)
    rows_seen.clear()
    (st.entropy * sel).sum().backward()  # entropy only, at the selected positions
    assert sum(rows_seen) == 3 * int(sel.sum())  # the backward recomputes the selected rows only (3 vocab tiles)
    r_h, r_w = leaves(hidden, weight, dtype=torch.float64)
    ref = reference(r_h, r_w, ids, 0.8)
    (ref["entropy"] * sel).sum().backward()
    check_grads([(hidden, r_h), (weight, r_w)], 1e-6)
    assert torch.all(hidden.grad[~sel] == 0)
    # with a log-prob loss on every row, the masked entropy term rides in the same recompute (one pass)
    hidden.grad = weight.grad = r_h.grad = r_w.grad = None
    st = token_stats_flat(hidden, weight, ids, 0.8, chunk_size=8, vocab_chunk_size=25)
    rows_seen.clear()
    (st.logp.sum() + 0.5 * (st.entropy * sel).sum()).backward()
    assert sum(rows_seen) == 3 * n
    ref = reference(r_h, r_w, ids, 0.8)
    (ref["logp"].sum() + 0.5 * (ref["entropy"] * sel).sum()).backward()
    check_grads([(hidden, r_h), (weight, r_w)], 1e-6)


def stats_and_grads(hidden, weight, bias, ids, g_logp, g_ent, **kw):
    """The statistics and the gradients of ``(logp * g_logp).sum() + (entropy * g_ent).sum()`` (a None weight: that
    term left out), on fresh leaves."""
    h, w, b = (t.detach().clone().requires_grad_(True) for t in (hidden, weight, bias))
    st = token_stats_flat(h, w, ids, 0.8, b, top_p=0.8, top_k=10, chunk_size=8, **kw)
    terms = [(x * c).sum() for x, c in ((st.logp, g_logp), (st.entropy, g_ent)) if c is not None]
    sum(terms).backward()
    return st, (h.grad, w.grad, b.grad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("V", [7, 60, 600])  # V below top_k (the whole row sorted), above it, a wide row
@pytest.mark.parametrize("upstream", ["masked", "logp", "entropy"])
def test_single_pass_is_the_tiled_function(dtype, V, upstream, monkeypatch):
    """V <= vocab_chunk_size takes one pass per row chunk (its log p kept for the backward, or the logits recomputed
    above SAVE_LOGP_ELEMENTS): the same values and gradients as the tiled path and the float64 reference, with
    upstream gradients that vanish on some rows (those rows get an exactly zero gradient) or on a whole field."""
    g = torch.Generator().manual_seed(V)
    n, H = 23, 12  # three row chunks of 8, the last ragged
    hidden = torch.randn(n, H, generator=g, dtype=dtype)
    weight = torch.randn(V, H, generator=g, dtype=dtype) * (1.5 if V > 100 else 0.5)
    bias, ids = torch.randn(V, generator=g, dtype=dtype), torch.randint(0, V, (n,), generator=g)
    g_logp = torch.randn(n, generator=g, dtype=dtype) * (torch.rand(n, generator=g) < 0.7)
    g_ent = torch.randn(n, generator=g, dtype=dtype) * (torch.rand(n, generator=g) < 0.5)
    g_logp, g_ent = {"masked": (g_logp, g_ent), "logp": (g_logp, None), "entropy": (None, g_ent)}[upstream]
    args = (hidden, weight, bias, ids, g_logp, g_ent)
    tiled, tiled_grads = stats_and_grads(*args, vocab_chunk_size=V // 3 + 1)
    ref = reference(*leaves(hidden, weight, dtype=torch.float64), ids, 0.8, leaves(bias, dtype=torch.float64)[0],
                    top_p=0.8, top_k=10)
    check_values(tiled, ref, TOL[dtype])
    for save in (ts.SAVE_LOGP_ELEMENTS, 0):
        monkeypatch.setattr(ts, "SAVE_LOGP_ELEMENTS", save)
        single, grads = stats_and_grads(*args, vocab_chunk_size=V)
        for f in dataclasses.fields(TokenStats):
            a, b = getattr(single, f.name), getattr(tiled, f.name)
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, rtol=TOL[dtype], atol=TOL[dtype], msg=f.name)  # exact for the ints
        for got, want in zip(grads, tiled_grads):
            torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype] * want.abs().max().item())
        quiet = torch.stack([c == 0 for c in (g_logp, g_ent) if c is not None]).all(0)  # no upstream gradient
        assert quiet.any() and torch.all(grads[0][quiet] == 0) and torch.all(tiled_grads[0][quiet] == 0)


def test_single_pass_keeps_log_p_for_the_backward(monkeypatch):
    """Below SAVE_LOGP_ELEMENTS the backward reads the forward's log p (no logits recomputed) and leaves it intact for
    a second backward; above it, the backward recomputes the logits."""
    g = torch.Generator().manual_seed(5)
    hidden, weight = leaves(torch.randn(9, 6, generator=g), torch.randn(20, 6, generator=g), dtype=torch.float64)
    ids = torch.randint(0, 20, (9,), generator=g)
    calls = []
    real = ts._logits
    monkeypatch.setattr(ts, "_logits", lambda h, *a: calls.append(h.shape[0]) or real(h, *a))
    st = token_stats_flat(hidden, weight, ids)
    loss = st.logp.sum() + (st.entropy * torch.arange(9)).sum()
    loss.backward(retain_graph=True)
    first = hidden.grad.clone()
    loss.backward()
    assert calls == [9]  # the forward's one pass only
    torch.testing.assert_close(hidden.grad, 2 * first)
    monkeypatch.setattr(ts, "SAVE_LOGP_ELEMENTS", 9 * 20 - 1)
    token_stats_flat(hidden, weight, ids).logp.sum().backward()
    assert calls == [9, 9, 9]


@pytest.mark.parametrize("vchunk", [13, 64])  # tiled, single pass
@pytest.mark.parametrize("keep", [True, False])  # single pass: log p kept for the backward, or recomputed
def test_without_the_nucleus_the_same_log_probs_entropies_and_gradients(vchunk, keep, monkeypatch):
    """``nucleus=False`` computes no top-K, sort or merge: the four nucleus fields are None, and logp, entropy, lse
    and the gradients are those of the full pass (float64) to rounding, through the [B, T] scatter too."""
    if not keep:
        monkeypatch.setattr(ts, "SAVE_LOGP_ELEMENTS", 0)
    g = torch.Generator().manual_seed(11)
    n, H, V = 21, 6, 40
    hidden, weight = torch.randn(n, H, generator=g, dtype=torch.float64), torch.randn(V, H, generator=g,
                                                                                       dtype=torch.float64)
    bias, ids = torch.randn(V, generator=g, dtype=torch.float64), torch.randint(0, V, (n,), generator=g)
    g_logp, g_ent = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    full, full_grads = stats_and_grads(hidden, weight, bias, ids, g_logp, g_ent, vocab_chunk_size=vchunk)
    lean, lean_grads = stats_and_grads(hidden, weight, bias, ids, g_logp, g_ent, vocab_chunk_size=vchunk,
                                       nucleus=False)
    assert lean.topp_entropy is None and lean.topp_size is None and lean.topp_overflow is None
    assert lean.top2_gap is None
    for name in ("logp", "entropy", "lse"):
        torch.testing.assert_close(getattr(lean, name), getattr(full, name), rtol=1e-12, atol=1e-12, msg=name)
    for got, want in zip(lean_grads, full_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    mask = torch.rand(3, 7, generator=g) < 0.6
    st = token_stats(hidden.view(3, 7, H), weight, ids.view(3, 7), mask, nucleus=False, vocab_chunk_size=vchunk)
    assert st.topp_entropy is None and st.top2_gap is None
    torch.testing.assert_close(st.logp[mask], token_stats_flat(hidden, weight, ids, vocab_chunk_size=vchunk).logp[
        mask.view(-1)])


@pytest.mark.parametrize("c,k", [(99, 99), (1000, 256), (40, 8), (5, 1)])
def test_top_first_rearranges_rows_with_the_sorted_top_k_first(c, k):
    """The CPU's numpy selection and sort: z - max with torch.topk's sorted values first, ties too, the rest of the
    row after (the same values), and the input left alone."""
    g = torch.Generator().manual_seed(c)
    for z in (torch.randn(6, c, generator=g, dtype=torch.float64), torch.randint(0, 5, (6, c), generator=g).float()):
        before = z.clone()
        zc, m = ts._top_first(z, k, torch.empty_like(z))
        assert torch.equal(m, z.amax(1)) and torch.equal(z, before)
        assert torch.equal(zc[:, :k], torch.topk(z, k, dim=1).values - m[:, None])
        assert torch.equal(zc.sort(1).values, (z - m[:, None]).sort(1).values)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vchunk", [16, 64])  # tiled, single pass
def test_low_precision_inputs_accumulate_in_fp32(dtype, vchunk):
    g = torch.Generator().manual_seed(4)
    hidden, weight = leaves(torch.randn(9, 8, generator=g), torch.randn(30, 8, generator=g), dtype=dtype)
    ids = torch.randint(0, 30, (9,), generator=g)
    st = token_stats_flat(hidden, weight, ids, 0.7, top_k=8, chunk_size=4, vocab_chunk_size=vchunk)
    assert st.logp.dtype == torch.float32 and st.entropy.dtype == torch.float32
    r_h, r_w = leaves(hidden, weight, dtype=torch.float64)  # the same (rounded) inputs, exactly in float64
    ref = reference(r_h, r_w, ids, 0.7, top_k=8)
    check_values(st, ref, 1e-4)
    (st.logp.sum() + st.entropy.sum()).backward()
    (ref["logp"].sum() + ref["entropy"].sum()).backward()
    assert hidden.grad.dtype == dtype and weight.grad.dtype == dtype
    torch.testing.assert_close(hidden.grad.double(), r_h.grad, rtol=1e-2, atol=1e-2)  # the grads are rounded to dtype


def test_ragged_mask_scatter_gradients_and_empty_mask():
    g = torch.Generator().manual_seed(0)
    hidden, weight = leaves(torch.randn(3, 5, 6, generator=g), torch.randn(9, 6, generator=g), dtype=torch.float64)
    ids = torch.randint(0, 9, (3, 5), generator=g)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    st = token_stats(hidden, weight, ids, mask, 1.3, top_p=0.7, top_k=4, chunk_size=3, vocab_chunk_size=4)
    assert all(getattr(st, f.name).shape == (3, 5) for f in dataclasses.fields(st))
    r_h, r_w = leaves(hidden, weight, dtype=torch.float64)
    ref = reference(r_h.reshape(-1, 6), r_w, ids.reshape(-1), 1.3, top_p=0.7, top_k=4)
    sel = mask.reshape(-1).bool()
    check_values(TokenStats(**{f.name: getattr(st, f.name).reshape(-1)[sel] for f in dataclasses.fields(st)}),
                 {k: v[sel] for k, v in ref.items()}, 1e-6)
    assert torch.all(st.logp[mask == 0] == 0) and not st.topp_overflow[mask == 0].any()
    (st.logp.sum() + st.entropy.sum()).backward()
    ((ref["logp"] * sel).sum() + (ref["entropy"] * sel).sum()).backward()
    check_grads([(hidden, r_h), (weight, r_w)], 1e-6)
    empty = token_stats(hidden, weight, ids, torch.zeros_like(mask))
    assert torch.all(empty.logp == 0) and empty.logp.shape == (3, 5)
    empty.logp.sum().backward()  # no valid token: a zero gradient, no error


def test_entropy_bounds():
    weight = torch.zeros(10, 4, dtype=torch.float64)  # uniform logits: H = log V, gap 0, a nucleus of 9 for p = 0.85
    st = token_stats_flat(torch.randn(3, 4, dtype=torch.float64), weight, torch.zeros(3, dtype=torch.long), top_p=0.85)
    torch.testing.assert_close(st.entropy, torch.full((3,), math.log(10), dtype=torch.float64))
    torch.testing.assert_close(st.topp_entropy, torch.full((3,), math.log(9), dtype=torch.float64))
    assert torch.all(st.top2_gap == 0) and torch.all(st.topp_size == 9)


def test_token_stats_cat():
    a = token_stats_flat(torch.randn(2, 3), torch.randn(5, 3), torch.zeros(2, dtype=torch.long))
    b = token_stats_flat(torch.randn(4, 3), torch.randn(5, 3), torch.zeros(4, dtype=torch.long))
    c = TokenStats.cat([a, b])
    assert c.topp_size.shape == (6,) and torch.equal(c.lse[2:], b.lse)
    assert TokenStats.cat([TokenStats(a.logp, a.entropy), a]).lse is None


def test_policy_stats_with_a_4bit_lora_model(tmp_path, tiny_tok):
    """The one path through a bitsandbytes 4-bit base with a LoRA adapter: HF's own logits, gradients to LoRA."""
    pytest.importorskip("bitsandbytes")
    from entropy_rl.config import LoraConfig, ModelConfig
    from entropy_rl.model import build_tiny, load_policy
    from entropy_rl.policy import policy_stats
    from entropy_rl.rollout import HFRollout

    cfg = ModelConfig(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=64, lora=LoraConfig(r=4, alpha=8))
    build_tiny(cfg, tiny_tok, seed=0).save_pretrained(tmp_path)  # bitsandbytes' CPU kernels need wide layers
    policy = load_policy(tmp_path, dataclasses.replace(cfg, load_in_4bit=True))
    assert any("4bit" in type(m).__name__ for m in policy.modules())
    ro = HFRollout(policy, tiny_tok, max_new_tokens=5).generate(["1+2=", "34+5="], n=2, seed=0)
    st = policy_stats(policy, ro, 0.8)
    m, am = ro.response_mask.bool(), ro.attention_mask()
    with torch.no_grad():  # the model's own logits, with the same left-padding position ids
        logits = policy(input_ids=ro.input_ids(), attention_mask=am, position_ids=(am.cumsum(-1) - 1).clamp(min=0))
    want = torch.log_softmax(logits.logits.double()[:, ro.prompt_ids.shape[1] - 1 : -1] / 0.8, -1)
    want = want.gather(-1, ro.response_ids[..., None]).squeeze(-1)
    torch.testing.assert_close(st.logp[m].double(), want[m], rtol=1e-4, atol=1e-4)
    (-(st.logp.sum() + st.entropy.sum())).backward()
    grads = [p.grad for n, p in policy.named_parameters() if p.requires_grad]
    assert grads and any(gr is not None and gr.abs().sum() > 0 for gr in grads)


@pytest.mark.parametrize("kw", [dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0), dict(temperature=0.0),
                                dict(chunk_size=0)])
def test_invalid_settings_raise(kw):
    with pytest.raises(ValueError):
        token_stats_flat(torch.randn(2, 3), torch.randn(5, 3), torch.zeros(2, dtype=torch.long), **kw)
