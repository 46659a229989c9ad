"""PAEC: position-aware entropy calibration (docs/methods.md §3, §7 S3, S4, S8, S9, §9). The paper's method section was
not available: the forms below are [S] (knowledge-graph notes, a machine-written summary) or [I], behind options.

    H^_t = H_p,t / log |V_p,t|   (0 if |V_p| = 1)          normalized local top-p entropy
    c_t  = exp(-(log pi(v1) - log pi(v2)))                  top-two competition, in (0, 1]
    u_t  = (1 - w) z(H^_t) + w z(c_t)                       z over the batch's valid tokens
    m_t  = sg[ sigmoid((u_t - tau) / T_m) * 1[u_t >= tau] ]  tau: the rho-quantile of u (top 1 - rho = 20 %)
    Hbar = sum_t m_t H_t / sum_t m_t                         full-vocabulary H with gradient, at masked positions
    L    = L_GRPO + lambda [max(0, rho_min H0 - Hbar)]^2     H0: mean Hbar of the first K = 4 steps (no penalty)

Shapes: every tensor ``[B, T]``. Fidelity card: docs/objectives/paec.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import GE0, GT0, at_least, within
from ..controllers import anchor_init, anchor_update
from ..token_stats import DEFAULT_TOP_P, TokenStats
from .common import masked_mean, upcast
from .entropy import high_entropy_mask
from .erpo import segment_zscore
from .grpo import GRPOConfig, clipped_pg_loss
from .registry import Claim, Needs, Panel, RLBatch, register_claim_figure, register_objective


@dataclass(frozen=True)
class PAECConfig(GRPOConfig):
    rho: float = 0.8
    """quantile of the mask score: the positions at or above it (the top 1 - rho = 20 %) are masked (notes: 0.8)"""
    rho_min: float = 0.8
    """the floor is rho_min * H0 (docs/methods.md §3(f)4)"""
    coef: float = 10.0
    """lambda, weight of the floor penalty (docs/methods.md §3(f)4: 1-10)"""
    anchor_steps: int = 4
    """K: H0 is the mean masked entropy of the first K steps, with no penalty (notes: 4)"""
    penalty: bool = True
    """the floor penalty; false = GRPO with the mask only computed and logged (the penalty ablation)"""
    position_mask: bool = True
    """the position mask; false = the penalty on every valid position (the mask ablation)"""
    competition_weight: float = 0.5
    """w: weight of the top-two competition z-score in the mask score (1 - w on the top-p entropy)"""
    mask_temperature: float = 0.1
    """T_m of the sigmoid that makes the mask soft within the selected positions"""
    normalize_topp: bool = True
    """top-p entropy divided by log |V_p|; false = the raw nucleus entropy"""
    top_p: float = DEFAULT_TOP_P
    """nucleus mass p of the local top-p entropy (the loop passes it to the forward pass)"""
    bonus_coef: float = 0.0
    """weight of a masked entropy bonus -beta * Hbar besides the floor penalty (docs/methods.md §9: may exist; off)"""

    RANGES = {"rho": within(0, 1, "[)", "a quantile"), "rho_min": GE0, "coef": GE0, "anchor_steps": at_least(1),
              "competition_weight": within(0, 1), "mask_temperature": GT0, "top_p": within(0, 1, "(]"),
              "bonus_coef": GE0}

    def needs(self) -> Needs:
        return dataclasses.replace(super().needs(), top_p=self.top_p, nucleus=True)


def position_mask(stats: TokenStats, mask: Tensor, cfg: PAECConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """PAEC's detached soft mask ``[B, T]`` over the top ``1 - rho`` valid positions by the score ``u`` (0 elsewhere and
    on padding), and its inputs (``topp``: normalized top-p entropy, ``competition``: exp(-top2 gap), ``u``)."""
    if stats.topp_entropy is None or stats.topp_size is None or stats.top2_gap is None:
        raise ValueError("paec: needs stats.topp_entropy, topp_size and top2_gap (entropy_rl.token_stats)")
    h = upcast(stats.topp_entropy.detach())
    if cfg.normalize_topp:
        size = stats.topp_size.to(h.dtype)
        h = torch.where(size > 1, h / torch.log(size.clamp(min=2.0)), torch.zeros_like(h))
    c = torch.exp(-upcast(stats.top2_gap.detach()))  # a tie gives 1, one candidate (gap inf) gives 0
    one = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)  # a single segment: the whole batch
    z = lambda x: segment_zscore(x, mask, one, 1, 1e-6)[0]  # noqa: E731
    u = (1.0 - cfg.competition_weight) * z(h) + cfg.competition_weight * z(c)
    sel, tau = high_entropy_mask(u, mask, 1.0 - cfg.rho)  # u >= tau: what torch.quantile(u, rho) selects
    m = torch.sigmoid((u - tau) / cfg.mask_temperature) * sel.to(u.dtype)
    return m, {"topp": h, "competition": c, "u": u}


def _anchor_init(cfg: PAECConfig) -> dict:
    return anchor_init()


def _anchor_step(state: dict, cfg: PAECConfig, row: dict) -> dict:
    return anchor_update(state, row["stats/paec_masked_entropy"], cfg.anchor_steps)


register_claim_figure("paec", "PAEC: maj@k against GRPO and without its penalty or its mask (docs/methods.md §3(d))",
                      "bars", ("maj@8", "pass@1", "train_entropy_late"))


@register_objective("paec", PAECConfig, init_state=_anchor_init, update_state=_anchor_step, metrics={
    "loss/paec_penalty": "PAEC: the floor penalty [max(0, ρ_min·H0 − H̄)]²",
    "stats/paec_masked_entropy": "PAEC: mean entropy H̄ at masked positions",
    "stats/paec_floor": "PAEC: the floor ρ_min·H0 (0 until the anchor H0 is measured)",
    "stats/paec_mask_frac": "PAEC: share of positions in the soft mask",
    "stats/paec_penalty_active": "binding: 1 when PAEC's floor penalty is in the loss and positive (H̄ below the "
                                 "floor); its run mean is the share of steps with the penalty active",
    "stats/paec_mask_weight": "PAEC: mean mask weight over response tokens",
    "stats/paec_topp_entropy": "PAEC: mean (normalized) top-p entropy",
    "stats/paec_competition": "PAEC: mean top-2 competition exp(−(log π(v1) − log π(v2)))",
    "stats/topp_overflow_frac": "PAEC: share of nuclei larger than the top-K the fused pass keeps",
}, panels=(Panel("stats/paec_masked_entropy", "PAEC: masked entropy H̄"),), claims=(
    Claim("paec", "paec", "grpo", "maj@8", "higher", "PAEC's maj@k is above GRPO's (paper: 41.6 against 35.5)",
          binding="stats/paec_penalty_active", threshold=0.1,
          why="the floor penalty is PAEC's only change to the loss: active in at least 10 % of the steps"),
    Claim("paec", "paec", "paec-no_penalty", "maj@8", "higher", "removing the floor penalty lowers maj@k (38.8)",
          binding="stats/paec_penalty_active", threshold=0.1,
          why="the ablated penalty must have acted in the full method: active in at least 10 % of the steps"),
    Claim("paec", "paec", "paec-no_mask", "maj@8", "higher", "removing the position mask lowers maj@k (38.3)",
          binding="stats/paec_mask_frac", threshold=0.05, why="at least 5 % of positions under the soft mask"),
))
def paec(batch: RLBatch, stats: TokenStats, cfg: PAECConfig, state: dict | None = None) -> tuple[Tensor, dict]:
    """PAEC: GRPO plus an anchored entropy-floor penalty at positions chosen by top-p entropy and top-two competition.

    Yang, Liu, Zheng, Yang, Li 2026, "PAEC: Position-Aware Entropy Calibration for LLM Reasoning in RLVR",
    https://arxiv.org/abs/2606.08543 (abstract [P]; details [S] notes): a detached soft mask from local top-p entropy
    and top-two competition over the top 20 % positions (rho = 0.8); ``L = L_GRPO + lambda [max(0, rho_min H0 -
    Hbar)]^2``, Hbar the masked mean entropy, H0 from the first K = 4 steps.
    Deviation: the mask's form, rho_min = 0.8, lambda = 10, p = 0.9, w = 0.5 and T_m = 0.1 are ours [I].
    Deviation: Hbar uses the full-vocabulary entropy with gradient (the top-p entropy has none) [I].
    Card: docs/objectives/paec.md; docs/methods.md §3, §9.

    Args:
        batch: old log-probs, advantages and mask, ``[B, T]``.
        stats: the current policy's token statistics (``logp`` and ``entropy`` carry gradients; ``topp_entropy``,
            ``topp_size``, ``top2_gap`` are read).
        cfg: PAECConfig.
        state: controller state (``anchor`` = H0 once measured, ``anchor_sum``, ``anchor_steps``).
    """
    loss, metrics = clipped_pg_loss(batch, stats, cfg, name="paec")
    valid = batch.mask.to(upcast(stats.entropy).dtype)
    m_soft, parts = position_mask(stats, batch.mask, cfg)
    m = m_soft if cfg.position_mask else valid
    weight = m.sum()
    h_sum = (m * stats.entropy).sum()  # gradient only where m > 0
    h_bar = h_sum / weight if weight > 0 else h_sum  # no selected position: 0, with a zero gradient
    h0 = (state or {}).get("anchor")
    floor = cfg.rho_min * float(h0) if h0 is not None else 0.0
    pen = torch.relu(floor - h_bar) ** 2 if h0 is not None and weight > 0 else h_sum * 0.0
    if cfg.penalty and h0 is not None:
        loss = loss + cfg.coef * pen
    if cfg.bonus_coef > 0 and h0 is not None:
        loss = loss - cfg.bonus_coef * h_bar
    metrics.update({
        "loss/total": loss.detach(),
        "loss/paec_penalty": pen.detach(),
        "stats/paec_masked_entropy": h_bar.detach(),
        "stats/paec_floor": torch.tensor(floor),
        "stats/paec_penalty_active": torch.tensor(float(cfg.penalty and h0 is not None and float(pen.detach()) > 0)),
        "stats/paec_mask_frac": masked_mean((m_soft > 0).to(valid.dtype), batch.mask),
        "stats/paec_mask_weight": masked_mean(m_soft, batch.mask),
        "stats/paec_topp_entropy": masked_mean(parts["topp"], batch.mask),
        "stats/paec_competition": masked_mean(parts["competition"], batch.mask),
        "stats/topp_overflow_frac": masked_mean(stats.topp_overflow.to(valid.dtype), batch.mask)
        if stats.topp_overflow is not None else torch.tensor(0.0),
    })
    return loss, metrics
