"""Per-token statistics of the policy from its final hidden states and LM head: one fused, chunked pass.

Shapes: ``hidden [N, H]`` (the valid response positions only, flattened), ``weight [V, H]``, ``bias [V]`` or
None, ``ids [N]``. The logits at the sampling temperature are ``z = (h W^T + b) / T`` (docs/methods.md §0), computed in
fp32 (fp64 for fp64 inputs) from bf16/fp16/fp32 operands, and give per token

* ``logp``          log pi(y | prefix) = z_y - lse(z) of the sampled token                      (differentiable)
* ``entropy``       full-vocabulary entropy H = lse(z) - sum_v softmax(z)_v z_v                  (differentiable)
* ``lse``           log-sum-exp of z
* ``topp_entropy``  entropy of the renormalized nucleus V_p: the fewest top tokens with mass >= top_p, searched
                    among the top ``top_k`` only (docs/methods.md §3(a)1, §7 S3)
* ``topp_size``     |V_p| (at most ``top_k``), for PAEC's normalized form H_p / log |V_p|
* ``topp_overflow`` True where the top ``top_k`` tokens hold less than ``top_p`` of the mass (the nucleus is larger
                    than K; ``topp_entropy`` and ``topp_size`` are then those of the top K, renormalized)
* ``top2_gap``      log pi(v1) - log pi(v2) >= 0 of the two most likely tokens (0 on a tie; docs/methods.md §7 S4)

Only ``logp`` and ``entropy`` carry gradients (to the hidden states, the weight and the bias); the other fields are
read-only statistics (masks, thresholds, diagnostics) and are returned without gradient.

Memory: the rows are processed ``chunk_size`` at a time and each row's vocabulary ``vocab_chunk_size`` columns at a
time (a one-pass online log-sum-exp/entropy reduction and a merge of per-tile top-K lists join the tiles), so at
most two ``chunk_size x vocab_chunk_size`` buffers of logits exist, never ``[N, V]``. The backward pass recomputes
each tile's logits from the saved inputs and the per-row ``lse`` and ``entropy``, using

    d logp / dz = onehot(y) - p,          dH / dz = -p * (log p + H),          dz / d(hW^T + b) = 1 / T.

Entropy gradient at selected positions only (PAEC's floor penalty, a masked entropy bonus): use
``(stats.entropy * m).sum()`` (or any loss whose gradient w.r.t. ``entropy`` is zero outside the selected positions).
The entropy term joins the log-prob term in the same backward recompute, so there is no second pass over the
logits; rows where both upstream gradients are zero are skipped entirely, and chunks whose rows have a zero entropy
gradient skip the entropy-specific work. See docs/token_stats.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

DEFAULT_TOP_P = 0.9
"""nucleus mass for ``topp_entropy`` (PAEC's p is not reported; 0.9 is our choice, docs/methods.md §3(b))"""
DEFAULT_TOP_K = 256
"""cap on the nucleus size (docs/methods.md §3(f)2)"""
DEFAULT_VOCAB_CHUNK_SIZE = 32768
"""vocabulary columns per tile"""
TILE_ELEMENTS = 1024 * 32768
"""logits per tile when ``chunk_size`` is not given: 1,024 tokens x 32,768 columns (128 MiB in fp32; two tiles exist
at a time) for a large vocabulary, and all tokens at once for a tiny one (fewer, larger ops)"""


def auto_chunk_size(vocab: int, vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE) -> int:
    """Tokens per chunk such that a tile holds about :data:`TILE_ELEMENTS` logits."""
    return max(1, TILE_ELEMENTS // min(vocab, vocab_chunk_size))


@dataclass
class TokenStats:
    """Per-token statistics, ``[B, T]`` from :func:`token_stats` (0 / False at masked positions), ``[N]`` from
    :func:`token_stats_flat`. The optional fields are None only where a caller builds the object by hand."""

    logp: Tensor
    """log-probability of the sampled token (differentiable)"""
    entropy: Tensor
    """full-vocabulary entropy (differentiable)"""
    topp_entropy: Tensor | None = None
    """entropy of the renormalized top-p nucleus, capped at top_k tokens (no gradient)"""
    topp_size: Tensor | None = None
    """number of tokens in the nucleus, at most top_k (int64)"""
    topp_overflow: Tensor | None = None
    """True where the nucleus would need more than top_k tokens (bool)"""
    top2_gap: Tensor | None = None
    """log p(top-1) - log p(top-2) >= 0 (no gradient)"""
    lse: Tensor | None = None
    """log-sum-exp of the temperature-scaled logits (no gradient)"""

    @classmethod
    def cat(cls, parts: list[TokenStats], dim: int = 0) -> TokenStats:
        """Concatenate along ``dim`` (a field that is None in any part is None in the result)."""
        out = {}
        for f in fields(cls):
            vals = [getattr(p, f.name) for p in parts]
            out[f.name] = None if any(v is None for v in vals) else torch.cat(vals, dim)
        return cls(**out)


def _tiles(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _logits(h_s: Tensor, weight: Tensor, bias_s: Tensor | None, v0: int, v1: int, buf: Tensor) -> tuple[Tensor, Tensor]:
    """z = h_s W[v0:v1]^T + bias_s[v0:v1] into a reused buffer; h_s and bias_s are already divided by T."""
    w = weight[v0:v1].to(h_s.dtype)  # [vc, H] (a view when the dtypes agree)
    z = buf[: h_s.shape[0] * (v1 - v0)].view(h_s.shape[0], v1 - v0)  # [n, vc]
    if bias_s is None:
        torch.mm(h_s, w.t(), out=z)
    else:
        torch.addmm(bias_s[v0:v1], h_s, w.t(), out=z)
    return z, w


TOPK_GROUP = 8
"""columns per group in :func:`_topk_values` (fastest of 4, 8, 16, 32, 64 on the 2-core CPU, ~2x a plain topk)"""


def _topk_values(z: Tensor, k: int) -> Tensor:
    """The k largest values of each row of ``z [n, c]`` (unsorted), exactly, with a cheaper search for wide rows.

    Split the first ``G * L`` columns into G strided slices and take the elementwise max over them: ``L`` group
    maxima per row. Every value above the k-th largest group maximum lies in one of the top-k groups, and those
    k groups hold k values at least that large, so the top-k values of the row are the top-k of the top-k groups'
    members (plus the < G leftover columns), ties included. This replaces one top-k over c by one over c / G.
    """
    n, c = z.shape
    if k >= c:
        return z.clone()
    L = c // TOPK_GROUP
    if L < 4 * k:
        return torch.topk(z, min(k, c), dim=1, sorted=False).values
    body = z[:, : TOPK_GROUP * L].view(n, TOPK_GROUP, L)  # group j = columns j, j + L, j + 2L, ...
    groups = torch.topk(body.amax(1), k, dim=1, sorted=False).indices  # [n, k]
    cand = body.gather(2, groups[:, None, :].expand(n, TOPK_GROUP, k)).view(n, TOPK_GROUP * k)
    cand = torch.cat([cand, z[:, TOPK_GROUP * L :]], 1)  # the leftover columns are candidates too
    return torch.topk(cand, k, dim=1, sorted=False).values


def _nucleus(vals: Tensor, lse: Tensor, top_p: float, vocab: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(topp_entropy, topp_size, topp_overflow, top2_gap) from the top-K logits ``vals [n, K]`` sorted descending."""
    lp = vals - lse[:, None]  # log p of the top K
    p = lp.exp()
    c = p.cumsum(1)
    keep = (c - p) < top_p  # the token that crosses top_p is included
    overflow = (c[:, -1] < top_p) & (vals.shape[1] < vocab)
    lq = lp - torch.log(torch.where(keep, p, 0).sum(1))[:, None]  # log of the renormalized nucleus probabilities
    h_p = (-torch.where(keep, lq.exp() * lq, 0).sum(1)).clamp(min=0)
    gap = vals[:, 0] - vals[:, 1] if vals.shape[1] > 1 else torch.full_like(lse, math.inf)
    return h_p, keep.sum(1), overflow, gap


def _sorted_nucleus(cand: Tensor, k: int, lse: Tensor, top_p: float, vocab: int, k0: int = 16):
    """:func:`_nucleus` on the top-k of the candidates ``cand [n, >=k]``, sorting the top k0 first and the top k
    only for rows whose nucleus is not closed within k0 (most rows of a trained policy)."""
    k0 = min(k, k0)
    out = _nucleus(torch.topk(cand, k0, dim=1, sorted=True).values, lse, top_p, vocab)
    redo = out[2].nonzero().squeeze(1) if k0 < k else None  # overflow at k0 < k <= V: the nucleus needs more
    if redo is not None and redo.numel():
        more = _nucleus(torch.topk(cand[redo], k, dim=1, sorted=True).values, lse[redo], top_p, vocab)
        for o, m in zip(out, more):
            o[redo] = m
    return out


class FusedTokenStats(torch.autograd.Function):
    """``(logp, entropy, lse, topp_entropy, topp_size, topp_overflow, top2_gap)``, each ``[N]``; see the module
    docstring. Arguments: ``hidden, weight, bias, ids, temperature, top_p, top_k, chunk_size, vocab_chunk_size``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, temperature, top_p, top_k, chunk_size, vocab_chunk_size):
        N, V = hidden.shape[0], weight.shape[0]
        dt = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32
        k = min(top_k, V)
        inv_t = 1.0 / temperature
        bias_s = None if bias is None else bias.to(dt) * inv_t
        new = dict(dtype=dt, device=hidden.device)
        logp, ent, lse, topp_ent, gap = (torch.empty(N, **new) for _ in range(5))
        topp_size = torch.empty(N, dtype=torch.long, device=hidden.device)
        overflow = torch.empty(N, dtype=torch.bool, device=hidden.device)
        buf_len = min(chunk_size, N) * min(vocab_chunk_size, V)
        zbuf, ebuf = torch.empty(buf_len, **new), torch.empty(buf_len, **new)
        for r0, r1 in _tiles(N, chunk_size):
            h_s = hidden[r0:r1].to(dt) * inv_t  # [n, H]
            y = ids[r0:r1]
            n = r1 - r0
            z_y = torch.zeros(n, **new)
            m = s = u = None  # running max, sum exp(z - m), sum exp(z - m) (z - m), per row
            cands = []
            for v0, v1 in _tiles(V, vocab_chunk_size):
                z, _ = _logits(h_s, weight, bias_s, v0, v1, zbuf)  # [n, vc]
                top = _topk_values(z, k)  # [n, <=K]
                cands.append(top)
                m_t = top.amax(1)
                inside = (y >= v0) & (y < v1)
                z_y = torch.where(inside, z.gather(1, (y - v0).clamp(0, v1 - v0 - 1)[:, None]).squeeze(1), z_y)
                z.sub_(m_t[:, None])
                e = torch.exp(z, out=ebuf[: z.numel()].view_as(z))
                s_t = e.sum(1)
                u_t = z.mul_(e).sum(1)  # sum e (z - m_t); z is not needed after this
                if m is None:
                    m, s, u = m_t, s_t, u_t
                else:  # rescale both partial sums to the new running max
                    m_new = torch.maximum(m, m_t)
                    a, b = torch.exp(m - m_new), torch.exp(m_t - m_new)
                    u = a * (u + (m - m_new) * s) + b * (u_t + (m_t - m_new) * s_t)
                    s = a * s + b * s_t
                    m = m_new
            log_s = torch.log(s)
            lse[r0:r1] = m + log_s
            ent[r0:r1] = log_s - u / s
            logp[r0:r1] = z_y - lse[r0:r1]
            nuc = _sorted_nucleus(torch.cat(cands, 1), k, lse[r0:r1], top_p, V)
            topp_ent[r0:r1], topp_size[r0:r1], overflow[r0:r1], gap[r0:r1] = nuc
        ctx.mark_non_differentiable(lse, topp_ent, topp_size, overflow, gap)
        ctx.set_materialize_grads(False)
        if any(ctx.needs_input_grad[:3]):
            ctx.save_for_backward(hidden, weight, bias, ids, lse, ent)
            ctx.conf = (temperature, chunk_size, vocab_chunk_size)
        return logp, ent, lse, topp_ent, topp_size, overflow, gap

    @staticmethod
    @once_differentiable
    def backward(ctx, g_logp, g_ent, *_):
        hidden, weight, bias, ids, lse, ent = ctx.saved_tensors
        temperature, chunk_size, vocab_chunk_size = ctx.conf
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        N, H, V, dt = hidden.shape[0], hidden.shape[1], weight.shape[0], lse.dtype
        inv_t = 1.0 / temperature
        g_logp = torch.zeros(N, dtype=dt, device=lse.device) if g_logp is None else g_logp.to(dt)
        g_ent = torch.zeros(N, dtype=dt, device=lse.device) if g_ent is None else g_ent.to(dt)
        active = (g_logp != 0) | (g_ent != 0)  # rows with no upstream gradient are skipped
        rows = None if bool(active.all()) else active.nonzero().squeeze(1)  # None: all rows, as slices
        n_rows = N if rows is None else rows.numel()
        bias_s = None if bias is None else bias.to(dt) * inv_t
        new = dict(dtype=dt, device=lse.device)
        dh = torch.zeros(N, H, **new) if need_h else None
        dw = torch.zeros(V, H, **new) if need_w else None
        db = torch.zeros(V, **new) if need_b else None
        buf_len = min(chunk_size, n_rows) * min(vocab_chunk_size, V)
        zbuf, pbuf = torch.empty(buf_len, **new), torch.empty(buf_len, **new)
        for c0, c1 in _tiles(n_rows, chunk_size):
            idx = slice(c0, c1) if rows is None else rows[c0:c1]
            n = c1 - c0
            h_s = hidden[idx].to(dt) * inv_t  # [n, H]
            y, gl, ge = ids[idx], g_logp[idx], g_ent[idx]
            with_ent, with_logp = bool((ge != 0).any()), bool((gl != 0).any())
            # dz = gl (onehot(y) - p) - ge p (log p + H) = p * (a log p + c) + gl onehot(y)
            a, c, lse_c = -ge, -(ge * ent[idx] + gl), lse[idx][:, None]
            dh_c = torch.zeros(n, H, **new) if need_h else None
            for v0, v1 in _tiles(V, vocab_chunk_size):
                z, w = _logits(h_s, weight, bias_s, v0, v1, zbuf)  # [n, vc]
                z.sub_(lse_c)  # log p
                if with_ent:
                    p = torch.exp(z, out=pbuf[: z.numel()].view_as(z))
                    z.mul_(a[:, None]).add_(c[:, None]).mul_(p)
                else:
                    z.exp_().mul_(c[:, None])
                if with_logp:
                    inside = ((y >= v0) & (y < v1)).nonzero().squeeze(1)
                    z.index_put_((inside, y[inside] - v0), gl[inside], accumulate=True)
                if need_h:
                    dh_c.addmm_(z, w)
                if need_w:
                    dw[v0:v1].addmm_(z.t(), h_s)
                if need_b:
                    db[v0:v1] += z.sum(0)
            if need_h:
                dh[idx] = dh_c * inv_t
        cast = lambda g, like: None if g is None else g.to(like.dtype)  # noqa: E731
        return (cast(dh, hidden), cast(dw, weight), None if db is None else cast(db * inv_t, bias),
                None, None, None, None, None, None)


def token_stats_flat(
    hidden: Tensor, weight: Tensor, ids: Tensor, temperature: float = 1.0, bias: Tensor | None = None, *,
    top_p: float = DEFAULT_TOP_P, top_k: int = DEFAULT_TOP_K, chunk_size: int | None = None,
    vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE,
) -> TokenStats:
    """All statistics ``[N]`` from ``hidden [N, H]``, ``weight [V, H]`` (``bias [V]``) and ``ids [N]``, in fp32
    (fp64 for fp64 inputs), through :class:`FusedTokenStats`. ``chunk_size`` (tokens per chunk) defaults to
    :func:`auto_chunk_size`."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1] or ids.shape != hidden.shape[:1]:
        raise ValueError(f"shapes: hidden {tuple(hidden.shape)} weight {tuple(weight.shape)} ids {tuple(ids.shape)}")
    if chunk_size is None:
        chunk_size = auto_chunk_size(weight.shape[0], vocab_chunk_size)
    if not temperature > 0 or not 0 < top_p <= 1 or top_k < 1 or chunk_size < 1 or vocab_chunk_size < 1:
        raise ValueError(f"need temperature > 0, 0 < top_p <= 1, top_k, chunk_size, vocab_chunk_size >= 1; got "
                         f"{temperature}, {top_p}, {top_k}, {chunk_size}, {vocab_chunk_size}")
    out = FusedTokenStats.apply(hidden, weight, bias, ids.long(), float(temperature), float(top_p), int(top_k),
                                int(chunk_size), int(vocab_chunk_size))
    logp, ent, lse, topp_ent, topp_size, overflow, gap = out
    return TokenStats(logp=logp, entropy=ent, topp_entropy=topp_ent, topp_size=topp_size, topp_overflow=overflow,
                      top2_gap=gap, lse=lse)


def token_stats(
    hidden: Tensor, weight: Tensor, ids: Tensor, mask: Tensor, temperature: float = 1.0,
    bias: Tensor | None = None, *, top_p: float = DEFAULT_TOP_P, top_k: int = DEFAULT_TOP_K,
    chunk_size: int | None = None, vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE,
) -> TokenStats:
    """Statistics at the valid positions of ``mask [B, T]``; ``hidden [B, T, H]`` predicts ``ids [B, T]``. Only
    the valid positions enter the fused pass (:func:`token_stats_flat`, same keyword arguments); the results are
    scattered back to ``[B, T]`` (0 / False elsewhere)."""
    sel = mask.bool()
    flat = token_stats_flat(hidden[sel], weight, ids[sel], temperature, bias, top_p=top_p, top_k=top_k,
                            chunk_size=chunk_size, vocab_chunk_size=vocab_chunk_size)
    out = {}
    for f in fields(TokenStats):
        v = getattr(flat, f.name)
        full = torch.zeros(mask.shape, dtype=v.dtype, device=v.device)
        out[f.name] = full.masked_scatter(sel, v)
    return TokenStats(**out)
