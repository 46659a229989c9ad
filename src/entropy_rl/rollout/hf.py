"""The ``hf`` rollout backend: Hugging Face ``generate`` on the policy module itself (CPU or GPU; PEFT-wrapped and
quantized models alike). It samples from the very module that is trained, so there is nothing to sync and no
train/inference mismatch to correct; it reports no rollout log-probs."""
from __future__ import annotations

import torch

from ..model import load_checkpoint_model, load_tokenizer
from .base import Rollouts, encode_prompts, finish_rollouts


class HFRollout:
    """Sampling with ``model.generate``; deterministic given the seed."""

    def __init__(self, model, tokenizer, max_new_tokens: int, temperature: float = 1.0, batch_size: int = 256):
        self.model, self.tok = model, tokenizer
        self.max_new_tokens, self.temperature, self.batch_size = max_new_tokens, temperature, batch_size

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, seed: int, greedy: bool = False) -> Rollouts:
        """Sample ``n`` responses for each prompt; deterministic given ``seed``."""
        torch.manual_seed(seed)
        input_ids, attention_mask = encode_prompts(self.tok, prompts, n)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        outs = []
        for s in range(0, input_ids.shape[0], self.batch_size):
            ids = input_ids[s : s + self.batch_size].to(device)
            am = attention_mask[s : s + self.batch_size].to(device)
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
        return finish_rollouts(self.tok, input_ids.to(device), attention_mask.to(device), torch.cat(outs).to(device))

    def sync(self, policy, version: int) -> None:
        """Nothing to do: ``generate`` runs on the trained module itself."""

    def sleep(self) -> None:
        """Nothing to free: the policy module's memory is the trainer's."""

    def wake(self) -> None:
        """Nothing to take back."""


def hf_for_training(rollout_cfg, policy, tokenizer, *, base_dir, model_cfg, max_new_tokens: int, temperature: float,
                    seed: int = 0, work_dir=None) -> HFRollout:
    return HFRollout(policy, tokenizer, max_new_tokens, temperature)


def hf_for_checkpoint(base_dir, adapter_dir, model_cfg, rollout_cfg, *, max_new_tokens: int, temperature: float,
                      batch_size: int) -> tuple[HFRollout, object]:
    """``generate`` on the checkpoint (the base plus the adapter when given, eval mode); the same model computes
    the entropies."""
    model = load_checkpoint_model(base_dir, adapter_dir, model_cfg)
    return HFRollout(model, load_tokenizer(base_dir), max_new_tokens, temperature, batch_size), model
