"""Pieces shared by the policy-gradient objectives: the clipped surrogate and the k3 KL (methods.md §0, §5.1)."""
from __future__ import annotations

import torch
from torch import Tensor


def upcast(x: Tensor) -> Tensor:
    """At least fp32 (bf16/fp16 → fp32; fp64 stays fp64, so float64 references are exact)."""
    return x if x.dtype == torch.float64 else x.float()


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, adv: Tensor, clip_low: float, clip_high: float, clip_ratio_c: float | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate as a per-token loss (verl sign convention), with asymmetric bounds and
    optional dual clipping (Ye et al. 2020; verl ``clip_ratio_c``, applied where A < 0).

    ``l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))``, ``r = exp(logp - old_logp)``, ratios in fp32.
    Returns the ``[B, T]`` loss and the ``[B, T]`` indicator of clipped tokens.
    """
    log_ratio = (upcast(logp) - upcast(old_logp)).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    clipped = (loss_clipped > loss_unclipped).float()
    if clip_ratio_c is not None:
        dual = torch.minimum(-adv * clip_ratio_c, loss)
        loss = torch.where(adv < 0, dual, loss)
    return loss, {"ratio": ratio, "clipped": clipped, "log_ratio": log_ratio}


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref): ``exp(ref - logp) - (ref - logp) - 1`` (>= 0), DeepSeekMath."""
    d = (upcast(ref_logp) - upcast(logp)).clamp(-20.0, 20.0)
    return torch.exp(d) - d - 1.0


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)
