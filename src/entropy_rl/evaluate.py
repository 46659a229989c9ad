"""Evaluation: n samples per held-out prompt, scored by the verifier, summarized by :mod:`metrics`.

Per-sample records are kept (jsonl) so that every metric can be recomputed offline.
"""
from __future__ import annotations

from typing import Callable

from .metrics import summarize
from .policy import frozen_stats
from .progress import progress
from .rewards import extract_boxed
from .rollout import HFRollout


def evaluate(model, tokenizer, records: list[dict], reward_fn: Callable[[str, str], float], n: int,
             temperature: float, max_new_tokens: int, seed: int = 0, batch_size: int = 256,
             greedy: bool = False, desc: str = "eval", show_progress: bool = True) -> tuple[list[dict], dict]:
    """Returns (per-sample rows, summary metrics)."""
    sampler = HFRollout(model, tokenizer, max_new_tokens, temperature, batch_size)
    prompts_per_chunk = max(1, batch_size // n)
    rows, per_prompt = [], []
    chunks = range(0, len(records), prompts_per_chunk)
    for c, s in enumerate(progress(chunks, desc=desc, disable=not show_progress)):
        recs = records[s : s + prompts_per_chunk]
        ro = sampler.generate([r["problem"] for r in recs], n=n, seed=seed * 7919 + c, greedy=greedy)
        ent = frozen_stats(model, ro, temperature).entropy
        lengths = ro.lengths.tolist()
        ent_sum = (ent * ro.response_mask).sum(-1).tolist()
        for i, rec in enumerate(recs):
            pr = {"correct": [], "answers": [], "lengths": [], "entropy_sums": [], "truncated": []}
            for j in range(n):
                b = i * n + j
                text = ro.texts[b]
                ok = bool(reward_fn(text, rec["answer"]))
                ans = extract_boxed(text)
                rows.append({
                    "id": rec["id"], "sample": j, "response": text, "answer": ans, "gold": rec["answer"],
                    "correct": ok, "length": lengths[b], "entropy_sum": round(ent_sum[b], 6),
                    "truncated": bool(ro.truncated[b]),
                })
                for k, v in zip(pr, (ok, ans, lengths[b], ent_sum[b], bool(ro.truncated[b]))):
                    pr[k].append(v)
            per_prompt.append(pr)
    return rows, summarize(per_prompt)
