"""Entropy-based objectives: the entropy bonus (fixed or adaptive coefficient) and the 80/20 high-entropy token
mask (docs/methods.md §5.4, §5.5). Both build on the GRPO-family clipped surrogate of ``grpo.py``.

Shapes: every tensor ``[B, T]``; ``N`` = valid tokens of the statistic's scope.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import GE0, ConfigError, within
from ..controllers import adaptive_coef_applied, adaptive_coef_init, adaptive_coef_update
from ..token_stats import TokenStats
from ..agg import agg_loss
from .common import local, masked_mean, resolve_l_max, stat_scope
from .grpo import DAPOConfig, GRPOConfig, clipped_pg_loss
from .registry import Claim, Panel, RLBatch, ScopedStatistic, register_objective


# ---------------------------------------------------------------------------------------------- entropy bonus
@dataclass(frozen=True)
class EntropyBonusConfig(GRPOConfig):
    coef: float = 0.0
    """alpha: the fixed coefficient, or the initial one when `adaptive` (Skywork-OR1/TRL: 0; verl default 0)"""
    adaptive: bool = True
    """target-entropy controller (Skywork-OR1, TRL `use_adaptive_entropy`); false = fixed `coef` (verl)"""
    target: float = 0.2
    """adaptive: target mean token entropy in nats (TRL/Skywork-OR1: 0.2)"""
    delta: float = 0.005
    """adaptive: step of the coefficient per RL step (TRL `entropy_coef_delta`: 0.005)"""
    coef_min: float = 0.0
    """adaptive: lower bound of the coefficient (TRL: 0)"""
    coef_max: float = 1.0
    """adaptive: upper bound of the coefficient (TRL: 1)"""

    RANGES = {"coef": GE0, "target": GE0, "delta": GE0, "coef_min": GE0, "coef_max": GE0}

    def __post_init__(self):
        super().__post_init__()
        if self.coef_min > self.coef_max:
            raise ConfigError(f"coef_min: must be <= coef_max ({self.coef_max}; the coef_min/coef_max bounds of the "
                              f"controller), got {self.coef_min}")
        if self.adaptive and not self.coef_min <= self.coef <= self.coef_max:
            raise ConfigError(f"coef: the initial coefficient must lie in [coef_min, coef_max] = "
                              f"[{self.coef_min}, {self.coef_max}], got {self.coef}")


def _bonus_init(cfg: EntropyBonusConfig) -> dict:
    return adaptive_coef_init(cfg.coef) if cfg.adaptive else {}


def _bonus_update(state: dict, cfg: EntropyBonusConfig, row: dict) -> dict:
    if not cfg.adaptive:
        return state
    return adaptive_coef_update(state, row["stats/entropy"], target=cfg.target, delta=cfg.delta, lo=cfg.coef_min,
                                hi=cfg.coef_max)


def entropy_coefficient(cfg: EntropyBonusConfig, state: dict | None) -> tuple[float, float]:
    """(alpha applied this step, the controller's coefficient): fixed ``coef``, or the gated adaptive one."""
    if not cfg.adaptive:
        return cfg.coef, cfg.coef
    st = state if state and "entropy_coef" in state else adaptive_coef_init(cfg.coef)
    return adaptive_coef_applied(st, cfg.target), float(st["entropy_coef"])


@register_objective("entropy_bonus", EntropyBonusConfig, init_state=_bonus_init, update_state=_bonus_update, metrics={
    "loss/entropy": "aggregated entropy term of `entropy_bonus` (its coefficient times this is subtracted)",
    "stats/entropy_coef": "entropy coefficient α applied at this step (`entropy_bonus`)",
    "stats/entropy_coef_ctrl": "the adaptive controller's coefficient after this step (applied from the next)",
    "stats/entropy_coef_at_bound": "binding: 1 when the adaptive controller's coefficient sits at coef_min or coef_max "
                                   "(0 with a fixed coefficient); its run mean is the share of steps at a bound",
}, panels=(Panel("stats/entropy_coef", "entropy coefficient"),), claims=(
    Claim("entropy", "entropy_bonus", "grpo", "train_entropy_late", "higher",
          "entropy_bonus keeps the late token entropy above GRPO's", binding="stats/entropy_coef", threshold=1e-3,
          why="the applied coefficient α, run mean: at 0 (the adaptive gate closed) there is no bonus"),
))
def entropy_bonus(batch: RLBatch, stats: TokenStats, cfg: EntropyBonusConfig, state: dict | None = None
                  ) -> tuple[Tensor, dict]:
    """Entropy bonus: the GRPO loss minus alpha times the aggregated full-vocabulary token entropy.

    ``L = L_GRPO - alpha * agg(H; M)``, H with gradient through the full logits (verl ``dp_actor``: the entropy is
    aggregated with the policy loss's mode, ``policy_loss -= entropy_agg * entropy_coeff``) [P].
    Adaptive alpha (Skywork-OR1, https://arxiv.org/abs/2505.22312; TRL ``use_adaptive_entropy``) [P]: after each step
    ``c <- c + delta`` if the step's entropy <= target else ``c - delta``, clipped to [coef_min, coef_max]; the bonus
    applies only while the previous step's entropy <= target.
    Deviation: the controller updates once per RL step on its mean entropy (TRL: once per optimizer step).
    Deviation: no entropy measured yet (first step) means no bonus in adaptive mode [I].
    Card: docs/objectives/entropy_bonus.md; docs/methods.md §5.4.

    Args:
        batch: old log-probs, advantages and mask, ``[B, T]``.
        stats: the current policy's token statistics; ``logp`` and ``entropy`` carry the gradient.
        cfg: EntropyBonusConfig.
        state: controller state (``entropy_coef``, ``entropy_last``); empty = the initial state.
    """
    loss, metrics = clipped_pg_loss(batch, stats, cfg, name="entropy_bonus")
    alpha, ctrl = entropy_coefficient(cfg, state)
    loss_ent = agg_loss(stats.entropy, batch.mask, cfg.agg, resolve_l_max(cfg, batch))
    loss = loss - alpha * loss_ent
    metrics.update({"loss/entropy": loss_ent.detach(), "loss/total": loss.detach(),
                    "stats/entropy_coef": torch.tensor(alpha), "stats/entropy_coef_ctrl": torch.tensor(ctrl),
                    "stats/entropy_coef_at_bound": torch.tensor(float(cfg.adaptive and ctrl in (cfg.coef_min,
                                                                                                 cfg.coef_max)))})
    return loss, metrics


# ---------------------------------------------------------------------------------------------- 80/20 mask
def high_entropy_mask(entropy: Tensor, mask: Tensor, rho: float) -> tuple[Tensor, Tensor]:
    """Tokens whose entropy is >= tau, the top-``rho`` threshold over the valid tokens of ``mask``; and tau.

    tau is TRL's ``torch.quantile(H_valid, 1 - rho)`` (linear interpolation), reproduced without ``torch.quantile``
    (it fails above 2^24 elements; docs/methods.md §5.5, §7 S8): with ``j = ceil((1 - rho)(N - 1))``, tau is the
    ``(j + 1)``-th smallest valid entropy (``kthvalue``), and ``H >= tau`` selects exactly the tokens
    ``H >= quantile`` does, ties included. ``rho = 1`` keeps every valid token; ``N = 0`` keeps none.
    """
    sel = mask.bool()
    valid = entropy.detach()[sel]  # [N]
    if valid.numel() == 0:
        return torch.zeros_like(sel), entropy.new_zeros(())
    j = math.ceil((1.0 - rho) * (valid.numel() - 1) - 1e-9)  # 0-based rank from the bottom
    tau = torch.kthvalue(valid, j + 1).values
    return (entropy.detach() >= tau) & sel, tau


@dataclass(frozen=True)
class HighEntropyMaskConfig(ScopedStatistic, DAPOConfig):
    rho: float = 0.2
    """fraction of the highest-entropy tokens that get a policy gradient (paper: 0.2)"""

    RANGES = {"rho": within(0, 1, "(]", "a fraction of the tokens")}


@register_objective("high_entropy_mask", HighEntropyMaskConfig, metrics={
    "stats/mask_frac": "fraction of response tokens kept by the 80/20 high-entropy mask",
    "stats/mask_kept_count": "binding: tokens kept by the 80/20 mask per update, over the threshold's scope",
    "stats/entropy_threshold": "the entropy threshold τ_ρ of the 80/20 mask",
}, panels=(Panel("stats/mask_frac", "80/20: fraction of tokens kept"),), claims=(
    Claim("entropy", "high_entropy_mask", "grpo", "train_entropy_late", "higher",
          "high_entropy_mask keeps the late token entropy above GRPO's", binding="stats/mask_frac", bound_if="<=",
          threshold=0.5, why="the mask drops most tokens' gradient (it keeps about ρ = 20 % by construction)"),
))
def high_entropy_mask_loss(batch: RLBatch, stats: TokenStats, cfg: HighEntropyMaskConfig, state: dict | None = None
                           ) -> tuple[Tensor, dict]:
    """80/20 high-entropy token mask: the DAPO loss on the top-rho entropy tokens only.

    Wang et al. 2025, "Beyond the 80/20 Rule", https://arxiv.org/abs/2506.01939 (objective quoted in TRL PR #3563):
    ``J = E[1/sum_i |o_i| sum_i sum_t I[H_t >= tau_rho] min(r A, clip(r, 1-0.2, 1+0.28) A)]``, rho = 0.2 [P];
    the denominator counts all tokens (masked tokens contribute 0). Adapted from TRL ``get_high_entropy_mask``:
    entropies of the current forward pass, detached; threshold by ``kthvalue`` instead of ``torch.quantile``.
    Deviation: the threshold's scope is the update's mini-batch by default (TRL: each micro-step's gathered
    tokens; the paper: the training batch); ``stat_scope: microbatch`` gives TRL's.
    Card: docs/objectives/high_entropy_mask.md; docs/methods.md §5.5.

    Args:
        batch: old log-probs, advantages and mask, ``[B, T]``; ``scope`` under gradient accumulation.
        stats: the current policy's token statistics (``logp`` carries the gradient; ``entropy`` is only read).
        cfg: HighEntropyMaskConfig.
        state: controller state (unused).
    """
    scope = stat_scope(batch, stats, cfg.stat_scope)
    keep_all, tau = high_entropy_mask(scope.entropy, scope.mask, cfg.rho)
    keep = local(keep_all, scope).to(stats.logp.dtype)
    loss, metrics = clipped_pg_loss(batch, stats, cfg, keep=keep, name="high_entropy_mask")
    metrics["stats/mask_frac"] = masked_mean(keep, batch.mask).detach()
    metrics["stats/mask_kept_count"] = torch.tensor(float(keep_all.sum()))
    metrics["stats/entropy_threshold"] = tau.detach().float()
    return loss, metrics
