"""Per-token statistics of the current policy from its final hidden states and LM head.

Shapes: ``hidden [N, H]`` (the valid response positions only, flattened), ``weight [V, H]``, ``ids [N]``.
Logits are computed in fp32 at the sampling temperature, ``z = (h W^T + b) / T``, and give

* ``logp``:    log pi(y | prefix) of the sampled token,                       [N]
* ``entropy``: full-vocabulary entropy H = lse(z) - sum softmax(z) z,          [N]

both differentiable. This is the single path every objective uses; it works through the tokens in chunks so
that at most ``chunk_size x V`` logits exist at a time. (The fused, recompute-in-backward version with top-p
entropy and top-2 margins is the subject of a later issue; its interface is this one.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TokenStats:
    logp: Tensor
    """log-probability of the sampled token, [B, T] (0 at masked positions)"""
    entropy: Tensor
    """full-vocabulary entropy, [B, T] (0 at masked positions)"""


def token_stats_flat(
    hidden: Tensor, weight: Tensor, ids: Tensor, temperature: float = 1.0, bias: Tensor | None = None,
    chunk_size: int = 4096,
) -> tuple[Tensor, Tensor]:
    """(logp [N], entropy [N]) in fp32 from hidden [N, H], weight [V, H] and token ids [N]."""
    dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32  # accumulate in >= fp32
    logps, ents = [], []
    for s in range(0, hidden.shape[0], chunk_size):
        h = hidden[s : s + chunk_size]
        z = h.to(dt) @ weight.to(dt).T  # [n, V]
        if bias is not None:
            z = z + bias.to(dt)
        z = z / temperature
        logq = torch.log_softmax(z, dim=-1)  # [n, V]
        logps.append(logq.gather(-1, ids[s : s + chunk_size, None].long()).squeeze(-1))
        ents.append(-(logq.exp() * logq).sum(-1))
    if not logps:
        empty = hidden.new_zeros(0, dtype=dt)
        return empty, empty
    return torch.cat(logps), torch.cat(ents)


def token_stats(
    hidden: Tensor, weight: Tensor, ids: Tensor, mask: Tensor, temperature: float = 1.0,
    bias: Tensor | None = None,
) -> TokenStats:
    """Statistics at the valid positions of ``mask [B, T]``; ``hidden [B, T, H]`` predicts ``ids [B, T]``."""
    sel = mask.bool()
    logp_flat, ent_flat = token_stats_flat(hidden[sel], weight, ids[sel], temperature, bias)
    logp = torch.zeros(mask.shape, dtype=logp_flat.dtype, device=hidden.device)
    ent = torch.zeros(mask.shape, dtype=ent_flat.dtype, device=hidden.device)
    return TokenStats(logp=logp.masked_scatter(sel, logp_flat), entropy=ent.masked_scatter(sel, ent_flat))
