"""Evaluation metrics over n samples per prompt, per benchmark and macro-averaged.

* ``avg@n``: mean correctness over all samples (= ``pass@1`` under sampling).
* ``pass@k``: the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)``, for every k <= n.
* ``maj@k``: majority vote over the first k samples. Each sample votes for an answer *class* (its ``votes``
  entry; without one, its extracted answer string). For the math benchmarks the classes come from
  :meth:`entropy_rl.rewards.pool.MathVerifier.vote_classes`: samples whose answers math-verify parses to the
  same sympy form, or judges equivalent to an earlier class's representative, share a class. Samples with no
  answer do not vote. **Ties** go to the class that appeared first among those k samples. The vote is
  correct when the first sample of the winning class (among the k) is correct; no vote at all = incorrect.
* ``mean_length`` (tokens), ``truncation_rate`` (hit the length cap without EOS) and ``mean_token_entropy``
  (token-weighted: the sum of all response-token entropies over the token count; absent when the backend gives
  no entropies).
* Several benchmarks: each is summarized alone (``benchmarks.<name>``), and every metric is also
  macro-averaged, i.e. the unweighted mean over benchmarks, at the top level (``n_prompts`` is summed).

:func:`metrics_from_samples` recomputes all of it from the per-sample records (``samples.jsonl``).
"""
from __future__ import annotations

from collections import Counter
from math import comb
from typing import Sequence

import numpy as np

from .io import read_jsonl


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent non-None answer; a tie goes to the one that appeared first; None if nobody voted."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == best)


def maj_at_k(answers: Sequence[str | None], gold_correct: Sequence[bool], k: int) -> float:
    """1.0 if the majority answer of the first k samples is correct (judged by its first sample)."""
    first = list(answers[:k])
    winner = majority_answer(first)
    if winner is None:
        return 0.0
    return float(next(ok for a, ok in zip(first, gold_correct[:k]) if a == winner))


def summarize(per_prompt: list[dict], ks: Sequence[int] | None = None) -> dict[str, float]:
    """Aggregate per-prompt records ``{"correct": [bool]*n, "answers": [...], "lengths": [...],
    "entropy_sums": [...], "truncated": [...]}`` (optionally ``"votes"``, the class each sample votes for in
    maj@k) into one metrics dict. ``ks`` defaults to every k from 1 to n."""
    if not per_prompt:
        raise ValueError("no evaluation records")
    n = len(per_prompt[0]["correct"])
    if any(len(r["correct"]) != n for r in per_prompt):
        raise ValueError("every prompt needs the same number of samples")
    ks = sorted({k for k in (ks or range(1, n + 1)) if 1 <= k <= n} | {n})
    out: dict[str, float] = {"n_prompts": len(per_prompt), "n_samples": n}
    correct = np.array([r["correct"] for r in per_prompt], dtype=float)  # [P, n]
    out[f"avg@{n}"] = float(correct.mean())
    out["pass@1"] = float(correct.mean())
    for k in ks:
        out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in correct.sum(1)]))
        out[f"maj@{k}"] = float(np.mean([maj_at_k(r.get("votes", r["answers"]), r["correct"], k) for r in per_prompt]))
    out["mean_length"] = float(np.mean([x for r in per_prompt for x in r["lengths"]]))
    out["truncation_rate"] = float(np.mean([x for r in per_prompt for x in r["truncated"]]))
    ent = [x for r in per_prompt for x in (r.get("entropy_sums") or [None])]
    if all(x is not None for x in ent):
        tokens = sum(x for r in per_prompt for x in r["lengths"])
        out["mean_token_entropy"] = float(sum(ent) / max(tokens, 1))
    return out


def macro_average(per_benchmark: dict[str, dict]) -> dict:
    """Unweighted mean over benchmarks of every metric they all have (``n_prompts`` summed), plus
    ``benchmarks`` (the per-benchmark dicts) and ``macro_over`` (their names, in order)."""
    if not per_benchmark:
        raise ValueError("no benchmarks to average")
    names = list(per_benchmark)
    common = [k for k in per_benchmark[names[0]] if all(k in per_benchmark[b] for b in names)]
    out: dict = {}
    for k in common:
        vals = [per_benchmark[b][k] for b in names]
        if not all(isinstance(v, (int, float)) for v in vals):
            continue
        out[k] = sum(vals) if k == "n_prompts" else float(np.mean(vals))
    if len({per_benchmark[b]["n_samples"] for b in names}) == 1:
        out["n_samples"] = per_benchmark[names[0]]["n_samples"]
    out["benchmarks"] = {b: per_benchmark[b] for b in names}
    out["macro_over"] = names
    return out


def per_prompt_records(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """Group per-sample rows (``samples.jsonl``) into per-prompt records, by benchmark, in first-seen order;
    the samples of a prompt are ordered by their ``sample`` index."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for row in rows:
        groups.setdefault(row.get("benchmark", "default"), {}).setdefault(row["id"], []).append(row)
    out: dict[str, list[dict]] = {}
    for bench, prompts in groups.items():
        out[bench] = []
        for samples in prompts.values():
            samples = sorted(samples, key=lambda r: r["sample"])
            out[bench].append({
                "correct": [bool(r["correct"]) for r in samples],
                "answers": [r.get("answer") for r in samples],
                "votes": [r.get("vote", r.get("answer")) for r in samples],
                "lengths": [r["length"] for r in samples],
                "entropy_sums": [r.get("entropy_sum") for r in samples],
                "truncated": [bool(r["truncated"]) for r in samples],
            })
    return out


def summarize_benchmarks(per_benchmark: dict[str, list[dict]], ks: Sequence[int] | None = None) -> dict:
    """Per-benchmark :func:`summarize`, then :func:`macro_average`."""
    return macro_average({b: summarize(p, ks) for b, p in per_benchmark.items()})


def metrics_from_samples(rows: Sequence[dict], ks: Sequence[int] | None = None) -> dict:
    """Every metric of an evaluation, recomputed offline from its per-sample rows (``samples.jsonl``)."""
    return summarize_benchmarks(per_prompt_records(rows), ks)


def metrics_from_jsonl(path, ks: Sequence[int] | None = None) -> dict:
    """:func:`metrics_from_samples` of a ``samples.jsonl`` file."""
    return metrics_from_samples(read_jsonl(path), ks)


EVAL_METRICS = {
    "pass@k": "unbiased pass@k (Chen et al., 2021) from `eval.n_samples` samples per prompt, for every k ≤ n; per "
              "benchmark under `benchmarks`, macro-averaged at the top level",
    "avg@n": "mean correctness of all n samples (= `pass@1`)",
    "maj@k": "majority vote over the first k samples: answers are grouped into classes of equivalent answers "
             "(normalized integers for arithmetic, math-verify equivalence for maths); no-answer samples do not vote; "
             "ties go to the class seen first; the winning class is judged by its first sample",
    "mean_length": "mean response length over all evaluation samples (tokens, including EOS)",
    "truncation_rate": "share of evaluation samples that hit the length cap without EOS",
    "mean_token_entropy": "token-weighted mean entropy of the evaluation responses (nats)",
    "greedy_accuracy": "(SFT only) accuracy of greedy decoding",
}
"""the glossary of the evaluation metrics (`.../eval/metrics.json`)"""
