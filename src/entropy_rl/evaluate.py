"""Evaluation: n samples per problem from a sampling backend, scored by a verifier, summarized by :mod:`metrics`.

Three parts, each replaceable by name:

* **backend**: a sampler of the one backend registry :data:`entropy_rl.rollout.BACKENDS` (the same names as
  training's ``rl.rollout.backend``), built from a checkpoint (a base model plus an optional LoRA adapter) and
  wrapped in :class:`HFBackend`: ``generate(prompts, n, seed, greedy) -> Generations`` (texts, token lengths,
  truncation flags, and per-response entropy sums when it can compute them). ``hf`` is Hugging Face ``generate``
  (:class:`~entropy_rl.rollout.HFRollout`) with entropies from the same model
  (:func:`~entropy_rl.policy.frozen_stats`); ``vllm`` is a vLLM engine serving the adapter as a ``LoRARequest``
  (:class:`~entropy_rl.rollout.vllm.VLLMRollout`; no entropies).
* **task** (:class:`EvalTask`): normalized records (``{id, problem, answer, source}``), a prompt template
  (:data:`entropy_rl.prompts.TEMPLATES`) and a reward: the tiny profile's held-out split
  (:func:`arithmetic_task`), or the math benchmarks (:func:`benchmark_tasks`).
* **scorer**: ``score_groups([(gold, [responses])]) -> [[{correct, answer, vote, status}]]``.
  ``math`` uses :class:`~entropy_rl.rewards.pool.MathVerifier` (math-verify in worker processes with a
  per-item timeout); any other reward function is applied in-process (:class:`RewardScorer`).

Per-sample records (``samples.jsonl``) carry everything :func:`entropy_rl.metrics.metrics_from_samples` needs to
recompute every metric offline.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from .config import RolloutConfig
from .data import TASKS
from .evalsets import EVAL_SETS, load_benchmark
from .io import read_jsonl, write_json, write_jsonl
from .metrics import summarize_benchmarks
from .policy import frozen_stats
from .progress import progress
from .prompts import build_prompt
from .rewards import arithmetic_vote_key, extract_boxed, get_reward, math_reward, score_batch
from .rewards.pool import MathVerifier, default_verifier
from .rollout import BACKENDS, HFRollout


# ----------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Generations:
    texts: list[str]
    """[B] decoded responses (prompt i's n samples are rows i*n .. i*n+n-1)"""
    lengths: list[int]
    """[B] response tokens, up to and including EOS"""
    truncated: list[bool]
    """[B] hit the length cap without EOS"""
    entropy_sums: list[float] | None = None
    """[B] sum of the full-vocabulary token entropies of each response (None if the backend has none)"""


class HFBackend:
    """Sampling with Hugging Face ``generate`` on ``model``, or with any rollout ``sampler`` given (the RL run's or
    the ``vllm`` backend's engine); with ``entropy``, entropies from a second, no-grad forward of ``model``, or the
    sampling pass's own when the sampler reports them for ``model`` itself (the hf lean loop)."""

    def __init__(self, model, tokenizer, max_new_tokens: int, temperature: float = 1.0, batch_size: int = 256,
                 entropy: bool = True, sampler=None, stats_batch_size: int = 256):
        self.model, self.tokenizer, self.temperature, self.entropy = model, tokenizer, temperature, entropy
        self.stats_batch_size = stats_batch_size  # responses per no-grad forward of the entropy pass
        self.batch_size = batch_size if sampler is None else sampler.batch_size
        self.sampler = sampler or HFRollout(model, tokenizer, max_new_tokens, temperature, batch_size)

    def generate(self, prompts: Sequence[str], n: int, seed: int, greedy: bool = False) -> Generations:
        ro = self.sampler.generate(list(prompts), n=n, seed=seed, greedy=greedy)
        sums = None
        if self.entropy:
            if ro.sampler_stats is not None and getattr(self.sampler, "model", None) is self.model:
                ent = ro.sampler_stats.entropy  # the sampling pass's own: the same model at the same temperature
            else:
                ent = frozen_stats(self.model, ro, self.temperature, batch_size=self.stats_batch_size,
                                   nucleus=False).entropy
            sums = (ent * ro.response_mask).sum(-1).tolist()
        return Generations(ro.texts, ro.lengths.tolist(), [bool(t) for t in ro.truncated], sums)


def load_backend(name: str, base_dir: str | Path, adapter_dir: str | Path | None, model_cfg, *, max_new_tokens: int,
                 temperature: float, batch_size: int, rollout_cfg: RolloutConfig | None = None) -> HFBackend:
    """The evaluation backend ``name`` (:data:`entropy_rl.rollout.BACKENDS`) for a checkpoint: its sampler, and
    entropies from the checkpoint's model when the backend has one."""
    sampler, model = BACKENDS.get(name).for_checkpoint(
        base_dir, adapter_dir or None, model_cfg, rollout_cfg or RolloutConfig(), max_new_tokens=max_new_tokens,
        temperature=temperature, batch_size=batch_size)
    return HFBackend(model, sampler.tok, max_new_tokens, temperature, batch_size, entropy=model is not None,
                     sampler=sampler)


# ----------------------------------------------------------------------------------------------------------
# Scorers and tasks
# ----------------------------------------------------------------------------------------------------------
class RewardScorer:
    """Any ``reward(response, answer) -> float`` (1.0 = correct), all responses of a call scored as one batch;
    votes on ``vote_key``."""

    def __init__(self, reward_fn: Callable[[str, str], float],
                 vote_key: Callable[[str], str | None] = arithmetic_vote_key):
        self.reward_fn, self.vote_key = reward_fn, vote_key

    def score_groups(self, groups: Sequence[tuple[str, Sequence[str]]]) -> list[list[dict]]:
        # one batch for all groups (:func:`~entropy_rl.rewards.score_batch`: the reward's ``batch`` when it has one)
        flat = iter(score_batch(self.reward_fn, [r for _, rs in groups for r in rs],
                                [gold for gold, rs in groups for _ in rs]))
        return [[{"correct": bool(next(flat)), "answer": extract_boxed(r), "vote": self.vote_key(r),
                  "status": "ok"} for r in responses] for gold, responses in groups]


def make_scorer(reward: str | Callable[[str, str], float]):
    """The scorer for a reward name or function: ``math`` → the pooled math-verify scorer, else in-process."""
    fn = get_reward(reward) if isinstance(reward, str) else reward
    if fn is math_reward:
        return default_verifier()
    return RewardScorer(fn)


@dataclass
class EvalTask:
    name: str
    """benchmark name (the key in metrics.json and samples.jsonl)"""
    records: list[dict]
    """normalized records ``{id, problem, answer, source}``"""
    template: str = "boxed"
    """prompt template (``entropy_rl.prompts.TEMPLATES``)"""
    reward: str = "math"
    """reward name (``entropy_rl.rewards.REWARDS``), or give ``scorer``"""
    scorer: Any = field(default=None, repr=False)
    """an object with ``score_groups``; default ``make_scorer(reward)``"""


def arithmetic_task(records: list[dict]) -> EvalTask:
    """The synthetic task's held-out split: bare prompts, the boxed-integer reward."""
    return EvalTask("arithmetic", records, template="plain", reward="arithmetic")


def benchmark_tasks(names: Sequence[str], source: str | Path, limit: int | None = None,
                    template: str = "boxed", revisions: dict[str, str] | None = None) -> list[EvalTask]:
    """One task per math benchmark, read from ``source`` (``"hub"`` or a local directory in the data layout; from the
    hub at ``revisions[name]`` where one is given)."""
    revisions = revisions or {}
    return [EvalTask(name, load_benchmark(name, source, limit, revisions.get(name, "")), template=template,
                     reward="math") for name in names]


def profile_tasks(cfg, data_dir: str | Path) -> list[EvalTask]:
    """What a profile evaluates: ``eval.benchmarks`` when given, else its own held-out split
    (``<data_dir>/eval.jsonl``, scored by the reward of ``data.task``)."""
    ev = cfg.eval
    if ev.benchmarks:
        return benchmark_tasks(ev.benchmarks, ev.data_source, ev.limit or None, ev.template, ev.revisions)
    rows = read_jsonl(Path(data_dir) / "eval.jsonl")
    if cfg.data.task == "arithmetic":
        return [arithmetic_task(rows)]
    return [EvalTask(cfg.data.task, rows, template=ev.template, reward=TASKS.get(cfg.data.task).reward)]


# ----------------------------------------------------------------------------------------------------------
# The evaluation loop
# ----------------------------------------------------------------------------------------------------------
def evaluate_tasks(backend, tasks: Sequence[EvalTask], n: int, seed: int = 0, greedy: bool = False,
                   ks: Sequence[int] | None = None, show_progress: bool = True) -> tuple[list[dict], dict]:
    """Sample ``n`` responses per problem of every task, score them, and summarize.

    Prompts go to the backend in chunks of ``max(1, backend.batch_size // n)`` problems, chunk ``c`` of a task
    with seed ``seed * 7919 + c`` (so a task's samples do not depend on the other tasks). Returns the
    per-sample rows and the metrics (:func:`entropy_rl.metrics.summarize_benchmarks`: per benchmark under
    ``benchmarks``, macro-averaged at the top level)."""
    rows: list[dict] = []
    per_bench: dict[str, list[dict]] = {}
    for task in tasks:
        if not task.records:
            raise ValueError(f"task {task.name}: no records")
        scorer = task.scorer or make_scorer(task.reward)
        per_prompt = per_bench.setdefault(task.name, [])
        step = max(1, backend.batch_size // n)
        chunks = range(0, len(task.records), step)
        for c, s in enumerate(progress(chunks, desc=f"eval {task.name}", disable=not show_progress)):
            recs = task.records[s : s + step]
            prompts = [build_prompt(r["problem"], backend.tokenizer, task.template) for r in recs]
            gen = backend.generate(prompts, n=n, seed=seed * 7919 + c, greedy=greedy)
            scored = scorer.score_groups([(r["answer"], gen.texts[i * n : (i + 1) * n]) for i, r in enumerate(recs)])
            for i, (rec, samples) in enumerate(zip(recs, scored)):
                pr = {"correct": [], "answers": [], "votes": [], "lengths": [], "entropy_sums": [], "truncated": []}
                for j, sc in enumerate(samples):
                    b = i * n + j
                    ent = None if gen.entropy_sums is None else gen.entropy_sums[b]
                    rows.append({
                        "benchmark": task.name, "id": rec["id"], "sample": j, "response": gen.texts[b],
                        "answer": sc["answer"], "vote": sc["vote"], "gold": rec["answer"], "correct": sc["correct"],
                        "status": sc["status"], "length": gen.lengths[b], "entropy_sum": ent,
                        "truncated": gen.truncated[b],
                    })
                    for k, v in zip(pr, (sc["correct"], sc["answer"], sc["vote"], gen.lengths[b], ent,
                                         gen.truncated[b])):
                        pr[k].append(v)
                per_prompt.append(pr)
    return rows, summarize_benchmarks(per_bench, ks)


def evaluate(model, tokenizer, records: list[dict], reward_fn: Callable[[str, str], float], n: int,
             temperature: float, max_new_tokens: int, seed: int = 0, batch_size: int = 256,
             greedy: bool = False, desc: str = "eval", show_progress: bool = True,
             template: str = "plain", sampler=None, stats_batch_size: int = 256) -> tuple[list[dict], dict]:
    """One task on an in-memory model (the SFT notebook and the RL loop's held-out curve): the ``hf`` backend, or
    ``sampler`` when given (entropies from ``model``), prompts as given (``template="plain"``), scored by
    ``reward_fn``. Returns (per-sample rows, metrics)."""
    backend = HFBackend(model, tokenizer, max_new_tokens, temperature, batch_size, sampler=sampler,
                        stats_batch_size=stats_batch_size)
    task = EvalTask(desc, records, template=template, scorer=make_scorer(reward_fn))
    return evaluate_tasks(backend, [task], n=n, seed=seed, greedy=greedy, show_progress=show_progress)


def evaluate_profile(backend, tasks: Sequence[EvalTask], ev, show_progress: bool = True) -> tuple[list[dict], dict]:
    """:func:`evaluate_tasks` with a profile's ``eval`` settings (``n_samples``, ``seed``); math tasks without a
    scorer share one :class:`~entropy_rl.rewards.pool.MathVerifier` with ``verify_workers`` processes and
    ``verify_timeout`` seconds per response, closed at the end."""
    verifier = None
    if any(t.scorer is None and t.reward == "math" for t in tasks):
        verifier = MathVerifier(workers=ev.verify_workers or None, timeout=ev.verify_timeout)
        tasks = [EvalTask(t.name, t.records, t.template, t.reward,
                          verifier if t.scorer is None and t.reward == "math" else t.scorer) for t in tasks]
    try:
        return evaluate_tasks(backend, tasks, n=ev.n_samples, seed=ev.seed, show_progress=show_progress)
    finally:
        if verifier is not None:
            verifier.close()


def profile_backend(cfg, base_dir: str | Path, adapter_dir: str | Path | None = None):
    """The backend named by ``cfg.eval.backend``, loaded from a checkpoint with the profile's sampling settings."""
    ev = cfg.eval
    return load_backend(ev.backend, base_dir, adapter_dir, cfg.model, max_new_tokens=ev.max_new_tokens,
                        temperature=ev.temperature, batch_size=ev.batch_size, rollout_cfg=cfg.rl.rollout)


def evaluate_checkpoint(base_dir: str | Path, adapter_dir: str | Path | None, cfg, tasks: Sequence[EvalTask],
                        out_dir: str | Path | None = None, show_progress: bool = True) -> tuple[list[dict], dict]:
    """Evaluate a checkpoint (any backend) with the profile's ``eval`` settings; with ``out_dir``, write
    ``samples.jsonl`` and ``metrics.json`` there."""
    rows, metrics = evaluate_profile(profile_backend(cfg, base_dir, adapter_dir), tasks, cfg.eval, show_progress)
    if out_dir is not None:
        write_jsonl(Path(out_dir) / "samples.jsonl", rows)
        write_json(Path(out_dir) / "metrics.json", metrics)
    return rows, metrics


# ----------------------------------------------------------------------------------------------------------
# The PAEC table layout
# ----------------------------------------------------------------------------------------------------------
RUN_NAME = re.compile(r"^(?P<objective>.+)-s(?P<seed>\d+)$")
"""an RL run's directory and model name: ``<objective>-s<seed>``"""


def method_of(model: str) -> str:
    """``grpo-s0`` → ``grpo``; other names (``sft``) unchanged."""
    m = RUN_NAME.match(model)
    return m.group("objective") if m else model


def maj_table(eval_metrics: dict[str, dict], k: int | None = None, benchmarks: list[str] | None = None,
              metric: str = "maj", percent: bool = True) -> pd.DataFrame:
    """The PAEC layout (docs/methods.md §3(d)): one row per method, one column per benchmark, then ``Avg.`` (the
    macro average over those benchmarks), values ``maj@k`` in percent.

    Runs of one method with several seeds are averaged (the ``seeds`` column counts them). ``k`` defaults to the
    largest k every model has; ``metric="pass"`` or ``"avg"`` gives the same layout for pass@k or avg@k."""
    per_model = {name: (m.get("benchmarks") or {"all": m}) for name, m in eval_metrics.items()}
    names = benchmarks or list(next(iter(per_model.values())))
    if k is None:
        k = min(int(m[b]["n_samples"]) for m in per_model.values() for b in names)
    key = f"{metric}@{k}"
    rows: dict[str, list[dict]] = {}
    for model, per_bench in per_model.items():
        missing = [b for b in names if key not in per_bench.get(b, {})]
        if missing:
            raise KeyError(f"{model}: no {key} for {', '.join(missing)}")
        rows.setdefault(method_of(model), []).append({b: per_bench[b][key] for b in names})
    scale = 100.0 if percent else 1.0
    table = pd.DataFrame({
        method: {**{b: scale * sum(r[b] for r in runs) / len(runs) for b in names}, "seeds": len(runs)}
        for method, runs in rows.items()
    }).T
    table["Avg."] = table[names].mean(axis=1)
    table = table.rename(columns={b: EVAL_SETS[b].title if b in EVAL_SETS else b for b in names})
    table.index.name = f"{key}{' (%)' if percent else ''}"
    table["seeds"] = table["seeds"].astype(int)
    return table[[c for c in table.columns if c != "seeds"] + ["seeds"]]
