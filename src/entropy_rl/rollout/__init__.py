"""Rollout: sample G responses per prompt, behind one interface with interchangeable backends.

A sampler (:class:`~entropy_rl.rollout.base.Sampler`) has four methods; the RL loop and the evaluation call them and
never ask which backend they have: ``generate(prompts, n, seed, greedy=False) -> Rollouts``, ``sync(policy,
version)``, ``sleep()`` and ``wake()`` (see :mod:`.base`).

:data:`BACKENDS` is the one registry of sampling backends, for training (``rl.rollout.backend``) and for evaluation
(``eval.backend``) alike. Each entry builds a sampler two ways: :attr:`Backend.for_training` around the policy being
trained, and :attr:`Backend.for_checkpoint` from a saved base model and adapter (with the model that computes the
evaluation's entropies, or None when the backend has none).

* ``hf``: :class:`~entropy_rl.rollout.hf.HFRollout`, Hugging Face ``generate`` on the policy module itself (sync,
  sleep and wake are no-ops);
* ``vllm``: :class:`~entropy_rl.rollout.vllm.VLLMRollout`, a colocated vLLM engine on the frozen base, to which
  ``sync`` hands the current LoRA adapter as a new ``LoRARequest`` (the 4-bit base is never merged). vLLM also
  returns the log-probs it sampled with (``Rollouts.rollout_logp``), which the loop uses for the train/inference
  mismatch correction (``rl.rollout.tis``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import BACKENDS as DECLARED_BACKENDS
from ..registry import Registry, registry
from .base import Rollouts, Sampler, encode_prompts, finish_rollouts, response_mask_from_ids, tis_weights
from .hf import HFRollout, hf_for_checkpoint, hf_for_training
from .vllm import VLLMRollout, vllm_for_checkpoint, vllm_for_training


@dataclass(frozen=True)
class Backend:
    """A sampling backend by name: how to build its sampler for training and for evaluating a checkpoint."""

    name: str
    for_training: Callable[..., Sampler]
    """``(rollout_cfg, policy, tokenizer, *, base_dir, model_cfg, max_new_tokens, temperature, seed, work_dir)``"""
    for_checkpoint: Callable[..., tuple]
    """``(base_dir, adapter_dir, model_cfg, rollout_cfg, *, max_new_tokens, temperature, batch_size)`` ->
    ``(sampler, model)``; ``model`` computes the evaluation's entropies (None: the backend has none)"""


BACKENDS: Registry[Backend] = registry("rollout backend", DECLARED_BACKENDS, "entropy_rl.config.BACKENDS")
BACKENDS.register("hf", Backend("hf", hf_for_training, hf_for_checkpoint))
BACKENDS.register("vllm", Backend("vllm", vllm_for_training, vllm_for_checkpoint))


def make_sampler(rollout_cfg, policy, tokenizer, *, base_dir, model_cfg, max_new_tokens: int, temperature: float,
                 seed: int = 0, work_dir=None) -> Sampler:
    """The sampler named by ``rollout_cfg.backend`` for ``policy`` (a PEFT model on the base in ``base_dir``)."""
    return BACKENDS.get(rollout_cfg.backend).for_training(
        rollout_cfg, policy, tokenizer, base_dir=base_dir, model_cfg=model_cfg, max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed, work_dir=work_dir)


__all__ = ["Rollouts", "Sampler", "HFRollout", "VLLMRollout", "Backend", "BACKENDS", "make_sampler",
           "response_mask_from_ids", "encode_prompts", "finish_rollouts", "tis_weights"]
