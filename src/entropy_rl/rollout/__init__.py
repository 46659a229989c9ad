"""Rollout: sample G responses per prompt.

One interface, :class:`Rollout`, returns a :class:`Rollouts` batch; backends (Hugging Face ``generate`` here,
vLLM on a GPU later) differ only in how they sample. Shapes: ``B = n_prompts x G`` (groups contiguous),
``P`` prompt positions (left-padded), ``T`` response positions (right-padded to the length cap, so that a
constant-length aggregation never sees the padding change).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Rollouts:
    prompt_ids: Tensor
    """[B, P] left-padded prompt tokens"""
    prompt_mask: Tensor
    """[B, P] 1 on prompt tokens"""
    response_ids: Tensor
    """[B, T] sampled tokens, right-padded"""
    response_mask: Tensor
    """[B, T] 1 on response tokens up to and including the first EOS"""
    texts: list[str]
    """[B] decoded responses (without special tokens)"""
    truncated: Tensor
    """[B] bool: the response hit the length cap without an EOS"""

    @property
    def lengths(self) -> Tensor:
        return self.response_mask.sum(-1)

    def input_ids(self) -> Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    def attention_mask(self) -> Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    def select(self, idx) -> "Rollouts":
        """The rows ``idx`` (a slice or an index tensor) as a new batch."""
        rows = range(len(self.texts))[idx] if isinstance(idx, slice) else idx.tolist()
        return Rollouts(
            prompt_ids=self.prompt_ids[idx], prompt_mask=self.prompt_mask[idx],
            response_ids=self.response_ids[idx], response_mask=self.response_mask[idx],
            texts=[self.texts[i] for i in rows], truncated=self.truncated[idx],
        )


def response_mask_from_ids(response_ids: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """Mask ``[B, T]`` that keeps tokens up to and including the first EOS; and the ``[B]`` truncated flags."""
    is_eos = response_ids == eos_id
    seen_before = (torch.cumsum(is_eos.int(), dim=1) - is_eos.int()) > 0  # an EOS occurred strictly earlier
    mask = (~seen_before).long()
    truncated = ~is_eos.any(dim=1)
    return mask, truncated


class HFRollout:
    """Sampling with ``model.generate`` (works for PEFT-wrapped and quantized models, on CPU or GPU)."""

    def __init__(self, model, tokenizer, max_new_tokens: int, temperature: float = 1.0, batch_size: int = 256):
        self.model, self.tok = model, tokenizer
        self.max_new_tokens, self.temperature, self.batch_size = max_new_tokens, temperature, batch_size

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, seed: int, greedy: bool = False) -> Rollouts:
        """Sample ``n`` responses for each prompt; deterministic given ``seed``."""
        torch.manual_seed(seed)
        expanded = [p for p in prompts for _ in range(n)]
        enc = self.tok(expanded, return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        outs = []
        for s in range(0, len(expanded), self.batch_size):
            ids = enc["input_ids"][s : s + self.batch_size].to(device)
            am = enc["attention_mask"][s : s + self.batch_size].to(device)
            gen = self.model.generate(
                input_ids=ids, attention_mask=am, max_new_tokens=self.max_new_tokens,
                do_sample=not greedy, temperature=None if greedy else self.temperature, top_p=None, top_k=None,
                pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id,
            )
            resp = gen[:, ids.shape[1] :]
            pad = self.max_new_tokens - resp.shape[1]
            if pad > 0:
                resp = torch.nn.functional.pad(resp, (0, pad), value=self.tok.pad_token_id)
            outs.append(resp)
        if was_training:
            self.model.train()
        response_ids = torch.cat(outs).to(device)
        response_mask, truncated = response_mask_from_ids(response_ids, self.tok.eos_token_id)
        response_ids = response_ids.masked_fill(response_mask == 0, self.tok.pad_token_id)
        texts = self.tok.batch_decode(response_ids, skip_special_tokens=True)
        return Rollouts(
            prompt_ids=enc["input_ids"].to(device), prompt_mask=enc["attention_mask"].to(device),
            response_ids=response_ids, response_mask=response_mask, texts=texts, truncated=truncated,
        )
