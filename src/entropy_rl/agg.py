"""One loss-aggregation helper, used by every objective (after verl ``agg_loss``; docs/methods.md §5.6).

``loss`` and ``mask`` are ``[B, T]``; masked positions never count.

| mode                      | formula                                               | used by                  |
|---------------------------|-------------------------------------------------------|--------------------------|
| ``token-mean``            | sum(M l) / sum(M)                                     | DAPO, 80/20, Clip/KL-Cov |
| ``seq-mean-token-mean``   | mean over rows with >= 1 token of sum_t(M l) / sum_t M | GRPO (DeepSeekMath)      |
| ``seq-mean-token-sum``    | mean over rows with >= 1 token of sum_t(M l)          | -                        |
| ``seq-mean-token-sum-norm`` | sum(M l) / (B * L_max), L_max a constant            | Dr. GRPO (oat, TRL)      |

For ``seq-mean-token-sum-norm`` the divisor is the *constant* ``l_max`` (the response-length cap) times the
number of rows, as in oat/TRL, so that the loss does not change with padding; verl's default divisor (the
padded length, no division by B) changes with padding and batch size, which we do not follow [I].
An all-masked batch gives a zero loss that still carries a (zero) gradient.

Under gradient accumulation (``rl.micro_batches > 1``) each micro-batch's loss is weighted by
``agg_denominator(micro) / agg_denominator(mini-batch)``, so that the accumulated gradient equals the mini-batch's
exactly (global counts, as upstream verl; docs/methods.md §5.6 (i)).
"""
from __future__ import annotations

from torch import Tensor

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def agg_denominator(mask: Tensor, mode: str) -> float:
    """What ``agg_loss`` divides the masked sum by, up to constants: valid tokens (token-mean), rows with a
    valid token (seq-mean-*), all rows (seq-mean-token-sum-norm, whose L_max is a constant)."""
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode '{mode}'; valid: {', '.join(AGG_MODES)}")
    if mode == "token-mean":
        return float(mask.sum())
    if mode == "seq-mean-token-sum-norm":
        return float(mask.shape[0])
    return float((mask.sum(-1) > 0).sum())


def agg_loss(loss: Tensor, mask: Tensor, mode: str, l_max: int | None = None) -> Tensor:
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode '{mode}'; valid: {', '.join(AGG_MODES)}")
    m = mask.to(loss.dtype)
    masked = loss * m
    if mode == "token-mean":
        return masked.sum() / m.sum().clamp(min=1.0)
    if mode == "seq-mean-token-sum-norm":
        if l_max is None or l_max <= 0:
            raise ValueError("agg mode 'seq-mean-token-sum-norm' needs a constant l_max > 0 (the length cap)")
        return masked.sum() / (loss.shape[0] * l_max)
    tokens = m.sum(-1)  # [B]
    per_seq = masked.sum(-1)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq / tokens.clamp(min=1.0)
    rows = (tokens > 0).to(loss.dtype)
    return (per_seq * rows).sum() / rows.sum().clamp(min=1.0)
