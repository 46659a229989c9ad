"""ERPO: token-level entropy-regulated advantages (docs/methods.md §1, §7 S6-S7, §9). The paper's method section was not
available: every equation is [S] (a notes file and a third-party re-implementation) or [I], behind an option.

    z_G(x)   = (x - mean_G x) / (std_G x + eps)           over the valid tokens of one prompt group (Bessel std)
    W        = sigmoid(gamma * z_G(H))                     entropy-aware gate
    s        = beta_p (log pi - log pi_ref)                implicit progress (or against pi_old)
    s~       = z_{G,b}(s)                                  bucket normalization, b = min(floor(K t / |o|), K - 1)
                                                           (or b = min(floor(K c_t), K - 1), c_t the cumulative
                                                           entropy share: `progress_coord`)
    A_ERPO   = |o_i| W / sum_u W * A_i + eta * W sgn(A_i) s~
               (a zero-variance group: eta * W sgn_g s~ with `zero_variance: process`, sgn_g = +1 if R_g > 0 else -1)

``A_ERPO`` (detached) replaces the group advantage in the GRPO clipped surrogate. Shapes: every tensor ``[B, T]``;
``group_ids`` ``[B]``. Fidelity card: docs/objectives/erpo.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import GE0, GT0, ConfigError, at_least, choice
from ..token_stats import TokenStats
from .common import masked_mean, upcast
from .grpo import GRPOConfig, clipped_pg_loss
from .registry import Claim, Needs, Panel, RLBatch, register_claim_figure, register_objective

PROGRESS_NORMS = ("buckets", "group", "none")
PROGRESS_COORDS = ("position", "cumulative_entropy")
ZERO_VARIANCE = ("drop", "process")


@dataclass(frozen=True)
class ERPOConfig(GRPOConfig):
    gamma: float = 5.0
    """gate sharpness: W = sigmoid(gamma * z_G(H)) (re-implementation default 5.0)"""
    n_buckets: int = 10
    """K relative-position buckets of the progress normalization (re-implementation: 10)"""
    eta: float = 0.2
    """weight of the additive result-anchored synthesis term (re-implementation: 0.2)"""
    beta_p: float = 0.1
    """scale of the implicit progress signal s = beta_p (log pi - log pi_base) (re-implementation: 0.1)"""
    gate: bool = True
    """entropy-aware gate; false = W = 1 everywhere (the gate ablation)"""
    gate_on_advantage: bool = True
    """W redistributes the group advantage within each response, its per-response sum preserved (docs/methods.md §1(a)6)"""
    gate_on_progress: bool = True
    """W multiplies the synthesis term (the notes' formula Psi = W sgn(A) s~; the re-implementation's code omits it)"""
    synthesis: bool = True
    """add eta * Psi; false = no progress term at all (the synthesis ablation)"""
    progress_norm: str = "buckets"
    """z-score of s within (group, position bucket) `buckets`, within the whole group `group` (the bucket ablation),
    or `none` (raw s)"""
    progress_ref: str = "ref"
    """s against the reference policy (the frozen base) `ref`, or against the rollout policy `old`"""
    stats_from: str = "rollout"
    """H and log pi from the rollout pass over whole groups `rollout`, or from this update's forward pass (groups
    pooled over the rows present in the batch) `current`"""
    progress_coord: str = "position"
    """the coordinate of the progress buckets: relative position `position` (b = min(floor(K t / |o|), K - 1)), or
    the cumulative entropy share `cumulative_entropy` (b = min(floor(K c_t), K - 1), c_t = sum_{u<=t} H_u / sum_u H_u,
    the H of the gate; a response whose entropies sum to 0 falls back to position). Only with progress_norm
    `buckets` [S] EP-GRPO, arXiv 2605.04960 (abstract) [I] the mapping"""
    zero_variance: str = "drop"
    """groups whose rewards all agree: `drop` (A = 0 and sgn(0) = 0, no signal) or `process` (they keep the
    progress term eta * W sgn_g s~, sgn_g = +1 if the group's reward is > 0 else -1) [S] EP-GRPO (abstract) [I] sgn_g"""
    min_bucket_tokens: int = 2
    """a bucket (or group) with fewer valid tokens gets s~ = 0 (docs/methods.md §1(f)5)"""
    eps: float = 1e-6
    """epsilon of the z-scores"""

    RANGES = {"gamma": GE0, "n_buckets": at_least(1), "eta": GE0, "beta_p": GT0, "min_bucket_tokens": at_least(1),
              "eps": GT0}

    def __post_init__(self):
        super().__post_init__()
        choice("progress_norm", self.progress_norm, PROGRESS_NORMS)
        choice("progress_ref", self.progress_ref, ["ref", "old"])
        choice("stats_from", self.stats_from, ["rollout", "current"])
        choice("progress_coord", self.progress_coord, PROGRESS_COORDS)
        choice("zero_variance", self.zero_variance, ZERO_VARIANCE)
        if self.zero_variance == "process" and self.dynamic_sampling:
            raise ConfigError("zero_variance: 'process' acts on no group with dynamic_sampling: true (it drops the "
                              "groups whose rewards all agree before the loss)")
        if self.progress_ref == "old" and self.stats_from == "rollout":
            raise ConfigError("progress_ref: 'old' needs stats_from: current (from the rollout pass s = 0 exactly)")

    def needs(self) -> Needs:
        needs = super().needs()
        return dataclasses.replace(needs, ref_logp=needs.ref_logp or self.progress_ref == "ref")


def segment_zscore(x: Tensor, mask: Tensor, keys: Tensor, n_keys: int, eps: float, min_count: int = 1
                   ) -> tuple[Tensor, Tensor]:
    """z-score of ``x`` within segments: ``keys [B, T]`` in ``0..n_keys-1`` name each token's segment; mean and
    Bessel-corrected std over the segment's valid tokens (std 0 for one token), one ``index_add_`` pass each
    (docs/methods.md §7 S6). Tokens of segments with fewer than ``min_count`` valid tokens, and padding, get 0.
    Returns the z-scores and each token's segment size ``[B, T]``."""
    sel = mask.bool()
    k, v = keys[sel], x[sel]  # [N]
    count = torch.zeros(n_keys, dtype=v.dtype, device=v.device).index_add_(0, k, torch.ones_like(v))
    mean = torch.zeros_like(count).index_add_(0, k, v) / count.clamp(min=1)
    dev = v - mean[k]
    var = torch.zeros_like(count).index_add_(0, k, dev * dev) / (count - 1).clamp(min=1)
    z = torch.where(count[k] >= min_count, dev / (var.sqrt()[k] + eps), torch.zeros_like(v))
    out, size = torch.zeros_like(x), torch.zeros_like(x)
    out[sel], size[sel] = z, count[k]
    return out, size


def relative_buckets(mask: Tensor, n_buckets: int) -> Tensor:
    """``b = min(floor(K t / |o_i|), K - 1)`` with ``t`` the 0-based index among the row's valid tokens (integer
    arithmetic, so no rounding at bucket edges); 0 on padding."""
    m = mask.long()
    t = m.cumsum(-1) - 1
    length = m.sum(-1, keepdim=True).clamp(min=1)
    return ((n_buckets * t) // length).clamp(0, n_buckets - 1) * m


def entropy_buckets(entropy: Tensor, mask: Tensor, n_buckets: int) -> Tensor:
    """``b = min(floor(K c_t), K - 1)`` with ``c_t = sum_{u<=t} H_u / sum_u H_u`` over the row's valid tokens (``H``
    clamped at 0): bucket ``k`` holds ``c_t`` in ``[k/K, (k+1)/K)``, an edge ``c_t = k/K`` falls in bucket ``k`` and
    the last token (``c_t = 1``) in ``K - 1``. Rows whose entropies sum to 0 get :func:`relative_buckets`; 0 on
    padding."""
    h = upcast(entropy.detach()).clamp(min=0)
    h = h * mask.to(h.dtype)
    cum = h.cumsum(-1)
    total = cum[..., -1:]  # the same running sum, so c = 1 exactly at the last valid token
    b = torch.floor(n_buckets * cum / total.clamp(min=torch.finfo(h.dtype).tiny)).long().clamp(0, n_buckets - 1)
    return torch.where(total > 0, b, relative_buckets(mask, n_buckets)) * mask.long()


def progress_buckets(entropy: Tensor, mask: Tensor, cfg: ERPOConfig) -> Tensor:
    """The progress bucket of each token ``[B, T]`` per ``cfg.progress_coord``."""
    if cfg.progress_coord == "cumulative_entropy":
        return entropy_buckets(entropy, mask, cfg.n_buckets)
    return relative_buckets(mask, cfg.n_buckets)


def zero_variance_sign(rewards: Tensor, a_row: Tensor, g: Tensor, n_g: int) -> Tensor:
    """``[B, 1]`` sgn_g of the rows of zero-variance groups (the rewards of the group's rows all agree and the
    row's advantage is 0): +1 when the group's reward is > 0 (all correct), -1 otherwise (all wrong); 0 elsewhere.
    ``g`` ``[B]``: groups renumbered ``0..n_g-1``; ``a_row`` ``[B, 1]``: each row's group advantage."""
    r = upcast(rewards.detach()).to(a_row.device)
    hi = torch.full((n_g,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(0, g, r, "amax")
    lo = torch.full((n_g,), torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(0, g, r, "amin")
    flat = (hi[g] == lo[g]) & (a_row[:, 0] == 0)
    sgn = torch.where(r > 0, 1.0, -1.0).to(a_row.dtype)
    return torch.where(flat, sgn, torch.zeros_like(sgn))[:, None]


def erpo_advantages(adv: Tensor, mask: Tensor, entropy: Tensor, logp: Tensor, base_logp: Tensor, group_ids: Tensor,
                    cfg: ERPOConfig, rewards: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The ERPO token advantage ``[B, T]`` (0 on padding) and its parts (``W``, ``s``, ``s_tilde``, ``psi``,
    ``segment_size``, ``process``: 1 on the tokens of zero-variance groups whose eta * Psi is non-zero), all
    detached. ``adv`` is the group advantage broadcast over each response; ``rewards`` ``[B]`` (needed by
    ``zero_variance: process``) the rows' scalar rewards."""
    adv, entropy, logp, base_logp = (upcast(x.detach()) for x in (adv, entropy, logp, base_logp))
    m = mask.to(adv.dtype)
    _, g = torch.unique(group_ids, return_inverse=True)  # [B] groups renumbered 0..n_g-1
    n_g = int(g.max()) + 1 if g.numel() else 1
    gk = g[:, None].expand(mask.shape)
    length = m.sum(-1, keepdim=True)  # [B, 1] |o_i|
    a_row = (adv * m).sum(-1, keepdim=True) / length.clamp(min=1)  # [B, 1] the group advantage A_i
    w = torch.sigmoid(cfg.gamma * segment_zscore(entropy, mask, gk, n_g, cfg.eps)[0]) * m if cfg.gate else m
    if cfg.gate and cfg.gate_on_advantage:  # |o_i| W / sum_u W: mean 1 over the response, so sum_t A_t = |o_i| A_i
        a_gate = length * w / (w * m).sum(-1, keepdim=True).clamp(min=torch.finfo(m.dtype).tiny) * a_row
    else:
        a_gate = a_row * m
    s = cfg.beta_p * (logp - base_logp) * m
    if cfg.progress_norm == "buckets":
        keys = gk * cfg.n_buckets + progress_buckets(entropy, mask, cfg)
        s_t, size = segment_zscore(s, mask, keys, n_g * cfg.n_buckets, cfg.eps, cfg.min_bucket_tokens)
    elif cfg.progress_norm == "group":
        s_t, size = segment_zscore(s, mask, gk, n_g, cfg.eps, cfg.min_bucket_tokens)
    else:
        s_t, size = s, m * cfg.min_bucket_tokens
    gate_p = w if cfg.gate and cfg.gate_on_progress else m
    zv = torch.zeros_like(a_row)
    if cfg.zero_variance == "process":
        if rewards is None:
            raise ValueError("erpo: zero_variance 'process' needs batch.rewards")
        zv = zero_variance_sign(rewards, a_row, g, n_g)
    sgn = torch.where(zv != 0, zv, torch.sign(a_row))  # drop: sgn(0) = 0, no signal without an outcome contrast
    psi = gate_p * sgn * s_t
    out = (a_gate + cfg.eta * psi) * m if cfg.synthesis else a_gate
    process = ((zv != 0) & (cfg.eta * psi != 0)).to(m.dtype) * m * float(cfg.synthesis)
    return out, {"W": w, "s": s, "s_tilde": s_t, "psi": psi, "segment_size": size, "process": process}


def masked_std(x: Tensor, mask: Tensor) -> Tensor:
    """Population standard deviation (divisor n) of ``x`` over the valid tokens of ``mask``; 0 without tokens."""
    mu = masked_mean(x, mask)
    return masked_mean((x - mu) ** 2, mask).sqrt()


def _inputs(batch: RLBatch, stats: TokenStats, cfg: ERPOConfig):
    """(source batch, rows of this batch in it or None, H, log pi, base log-probs) per ``cfg.stats_from``."""
    if cfg.stats_from == "current":
        src, rows, ent, lp = batch, None, stats.entropy.detach(), stats.logp.detach()
    else:
        src, rows = (batch, None) if batch.rollout is None else (batch.rollout, batch.rollout_rows)
        if src.old_entropy is None or (batch.rollout is not None and rows is None):
            raise ValueError("erpo: stats_from 'rollout' needs old_entropy (and rollout_rows with a rollout)")
        ent, lp = src.old_entropy, src.old_logp
    base = src.ref_logp if cfg.progress_ref == "ref" else src.old_logp
    if base is None or src.group_ids is None:
        raise ValueError("erpo: needs batch.group_ids, and batch.ref_logp for progress_ref 'ref'")
    if cfg.zero_variance == "process" and src.rewards is None:
        raise ValueError("erpo: zero_variance 'process' needs batch.rewards (and rollout.rewards with a rollout)")
    return src, rows, ent, lp, base


GATE_BINDING = dict(binding="stats/erpo_gate_sd", threshold=0.05,
                    why="the gate W must spread over the tokens (W = 1 everywhere: no gate)")
"""the binding diagnostic of ERPO's claims: the gate's spread"""

register_claim_figure("erpo", "ERPO against GRPO: accuracy and response length (docs/methods.md §1(d))", "curves",
                      ("heldout/pass@1", "stats/response_length", "stats/entropy"))


@register_objective("erpo", ERPOConfig, metrics={
    "stats/erpo_gate_mean": "ERPO: mean entropy-aware gate weight W = σ(γ·z(H)) over response tokens",
    "stats/erpo_gate_sd": "binding: population std of the gate W over response tokens (0 when the gate does nothing)",
    "stats/erpo_zero_var_frac": "binding: share of response tokens in zero-variance groups given a process signal "
                                "η·Ψ ≠ 0 (`zero_variance: process`; 0 under `drop`)",
    "stats/erpo_progress": "ERPO: the implicit progress signal used (against `progress_ref`)",
    "stats/erpo_progress_ref": "ERPO: the implicit progress signal against π_ref",
    "stats/erpo_progress_old": "ERPO: the implicit progress signal against π_old",
    "stats/erpo_synthesis_abs": "ERPO: mean |synthesis term| η·|Ψ|",
    "stats/erpo_adv_abs": "ERPO: mean |token advantage|",
    "stats/erpo_sparse_frac": "ERPO: share of tokens in buckets too small for a progress z-score (s~ = 0)",
}, panels=(Panel("stats/erpo_gate_mean", "ERPO: mean gate weight"),), claims=(
    Claim("erpo", "erpo", "grpo", "pass@1", "higher", "ERPO's accuracy is above GRPO's", **GATE_BINDING),
    Claim("erpo", "erpo", "grpo", "mean_length", "lower", "ERPO's responses are shorter than GRPO's", **GATE_BINDING),
    Claim("erpo", "erpo", "grpo", "train_entropy_late", "higher", "ERPO's entropy does not collapse like GRPO's",
          **GATE_BINDING),
))
def erpo(batch: RLBatch, stats: TokenStats, cfg: ERPOConfig, state: dict | None = None) -> tuple[Tensor, dict]:
    """ERPO: the GRPO clipped surrogate with entropy-gated, progress-anchored token advantages.

    Song Yu, Li Li et al. 2026, "ERPO: Token-Level Entropy-Regulated Policy Optimization for Large Reasoning Models",
    https://arxiv.org/abs/2603.28204 (abstract only [P]; the equations [S] from a notes file and a re-implementation
    citing Eq. 7-10): ``A_ERPO = |o_i| W / sum_u W * A_i + eta * W sgn(A_i) s~``, ``W = sigmoid(gamma z_G(H))``,
    ``s = beta_p (log pi - log pi_ref)`` z-scored within (group, relative-position bucket). Defaults [S]:
    gamma 5, K 10, eta 0.2, beta_p 0.1. Options from the authors' follow-up, EP-GRPO, arXiv 2605.04960 (abstract
    only [S]; the exact rules [I]): cumulative-entropy buckets (``progress_coord``) and a process signal for
    zero-variance groups (``zero_variance``).
    Deviation: H and log pi come from the rollout pass over whole groups, as mini-batches split groups
    (``stats_from``) [I]; full-vocabulary H (the re-implementation: top-50 log-probs), z-scored per group [I].
    Card: docs/objectives/erpo.md; docs/methods.md §1, §9.

    Args:
        batch: old/ref log-probs, group advantages, mask, ``group_ids``, ``old_entropy``; ``rollout`` and
            ``rollout_rows`` when the batch is part of a rollout batch; ``rewards`` for ``zero_variance: process``.
        stats: the current policy's token statistics (``logp`` carries the gradient).
        cfg: ERPOConfig.
        state: controller state (unused).
    """
    src, rows, ent, lp, base = _inputs(batch, stats, cfg)
    a_full, parts = erpo_advantages(src.advantages, src.mask, ent, lp, base, src.group_ids, cfg, src.rewards)
    local = (lambda x: x) if rows is None else (lambda x: x[rows])  # noqa: E731
    a_erpo = local(a_full).to(batch.advantages.dtype)
    loss, metrics = clipped_pg_loss(dataclasses.replace(batch, advantages=a_erpo), stats, cfg, name="erpo")
    m, lp_cur = batch.mask, upcast(stats.logp.detach())
    metrics.update({
        "stats/erpo_gate_mean": masked_mean(local(parts["W"]), m),
        "stats/erpo_gate_sd": masked_std(local(parts["W"]), m),
        "stats/erpo_zero_var_frac": masked_mean(local(parts["process"]), m),
        "stats/erpo_progress": masked_mean(local(parts["s"]), m),
        "stats/erpo_progress_old": masked_mean(cfg.beta_p * (lp_cur - upcast(batch.old_logp)), m),
        "stats/erpo_synthesis_abs": masked_mean(cfg.eta * local(parts["psi"]).abs(), m) * float(cfg.synthesis),
        "stats/erpo_adv_abs": masked_mean(a_erpo.abs(), m),
        "stats/erpo_sparse_frac": masked_mean((local(parts["segment_size"]) < cfg.min_bucket_tokens).float(), m),
    })
    if batch.ref_logp is not None:
        metrics["stats/erpo_progress_ref"] = masked_mean(cfg.beta_p * (lp_cur - upcast(batch.ref_logp)), m)
    return loss, {k: v.detach() for k, v in metrics.items()}
