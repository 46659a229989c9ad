"""The GRPO family: GRPO, Dr. GRPO and DAPO share one clipped surrogate and differ in advantage, aggregation,
clip range and rollout-level options (docs/methods.md §5.1-§5.3, §5.6).

    loss = agg( max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)) ; M ) + beta * agg( KL_k3 ; M )

``r = exp(logp - old_logp)``. Shapes: every tensor ``[B, T]`` (B responses, groups of G contiguous; T positions).
Fidelity cards: docs/objectives/{grpo,dr_grpo,dapo}.md.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..config import GE0, above, at_least, within
from ..token_stats import TokenStats
from ..agg import agg_loss
from .common import clipped_surrogate, k3_kl, policy_metrics, resolve_l_max
from .registry import Claim, ObjectiveConfig, RLBatch, register_claim_figure, register_objective


register_claim_figure("entropy", "GRPO's entropy falls; the entropy-preserving methods keep it higher "
                      "(docs/methods.md §4, §5)", "curves", ("stats/entropy", "heldout/pass@1", "stats/response_length"))


@dataclass(frozen=True)
class GRPOConfig(ObjectiveConfig):
    advantage: str = "grpo"
    """group advantage estimator (`grpo` = mean/std normalized)"""
    agg: str = "seq-mean-token-mean"
    """loss aggregation (GRPO paper: mean over tokens, then over sequences)"""
    clip_low: float = 0.2
    """lower clip epsilon (ratio >= 1 - clip_low; 1 = no lower bound)"""
    clip_high: float = 0.2
    """upper clip epsilon (ratio <= 1 + clip_high; DAPO's clip-higher uses 0.28)"""
    clip_ratio_c: float | None = None
    """dual-clip bound for negative advantages (verl uses 3.0; None = off)"""
    l_max: int | None = None
    """constant length for `seq-mean-token-sum-norm` (None = the response-length cap)"""

    RANGES = {"clip_low": within(0, 1), "clip_high": GE0, "clip_ratio_c": above(1), "l_max": at_least(1)}


def clipped_pg_loss(batch: RLBatch, stats: TokenStats, cfg: GRPOConfig, keep: Tensor | None = None,
                    name: str = "grpo") -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped surrogate (times a detached ``keep`` weight per token, if given) aggregated by ``cfg.agg`` over
    the unchanged mask, plus the optional k3 KL. Shared by every objective built on the GRPO loss."""
    pg, parts = clipped_surrogate(stats.logp, batch.old_logp, batch.advantages, cfg.clip_low, cfg.clip_high,
                                  cfg.clip_ratio_c)
    if keep is not None:
        pg = pg * keep
    return pg_loss(batch, stats, cfg, pg, parts, name)


def pg_loss(batch: RLBatch, stats: TokenStats, cfg: ObjectiveConfig, pg: Tensor, parts: dict[str, Tensor],
            name: str) -> tuple[Tensor, dict[str, Tensor]]:
    """Aggregate a per-token policy loss ``pg [B, T]`` by ``cfg.agg`` and add ``cfg.kl_coef`` times the k3 KL to the
    reference; ``parts`` (ratio, clipped, log_ratio) feed the standard diagnostics. With ``batch.is_weights`` (the
    truncated importance-sampling correction of a separate rollout engine) each token's policy loss is weighted by
    it first, as verl does with its rollout IS weights; the KL term is not."""
    if batch.is_weights is not None:
        pg = pg * batch.is_weights.to(pg.dtype)
    l_max = resolve_l_max(cfg, batch)
    loss_pg = agg_loss(pg, batch.mask, cfg.agg, l_max)
    metrics = policy_metrics(batch, stats, parts)
    metrics["loss/pg"] = loss_pg.detach()
    loss = loss_pg
    if cfg.kl_coef > 0 and batch.ref_logp is None:
        raise ValueError(f"{name}: kl_coef > 0 needs batch.ref_logp (the reference log-probs)")
    if batch.ref_logp is not None:
        loss_kl = agg_loss(k3_kl(stats.logp, batch.ref_logp), batch.mask, cfg.agg, l_max)
        if cfg.kl_coef > 0:
            loss = loss + cfg.kl_coef * loss_kl
        metrics["loss/kl"] = loss_kl.detach()
    metrics["loss/total"] = loss.detach()
    return loss, metrics


@register_objective("grpo", GRPOConfig)
def grpo(batch: RLBatch, stats: TokenStats, cfg: GRPOConfig, state: dict | None = None) -> tuple[Tensor, dict]:
    """GRPO clipped surrogate with an optional k3 KL penalty to the reference policy.

    GRPO (DeepSeekMath, Shao et al. 2024), https://arxiv.org/abs/2402.03300 §4.1.2, eq. (3)-(4):
    ``J = E[1/G sum_i 1/|o_i| sum_t {min(r A, clip(r, 1-eps, 1+eps) A) - beta KL_k3}]``,
    ``A_i = (R_i - mean(R)) / (std(R) + 1e-6)`` (unbiased std, verl). Defaults [P]: eps = 0.2, seq-mean-token-mean.
    Deviation: beta = 0 in the tiny preset (paper 0.04), switch with ``kl_coef``.
    Card: docs/objectives/grpo.md; docs/methods.md §5.1.

    Args:
        batch: old log-probs, advantages and mask, ``[B, T]``; ``ref_logp`` when ``cfg.kl_coef > 0``.
        stats: the current policy's token statistics (``logp`` carries the gradient).
        cfg: GRPOConfig.
        state: controller state (unused by GRPO).
    """
    return clipped_pg_loss(batch, stats, cfg, name="grpo")


@dataclass(frozen=True)
class DrGRPOConfig(GRPOConfig):
    advantage: str = "dr_grpo"
    """Dr. GRPO: A = R - mean(R), no std normalization"""
    agg: str = "seq-mean-token-sum-norm"
    """Dr. GRPO: token sum over a constant L_max, mean over responses (no 1/|o_i|)"""


@register_objective("dr_grpo", DrGRPOConfig)
def dr_grpo(batch: RLBatch, stats: TokenStats, cfg: DrGRPOConfig, state: dict | None = None) -> tuple[Tensor, dict]:
    """Dr. GRPO: GRPO without the length and std normalizations.

    Liu et al. 2025, "Understanding R1-Zero-Like Training", https://arxiv.org/abs/2503.20783 (the Dr. GRPO
    objective; section numbers not checked):
    ``J = E[1/G sum_i sum_t min(r A, clip(r, 1-eps, 1+eps) A)] / L_max``, ``A_i = R_i - mean(R)``.
    Adapted from sail-sg/understand-r1-zero ``train_zero_math.py`` (``masked_sum(..., constant_normalizer=
    generate_max_length)``, then the batch mean) [P].
    Deviation: L_max defaults to ``rl.max_new_tokens`` of the profile (oat: ``generate_max_length`` = 3000).
    Card: docs/objectives/dr_grpo.md; docs/methods.md §5.3, §5.6 (ii).

    Args:
        batch: old log-probs, advantages (R - mean R, broadcast), mask, ``l_max`` (the length cap), ``[B, T]``.
        stats: the current policy's token statistics (``logp`` carries the gradient).
        cfg: DrGRPOConfig.
        state: controller state (unused).
    """
    return clipped_pg_loss(batch, stats, cfg, name="dr_grpo")


@dataclass(frozen=True)
class DAPOConfig(GRPOConfig):
    agg: str = "token-mean"
    """DAPO token-level loss: sum over all tokens of the batch / their number"""
    clip_high: float = 0.28
    """Clip-Higher: eps_high = 0.28 (eps_low stays 0.2)"""
    dynamic_sampling: bool = True
    """drop groups whose rewards all agree; keep generating until `prompts_per_step` groups qualify"""
    overlong_buffer: float = 0.2
    """soft overlong punishment over the last 20 % of the length cap (DAPO: 4096 of 16384 + 4096)"""


@register_objective("dapo", DAPOConfig, claims=(
    Claim("entropy", "dapo", "grpo", "train_entropy_late", "higher", "dapo keeps the late token entropy above GRPO's",
          binding="stats/clip_frac_high", threshold=0.01, binding_of="baseline",
          why="clip-higher can only matter where GRPO's tokens reach its upper bound 1 + 0.2: at least 1 % of them"),
))
def dapo(batch: RLBatch, stats: TokenStats, cfg: DAPOConfig, state: dict | None = None) -> tuple[Tensor, dict]:
    """DAPO: clip-higher, token-level loss, dynamic sampling, overlong reward shaping.

    Yu et al. 2025, https://arxiv.org/abs/2503.14476 (Clip-Higher, dynamic sampling, token-level loss,
    overlong reward shaping; section numbers not checked); code: verl ``recipe/dapo`` [P].
    ``J = E[1/sum_i |o_i| sum_i sum_t min(r A, clip(r, 1-0.2, 1+0.28) A)]  s.t. 0 < #correct < G``.
    The loss here is the clipped surrogate with token-mean; dynamic sampling and the overlong penalty act on the
    rollouts and rewards in ``train.rl_step`` (options on ``ObjectiveConfig``).
    Deviation: L_cache is a fraction of the profile's length cap (0.2, as 4096 of 20480), not a token count.
    Deviation: each generation batch has ``prompts_per_step`` prompts (DAPO's recipe generates 3x per round).
    Card: docs/objectives/dapo.md; docs/methods.md §5.2.

    Args:
        batch: old log-probs, advantages (from the overlong-shaped rewards) and mask, ``[B, T]``.
        stats: the current policy's token statistics (``logp`` carries the gradient).
        cfg: DAPOConfig.
        state: controller state (unused).
    """
    return clipped_pg_loss(batch, stats, cfg, name="dapo")
