"""The ``hf`` rollout backend: sampling on the policy module itself (CPU or GPU; PEFT-wrapped and quantized models
alike), by the lean loop of :mod:`.sampling` (the tokens ``generate`` samples, with less overhead) or by Hugging
Face ``generate`` (``loop="generate"``). It samples from the very module that is trained, so there is nothing to sync
and no train/inference mismatch to correct: it reports no rollout log-probs, and the lean loop reports the sampling
policy's own log-probs and entropies (``Rollouts.sampler_stats``), which are pi_old's."""
from __future__ import annotations

import torch

from ..model import load_checkpoint_model, load_tokenizer
from ..config import HF_LOOPS
from ..token_stats import TokenStats
from .base import Rollouts, encode_prompts, finish_rollouts
from .sampling import sample


class HFRollout:
    """Sampling on ``model`` itself by the lean loop (``loop="lean"``) or ``model.generate``; deterministic given the
    seed, and both loops return the same tokens for the same seed."""

    def __init__(self, model, tokenizer, max_new_tokens: int, temperature: float = 1.0, batch_size: int = 256,
                 loop: str = "lean"):
        if loop not in HF_LOOPS:
            raise ValueError(f"rl.rollout.hf_loop: {loop!r} is not one of {HF_LOOPS}")
        self.model, self.tok, self.loop = model, tokenizer, loop
        self.max_new_tokens, self.temperature, self.batch_size = max_new_tokens, temperature, batch_size

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, seed: int, greedy: bool = False) -> Rollouts:
        """Sample ``n`` responses for each prompt; deterministic given ``seed``."""
        torch.manual_seed(seed)
        input_ids, attention_mask = encode_prompts(self.tok, prompts, n)
        device = next(self.model.parameters()).device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        was_training = self.model.training
        self.model.eval()
        parts = [self._batch(input_ids[s : s + self.batch_size], attention_mask[s : s + self.batch_size], greedy)
                 for s in range(0, input_ids.shape[0], self.batch_size)]
        if was_training:
            self.model.train()
        resp = torch.cat([p[0] for p in parts])
        if self.loop == "generate":
            return finish_rollouts(self.tok, input_ids, attention_mask, resp)
        stats = TokenStats(logp=torch.cat([p[1] for p in parts]), entropy=torch.cat([p[2] for p in parts]))
        return finish_rollouts(self.tok, input_ids, attention_mask, resp, lengths=torch.cat([p[3] for p in parts]),
                               truncated=~(resp == self.tok.eos_token_id).any(1), sampler_stats=stats)

    def _batch(self, ids, am, greedy: bool) -> tuple:
        """One batch: ``(response_ids [b, T], logp, entropy, lengths)`` from the lean loop, ``(response_ids,)`` from
        ``generate``."""
        if self.loop == "lean":
            return sample(self.model, ids, am, self.max_new_tokens, self.temperature, self.tok.eos_token_id,
                          self.tok.pad_token_id, greedy=greedy)
        gen = self.model.generate(
            input_ids=ids, attention_mask=am, max_new_tokens=self.max_new_tokens,
            do_sample=not greedy, temperature=None if greedy else self.temperature, top_p=None, top_k=None,
            pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id,
        )
        resp = gen[:, ids.shape[1] :]
        return (torch.nn.functional.pad(resp, (0, self.max_new_tokens - resp.shape[1]), value=self.tok.pad_token_id),)

    def sync(self, policy, version: int) -> None:
        """Nothing to do: sampling runs on the trained module itself."""

    def sleep(self) -> None:
        """Nothing to free: the policy module's memory is the trainer's."""

    def wake(self) -> None:
        """Nothing to take back."""


def hf_for_training(rollout_cfg, policy, tokenizer, *, base_dir, model_cfg, max_new_tokens: int, temperature: float,
                    seed: int = 0, work_dir=None) -> HFRollout:
    return HFRollout(policy, tokenizer, max_new_tokens, temperature, loop=rollout_cfg.hf_loop)


def hf_for_checkpoint(base_dir, adapter_dir, model_cfg, rollout_cfg, *, max_new_tokens: int, temperature: float,
                      batch_size: int) -> tuple[HFRollout, object]:
    """``generate`` on the checkpoint (the base plus the adapter when given, eval mode); the same model computes
    the entropies."""
    model = load_checkpoint_model(base_dir, adapter_dir, model_cfg)
    loop = rollout_cfg.hf_loop if rollout_cfg is not None else "lean"
    return HFRollout(model, load_tokenizer(base_dir), max_new_tokens, temperature, batch_size, loop=loop), model
