"""A worked example of adding an objective (docs/adding-an-objective.md): GRPO with its token advantages whitened.

    A'_t = (A_t - mean_M(A)) / (std_M(A) + eps)      mean and std over the valid tokens of the batch
    loss = the GRPO loss with A' in place of A

PPO implementations commonly normalize advantages over the batch this way (CleanRL's ``norm_adv``); on top of
GRPO's per-group normalization it rescales every group's advantages by one batch-wide factor. Shapes: ``[B, T]``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor

from ..config import GT0
from ..token_stats import TokenStats
from .common import masked_mean, upcast
from .grpo import GRPOConfig, clipped_pg_loss
from .registry import RLBatch, register_objective


@dataclass(frozen=True)
class WhitenedConfig(GRPOConfig):
    eps: float = 1e-8
    """added to the std before dividing (CleanRL: 1e-8)"""

    RANGES = {"eps": GT0}


def masked_moments(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and population std of ``x`` over the valid tokens of ``mask`` (detached, at least fp32)."""
    a = upcast(x.detach())
    mean = masked_mean(a, mask)
    return mean, masked_mean((a - mean) ** 2, mask).sqrt()


def whiten(adv: Tensor, mask: Tensor, eps: float, moments: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """``(A - mean) / (std + eps)`` over the valid tokens of ``mask`` (population std), 0 on padding."""
    mean, std = moments or masked_moments(adv, mask)
    return (upcast(adv.detach()) - mean) / (std + eps) * mask.to(mean.dtype)


@register_objective("grpo_whitened", WhitenedConfig,
                    metrics={"stats/adv_std_before_whitening": "grpo_whitened: std of the token advantages it divided by"})
def grpo_whitened(batch: RLBatch, stats: TokenStats, cfg: WhitenedConfig, state: dict | None = None
                  ) -> tuple[Tensor, dict]:
    """GRPO with batch-whitened token advantages (a worked example, not a paper's method).

    The GRPO loss of Shao et al. 2024, https://arxiv.org/abs/2402.03300 §4.1.2 (docs/methods.md §5.1), with
    ``A' = (A - mean A) / (std A + eps)`` over the batch's valid tokens, as PPO codebases do (CleanRL ``norm_adv``).
    Deviation: not from a paper; it shows how an objective is added (docs/adding-an-objective.md).
    Card: docs/objectives/grpo_whitened.md; docs/methods.md §5.1.

    Args:
        batch: old log-probs, advantages and mask, ``[B, T]``.
        stats: the current policy's token statistics (``logp`` carries the gradient).
        cfg: WhitenedConfig.
        state: controller state (unused).
    """
    moments = masked_moments(batch.advantages, batch.mask)
    a = whiten(batch.advantages, batch.mask, cfg.eps, moments)
    loss, metrics = clipped_pg_loss(dataclasses.replace(batch, advantages=a.to(batch.advantages.dtype)), stats, cfg,
                                    name="grpo_whitened")
    metrics["stats/adv_std_before_whitening"] = moments[1]
    return loss, metrics
