"""Covariance-based entropy control: Clip-Cov and KL-Cov (Cui et al.) and the annealed covariance regularizer
(after Lei & Baehr); docs/methods.md §4A, §4B, §7 S5.

Token covariance over the ``N`` valid tokens of the statistic's scope (detached, >= fp32):
``cov_t = (logp_t - mean logp) (A_t - mean A)``. Shapes: every tensor ``[B, T]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import GE0, ANY, ConfigError, choice, within
from ..controllers import SCHEDULES, anneal_scale
from ..token_stats import TokenStats
from ..agg import agg_loss
from .common import local, masked_mean, resolve_l_max, stat_scope, upcast
from .grpo import GRPOConfig, clipped_pg_loss, pg_loss
from .registry import (Claim, Panel, RLBatch, ScopedStatistic, StatScope, register_objective)


def token_covariance(logp: Tensor, adv: Tensor, mask: Tensor) -> Tensor:
    """``(logp - mean logp)(A - mean A)`` with masked means over the valid tokens; 0 on padding (verl)."""
    lp, a = upcast(logp.detach()), upcast(adv.detach())
    m = mask.to(lp.dtype)
    return (lp - masked_mean(lp, m)) * (a - masked_mean(a, m)) * m


def n_selected(fraction: float, n_valid: int) -> int:
    """``max(int(fraction * N), 1)`` as in verl, but 0 when the fraction or N is 0 (so r = 0 / k = 0 select none)."""
    return 0 if fraction == 0 or n_valid == 0 else max(int(fraction * n_valid), 1)


def clip_cov_selection(scope: StatScope, clip_low: float, clip_high: float, ratio: float, lb: float, ub: float,
                       seed: int) -> Tensor:
    """Clip-Cov's detached tokens over the scope (verl ``compute_policy_loss_clip_cov``): a random subset of
    ``max(int(ratio N), 1)`` tokens among the valid ones with ``lb < cov < ub`` that PPO has not clipped already.
    The subset is drawn with a ``torch.Generator`` seeded by ``seed``."""
    m = scope.mask.bool()
    ratio_t = torch.exp((upcast(scope.logp) - upcast(scope.old_logp)).clamp(-20.0, 20.0))
    adv = upcast(scope.advantages)
    clipped_by_ppo = (-adv * ratio_t.clamp(1.0 - clip_low, 1.0 + clip_high)) > (-adv * ratio_t)
    cov = token_covariance(scope.logp, scope.advantages, scope.mask)
    candidates = (m & ~clipped_by_ppo & (cov > lb) & (cov < ub)).flatten().nonzero().squeeze(-1)  # [n_cand]
    n = min(n_selected(ratio, int(m.sum())), candidates.numel())
    gen = torch.Generator().manual_seed(seed)
    picked = candidates[torch.randperm(candidates.numel(), generator=gen)[:n].to(candidates.device)]
    sel = torch.zeros(m.numel(), dtype=torch.bool, device=m.device)
    sel[picked] = True
    return sel.view_as(m)


def kl_cov_selection(scope: StatScope, k: float) -> Tensor:
    """KL-Cov's penalized tokens over the scope: the top ``max(int(k N), 1)`` valid tokens by covariance
    (``torch.topk``, verl ``compute_policy_loss_kl_cov``)."""
    m = scope.mask.bool()
    cov = token_covariance(scope.logp, scope.advantages, scope.mask)
    valid_idx = m.flatten().nonzero().squeeze(-1)  # [N]
    n = n_selected(k, valid_idx.numel())
    top = torch.topk(cov.flatten()[valid_idx], n).indices
    sel = torch.zeros(m.numel(), dtype=torch.bool, device=m.device)
    sel[valid_idx[top]] = True
    return sel.view_as(m)


def _cov_metrics(metrics: dict, batch: RLBatch, scope: StatScope, sel: Tensor, coef: float, n_scope: int) -> dict:
    metrics["stats/cov_selected_frac"] = masked_mean(sel.float(), batch.mask).detach()
    metrics["stats/cov_selected_count"] = torch.tensor(float(n_scope))
    metrics["stats/cov_mean"] = masked_mean(token_covariance(scope.logp, scope.advantages, scope.mask), scope.mask)
    metrics["stats/cov_coef"] = torch.tensor(float(coef))
    return metrics


COV_METRICS = {
    "stats/cov_selected_frac": "fraction of tokens detached (Clip-Cov) or penalized (KL-Cov, annealed)",
    "stats/cov_selected_count": "binding: tokens detached (Clip-Cov) or penalized (KL-Cov, annealed) per update, "
                                "counted over the selection's scope (the mini-batch by default)",
    "stats/cov_mean": "mean centred covariance term (log π − mean)(A − mean) over response tokens",
    "stats/cov_coef": "the Clip-Cov ratio r or KL-Cov coefficient β applied at this step (annealed for `cov_annealed`)",
}
COV_PANEL = Panel("stats/cov_selected_frac", "Cov: fraction of tokens selected")


def _entropy_claim(name: str) -> Claim:
    return Claim("entropy", name, "grpo", "train_entropy_late", "higher", f"{name} keeps the late token entropy above GRPO's",
                 binding="stats/cov_selected_count", threshold=20.0, why="about 20 tokens per update selected: below that the regularizer touches a handful of tokens")


# ---------------------------------------------------------------------------------------------- Clip-Cov
@dataclass(frozen=True)
class CovBand:
    """Mixin: Clip-Cov's random subset of the tokens whose covariance lies in a band (docs/methods.md §4B)."""

    clip_ratio: float = 2e-4
    """r: fraction of the scope's valid tokens detached (paper/verl: 2e-4; at least 1 token when r > 0)"""
    cov_lb: float = 1.0
    """omega_low: candidates have cov > cov_lb (paper/verl: 1)"""
    cov_ub: float = 5.0
    """omega_high: candidates have cov < cov_ub (paper/verl: 5)"""

    RANGES = {"clip_ratio": within(0, 1, note="a fraction"), "cov_lb": ANY, "cov_ub": ANY}

    def __post_init__(self):
        super().__post_init__()
        if self.cov_lb >= self.cov_ub:
            raise ConfigError(f"cov_lb: must be < cov_ub ({self.cov_ub}), got {self.cov_lb}")


@dataclass(frozen=True)
class ClipCovConfig(ScopedStatistic, CovBand, GRPOConfig):
    agg: str = "token-mean"
    """token-mean, as in the authors' scripts"""
    clip_low: float = 1.0
    """authors' scripts: clip_ratio_low = 1 (ratio clamped to [0, 2], PPO clipping effectively off)"""
    clip_high: float = 1.0
    """authors' scripts: clip_ratio_high = 1"""
    dynamic_sampling: bool = True
    """the authors' runs build on the DAPO recipe with dynamic sampling (overlong buffer off)"""

    def __post_init__(self):
        super().__post_init__()
        if self.clip_ratio_c is not None:
            raise ConfigError(f"clip_ratio_c: clip_cov applies no dual clipping (verl's clip_cov ignores it), got "
                              f"{self.clip_ratio_c}; valid: null")


def clip_cov_loss(batch: RLBatch, stats: TokenStats, cfg, ratio: float, name: str) -> tuple[Tensor, dict]:
    scope = stat_scope(batch, stats, cfg.stat_scope)
    sel_scope = clip_cov_selection(scope, cfg.clip_low, cfg.clip_high, ratio, cfg.cov_lb, cfg.cov_ub, batch.seed)
    sel = local(sel_scope, scope)
    loss, metrics = clipped_pg_loss(batch, stats, cfg, keep=(~sel).to(stats.logp.dtype), name=name)
    return loss, _cov_metrics(metrics, batch, scope, sel, ratio, int(sel_scope.sum()))


@register_objective("clip_cov", ClipCovConfig, metrics=COV_METRICS, panels=(COV_PANEL,),
                    claims=(_entropy_claim("clip_cov"),))
def clip_cov(batch: RLBatch, stats: TokenStats, cfg: ClipCovConfig, state: dict | None = None) -> tuple[Tensor, dict]:
    """Clip-Cov: detach the policy gradient of a random few high-covariance tokens.

    Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", https://arxiv.org/abs/2505.22617 (Clip-Cov):
    ``l_t = max(-A r, -A clip(r, 1-lo, 1+hi)) * (1 - I[t in I_clip])``, I_clip a random ``max(int(rN), 1)`` of the
    valid tokens with ``w_low < cov_t < w_high`` not already clipped by PPO; the mask of ``agg`` is unchanged.
    Adapted from PRIME-RL/Entropy-Mechanism-of-RL and verl ``compute_policy_loss_clip_cov`` [P].
    Deviation: r = 0 detaches nothing (verl's ``max(..., 1)`` would still detach one token).
    Deviation: statistics over the mini-batch by default (verl: each micro-batch; ``stat_scope: microbatch``).
    Card: docs/objectives/clip_cov.md; docs/methods.md §4B.

    Args:
        batch: old log-probs, advantages, mask, ``seed`` of the random subset, ``[B, T]``.
        stats: the current policy's token statistics (``logp`` carries the gradient).
        cfg: ClipCovConfig.
        state: controller state (unused).
    """
    return clip_cov_loss(batch, stats, cfg, cfg.clip_ratio, "clip_cov")


# ---------------------------------------------------------------------------------------------- KL-Cov
@dataclass(frozen=True)
class KLCovConfig(ScopedStatistic, GRPOConfig):
    agg: str = "token-mean"
    """token-mean, as in the authors' scripts"""
    k: float = 1e-2
    """fraction of the scope's valid tokens penalized (paper: 2e-3 at 7B, 2e-4 at 32B; tiny profile: 1e-2)"""
    coef: float = 1.0
    """beta of the |log r| penalty (authors' scripts: 1; upstream verl default 0.1)"""
    dynamic_sampling: bool = True
    """the authors' runs build on the DAPO recipe with dynamic sampling"""

    RANGES = {"k": within(0, 1, note="a fraction, not a percent"), "coef": GE0}


def kl_cov_loss(batch: RLBatch, stats: TokenStats, cfg, coef: float, name: str) -> tuple[Tensor, dict]:
    scope = stat_scope(batch, stats, cfg.stat_scope)
    sel_scope = kl_cov_selection(scope, cfg.k)
    sel = local(sel_scope, scope)
    log_ratio = (upcast(stats.logp) - upcast(batch.old_logp)).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    penalty = log_ratio.abs() * sel.to(log_ratio.dtype)
    pg = -batch.advantages * ratio + coef * penalty  # no PPO clipping at all (verl kl_cov)
    none = torch.zeros_like(ratio)
    parts = {"ratio": ratio, "log_ratio": log_ratio, "clipped": none, "clipped_low": none, "clipped_high": none}
    loss, metrics = pg_loss(batch, stats, cfg, pg, parts, name)
    metrics["loss/cov_kl"] = agg_loss(penalty, batch.mask, cfg.agg, resolve_l_max(cfg, batch)).detach()
    return loss, _cov_metrics(metrics, batch, scope, sel, coef, int(sel_scope.sum()))


@register_objective("kl_cov", KLCovConfig, metrics={**COV_METRICS, "loss/cov_kl": "aggregated KL-Cov penalty on the selected tokens"},
                    panels=(COV_PANEL,), claims=(_entropy_claim("kl_cov"),))
def kl_cov(batch: RLBatch, stats: TokenStats, cfg: KLCovConfig, state: dict | None = None) -> tuple[Tensor, dict]:
    """KL-Cov: the unclipped policy gradient plus a |log-ratio| penalty on the top-k covariance tokens.

    Cui et al. 2025, https://arxiv.org/abs/2505.22617 (KL-Cov): ``l_t = -A r + beta |logp - logp_old| I[t in I_KL]``,
    I_KL the top ``max(int(kN), 1)`` valid tokens by cov; no PPO clipping. Adapted from
    PRIME-RL/Entropy-Mechanism-of-RL and verl ``compute_policy_loss_kl_cov`` [P] (the paper writes
    beta KL(pi_old || pi); the code's |log r| is followed).
    Deviation: k is a fraction (upstream verl), not a percent (authors' ``k_percent``); the tiny default 1e-2 is [I].
    Deviation: statistics over the mini-batch by default (verl: each micro-batch; ``stat_scope: microbatch``).
    Card: docs/objectives/kl_cov.md; docs/methods.md §4B.

    Args:
        batch: old log-probs, advantages and mask, ``[B, T]``.
        stats: the current policy's token statistics (``logp`` carries the gradient).
        cfg: KLCovConfig.
        state: controller state (unused).
    """
    return kl_cov_loss(batch, stats, cfg, cfg.coef, "kl_cov")


# ---------------------------------------------------------------------------------------------- annealed
@dataclass(frozen=True)
class CovAnnealedConfig(CovBand, KLCovConfig):
    regularizer: str = "kl_cov"
    """which covariance regularizer is annealed: `kl_cov` (its beta) or `clip_cov` (its ratio r)"""
    schedule: str = "cosine"
    """decay shape of the coefficient after `anneal_start`: `cosine`, `linear` or `constant` (no annealing)"""
    anneal_start: float = 0.5
    """fraction of training before the decay starts (docs/methods.md §4A: decay over the last 30-50 %)"""
    anneal_final: float = 0.0
    """multiplier of the coefficient at the last step (0: the asymptotically unbiased limit)"""
    clip_low: float = 1.0
    """`clip_cov` regularizer: PPO clip as in the Clip-Cov scripts"""
    clip_high: float = 1.0
    """`clip_cov` regularizer: PPO clip as in the Clip-Cov scripts"""

    RANGES = {"anneal_start": within(0, 1, "[)", "a fraction of training"), "anneal_final": within(0, 1)}

    def __post_init__(self):
        super().__post_init__()
        choice("regularizer", self.regularizer, ["kl_cov", "clip_cov"])
        choice("schedule", self.schedule, SCHEDULES)
        if self.regularizer == "clip_cov" and self.clip_ratio_c is not None:
            raise ConfigError(f"clip_ratio_c: the clip_cov regularizer applies no dual clipping, got "
                              f"{self.clip_ratio_c}; valid: null")

    @property
    def uses_total_steps(self) -> bool:
        return self.schedule != "constant"


@register_objective("cov_annealed", CovAnnealedConfig,
                    metrics={**COV_METRICS, "loss/cov_kl": "aggregated KL-Cov penalty on the selected tokens"},
                    panels=(COV_PANEL,), claims=(_entropy_claim("cov_annealed"),))
def cov_annealed(batch: RLBatch, stats: TokenStats, cfg: CovAnnealedConfig, state: dict | None = None
                 ) -> tuple[Tensor, dict]:
    """Annealed covariance regularizer: KL-Cov (or Clip-Cov) whose coefficient decays to 0 late in training.

    After Lei & Baehr 2026, https://arxiv.org/abs/2604.09676 (abstract: covariance-based regularization is
    "asymptotically unbiased when the regularization coefficient is annealed"), on Cui et al.'s KL-Cov/Clip-Cov.
    ``beta_s = beta * s(step)`` (KL-Cov) or ``r_s = r * s(step)`` (Clip-Cov), ``s = 1`` until ``anneal_start`` of
    training, then a cosine (or linear) decay to ``anneal_final`` at the last step.
    Deviation: the paper's method section was not available; the schedule is our interpretation [I] of docs/methods.md §4A.
    Card: docs/objectives/cov_annealed.md; docs/methods.md §4A, §4B.

    Args:
        batch: old log-probs, advantages and mask, ``[B, T]``.
        stats: the current policy's token statistics (``logp`` carries the gradient).
        cfg: CovAnnealedConfig.
        state: ``step`` (0-based) and ``total_steps``, written by the loop; missing = the first step.
    """
    state = state or {}
    s = anneal_scale(state.get("step", 0), state.get("total_steps", 1), cfg.schedule, cfg.anneal_start,
                     cfg.anneal_final)
    if cfg.regularizer == "kl_cov":
        return kl_cov_loss(batch, stats, cfg, cfg.coef * s, "cov_annealed")
    return clip_cov_loss(batch, stats, cfg, cfg.clip_ratio * s, "cov_annealed")
