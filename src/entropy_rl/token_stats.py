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
read-only statistics (masks, thresholds, diagnostics) and are returned without gradient. With ``nucleus=False`` the
four nucleus fields (``topp_*``, ``top2_gap``) are not computed (None): no top-K search, sort or merge, for callers
that read none of them (every objective but PAEC: ``Needs.nucleus``).

Memory: the rows are processed ``chunk_size`` at a time and each row's vocabulary ``vocab_chunk_size`` columns at a
time (a one-pass online log-sum-exp/entropy reduction and a merge of per-tile top-K lists join the tiles), so at
most two ``chunk_size x vocab_chunk_size`` buffers of logits exist, never ``[N, V]``. A vocabulary of at most
``vocab_chunk_size`` columns is one tile: those rows take a single pass (a plain log-softmax, no vocabulary loop,
online rescale or merge). The backward pass recomputes each tile's logits from the saved inputs and the per-row
``lse`` and ``entropy`` (below :data:`SAVE_LOGP_ELEMENTS`, the single pass keeps its log-probabilities instead), using

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


SAVE_LOGP_ELEMENTS = 2 ** 22
"""the single-pass path keeps its ``[N, V]`` log-probabilities for the backward, instead of recomputing the logits,
when ``N * V`` is at most this: 16 MiB in fp32 (32 MiB in fp64), an eighth of one default tile, e.g. 4,096 tokens of a
1,024-token vocabulary or 42,000 tokens of the tiny profile's 99 characters. Recomputing costs a matrix product that
is a sixth to a third of the whole forward + backward at such sizes; keeping a tensor that small costs nothing."""


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


def _logits(h: Tensor, weight: Tensor, bias_s: Tensor | None, v0: int, v1: int, buf: Tensor,
            inv_t: float) -> tuple[Tensor, Tensor]:
    """z = h W[v0:v1]^T / T + bias_s[v0:v1] into a reused buffer; ``bias_s`` is already divided by T (the 1/T of the
    product rides in the matrix multiply, so no scaled copy of ``h`` is made)."""
    w = weight[v0:v1].to(h.dtype)  # [vc, H] (a view when the dtypes agree)
    z = buf[: h.shape[0] * (v1 - v0)].view(h.shape[0], v1 - v0)  # [n, vc]
    if bias_s is None:  # beta = 0: the buffer's old contents are ignored
        return torch.addmm(z, h, w.t(), beta=0, alpha=inv_t, out=z), w
    return torch.addmm(bias_s[v0:v1], h, w.t(), alpha=inv_t, out=z), w


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


def _prefix_nucleus(E: Tensor, U: Tensor, mass_p: Tensor, vocab: int) -> tuple[Tensor, Tensor, Tensor]:
    """(topp_entropy, topp_size, topp_overflow) from the cumulative sums ``E`` of ``e = exp(z - c)`` and ``U`` of
    ``e (z - c)`` ``[n, K]`` over the top K of each row, sorted descending (any shift c per row), and ``mass_p [n, 1]``,
    top_p times the row's whole sum of ``e``.

    A token is in the nucleus when the tokens before it hold less than top_p of the mass (the one that crosses top_p
    is included), so the nucleus is a prefix, one longer than the number of cumulative sums below ``mass_p`` (a
    binary search per row), and its entropy is ``log E - U / E`` at its last token: no ``[n, K]`` masks, which cost
    several passes of arithmetic each on the CPU.
    """
    K = E.shape[1]
    below = torch.searchsorted(E.contiguous(), mass_p)  # [n, 1]; E may be a strided view
    last = below.clamp(max=K - 1)  # index of the last nucleus token
    E_l, U_l = E.gather(1, last).squeeze(1), U.gather(1, last).squeeze(1)
    return (E_l.log() - U_l / E_l).clamp(min=0), last.squeeze(1) + 1, (below.squeeze(1) >= K) & (K < vocab)


def _top2_gap(zs: Tensor) -> Tensor:
    """z1 - z2 from rows sorted descending (inf where a row holds one value, as for top_k = 1)."""
    if zs.shape[1] > 1:
        return zs[:, 0] - zs[:, 1]
    return torch.full(zs.shape[:1], math.inf, dtype=zs.dtype, device=zs.device)


def _nucleus(lp: Tensor, top_p: float, vocab: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(topp_entropy, topp_size, topp_overflow, top2_gap) from the top-K log-probabilities ``lp [n, K]`` sorted
    descending (overwritten): :func:`_prefix_nucleus` with c = lse, whose whole sum is 1."""
    gap = _top2_gap(lp)
    p = lp.exp()
    mass_p = torch.full((lp.shape[0], 1), top_p, dtype=lp.dtype, device=lp.device)
    U = lp.mul_(p).cumsum_(1)
    return (*_prefix_nucleus(p.cumsum_(1), U, mass_p, vocab), gap)


def _sorted_nucleus(cand: Tensor, k: int, lse: Tensor, top_p: float, vocab: int, k0: int = 16):
    """:func:`_nucleus` on the top-k of the candidate logits ``cand [n, >=k]``, sorting the top k0 first and the top k
    only for rows whose nucleus is not closed within k0 (most rows of a trained policy)."""
    k0 = min(k, k0)
    top_lp = lambda c, kk, l: torch.topk(c, kk, dim=1, sorted=True).values - l[:, None]  # noqa: E731
    out = _nucleus(top_lp(cand, k0, lse), top_p, vocab)
    redo = out[2].nonzero().squeeze(1) if k0 < k else None  # overflow at k0 < k <= V: the nucleus needs more
    if redo is not None and redo.numel():
        more = _nucleus(top_lp(cand[redo], k, lse[redo]), top_p, vocab)
        for o, m in zip(out, more):
            o[redo] = m
    return out


def _top_first(z: Tensor, k: int, out: Tensor) -> tuple[Tensor, Tensor]:
    """``(zc, m)``: the row maxima ``m`` of ``z [n, c]`` and ``zc = z - m`` in ``out``, each row rearranged so that its
    k largest come first, in descending order (the others after, in any order: row sums are unchanged).

    On the CPU through numpy's partition and sort of ``-z``, in place: SIMD sorting networks, 0.6 ms for 4,000 rows
    of 99 where ``torch.sort`` / ``torch.topk`` take 10-12 ms (torch 2.13, one thread, AVX-512), and 9 ms against
    40-70 ms for rows of 1,000. Elsewhere a full ``torch.sort``.
    """
    if z.device.type != "cpu":
        zs = torch.sort(z, dim=1, descending=True).values
        m = zs[:, :1]
        return torch.sub(zs, m, out=out), m.squeeze(1)
    a = torch.neg(z, out=out).numpy()  # ascending order of -z = descending order of z
    if k < a.shape[1]:
        a.partition(k - 1, axis=1)  # the k smallest of -z first, unsorted
    a[:, :k].sort(axis=1)
    neg_m = out[:, :1].clone()
    return torch.sub(neg_m, out, out=out), -neg_m.squeeze(1)


def _single_tile_stats(h: Tensor, weight: Tensor, bias_s: Tensor | None, inv_t: float, y: Tensor, k: int,
                       top_p: float, zbuf: Tensor, sbuf: Tensor, keep_logp: bool,
                       nucleus: bool = True) -> tuple[Tensor | None, ...]:
    """The seven statistics of rows whose whole vocabulary is one tile (V <= vocab_chunk_size), in one pass with no
    vocabulary loop, online rescale or merge of top-K lists: the row is sorted first (:func:`_top_first`, into
    ``sbuf``) and the sums, the entropy and the nucleus are all read off the cumulative sums of the sorted
    ``exp(z - m)`` and ``exp(z - m) (z - m)`` (the fewest passes over the ``[n, V]`` logits: at small V the pass is
    bound by memory traffic, not arithmetic).

    ``zbuf`` takes the logits; with ``keep_logp`` it holds log p afterwards (for the backward), else it is reused.
    Without ``nucleus`` the row is not sorted and the four nucleus fields are None."""
    V = weight.shape[0]
    z, _ = _logits(h, weight, bias_s, 0, V, zbuf, inv_t)  # [n, V]
    z_y = z.gather(1, y[:, None]).squeeze(1)
    if not nucleus:
        m = z.amax(1)
        zc = torch.sub(z, m[:, None], out=sbuf[: z.numel()].view_as(z))
        e = torch.exp(zc, out=torch.empty_like(z) if keep_logp else z)
        s, u = e.sum(1), zc.mul_(e).sum(1)
        log_s = s.log()
        lse = m + log_s
        if keep_logp:
            z.sub_(lse[:, None])
        return (z_y - lse, log_s - u / s, lse, None, None, None, None)
    zc, m = _top_first(z, k, sbuf[: z.numel()].view_as(z))  # z - m, the top k first
    gap = _top2_gap(zc[:, :k])
    e = torch.exp(zc, out=torch.empty_like(z) if keep_logp else z)
    ez = zc.mul_(e)
    E, U = e[:, :k].cumsum_(1), ez[:, :k].cumsum_(1)  # over the top k, in place
    s, u = E[:, -1] + e[:, k:].sum(1), U[:, -1] + ez[:, k:].sum(1)  # whole rows: the top k's totals and the rest
    log_s = s.log()
    lse = m + log_s
    ent = log_s - u / s  # log s - sum e (z - m) / s, as in the tiled reduction
    nuc = _prefix_nucleus(E, U, top_p * s[:, None], V)
    if keep_logp:
        z.sub_(lse[:, None])
    return (z_y - lse, ent, lse, *nuc, gap)


def _tiled_stats(h: Tensor, weight: Tensor, bias_s: Tensor | None, inv_t: float, y: Tensor, k: int, top_p: float,
                 vocab_chunk_size: int, zbuf: Tensor, ebuf: Tensor, nucleus: bool = True) -> tuple[Tensor | None, ...]:
    """The seven statistics of rows over a vocabulary of several tiles: an online log-sum-exp/entropy reduction and a
    merge of the per-tile top-K lists (module docstring); without ``nucleus`` no top-K lists and four Nones."""
    V, n = weight.shape[0], h.shape[0]
    z_y = torch.zeros(n, dtype=h.dtype, device=h.device)
    m = s = u = None  # running max, sum exp(z - m), sum exp(z - m) (z - m), per row
    cands = []
    for v0, v1 in _tiles(V, vocab_chunk_size):
        z, _ = _logits(h, weight, bias_s, v0, v1, zbuf, inv_t)  # [n, vc]
        if nucleus:
            top = _topk_values(z, k)  # [n, <=K]
            cands.append(top)
            m_t = top.amax(1)
        else:
            m_t = z.amax(1)
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
    lse = m + log_s
    nuc = _sorted_nucleus(torch.cat(cands, 1), k, lse, top_p, V) if nucleus else (None,) * 4
    return (z_y - lse, log_s - u / s, lse, *nuc)


def _dlogits(lq: Tensor, y: Tensor, gl: Tensor, a: Tensor, c: Tensor, with_ent: bool, with_logp: bool,
             zbuf: Tensor, pbuf: Tensor) -> Tensor:
    """``dz = p (a log p + c) + gl onehot(y)`` into ``zbuf`` (which may hold ``lq`` itself) from ``lq [n, vc]``, the log p
    of one vocabulary tile; ``y`` are the sampled ids relative to the tile (outside it: not in ``[0, vc)``)."""
    z = zbuf[: lq.numel()].view_as(lq)
    if with_ent:
        p = torch.exp(lq, out=pbuf[: lq.numel()].view_as(lq))
        torch.mul(lq, a[:, None], out=z).add_(c[:, None]).mul_(p)
    else:
        torch.exp(lq, out=z).mul_(c[:, None])
    if with_logp:
        inside = ((y >= 0) & (y < z.shape[1])).nonzero().squeeze(1)
        z.index_put_((inside, y[inside]), gl[inside], accumulate=True)
    return z


def _saved_logp(logq: Tensor, idx: slice | Tensor, buf: Tensor) -> Tensor:
    """The forward's log p of the rows ``idx``: a view for a slice, else gathered into ``buf``. The saved tensor is
    never written, so a second backward (``retain_graph``) still finds it intact."""
    if isinstance(idx, slice):
        return logq[idx]
    return torch.index_select(logq, 0, idx, out=buf[: idx.numel() * logq.shape[1]].view(-1, logq.shape[1]))


class FusedTokenStats(torch.autograd.Function):
    """``(logp, entropy, lse, topp_entropy, topp_size, topp_overflow, top2_gap)``, each ``[N]``; see the module
    docstring; the last four are None without ``nucleus``. Arguments: ``hidden, weight, bias, ids, temperature, top_p,
    top_k, chunk_size, vocab_chunk_size, nucleus``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, temperature, top_p, top_k, chunk_size, vocab_chunk_size, nucleus=True):
        N, V = hidden.shape[0], weight.shape[0]
        dt = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32
        k = min(top_k, V)
        inv_t = 1.0 / temperature
        bias_s = None if bias is None else bias.to(dt) * inv_t
        new = dict(dtype=dt, device=hidden.device)
        single = V <= vocab_chunk_size
        keep = single and any(ctx.needs_input_grad[:3]) and N * V <= SAVE_LOGP_ELEMENTS
        logq = torch.empty(N, V, **new) if keep else None  # log p for the backward, written in place by the pass
        buf_len = min(chunk_size, N) * min(vocab_chunk_size, V)
        zbuf = None if keep else torch.empty(buf_len, **new)
        ebuf = torch.empty(buf_len, **new)
        parts = []
        for r0, r1 in _tiles(N, chunk_size) or [(0, 0)]:  # no rows: one empty chunk gives the empty outputs
            h, y = hidden[r0:r1].to(dt), ids[r0:r1]  # [n, H], [n]
            if single:
                parts.append(_single_tile_stats(h, weight, bias_s, inv_t, y, k, top_p,
                                                zbuf if logq is None else logq[r0:r1].view(-1), ebuf, keep, nucleus))
            else:
                parts.append(_tiled_stats(h, weight, bias_s, inv_t, y, k, top_p, vocab_chunk_size, zbuf, ebuf,
                                          nucleus))
        out = parts[0] if len(parts) == 1 else [None if c[0] is None else torch.cat(c) for c in zip(*parts)]
        logp, ent, lse, topp_ent, topp_size, overflow, gap = out
        ctx.mark_non_differentiable(*(t for t in (lse, topp_ent, topp_size, overflow, gap) if t is not None))
        ctx.set_materialize_grads(False)
        if any(ctx.needs_input_grad[:3]):
            ctx.save_for_backward(hidden, weight, bias, ids, lse, ent, logq)
            ctx.conf = (temperature, chunk_size, vocab_chunk_size)
        return logp, ent, lse, topp_ent, topp_size, overflow, gap

    @staticmethod
    @once_differentiable
    def backward(ctx, g_logp, g_ent, *_):
        hidden, weight, bias, ids, lse, ent, logq = ctx.saved_tensors
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
        dh = (torch.empty if rows is None else torch.zeros)(N, H, **new) if need_h else None  # skipped rows: 0
        dw = torch.zeros(V, H, **new) if need_w else None
        db = torch.zeros(V, **new) if need_b else None
        buf_len = min(chunk_size, n_rows) * min(vocab_chunk_size, V)
        zbuf, pbuf = torch.empty(buf_len, **new), torch.empty(buf_len, **new)
        for c0, c1 in _tiles(n_rows, chunk_size):
            idx = slice(c0, c1) if rows is None else rows[c0:c1]
            n = c1 - c0
            h = hidden[idx].to(dt) if logq is None or need_w else None  # [n, H]
            y, gl, ge = ids[idx], g_logp[idx], g_ent[idx]
            with_ent, with_logp = bool((ge != 0).any()), bool((gl != 0).any())
            # dz = gl (onehot(y) - p) - ge p (log p + H) = p * (a log p + c) + gl onehot(y)
            a, c = -ge, -(ge * ent[idx] + gl)
            dh_c = (dh[idx] if rows is None else torch.empty(n, H, **new)) if need_h else None
            for v0, v1 in _tiles(V, vocab_chunk_size):
                if logq is None:  # recompute the tile's log p
                    lq, w = _logits(h, weight, bias_s, v0, v1, zbuf, inv_t)  # [n, vc]
                    lq.sub_(lse[idx][:, None])
                else:  # the single pass's (V <= vocab_chunk_size: one tile)
                    lq, w = _saved_logp(logq, idx, zbuf), weight.to(dt)
                z = _dlogits(lq, y - v0, gl, a, c, with_ent, with_logp, zbuf, pbuf)
                if need_h:
                    dh_c.addmm_(z, w, beta=float(v0 > 0), alpha=inv_t)  # the first tile overwrites: no zero fill
                if need_w:
                    dw[v0:v1].addmm_(z.t(), h, alpha=inv_t)
                if need_b:
                    db[v0:v1] += z.sum(0)
            if need_h and rows is not None:
                dh[idx] = dh_c
        cast = lambda g, like: None if g is None else g.to(like.dtype)  # noqa: E731
        return (cast(dh, hidden), cast(dw, weight), None if db is None else cast(db * inv_t, bias),
                None, None, None, None, None, None, None)


def token_stats_flat(
    hidden: Tensor, weight: Tensor, ids: Tensor, temperature: float = 1.0, bias: Tensor | None = None, *,
    top_p: float = DEFAULT_TOP_P, top_k: int = DEFAULT_TOP_K, chunk_size: int | None = None,
    vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE, nucleus: bool = True,
) -> TokenStats:
    """All statistics ``[N]`` from ``hidden [N, H]``, ``weight [V, H]`` (``bias [V]``) and ``ids [N]``, in fp32
    (fp64 for fp64 inputs), through :class:`FusedTokenStats`. ``chunk_size`` (tokens per chunk) defaults to
    :func:`auto_chunk_size`; ``nucleus=False`` leaves ``topp_*`` and ``top2_gap`` None (not computed)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1] or ids.shape != hidden.shape[:1]:
        raise ValueError(f"shapes: hidden {tuple(hidden.shape)} weight {tuple(weight.shape)} ids {tuple(ids.shape)}")
    if chunk_size is None:
        chunk_size = auto_chunk_size(weight.shape[0], vocab_chunk_size)
    if not temperature > 0 or not 0 < top_p <= 1 or top_k < 1 or chunk_size < 1 or vocab_chunk_size < 1:
        raise ValueError(f"need temperature > 0, 0 < top_p <= 1, top_k, chunk_size, vocab_chunk_size >= 1; got "
                         f"{temperature}, {top_p}, {top_k}, {chunk_size}, {vocab_chunk_size}")
    out = FusedTokenStats.apply(hidden, weight, bias, ids.long(), float(temperature), float(top_p), int(top_k),
                                int(chunk_size), int(vocab_chunk_size), bool(nucleus))
    logp, ent, lse, topp_ent, topp_size, overflow, gap = out
    return TokenStats(logp=logp, entropy=ent, topp_entropy=topp_ent, topp_size=topp_size, topp_overflow=overflow,
                      top2_gap=gap, lse=lse)


def token_stats(
    hidden: Tensor, weight: Tensor, ids: Tensor, mask: Tensor, temperature: float = 1.0,
    bias: Tensor | None = None, *, top_p: float = DEFAULT_TOP_P, top_k: int = DEFAULT_TOP_K,
    chunk_size: int | None = None, vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE, nucleus: bool = True,
) -> TokenStats:
    """Statistics at the valid positions of ``mask [B, T]``; ``hidden [B, T, H]`` predicts ``ids [B, T]``. Only
    the valid positions enter the fused pass (:func:`token_stats_flat`, same keyword arguments); the results are
    scattered back to ``[B, T]`` (0 / False elsewhere; a field not computed stays None)."""
    sel = mask.bool()
    flat = token_stats_flat(hidden[sel], weight, ids[sel], temperature, bias, top_p=top_p, top_k=top_k,
                            chunk_size=chunk_size, vocab_chunk_size=vocab_chunk_size, nucleus=nucleus)
    out = {}
    for f in fields(TokenStats):
        v = getattr(flat, f.name)
        if v is None:
            out[f.name] = None
            continue
        full = torch.zeros(mask.shape, dtype=v.dtype, device=v.device)
        out[f.name] = full.masked_scatter(sel, v)
    return TokenStats(**out)
