"""The policy forward pass shared by SFT, RL and evaluation: final hidden states → token statistics.

There is one path: the decoder's final (normed) hidden states at the positions that predict the response
tokens, then :func:`entropy_rl.token_stats.token_stats` (the fused, chunked pass) with the LM head. Position ids
follow the attention mask (as ``generate`` does with left padding), so the log-probs here match the ones the
sampler used. The LM head is read directly (``lm_head.weight``, ``lm_head.bias``): it is never quantized
(bitsandbytes skips it), and PEFT wraps the decoder, not the head, so this works for plain, LoRA and 4-bit models.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .rollout import Rollouts
from .token_stats import DEFAULT_TOP_K, DEFAULT_TOP_P, TokenStats, token_stats


def _causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def policy_stats(model, ro: Rollouts, temperature: float = 1.0, *, top_p: float = DEFAULT_TOP_P,
                 top_k: int = DEFAULT_TOP_K) -> TokenStats:
    """Token statistics ``[B, T]`` of ``model`` on the responses of ``ro`` (``logp``, ``entropy`` differentiable;
    ``top_p``/``top_k`` set the nucleus of ``topp_entropy``)."""
    causal = _causal_lm(model)
    ids, am = ro.input_ids(), ro.attention_mask()
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    hidden = causal.model(input_ids=ids, attention_mask=am, position_ids=pos, use_cache=False).last_hidden_state
    n_prompt = ro.prompt_ids.shape[1]
    h = hidden[:, n_prompt - 1 : -1]  # [B, T, H]: position j predicts token j + 1
    head = causal.lm_head
    if hasattr(head, "lora_A"):  # an adapter on the head would be silently ignored by reading its weight
        raise NotImplementedError("LoRA on lm_head is not supported: token statistics read lm_head.weight directly")
    return token_stats(h, head.weight, ro.response_ids, ro.response_mask, temperature, head.bias,
                       top_p=top_p, top_k=top_k)


@torch.no_grad()
def frozen_stats(model, ro: Rollouts, temperature: float = 1.0, reference: bool = False,
                 batch_size: int = 256, *, top_p: float = DEFAULT_TOP_P, top_k: int = DEFAULT_TOP_K) -> TokenStats:
    """Detached statistics; with ``reference=True`` the LoRA adapter is disabled (the frozen base = pi_ref)."""
    ctx = model.disable_adapter() if reference and hasattr(model, "disable_adapter") else nullcontext()
    was_training = model.training
    model.eval()
    parts = []
    with ctx:
        for s in range(0, ro.response_ids.shape[0], batch_size):
            parts.append(policy_stats(model, ro.select(slice(s, s + batch_size)), temperature, top_p=top_p,
                                      top_k=top_k))
    if was_training:
        model.train()
    return TokenStats.cat(parts)
