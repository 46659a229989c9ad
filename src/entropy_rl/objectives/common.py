"""Pieces shared by the policy-gradient objectives: the clipped surrogate, the k3 KL, the statistic scope and the
diagnostics every objective logs (docs/methods.md §0, §5.1, §7)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..token_stats import TokenStats
from .registry import RLBatch, StatScope


def upcast(x: Tensor) -> Tensor:
    """At least fp32 (bf16/fp16 → fp32; fp64 stays fp64, so float64 references are exact)."""
    return x if x.dtype == torch.float64 else x.float()


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, adv: Tensor, clip_low: float, clip_high: float, clip_ratio_c: float | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate as a per-token loss (verl sign convention), with asymmetric bounds and
    optional dual clipping (Ye et al. 2020; verl ``clip_ratio_c``, applied where A < 0).

    ``l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))``, ``r = exp(logp - old_logp)``, ratios in fp32.
    Returns the ``[B, T]`` loss and its parts: ``clipped``, the ``[B, T]`` indicator of tokens whose clipped term is
    the active one, split into ``clipped_low`` (A < 0, r < 1 - clip_low: at the low bound) and ``clipped_high``
    (A > 0, r > 1 + clip_high: at the high bound).
    """
    log_ratio = (upcast(logp) - upcast(old_logp)).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    active = loss_clipped > loss_unclipped
    clipped = active.float()
    clipped_low, clipped_high = (active & (adv < 0)).float(), (active & (adv > 0)).float()
    if clip_ratio_c is not None:
        dual = torch.minimum(-adv * clip_ratio_c, loss)
        loss = torch.where(adv < 0, dual, loss)
    return loss, {"ratio": ratio, "clipped": clipped, "clipped_low": clipped_low, "clipped_high": clipped_high,
                  "log_ratio": log_ratio, "unclipped": loss_unclipped}


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref): ``exp(ref - logp) - (ref - logp) - 1`` (>= 0), DeepSeekMath."""
    d = (upcast(ref_logp) - upcast(logp)).clamp(-20.0, 20.0)
    return torch.exp(d) - d - 1.0


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def centered_covariance(x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """``mean_t (x_t - mean x)(y_t - mean y)`` over the valid tokens of ``mask`` (masked means; 0 without tokens),
    detached, at least fp32."""
    x, y = upcast(x.detach()), upcast(y.detach())
    m = mask.to(x.dtype)
    return masked_mean((x - masked_mean(x, m)) * (y - masked_mean(y, m)), m)


def resolve_l_max(cfg, batch: RLBatch) -> int:
    """The constant L_max of `seq-mean-token-sum-norm`: the config's, else the batch's length cap, else the padded
    width (the rollout pads every response to the cap, so the last two agree in the loop)."""
    return getattr(cfg, "l_max", None) or batch.l_max or batch.mask.shape[-1]


def stat_scope(batch: RLBatch, stats: TokenStats, scope: str) -> StatScope:
    """The tokens a selection statistic is taken over (docs/methods.md §4B(f)2, §5.5, §7 S5), detached.

    ``microbatch``: the batch at hand (under gradient accumulation, one micro-batch: verl's reference code).
    ``minibatch``: the whole mini-batch: ``batch.scope`` when the loop hands a micro-batch of it, else the batch at
    hand (which then is the mini-batch). Select on the returned scope, then take ``scope.rows`` with :func:`local`.
    """
    if scope == "minibatch" and batch.scope is not None:
        return batch.scope
    return StatScope(logp=stats.logp.detach(), entropy=stats.entropy.detach(), old_logp=batch.old_logp,
                     advantages=batch.advantages, mask=batch.mask)


def local(x: Tensor, scope: StatScope) -> Tensor:
    """The rows of a scope-wide ``[Bs, T]`` tensor that belong to the batch at hand."""
    return x if scope.rows is None else x[scope.rows]


POLICY_METRICS = {
    "loss/pg": "aggregated policy-gradient (clipped surrogate) loss",
    "loss/kl": "aggregated k3 KL to the reference (added to the loss only when `kl_coef > 0`)",
    "loss/total": "the loss that was back-propagated",
    "stats/entropy": "full-vocabulary token entropy of the current policy at the update, masked token mean (nats)",
    "stats/nll_sampled": "mean negative log-probability of the sampled tokens (not an entropy)",
    "stats/clip_frac": "fraction of response tokens whose clipped term was the active one",
    "stats/clip_frac_low": "binding: fraction of response tokens at the low clip bound (A < 0 and r < 1 − ε_low)",
    "stats/clip_frac_high": "binding: fraction of response tokens at the high clip bound (A > 0 and r > 1 + ε_high)",
    "stats/cov_logp_adv": "Cov(log π, A) over the update's response tokens (the advantage the loss used): the "
                          "covariance Cui et al. show drives the step's entropy change (negative of it, to first order)",
    "stats/ratio_mean": "mean importance ratio π_θ / π_old over response tokens",
    "stats/approx_kl_old": "½·mean (log π_θ − log π_old)², the drift within a step",
}
"""the glossary of what every policy-gradient objective logs (:func:`policy_metrics` and ``grpo.pg_loss``)"""


def policy_metrics(batch: RLBatch, stats: TokenStats, parts: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached diagnostics every policy-gradient objective reports."""
    m = batch.mask
    return {
        "stats/entropy": masked_mean(stats.entropy.detach(), m),
        "stats/nll_sampled": masked_mean(-stats.logp.detach(), m),
        "stats/clip_frac": masked_mean(parts["clipped"], m).detach(),
        "stats/clip_frac_low": masked_mean(parts["clipped_low"], m).detach(),
        "stats/clip_frac_high": masked_mean(parts["clipped_high"], m).detach(),
        "stats/cov_logp_adv": centered_covariance(stats.logp, batch.advantages, m),
        "stats/ratio_mean": masked_mean(parts["ratio"].detach(), m),
        "stats/approx_kl_old": masked_mean(0.5 * parts["log_ratio"].detach() ** 2, m),
    }
