"""Entropy-preserving RL (Petrenko et al.): REPO and REPO-R (advantage modifications with the ζ controller) and
ADAPO (adaptive asymmetric clipping); docs/methods.md §2, §7 S10, §9. The paper's method section was not available: the
forms are [S] (papernotes, the SkyRL PR) or [I], each behind an option. All three layer on the DAPO recipe (§9).

    REPO    A' = A - zeta L                                         L = log pi + H  (or log pi)
    REPO-R  A' = max(A (1 - zeta L), 0) for A > 0,  min(A (1 + zeta L), 0) for A < 0   (beta = zeta |A|)
    ADAPO   the clipped surrogate with eps_high from a controller   eps_high <- clip(eps_high c^(+-1), lo, hi)

``log pi`` is the current forward pass's, detached and clamped below at -20; ``A'`` replaces ``A`` in the clipped
surrogate. Shapes: every tensor ``[B, T]``. Fidelity cards: docs/objectives/{repo,repo_r,adapo}.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import ANY, GT0, ConfigError, Range, above, at_least
from ..controllers import clip_high_update, entropy_target, zeta_update
from ..token_stats import TokenStats
from .common import clipped_surrogate, masked_mean, upcast
from .grpo import DAPOConfig, clipped_pg_loss, pg_loss
from .registry import Claim, EntropyTarget, Panel, RLBatch, register_claim_figure, register_objective


register_claim_figure("repo_adapo", "REPO-R and ADAPO keep entropy up where GRPO lets it fall (docs/methods.md §2(d))",
                      "curves", ("stats/entropy", "heldout/pass@1", "stats/clip_frac"))
register_claim_figure("bf16", "Log-probs and ratio in bf16 against fp32, on DAPO (ADAPO paper, docs/methods.md §2(f))",
                      "curves", ("stats/entropy", "stats/clip_frac", "heldout/pass@1"))


# ---------------------------------------------------------------------------------------------- REPO / REPO-R
@dataclass(frozen=True)
class REPOConfig(EntropyTarget, DAPOConfig):
    """`adaptive`: the zeta controller toward `target_entropy`, once per RL step (false = a fixed `zeta`)."""

    zeta: float = 1e-3
    """initial zeta (the controller's start; the fixed value when not `adaptive`); REPO-R: 1e-3 (paper App. D.2)"""
    centered: bool = True
    """L = log pi + H, the exact centred log-prob (E_pi[L] = 0); false = the raw log pi of the sampled token"""
    zeta_min: float = 1e-4
    """lower bound of |zeta| (REPO-R: 1e-4, paper App. D.2)"""
    zeta_max: float = 0.05
    """upper bound of |zeta| (REPO-R: 0.05, paper App. D.2)"""
    signed: bool = True
    """the controller may flip zeta's sign to push entropy down (docs/methods.md §9); false keeps zeta in [zeta_min, zeta_max]"""
    logp_floor: float = -20.0
    """log pi is clamped below at this value before it enters L (docs/methods.md §9)"""

    RANGES = {"zeta": ANY, "zeta_min": GT0, "zeta_max": GT0, "logp_floor": Range(hi=0, hi_open=True, note="a log-prob")}

    def __post_init__(self):
        super().__post_init__()
        if self.zeta_min > self.zeta_max:
            raise ConfigError(f"zeta_min: must be <= zeta_max ({self.zeta_max}), got {self.zeta_min}")
        lo = -self.zeta_max if self.signed else self.zeta_min
        if self.adaptive and not (lo <= self.zeta <= self.zeta_max and abs(self.zeta) >= self.zeta_min):
            sign = " (or its negative, with signed: true)" if self.signed else ""
            raise ConfigError(f"zeta: the initial value must have |zeta| in [zeta_min, zeta_max] = "
                              f"[{self.zeta_min}, {self.zeta_max}]{sign}, got {self.zeta}")


@dataclass(frozen=True)
class REPORConfig(REPOConfig):
    centered: bool = False
    """raw log pi of the sampled token (SkyRL PR: "a practical stand-in for the centred L"); true = log pi + H"""
    positive_only: bool = False
    """rescale positive advantages only (beta = zeta max(A, 0); possibly the submitted version, docs/methods.md §9)"""


def repo_advantage(adv: Tensor, logp: Tensor, entropy: Tensor, mask: Tensor, zeta: float, *, centered: bool,
                   rescale: bool, positive_only: bool = False, floor: float = -20.0) -> Tensor:
    """REPO's ``A - zeta L`` or REPO-R's clamped rescale (``rescale=True``), ``[B, T]``, 0 on padding; ``L`` from the
    detached ``logp`` (clamped below at ``floor``) plus ``entropy`` when ``centered``."""
    a = upcast(adv.detach())
    lp = upcast(logp.detach()).clamp(min=floor)
    big_l = lp + upcast(entropy.detach()) if centered else lp
    if not rescale:
        out = a - zeta * big_l
    else:  # beta = zeta |A|: A (1 - zeta L) for A > 0, A (1 + zeta L) for A < 0, clamped so the sign never flips
        pos = (a * (1.0 - zeta * big_l)).clamp(min=0.0)
        neg = a if positive_only else (a * (1.0 + zeta * big_l)).clamp(max=0.0)
        out = torch.where(a > 0, pos, torch.where(a < 0, neg, torch.zeros_like(a)))
    return out * mask.to(out.dtype)


def zeta_init(cfg: REPOConfig) -> dict:
    return {"zeta": float(cfg.zeta), "entropy_target": cfg.target_entropy} if cfg.adaptive else {}


def zeta_step(state: dict, cfg: REPOConfig, row: dict) -> dict:
    """After a step: set the target (the first step's entropy) or move zeta toward it; applies from the next step."""
    if not cfg.adaptive:
        return state
    h = float(row["stats/entropy"])
    target = entropy_target(state, h, cfg.target_entropy)
    zeta = zeta_update(float(state.get("zeta", cfg.zeta)), h, target, lo=cfg.zeta_min, hi=cfg.zeta_max,
                       signed=cfg.signed)
    return {**state, "zeta": zeta, "entropy_target": target}


def current_zeta(cfg: REPOConfig, state: dict | None) -> float:
    return float(state["zeta"]) if cfg.adaptive and state and "zeta" in state else float(cfg.zeta)


def repo_loss(batch: RLBatch, stats: TokenStats, cfg: REPOConfig, state: dict | None, rescale: bool, name: str,
              positive_only: bool = False):
    zeta = current_zeta(cfg, state)
    a = repo_advantage(batch.advantages, stats.logp, stats.entropy, batch.mask, zeta, centered=cfg.centered,
                       rescale=rescale, positive_only=positive_only, floor=cfg.logp_floor)
    loss, metrics = clipped_pg_loss(dataclasses.replace(batch, advantages=a.to(batch.advantages.dtype)), stats, cfg,
                                    name=name)
    metrics["stats/zeta"] = torch.tensor(zeta)
    metrics["stats/zeta_at_bound"] = torch.tensor(float(cfg.adaptive and (abs(zeta) <= cfg.zeta_min
                                                                          or abs(zeta) >= cfg.zeta_max)))
    metrics["stats/repo_adv_shift"] = masked_mean(a - upcast(batch.advantages), batch.mask).detach()
    return loss, metrics


REPO_METRICS = {
    "stats/zeta": "REPO / REPO-R: the ζ controller's value applied at this step",
    "stats/zeta_at_bound": "binding: 1 when |ζ| sits at zeta_min or zeta_max (0 with a fixed ζ); its run mean is the "
                           "share of steps at a bound",
    "stats/repo_adv_shift": "REPO / REPO-R: mean change of the token advantage, A' − A, over response tokens",
}


@register_objective("repo", REPOConfig, init_state=zeta_init, update_state=zeta_step, metrics=REPO_METRICS,
                    panels=(Panel("stats/zeta", "REPO: ζ"),))
def repo(batch: RLBatch, stats: TokenStats, cfg: REPOConfig, state: dict | None = None) -> tuple[Tensor, dict]:
    """REPO: the DAPO loss with the advantage A - zeta L, L the centred log-prob, zeta from an entropy controller.

    Petrenko et al. 2026, "Entropy-Preserving Reinforcement Learning", https://arxiv.org/abs/2603.11682 (abstract
    [P]; equations [S] papernotes): Theorem 1, ``dH ~ -E[A L pi]`` with ``L = log pi + H``; REPO
    ``A_REPO = A - beta_s L`` removes the correlation of A and log pi that drives entropy collapse.
    Deviation: beta_s = zeta, one scalar per step from the REPO-R controller and bounds (docs/methods.md §9) [I].
    Card: docs/objectives/repo.md; docs/methods.md §2, §9.

    Args:
        batch: old log-probs, advantages and mask, ``[B, T]``.
        stats: the current policy's token statistics (``logp`` carries the gradient; ``entropy`` is only read).
        cfg: REPOConfig.
        state: controller state (``zeta``, ``entropy_target``); empty = the initial ``zeta``.
    """
    return repo_loss(batch, stats, cfg, state, rescale=False, name="repo")


@register_objective("repo_r", REPORConfig, init_state=zeta_init, update_state=zeta_step, metrics=REPO_METRICS,
                    panels=(Panel("stats/zeta", "REPO: ζ"),), claims=(
    Claim("repo_adapo", "repo_r", "grpo", "train_entropy_late", "higher", "REPO-R keeps entropy above GRPO's",
          binding="stats/zeta_at_bound", bound_if="<=", threshold=0.5, why="a controller pinned at a bound in more than half of the steps is not controlling"),
    Claim("repo_adapo", "repo_r", "grpo", "entropy_drift", "lower",
          "REPO-R holds entropy nearer its start than GRPO (paper: +7 % against -57 %)", binding="stats/zeta_at_bound", bound_if="<=", threshold=0.5, why="a controller pinned at a bound in more than half of the steps is not controlling"),
))
def repo_r(batch: RLBatch, stats: TokenStats, cfg: REPORConfig, state: dict | None = None) -> tuple[Tensor, dict]:
    """REPO-R: the DAPO loss with the advantage rescaled by (1 -+ zeta log pi), clamped, zeta from a controller.

    Petrenko et al. 2026, https://arxiv.org/abs/2603.11682 (App. D.2 per the SkyRL PR #1896 [S]):
    ``A+ = max(A (1 - zeta log pi), 0)``, ``A- = min(A (1 + zeta log pi), 0)`` (beta_s = zeta |A|), log pi of the sampled
    token detached and clamped at -20, after advantage normalization; zeta0 = 1e-3, |zeta| in [1e-4, 0.05], doubled
    or halved once per iteration toward the initial entropy, with a sign flip at zeta_min (docs/methods.md §9) [S].
    Deviation: the controller measures the step's mean update entropy (`stats/entropy`) [I].
    Card: docs/objectives/repo_r.md; docs/methods.md §2, §9.

    Args:
        batch: old log-probs, advantages and mask, ``[B, T]``.
        stats: the current policy's token statistics (``logp`` carries the gradient).
        cfg: REPORConfig.
        state: controller state (``zeta``, ``entropy_target``); empty = the initial ``zeta``.
    """
    return repo_loss(batch, stats, cfg, state, rescale=True, name="repo_r", positive_only=cfg.positive_only)


# ---------------------------------------------------------------------------------------------- ADAPO
@dataclass(frozen=True)
class ADAPOConfig(EntropyTarget, DAPOConfig):
    """`adaptive`: the eps_high controller toward `target_entropy`, once per RL step (false = DAPO)."""

    clip_high: float = 0.28
    """initial eps_high (DAPO's clip-higher 0.28); the fixed value when not `adaptive`"""
    clip_high_min: float = 0.2
    """lower bound of eps_high (docs/methods.md §2(f)4)"""
    clip_high_max: float = 0.5
    """upper bound of eps_high (docs/methods.md §2(f)4)"""
    clip_factor: float = 1.1
    """multiplicative step c of eps_high per RL step (docs/methods.md §2(f)4)"""

    RANGES = {"clip_high_min": at_least(0), "clip_high_max": at_least(0), "clip_factor": above(1)}

    def __post_init__(self):
        super().__post_init__()
        if self.clip_high_min > self.clip_high_max:
            raise ConfigError(f"clip_high_min: must be <= clip_high_max ({self.clip_high_max}), got {self.clip_high_min}")
        if self.adaptive and not self.clip_high_min <= self.clip_high <= self.clip_high_max:
            raise ConfigError(f"clip_high: the initial eps_high must lie in [clip_high_min, clip_high_max] = "
                              f"[{self.clip_high_min}, {self.clip_high_max}], got {self.clip_high}")


def _clip_init(cfg: ADAPOConfig) -> dict:
    return {"clip_high": float(cfg.clip_high), "entropy_target": cfg.target_entropy} if cfg.adaptive else {}


def _clip_step(state: dict, cfg: ADAPOConfig, row: dict) -> dict:
    if not cfg.adaptive:
        return state
    h = float(row["stats/entropy"])
    target = entropy_target(state, h, cfg.target_entropy)
    eps = clip_high_update(float(state.get("clip_high", cfg.clip_high)), h, target, factor=cfg.clip_factor,
                           lo=cfg.clip_high_min, hi=cfg.clip_high_max)
    return {**state, "clip_high": eps, "entropy_target": target}


@register_objective("adapo", ADAPOConfig, init_state=_clip_init, update_state=_clip_step,
                    metrics={"stats/clip_high": "ADAPO: the adaptive ε_high applied at this step",
                             "stats/clip_high_at_bound": "binding: 1 when ADAPO's ε_high sits at clip_high_min or "
                                                         "clip_high_max (0 when not adaptive); its run mean is the "
                                                         "share of steps at a bound"},
                    panels=(Panel("stats/clip_high", "ADAPO: ε_high"),), claims=(
    Claim("repo_adapo", "adapo", "grpo", "train_entropy_late", "higher", "ADAPO keeps entropy above GRPO's",
          binding="stats/clip_high_at_bound", bound_if="<=", threshold=0.5, why="a controller pinned at a bound in more than half of the steps is not controlling"),
    Claim("repo_adapo", "adapo", "dapo", "entropy_drift", "lower",
          "ADAPO holds entropy nearer its start than DAPO (paper: +102 % against +298 %)", binding="stats/clip_high_at_bound", bound_if="<=", threshold=0.5, why="a controller pinned at a bound in more than half of the steps is not controlling"),
    Claim("bf16", "dapo-bf16", "dapo", "train_entropy_late", "lower", "a bf16 ratio biases toward entropy collapse"),
))
def adapo(batch: RLBatch, stats: TokenStats, cfg: ADAPOConfig, state: dict | None = None) -> tuple[Tensor, dict]:
    """ADAPO: the DAPO loss whose upper clip eps_high follows an entropy controller (adaptive asymmetric clipping).

    Petrenko et al. 2026, https://arxiv.org/abs/2603.11682 (arXiv version only, docs/methods.md §9): raise eps_high
    when entropy is too low, lower it when too high [S papernotes]; clipping bounds the entropy change of a step
    (Theorem 2). The update rule is unknown: ``eps <- clip(eps * 1.1^(+-1), 0.2, 0.5)`` toward the initial entropy [I].
    Precision experiment: ``logprob_dtype: bfloat16`` rounds the log-probs before the ratio (Theorem 3) [I].
    Card: docs/objectives/adapo.md; docs/methods.md §2, §9.

    Args:
        batch: old log-probs, advantages and mask, ``[B, T]``.
        stats: the current policy's token statistics (``logp`` carries the gradient).
        cfg: ADAPOConfig.
        state: controller state (``clip_high``, ``entropy_target``); empty = the initial ``clip_high``.
    """
    eps = float(state["clip_high"]) if cfg.adaptive and state and "clip_high" in state else float(cfg.clip_high)
    pg, parts = clipped_surrogate(stats.logp, batch.old_logp, batch.advantages, cfg.clip_low, eps, cfg.clip_ratio_c)
    loss, metrics = pg_loss(batch, stats, cfg, pg, parts, "adapo")
    metrics["stats/clip_high"] = torch.tensor(eps)
    metrics["stats/clip_high_at_bound"] = torch.tensor(float(cfg.adaptive and (eps <= cfg.clip_high_min
                                                                               or eps >= cfg.clip_high_max)))
    return loss, metrics
