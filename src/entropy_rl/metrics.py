"""Evaluation metrics over n samples per prompt.

* ``avg@n``: mean correctness over all samples (pass@1 under sampling).
* ``pass@k``: the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)``, for every k <= n.
* ``maj@k``: majority vote over the first k samples' extracted answers; samples without an answer do not vote;
  ties go to the answer that appeared first among those k samples (deterministic); no vote = incorrect.
"""
from __future__ import annotations

from collections import Counter
from math import comb
from typing import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_answer(answers: Sequence[str | None]) -> str | None:
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == best)


def maj_at_k(answers: Sequence[str | None], gold_correct: Sequence[bool], k: int) -> float:
    """1.0 if the majority answer of the first k samples is a correct one."""
    first = list(answers[:k])
    winner = majority_answer(first)
    if winner is None:
        return 0.0
    return float(any(ok for a, ok in zip(first, gold_correct[:k]) if a == winner))


def summarize(per_prompt: list[dict], ks: Sequence[int] | None = None) -> dict[str, float]:
    """Aggregate per-prompt records ``{"correct": [bool]*n, "answers": [...], "lengths": [...],
    "entropy_sums": [...], "truncated": [...]}`` into one metrics dict.

    ``mean_token_entropy`` is token-weighted: the sum of all response-token entropies over the token count."""
    if not per_prompt:
        raise ValueError("no evaluation records")
    n = len(per_prompt[0]["correct"])
    ks = [k for k in (ks or [1, 2, 4, 8, 16, 32, 64]) if k <= n] or [1]
    if n not in ks:
        ks.append(n)
    out: dict[str, float] = {"n_prompts": len(per_prompt), "n_samples": n}
    correct = np.array([r["correct"] for r in per_prompt], dtype=float)  # [P, n]
    out[f"avg@{n}"] = float(correct.mean())
    out["pass@1"] = float(correct.mean())
    for k in ks:
        out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in correct.sum(1)]))
        out[f"maj@{k}"] = float(np.mean([maj_at_k(r["answers"], r["correct"], k) for r in per_prompt]))
    out["mean_length"] = float(np.mean([x for r in per_prompt for x in r["lengths"]]))
    out["truncation_rate"] = float(np.mean([x for r in per_prompt for x in r["truncated"]]))
    tokens = sum(x for r in per_prompt for x in r["lengths"])
    out["mean_token_entropy"] = float(sum(x for r in per_prompt for x in r["entropy_sums"]) / max(tokens, 1))
    return out
