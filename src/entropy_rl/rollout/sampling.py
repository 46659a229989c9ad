"""A lean sampling loop over the model's forward: the same tokens as Hugging Face ``generate``, with less overhead.

``generate`` (transformers 5) spends most of a small model's decode step outside the model: a ``DynamicCache`` that
grows by ``torch.cat`` at every step and layer, logits processors, stopping criteria, and the full batch carried to
the end although most responses have finished. :func:`sample` keeps what decides the tokens and drops the rest:

* **the same distribution and random stream**: the logits of the last position in fp32, divided by the
  temperature, softmax, then torch's own sampling rule for one draw per row (``torch.multinomial(p, 1)`` is
  ``argmax(p / q)`` with ``q ~ Exp(1)`` drawn for the whole ``[B, V]`` batch, ATen ``multinomial``). The noise is
  drawn for all ``B`` rows at every step, as ``generate`` draws it, so a seeded call returns the tokens
  ``generate`` returns (tests/test_rollout.py checks them token for token); greedy is ``argmax``;
* **a preallocated KV cache** (:class:`PreallocLayer`): keys and values are written in place into buffers sized for
  the prompt plus ``max_new_tokens``, so no step copies the cache;
* **finished rows leave the batch**: once the rows still running are at most :data:`COMPACT_AT` of the rows being
  computed, the finished ones are dropped from the cache and the inputs (rows are independent, so the others'
  logits do not change);
* **the sampling policy's token statistics on the way**: the log-prob of each sampled token and the
  full-vocabulary entropy at the sampling temperature, from the very logits the token was drawn from (the
  ``logp``/``entropy`` of :class:`~entropy_rl.token_stats.TokenStats`, which spares the RL step a no-grad pass for
  pi_old when the sampler is the trained module).
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer

COMPACT_AT = 0.75
"""drop finished rows once the running ones are at most this share of the rows computed"""


class PreallocLayer(DynamicLayer):
    """A cache layer whose keys and values live in buffers preallocated for ``capacity`` positions; ``update``
    writes in place and returns views of the filled part (``DynamicLayer`` grows by ``torch.cat`` instead)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        self.kbuf = key_states.new_empty(b, h, self.capacity, d)
        self.vbuf = value_states.new_empty(b, value_states.shape[1], self.capacity, value_states.shape[3])
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self.length + n > self.capacity:
            raise RuntimeError(f"KV cache of {self.capacity} positions is full")
        self.kbuf[:, :, self.length : self.length + n] = key_states
        self.vbuf[:, :, self.length : self.length + n] = value_states
        self.length += n
        self.keys, self.values = self.kbuf[:, :, : self.length], self.vbuf[:, :, : self.length]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: Tensor) -> None:
        if self.is_initialized:
            self.kbuf, self.vbuf = self.kbuf[indices], self.vbuf[indices]
            self.keys, self.values = self.kbuf[:, :, : self.length], self.vbuf[:, :, : self.length]


def _cache_arg(decoder) -> str:
    """The decoder's keyword for the KV cache: ``cache`` (transformers >= 5.24) or ``past_key_values`` (before)."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def causal_lm(model):
    """The ``*ForCausalLM`` module under a PEFT wrapper (its LoRA layers stay active), or ``model`` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def sample(model, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int, temperature: float,
           eos_id: int, pad_id: int, greedy: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sample up to ``max_new_tokens`` tokens after each left-padded prompt of ``input_ids [B, P]``.

    Returns ``response_ids [B, T]`` (``T = max_new_tokens``, ``pad_id`` after the first EOS), and the log-prob of
    each token and the entropy of the distribution it was drawn from, ``[B, T]`` fp32 at ``temperature`` (0 at
    padding; greedy decoding reports them at ``temperature`` too), and the ``[B]`` lengths (up to and including
    EOS). Uses the global torch generator, as ``generate`` does.
    """
    with torch.inference_mode():
        out = _sample(model, input_ids, attention_mask, max_new_tokens, temperature, eos_id, pad_id, greedy)
    return tuple(t.clone() for t in out)  # ordinary tensors: the RL step's autograd may read them


def _sample(model, input_ids, attention_mask, max_new_tokens, temperature, eos_id, pad_id, greedy):
    causal = causal_lm(model)
    B, P = input_ids.shape
    dev = input_ids.device
    cache = Cache(layers=[PreallocLayer(P + max_new_tokens) for _ in range(causal.config.num_hidden_layers)])
    cache_kw = {_cache_arg(causal.model): cache}
    mask = torch.zeros(B, P + max_new_tokens, dtype=attention_mask.dtype, device=dev)
    mask[:, :P] = attention_mask
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out_ids = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    logp = torch.zeros(B, max_new_tokens, device=dev)
    ent = torch.zeros(B, max_new_tokens, device=dev)
    rows = torch.arange(B, device=dev)  # the original rows of the batch being computed
    running = torch.ones(B, dtype=torch.bool, device=dev)  # per computed row: no EOS yet
    h = causal.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, **cache_kw,
                     use_cache=True).last_hidden_state[:, -1]
    next_pos = pos[:, -1] + 1
    lengths = torch.zeros(B, dtype=torch.long, device=dev)
    for t in range(max_new_tokens):
        z = causal.lm_head(h).float() / temperature  # [b, V] the sampling distribution's logits
        probs = torch.softmax(z, -1)
        if greedy:
            tok = z.argmax(-1)
        else:  # torch.multinomial(probs, 1), with the noise of all B rows drawn as generate draws it
            noise = torch.empty(B, z.shape[1], device=dev).exponential_(1)
            tok = (probs / noise[rows]).argmax(-1)
        lse = torch.logsumexp(z, -1)
        live = rows[running]
        out_ids[live, t] = tok[running]
        logp[live, t] = (z.gather(1, tok[:, None]).squeeze(1) - lse)[running]
        ent[live, t] = (lse - (probs * z).sum(-1))[running]
        lengths[live] += 1
        running = running & (tok != eos_id)
        n_run = int(running.sum())
        if n_run == 0 or t == max_new_tokens - 1:
            break
        if n_run <= COMPACT_AT * rows.numel():  # drop the finished rows from the batch
            keep = running.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, tok, next_pos, mask, running = rows[keep], tok[keep], next_pos[keep], mask[keep], running[keep]
        mask[:, P + t] = 1
        h = causal.model(input_ids=tok[:, None], attention_mask=mask[:, : P + t + 1], position_ids=next_pos[:, None],
                         **cache_kw, use_cache=True).last_hidden_state[:, -1]
        next_pos = next_pos + 1
    return out_ids, logp, ent, lengths
