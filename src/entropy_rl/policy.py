"""The policy forward pass shared by SFT, RL and evaluation: final hidden states → token statistics.

There is one path: the decoder's final (normed) hidden states at the positions that predict the response
tokens, then :func:`entropy_rl.token_stats.token_stats` (the fused, chunked pass) with the LM head. Position ids
follow the attention mask (as ``generate`` does with left padding), so the log-probs here match the ones the
sampler used. The LM head is read directly (``lm_head.weight``, ``lm_head.bias``): it is never quantized
(bitsandbytes skips it), and PEFT wraps the decoder, not the head, so this works for plain, LoRA and 4-bit models.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import fields

import torch

from .rollout import Rollouts
from .token_stats import DEFAULT_TOP_K, DEFAULT_TOP_P, TokenStats, token_stats


MAX_GROUPS = 4
"""at most this many forward passes per call of :func:`policy_stats`, rows grouped by length"""
PASS_COST = 64
"""the fixed cost of one more forward pass, in padded token positions (on the tiny CPU model, forward and backward
of 4 mini-batches of 32 rows took 0.64-0.72 s in one pass each, 0.58-0.60 s in two and 0.56-0.57 s in three)"""


def length_groups(lengths: list[int], max_groups: int = MAX_GROUPS, pass_cost: int = PASS_COST) -> list[list[int]]:
    """Rows grouped by length (each row's used positions: prompt tokens plus response tokens), for forward passes
    that each stop at their longest row: the rows sorted by length, cut into 1 to ``max_groups`` groups of equal
    size, whichever has the fewest padded positions plus ``pass_cost`` per pass."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best, best_cost = [order], None
    for k in range(1, min(max_groups, len(order)) + 1):
        cuts = [round(j * len(order) / k) for j in range(k + 1)]
        groups = [order[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
        cost = sum(len(g) * lengths[g[-1]] + pass_cost for g in groups)
        if best_cost is None or cost < best_cost:
            best, best_cost = groups, cost
    return best


def policy_stats(model, ro: Rollouts, temperature: float = 1.0, *, top_p: float = DEFAULT_TOP_P,
                 top_k: int = DEFAULT_TOP_K, nucleus: bool = True) -> TokenStats:
    """Token statistics ``[B, T]`` of ``model`` on the responses of ``ro`` (``logp``, ``entropy`` differentiable;
    ``top_p``/``top_k`` set the nucleus of ``topp_entropy``; ``nucleus=False``: the nucleus fields are None, not
    computed).

    Only the positions some row uses are computed: the rows are grouped by length (:func:`length_groups`) and each
    group's forward pass spans its own columns, from its first prompt token to its longest response's last token
    (causal attention: the padding after a response does not change the outputs before it). The statistics are put
    back in the rows' order, 0 at the positions no pass computed."""
    B, T = ro.response_ids.shape
    n_prompt = ro.prompt_ids.shape[1]
    first = ro.prompt_mask.long().argmax(1)  # each row's first prompt column (left padding)
    lengths = ro.lengths
    used = (n_prompt - first + lengths).tolist()
    groups = length_groups(used)
    parts = []
    for g in groups:
        rows = torch.tensor(g, device=lengths.device)
        a, w = int(first[rows].min()), max(int(lengths[rows].max()), 1)
        parts.append(_stats(model, ro.select(rows), a, w, temperature, top_p, top_k, nucleus))
    order = torch.tensor([i for g in groups for i in g], device=lengths.device)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(B, device=order.device)
    out = {}
    for f in fields(TokenStats):
        vals = [getattr(p, f.name) for p in parts]
        if vals[0] is None:
            out[f.name] = None
            continue
        out[f.name] = torch.cat([torch.nn.functional.pad(v, (0, T - v.shape[1])) for v in vals])[inv]
    return TokenStats(**out)


def _stats(model, ro: Rollouts, a: int, w: int, temperature: float, top_p: float, top_k: int,
           nucleus: bool = True) -> TokenStats:
    """Statistics ``[b, w]`` of the first ``w`` response positions, from one forward pass over prompt columns ``a:``
    and response columns ``:w``."""
    causal = _causal_lm(model)
    ids = torch.cat([ro.prompt_ids[:, a:], ro.response_ids[:, :w]], 1)
    am = torch.cat([ro.prompt_mask[:, a:], ro.response_mask[:, :w]], 1)
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    hidden = causal.model(input_ids=ids, attention_mask=am, position_ids=pos, use_cache=False).last_hidden_state
    n_prompt = ro.prompt_ids.shape[1] - a
    h = hidden[:, n_prompt - 1 : n_prompt - 1 + w]  # [b, w, H]: position j predicts token j + 1
    head = causal.lm_head
    if hasattr(head, "lora_A"):  # an adapter on the head would be silently ignored by reading its weight
        raise NotImplementedError("LoRA on lm_head is not supported: token statistics read lm_head.weight directly")
    return token_stats(h, head.weight, ro.response_ids[:, :w], ro.response_mask[:, :w], temperature, head.bias,
                       top_p=top_p, top_k=top_k, nucleus=nucleus)


def _causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def frozen_stats(model, ro: Rollouts, temperature: float = 1.0, reference: bool = False,
                 batch_size: int = 256, *, top_p: float = DEFAULT_TOP_P, top_k: int = DEFAULT_TOP_K,
                 nucleus: bool = True) -> TokenStats:
    """Detached statistics; with ``reference=True`` the LoRA adapter is disabled (the frozen base = pi_ref)."""
    ctx = model.disable_adapter() if reference and hasattr(model, "disable_adapter") else nullcontext()
    was_training = model.training
    model.eval()
    parts = []
    with ctx:
        for s in range(0, ro.response_ids.shape[0], batch_size):
            parts.append(policy_stats(model, ro.select(slice(s, s + batch_size)), temperature, top_p=top_p,
                                      top_k=top_k, nucleus=nucleus))
    if was_training:
        model.train()
    return TokenStats.cat(parts)
