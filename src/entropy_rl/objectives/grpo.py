"""GRPO: group-relative policy optimization (DeepSeekMath, Shao et al. 2024, arXiv:2402.03300 §4.1.2).

    J(theta) = E[ 1/G sum_i 1/|o_i| sum_t { min(r A, clip(r, 1-eps, 1+eps) A) - beta KL_k3[pi || pi_ref] } ]

with ``A_i = (R_i - mean(R)) / (std(R) + 1e-6)`` over the G samples of a prompt (unbiased std, verl).
Defaults [P]: eps = 0.2 (both sides), seq-mean-token-mean aggregation, KL kept in the loss (k3), beta = 0.04 in
the paper (our tiny profile uses 0, the common RLVR choice, switchable with ``kl_coef``).
Fidelity card: docs/objectives/grpo.md; methods.md §5.1.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..config import ConfigError
from ..token_stats import TokenStats
from .agg import agg_loss
from .common import clipped_surrogate, k3_kl, masked_mean
from .registry import ObjectiveConfig, RLBatch, register_objective


@dataclass(frozen=True)
class GRPOConfig(ObjectiveConfig):
    advantage: str = "grpo"
    """group advantage estimator (`grpo` = mean/std normalized)"""
    agg: str = "seq-mean-token-mean"
    """loss aggregation (GRPO paper: mean over tokens, then over sequences)"""
    clip_low: float = 0.2
    """lower clip epsilon (ratio >= 1 - clip_low)"""
    clip_high: float = 0.2
    """upper clip epsilon (ratio <= 1 + clip_high; DAPO's clip-higher uses 0.28)"""
    clip_ratio_c: float | None = None
    """dual-clip bound for negative advantages (verl uses 3.0; None = off)"""
    l_max: int | None = None
    """constant length for `seq-mean-token-sum-norm` (None = the response-length cap)"""

    def __post_init__(self):
        super().__post_init__()
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ConfigError(f"clip_low must be in [0, 1) and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.clip_ratio_c is not None and self.clip_ratio_c <= 1:
            raise ConfigError(f"clip_ratio_c: must be > 1, got {self.clip_ratio_c}")


def policy_metrics(batch: RLBatch, stats: TokenStats, parts: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached diagnostics every policy-gradient objective reports."""
    m = batch.mask
    return {
        "stats/entropy": masked_mean(stats.entropy.detach(), m),
        "stats/nll_sampled": masked_mean(-stats.logp.detach(), m),
        "stats/clip_frac": masked_mean(parts["clipped"], m).detach(),
        "stats/ratio_mean": masked_mean(parts["ratio"].detach(), m),
        "stats/approx_kl_old": masked_mean(0.5 * parts["log_ratio"].detach() ** 2, m),
    }


@register_objective("grpo", GRPOConfig)
def grpo(batch: RLBatch, stats: TokenStats, cfg: GRPOConfig, state: dict | None = None) -> tuple[Tensor, dict]:
    """GRPO clipped surrogate with an optional k3 KL penalty to the reference policy.

    Args:
        batch: old log-probs, advantages and mask, ``[B, T]``; ``ref_logp`` when ``cfg.kl_coef > 0``.
        stats: the current policy's token statistics (``logp`` carries the gradient).
        cfg: GRPOConfig.
        state: controller state (unused by GRPO).
    """
    pg, parts = clipped_surrogate(stats.logp, batch.old_logp, batch.advantages, cfg.clip_low, cfg.clip_high,
                                  cfg.clip_ratio_c)
    l_max = cfg.l_max or batch.mask.shape[-1]
    loss_pg = agg_loss(pg, batch.mask, cfg.agg, l_max)
    metrics = policy_metrics(batch, stats, parts)
    metrics["loss/pg"] = loss_pg.detach()
    loss = loss_pg
    if cfg.kl_coef > 0 and batch.ref_logp is None:
        raise ValueError("grpo: kl_coef > 0 needs batch.ref_logp (the reference log-probs)")
    if batch.ref_logp is not None:
        loss_kl = agg_loss(k3_kl(stats.logp, batch.ref_logp), batch.mask, cfg.agg, l_max)
        if cfg.kl_coef > 0:
            loss = loss + cfg.kl_coef * loss_kl
        metrics["loss/kl"] = loss_kl.detach()
    metrics["loss/total"] = loss.detach()
    return loss, metrics
