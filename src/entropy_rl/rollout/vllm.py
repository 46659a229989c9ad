"""The ``vllm`` rollout backend: a colocated vLLM engine on the frozen base, with adapter-only weight sync.

The engine loads the base once (4-bit bitsandbytes when ``model.load_in_4bit``, as the trainer does) with LoRA
enabled. Each :meth:`VLLMRollout.sync` saves the policy's current LoRA adapter (PEFT format, a few MB) and hands
it to vLLM as a *new* ``LoRARequest`` (new name and id, so vLLM loads it instead of serving a cached one); the
base is never merged, so nothing is re-quantized and nothing lossy happens to the 4-bit weights (the failure
mode of merging into 4-bit weights: TRL issues #3466, #3654, #4973).

Memory: the engine takes at most ``rl.rollout.gpu_memory_utilization`` of the GPU, and with
``rl.rollout.sleep_mode`` it sleeps between rollouts (level 1: its weights go to CPU memory and its KV cache is
freed), so the training phase gets the GPU back.

Log-probs: vLLM reports the log-prob of each sampled token under the distribution it sampled from
(``logprobs_mode="processed_logprobs"``: after the temperature), which the loop compares with the trainer's
(``rl.rollout.tis``). Prompts are handed over as token ids, the same ids the trainer sees, and vLLM's own
generation defaults are used (``generation_config="vllm"``) so that it stops at the tokenizer's EOS only, as
Hugging Face ``generate`` does in :class:`~entropy_rl.rollout.hf.HFRollout`.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from ..model import load_tokenizer, resolve_revision, resolve_source, save_adapter
from .base import Rollouts, encode_prompts, finish_rollouts

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""the ``max_lora_rank`` values vLLM accepts"""


def max_lora_rank(r: int) -> int:
    """The smallest rank vLLM accepts that holds a rank-``r`` adapter."""
    for v in VLLM_LORA_RANKS:
        if v >= r:
            return v
    raise ValueError(f"model.lora.r: {r} exceeds vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


def engine_kwargs(base: str, model_cfg, rollout_cfg, *, seed: int, revision: str = "") -> dict:
    """The ``vllm.LLM`` arguments for a base model and the profile's settings (a pure function, tested on the CPU);
    ``revision``: the hub snapshot the trainer loads too (``model.resolve_revision``), so both sample one model."""
    kwargs = dict(
        model=base, tokenizer=base, dtype=model_cfg.compute_dtype, seed=seed,
        enable_lora=True, max_loras=1, max_lora_rank=max_lora_rank(model_cfg.lora.r),
        gpu_memory_utilization=rollout_cfg.gpu_memory_utilization, enable_sleep_mode=rollout_cfg.sleep_mode,
        enforce_eager=rollout_cfg.enforce_eager, logprobs_mode="processed_logprobs", generation_config="vllm",
    )
    if rollout_cfg.max_model_len:
        kwargs["max_model_len"] = rollout_cfg.max_model_len
    if rollout_cfg.max_num_seqs:
        kwargs["max_num_seqs"] = rollout_cfg.max_num_seqs
    if model_cfg.load_in_4bit:
        kwargs["quantization"] = "bitsandbytes"  # in-flight nf4, like the trainer's base
    if revision:
        kwargs["revision"] = kwargs["tokenizer_revision"] = revision
    return kwargs


class VLLMRollout:
    """Sampling with a colocated ``vllm.LLM``; the current LoRA adapter arrives through :meth:`sync`."""

    def __init__(self, base_dir, tokenizer, model_cfg, rollout_cfg, *, max_new_tokens: int, temperature: float,
                 seed: int = 0, work_dir=None, batch_size: int = 256, device=None):
        from vllm import LLM

        self.tok, self.max_new_tokens, self.temperature, self.batch_size = tokenizer, max_new_tokens, temperature, batch_size
        self.sleep_mode, self.sleeping, self.device = rollout_cfg.sleep_mode, False, device or torch.device("cpu")
        self.llm = LLM(**engine_kwargs(resolve_source(base_dir), model_cfg, rollout_cfg, seed=seed,
                                       revision=resolve_revision(base_dir, model_cfg)))
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="entropy_rl_lora_"))
        self.lora_request, self.version, self.adapter_path = None, None, None

    # ---- Sync: the adapter only -------------------------------------------------------------------------
    def sync(self, policy, version: int) -> None:
        """Save ``policy``'s LoRA adapter and make it the adapter of the next requests (a new ``LoRARequest``)."""
        from vllm.lora.request import LoRARequest

        if version == self.version:
            return
        path = save_adapter(policy, self.work_dir / f"adapter-{version}")
        previous, self.adapter_path = self.adapter_path, path
        # ids must be positive and new: vLLM caches adapters by id
        self.lora_request = LoRARequest(f"policy-{version}", version + 1, str(path))
        self.version = version
        if previous is not None and previous != path:
            shutil.rmtree(previous, ignore_errors=True)

    def load_adapter(self, adapter_dir, version: int = 0) -> None:
        """Serve a saved adapter (evaluation of a trained checkpoint)."""
        from vllm.lora.request import LoRARequest

        self.lora_request, self.version = LoRARequest(f"adapter-{version}", version + 1, str(adapter_dir)), version

    # ---- Sleep between rollout and training -------------------------------------------------------------
    def sleep(self) -> None:
        if self.sleep_mode and not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    def wake(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    # ---- Generate -----------------------------------------------------------------------------------------
    def generate(self, prompts: list[str], n: int, seed: int, greedy: bool = False) -> Rollouts:
        """``n`` samples per prompt (prompt ``i`` seeded with ``seed + i``), with the log-prob of each sampled token."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.wake()
        input_ids, attention_mask = encode_prompts(self.tok, prompts, n)
        requests = [TokensPrompt(prompt_token_ids=input_ids[i * n][attention_mask[i * n].bool()].tolist())
                    for i in range(len(prompts))]
        params = [SamplingParams(n=n, temperature=0.0 if greedy else self.temperature, top_p=1.0, top_k=0,
                                 max_tokens=self.max_new_tokens, seed=seed + i, logprobs=0)
                  for i in range(len(prompts))]
        outs = self.llm.generate(requests, params, lora_request=self.lora_request, use_tqdm=False)
        B, T = len(prompts) * n, self.max_new_tokens
        ids = torch.full((B, T), self.tok.pad_token_id, dtype=torch.long)
        logp = torch.zeros(B, T)
        lengths = torch.zeros(B, dtype=torch.long)
        truncated = torch.zeros(B, dtype=torch.bool)
        for i, out in enumerate(outs):
            for j, comp in enumerate(sorted(out.outputs, key=lambda c: c.index)):
                b, toks = i * n + j, list(comp.token_ids)[:T]
                ids[b, : len(toks)] = torch.tensor(toks, dtype=torch.long)
                if comp.logprobs is not None:
                    logp[b, : len(toks)] = torch.tensor([lp[t].logprob for lp, t in zip(comp.logprobs, toks)])
                lengths[b] = len(toks)
                truncated[b] = comp.finish_reason == "length"
        d = self.device
        return finish_rollouts(self.tok, input_ids.to(d), attention_mask.to(d), ids.to(d),
                               None if greedy else logp.to(d), lengths.to(d), truncated.to(d))


def vllm_for_training(rollout_cfg, policy, tokenizer, *, base_dir, model_cfg, max_new_tokens: int,
                      temperature: float, seed: int = 0, work_dir=None) -> VLLMRollout:
    return VLLMRollout(base_dir, tokenizer, model_cfg, rollout_cfg, max_new_tokens=max_new_tokens,
                       temperature=temperature, seed=seed, work_dir=work_dir, device=next(policy.parameters()).device)


def vllm_for_checkpoint(base_dir, adapter_dir, model_cfg, rollout_cfg, *, max_new_tokens: int, temperature: float,
                        batch_size: int) -> tuple[VLLMRollout, None]:
    """An engine on the base (4-bit when ``model.load_in_4bit``) serving the adapter as a ``LoRARequest``; engine
    settings from ``rl.rollout``. No model for entropies: there is no trainer-side model for a second pass."""
    sampler = VLLMRollout(base_dir, load_tokenizer(base_dir), model_cfg, rollout_cfg, max_new_tokens=max_new_tokens,
                          temperature=temperature, batch_size=batch_size)
    if adapter_dir:
        sampler.load_adapter(adapter_dir)
    return sampler, None
