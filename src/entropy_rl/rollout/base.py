"""The rollout interface: the batch of sampled responses, the sampler protocol, and the helpers every backend uses.

See :mod:`entropy_rl.rollout` for the backends.

Rollout: sample G responses per prompt, behind one interface with interchangeable backends.

A sampler has four methods (:class:`Sampler`); the RL loop calls them and never asks which backend it has:

* ``generate(prompts, n, seed, greedy=False) -> Rollouts``: ``n`` responses per prompt, deterministic given ``seed``;
* ``sync(policy, version)``: make the sampler sample from ``policy`` as it is now (``version`` names that state,
  so a second call with the same version costs nothing);
* ``sleep()`` / ``wake()``: free the sampler's accelerator memory for the training phase, and take it back.

Backends (:data:`BACKENDS`): ``hf`` (:class:`~entropy_rl.rollout.hf.HFRollout`, Hugging Face ``generate`` on the
policy module itself: sync, sleep and wake are no-ops) and ``vllm`` (:class:`~entropy_rl.rollout.vllm.VLLMRollout`:
a colocated vLLM engine on the frozen base, to which ``sync`` hands the current LoRA adapter as a new
``LoRARequest``; the 4-bit base is never merged). vLLM also returns the log-probs it sampled with
(``Rollouts.rollout_logp``), which the loop uses for the train/inference mismatch correction (``rl.rollout.tis``).

Shapes: ``B = n_prompts x G`` (groups contiguous), ``P`` prompt positions (left-padded), ``T`` response positions
(right-padded to the length cap, so that a constant-length aggregation never sees the padding change).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor

from ..token_stats import TokenStats


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
    rollout_logp: Tensor | None = None
    """[B, T] log-probs of the sampled tokens under the sampler's own distribution at the sampling temperature
    (0 at padding); None when the backend does not report them (``hf``: it samples from the policy module itself)"""
    sampler_stats: TokenStats | None = None
    """[B, T] ``logp`` and ``entropy`` of the policy that sampled, at the sampling temperature, from the logits each
    token was drawn from (0 at padding): reported by a sampler that is the trained module itself (``hf``'s lean loop),
    so they are pi_old's; None otherwise"""

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
            rollout_logp=None if self.rollout_logp is None else self.rollout_logp[idx],
            sampler_stats=None if self.sampler_stats is None else select_stats(self.sampler_stats, idx),
        )


def select_stats(stats: TokenStats, idx) -> TokenStats:
    """The rows ``idx`` of ``[B, T]`` token statistics (fields that are None stay None)."""
    return TokenStats(**{f.name: None if getattr(stats, f.name) is None else getattr(stats, f.name)[idx]
                         for f in fields(TokenStats)})


class Sampler(Protocol):
    """What the RL loop and the evaluation need of a rollout backend."""

    tok: object
    batch_size: int

    def generate(self, prompts: list[str], n: int, seed: int, greedy: bool = False) -> Rollouts: ...

    def sync(self, policy, version: int) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...


def response_mask_from_ids(response_ids: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """Mask ``[B, T]`` that keeps tokens up to and including the first EOS; and the ``[B]`` truncated flags."""
    is_eos = response_ids == eos_id
    seen_before = (torch.cumsum(is_eos.int(), dim=1) - is_eos.int()) > 0  # an EOS occurred strictly earlier
    mask = (~seen_before).long()
    truncated = ~is_eos.any(dim=1)
    return mask, truncated


def encode_prompts(tokenizer, prompts: list[str], n: int) -> tuple[Tensor, Tensor]:
    """Each prompt repeated ``n`` times (groups contiguous), tokenized without special tokens and left-padded:
    ``[B, P]`` ids and attention mask. Every backend samples from exactly these tokens."""
    expanded = [p for p in prompts for _ in range(n)]
    enc = tokenizer(expanded, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def finish_rollouts(tokenizer, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                    rollout_logp: Tensor | None = None, lengths: Tensor | None = None,
                    truncated: Tensor | None = None, sampler_stats: TokenStats | None = None) -> Rollouts:
    """Rollouts from ``[B, T]`` sampled ids (padded to the cap): the mask up to the first EOS (or the first
    ``lengths`` tokens, when the backend reports where it stopped, with its ``truncated`` flags), padding after it,
    and the decoded texts."""
    if lengths is None:
        response_mask, truncated = response_mask_from_ids(response_ids, tokenizer.eos_token_id)
    else:
        response_mask = (torch.arange(response_ids.shape[1], device=response_ids.device)[None, :] < lengths[:, None]).long()
    response_ids = response_ids.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    if rollout_logp is not None:
        rollout_logp = rollout_logp.masked_fill(response_mask == 0, 0.0)
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return Rollouts(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                    response_mask=response_mask, texts=texts, truncated=truncated, rollout_logp=rollout_logp,
                    sampler_stats=sampler_stats)


def tis_weights(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, cap: float) -> tuple[Tensor, dict[str, float]]:
    """Truncated importance sampling for the train/inference mismatch, per token, detached (``[B, T]``).

    The sampler (vLLM, bf16 kernels, its own 4-bit dequantization) and the trainer assign slightly different
    probabilities to the same tokens, so the responses are drawn from ``pi_rollout``, not from the ``pi_old`` the
    objective's ratio assumes. The correction weights each token's policy loss by
    ``w = min(pi_old / pi_rollout, C)`` (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy
    RL Training"; verl ``rollout_is`` in token/truncate mode), 0 at padding. Also returns the mismatch diagnostics:
    the weights' mean, the share of tokens at the cap, and the k3 estimate of KL(pi_rollout || pi_old)."""
    m = mask.to(torch.float32)
    d = (old_logp.detach().float() - rollout_logp.float()).clamp(-20.0, 20.0) * m  # log pi_old - log pi_rollout
    ratio = d.exp()
    w = ratio.clamp(max=cap) * m
    n = m.sum().clamp(min=1.0)
    info = {"stats/tis_weight_mean": (w.sum() / n).item(),
            "stats/tis_capped_frac": (((ratio > cap).float() * m).sum() / n).item(),
            "stats/kl_rollout": (((ratio - d - 1.0) * m).sum() / n).item()}
    return w, info
