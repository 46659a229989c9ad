"""Evaluation: n samples per problem from a sampling backend, scored by a verifier, summarized by :mod:`metrics`.

Three parts, each replaceable by name:

* **backend** (:data:`BACKENDS`, :func:`register_backend`): loads a checkpoint (a base model plus an optional
  LoRA adapter) and samples; ``generate(prompts, n, seed, greedy) -> Generations`` (texts, token lengths,
  truncation flags, and per-response entropy sums when it can compute them). ``hf`` is Hugging Face
  ``generate`` (:class:`~entropy_rl.rollout.HFRollout`) with entropies from the same model
  (:func:`~entropy_rl.policy.frozen_stats`); ``vllm`` is a vLLM engine serving the adapter as a ``LoRARequest``
  (:class:`~entropy_rl.rollout.vllm.VLLMRollout`; no entropies).
* **task** (:class:`EvalTask`): normalized records (``{id, problem, answer, source}``), a prompt template
  (:data:`entropy_rl.benchmarks.TEMPLATES`) and a reward: the tiny profile's held-out split
  (:func:`arithmetic_task`), or the math benchmarks (:func:`benchmark_tasks`).
* **scorer**: ``score_groups([(gold, [responses])]) -> [[{correct, answer, vote, status}]]``.
  ``math`` uses :class:`~entropy_rl.rewards.pool.MathVerifier` (math-verify in worker processes with a
  per-item timeout); any other reward function is applied in-process (:class:`RewardScorer`).

Per-sample records (``samples.jsonl``) carry everything :func:`entropy_rl.metrics.metrics_from_samples` needs to
recompute every metric offline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .benchmarks import build_prompt, load_benchmark
from .metrics import summarize_benchmarks
from .progress import progress
from .rewards import arithmetic_vote_key, get_reward, math_reward


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
    the ``vllm`` backend's engine); with ``entropy``, entropies from a second, no-grad forward of ``model``."""

    def __init__(self, model, tokenizer, max_new_tokens: int, temperature: float = 1.0, batch_size: int = 256,
                 entropy: bool = True, sampler=None, stats_batch_size: int = 256):
        from .rollout import HFRollout

        self.model, self.tokenizer, self.temperature, self.entropy = model, tokenizer, temperature, entropy
        self.stats_batch_size = stats_batch_size  # responses per no-grad forward of the entropy pass
        self.batch_size = batch_size if sampler is None else sampler.batch_size
        self.sampler = sampler or HFRollout(model, tokenizer, max_new_tokens, temperature, batch_size)

    def generate(self, prompts: Sequence[str], n: int, seed: int, greedy: bool = False) -> Generations:
        from .policy import frozen_stats

        ro = self.sampler.generate(list(prompts), n=n, seed=seed, greedy=greedy)
        sums = None
        if self.entropy:
            ent = frozen_stats(self.model, ro, self.temperature, batch_size=self.stats_batch_size).entropy
            sums = (ent * ro.response_mask).sum(-1).tolist()
        return Generations(ro.texts, ro.lengths.tolist(), [bool(t) for t in ro.truncated], sums)


def load_hf(base_dir: str | Path, adapter_dir: str | Path | None, model_cfg, *, max_new_tokens: int,
            temperature: float, batch_size: int, rollout_cfg=None) -> HFBackend:
    """The ``hf`` backend for a checkpoint: ``model.load_base`` (+ the PEFT adapter when given), eval mode."""
    from .model import load_base, load_tokenizer

    tokenizer = load_tokenizer(base_dir)
    model = load_base(base_dir, model_cfg)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return HFBackend(model, tokenizer, max_new_tokens, temperature, batch_size)


def load_vllm(base_dir: str | Path, adapter_dir: str | Path | None, model_cfg, *, max_new_tokens: int,
              temperature: float, batch_size: int, rollout_cfg=None) -> HFBackend:
    """The ``vllm`` backend for a checkpoint: an engine on the base (4-bit when ``model.load_in_4bit``) serving the
    adapter as a ``LoRARequest``; engine settings from ``rl.rollout`` (memory share, eager mode, lengths). No
    entropies: there is no trainer-side model for a second pass."""
    from .config import RolloutConfig
    from .model import load_tokenizer
    from .rollout.vllm import VLLMRollout

    sampler = VLLMRollout(base_dir, load_tokenizer(base_dir), model_cfg, rollout_cfg or RolloutConfig(),
                          max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size)
    if adapter_dir:
        sampler.load_adapter(adapter_dir)
    return HFBackend(None, sampler.tok, max_new_tokens, temperature, batch_size, entropy=False, sampler=sampler)


BACKENDS: dict[str, Callable[..., Any]] = {"hf": load_hf, "vllm": load_vllm}
"""name -> loader ``(base_dir, adapter_dir, model_cfg, *, max_new_tokens, temperature, batch_size, rollout_cfg)``
returning an object with ``tokenizer``, ``batch_size`` and ``generate(prompts, n, seed, greedy) -> Generations``"""


def register_backend(name: str):
    """Decorator adding a backend loader under ``name`` (a duplicate name raises)."""
    def deco(loader):
        if name in BACKENDS:
            raise ValueError(f"backend '{name}' is already registered")
        BACKENDS[name] = loader
        return loader
    return deco


def load_backend(name: str, base_dir: str | Path, adapter_dir: str | Path | None, model_cfg, **sampling):
    if name not in BACKENDS:
        raise KeyError(f"unknown backend '{name}'; valid: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](base_dir, adapter_dir or None, model_cfg, **sampling)


# ----------------------------------------------------------------------------------------------------------
# Scorers and tasks
# ----------------------------------------------------------------------------------------------------------
class RewardScorer:
    """Any ``reward(response, answer) -> float`` applied in-process (1.0 = correct); votes on ``vote_key``."""

    def __init__(self, reward_fn: Callable[[str, str], float],
                 vote_key: Callable[[str], str | None] = arithmetic_vote_key):
        self.reward_fn, self.vote_key = reward_fn, vote_key

    def score_groups(self, groups: Sequence[tuple[str, Sequence[str]]]) -> list[list[dict]]:
        from .rewards import extract_boxed

        return [[{"correct": bool(self.reward_fn(r, gold)), "answer": extract_boxed(r), "vote": self.vote_key(r),
                  "status": "ok"} for r in responses] for gold, responses in groups]


def make_scorer(reward: str | Callable[[str, str], float]):
    """The scorer for a reward name or function: ``math`` → the pooled math-verify scorer, else in-process."""
    fn = get_reward(reward) if isinstance(reward, str) else reward
    if fn is math_reward:
        from .rewards.pool import default_verifier

        return default_verifier()
    return RewardScorer(fn)


@dataclass
class EvalTask:
    name: str
    """benchmark name (the key in metrics.json and samples.jsonl)"""
    records: list[dict]
    """normalized records ``{id, problem, answer, source}``"""
    template: str = "boxed"
    """prompt template (``entropy_rl.benchmarks.TEMPLATES``)"""
    reward: str = "math"
    """reward name (``entropy_rl.rewards.REWARDS``), or give ``scorer``"""
    scorer: Any = field(default=None, repr=False)
    """an object with ``score_groups``; default ``make_scorer(reward)``"""


def arithmetic_task(records: list[dict]) -> EvalTask:
    """The synthetic task's held-out split: bare prompts, the boxed-integer reward."""
    return EvalTask("arithmetic", records, template="plain", reward="arithmetic")


def benchmark_tasks(names: Sequence[str], source: str | Path, limit: int | None = None,
                    template: str = "boxed") -> list[EvalTask]:
    """One task per math benchmark, read from ``source`` (``"hub"`` or a local directory in the data layout)."""
    return [EvalTask(name, load_benchmark(name, source, limit), template=template, reward="math") for name in names]


def profile_tasks(cfg, data_dir: str | Path) -> list[EvalTask]:
    """What a profile evaluates: ``eval.benchmarks`` when given, else its own held-out split
    (``<data_dir>/eval.jsonl``, scored by the reward of ``data.task``)."""
    from .io import read_jsonl

    ev = cfg.eval
    if ev.benchmarks:
        return benchmark_tasks(ev.benchmarks, ev.data_source, ev.limit or None, ev.template)
    rows = read_jsonl(Path(data_dir) / "eval.jsonl")
    if cfg.data.task == "arithmetic":
        return [arithmetic_task(rows)]
    return [EvalTask(cfg.data.task, rows, template=ev.template, reward=cfg.data.task)]


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
    from .rewards.pool import MathVerifier

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
    from .io import write_json, write_jsonl

    rows, metrics = evaluate_profile(profile_backend(cfg, base_dir, adapter_dir), tasks, cfg.eval, show_progress)
    if out_dir is not None:
        write_jsonl(Path(out_dir) / "samples.jsonl", rows)
        write_json(Path(out_dir) / "metrics.json", metrics)
    return rows, metrics
