"""The evaluation entry point: backends, tasks, per-sample records, offline recomputation, tables, figures."""
import math

import pytest

from entropy_rl import evaluate as E
from entropy_rl import plots, report
from entropy_rl.evalsets import BENCHMARKS, load_benchmark
from entropy_rl.io import read_jsonl, write_jsonl
from entropy_rl.metrics import metrics_from_jsonl, metrics_from_samples
from entropy_rl.rewards.pool import MathVerifier

from conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "benchmarks"


class CannedBackend:
    """A backend that answers from a table: problem text → the n responses to return (no model)."""

    tokenizer = None

    def __init__(self, answers: dict[str, list[str]], batch_size: int = 8):
        self.answers, self.batch_size, self.calls = answers, batch_size, []

    def generate(self, prompts, n, seed, greedy=False):
        self.calls.append((len(prompts), seed))
        texts = [t for p in prompts for t in self.answers[p][:n]]
        return E.Generations(texts, [len(t) for t in texts], [t.endswith("...") for t in texts],
                             [0.5 * len(t) for t in texts])


def _canned(records, template="plain"):
    """Per problem: right (boxed gold), right in another form, wrong, truncated."""
    table = {}
    for r in records:
        gold = r["answer"].replace("$", "")
        table[r["problem"]] = [f"so $\\boxed{{{gold}}}$", f"The final answer is ${gold}$.", "\\boxed{-123456}", "..."]
    return table


def test_math_tasks_end_to_end_and_offline_recomputation(tmp_path):
    names = ["aime24", "minerva", "olympiadbench"]
    tasks = E.benchmark_tasks(names, FIXTURES, template="plain")
    backend = CannedBackend({k: v for t in tasks for k, v in _canned(t.records).items()})
    with MathVerifier(workers=2, timeout=10.0) as v:
        for t in tasks:
            t.scorer = v
        rows, metrics = E.evaluate_tasks(backend, tasks, n=4, seed=3, show_progress=False)
    n_recs = {t.name: len(t.records) for t in tasks}
    assert len(rows) == 4 * sum(n_recs.values())
    step = backend.batch_size // 4  # problems per generate call; chunk c of each task gets seed 3 * 7919 + c
    assert [c[1] for c in backend.calls] == [3 * 7919 + c for t in tasks for c in range(-(-len(t.records) // step))]
    for name in names:
        m = metrics["benchmarks"][name]
        assert m["n_prompts"] == n_recs[name] and m["avg@4"] == pytest.approx(0.5)  # 2 of 4 right everywhere
        assert m["pass@1"] == pytest.approx(0.5) and m["pass@2"] == pytest.approx(5 / 6) and m["pass@4"] == 1.0
        assert m["maj@1"] == 1.0 and m["maj@4"] == 1.0  # the two right answers form one class
        assert m["truncation_rate"] == 0.25
    assert metrics["macro_over"] == names and metrics["n_prompts"] == sum(n_recs.values())
    assert metrics["pass@2"] == pytest.approx(5 / 6)
    assert metrics["mean_length"] == pytest.approx(sum(metrics["benchmarks"][b]["mean_length"] for b in names) / 3)
    first = rows[0]
    assert set(first) == {"benchmark", "id", "sample", "response", "answer", "vote", "gold", "correct", "status",
                          "length", "entropy_sum", "truncated"}
    assert [r["vote"] == rows[0]["vote"] for r in rows[:4]] == [True, True, False, False]
    # every metric comes back from the jsonl alone
    write_jsonl(tmp_path / "samples.jsonl", rows)
    assert metrics_from_samples(read_jsonl(tmp_path / "samples.jsonl")) == metrics
    assert metrics_from_jsonl(tmp_path / "samples.jsonl", ks=[2])["benchmarks"]["aime24"]["pass@2"] == pytest.approx(5 / 6)


def test_tiny_profile_uses_the_same_code(tiny_model_dir, small_model_cfg):
    """The arithmetic held-out split through the registered `hf` backend, and the in-memory `evaluate` used by
    the SFT notebook and the RL loop, give the same samples and metrics."""
    from entropy_rl.config import EvalConfig

    recs = [{"id": f"a{i}", "problem": f"{100 + i}+{200 + i}=", "answer": str(300 + 2 * i), "source": "arithmetic"}
            for i in range(5)]
    backend = E.load_backend("hf", tiny_model_dir, None, small_model_cfg, max_new_tokens=8, temperature=1.0,
                             batch_size=4)
    ev = EvalConfig(n_samples=2, max_new_tokens=8, batch_size=4)
    rows, metrics = E.evaluate_profile(backend, [E.arithmetic_task(recs)], ev, show_progress=False)
    rows2, metrics2 = E.evaluate(backend.model, backend.tokenizer, recs, E.get_reward("arithmetic"), n=2,
                                 temperature=1.0, max_new_tokens=8, seed=0, batch_size=4, desc="arithmetic",
                                 show_progress=False)
    assert [r["response"] for r in rows] == [r["response"] for r in rows2] and metrics == metrics2
    assert {"pass@1", "pass@2", "maj@2", "mean_length", "mean_token_entropy", "truncation_rate"} <= set(metrics)
    assert metrics["benchmarks"]["arithmetic"]["n_prompts"] == 5 and math.isfinite(metrics["mean_token_entropy"])
    assert metrics_from_samples(rows) == metrics


def test_backend_registry_is_shared_by_training_and_evaluation():
    from entropy_rl.rollout import BACKENDS

    assert BACKENDS.names() == ("hf", "vllm")
    with pytest.raises(KeyError, match="unknown rollout backend 'vllm-not-installed'; valid: hf, vllm"):
        E.load_backend("vllm-not-installed", "x", None, None, max_new_tokens=4, temperature=1.0, batch_size=1)
    with pytest.raises(ValueError, match="registered twice"):
        BACKENDS.register("hf", BACKENDS.get("hf"))


def _fake_metrics(maj: dict[str, float], n: int = 4) -> dict:
    per = {b: {"n_samples": n, "n_prompts": 10, f"maj@{n}": v, f"pass@{n}": min(1.0, v + 0.2), "pass@1": v / 2,
               "pass@2": v * 0.8} for b, v in maj.items()}
    top = {k: sum(p[k] for p in per.values()) / len(per) for k in per[next(iter(per))]}
    return {**top, "benchmarks": per, "macro_over": list(per)}


def test_maj_table_has_the_paec_layout(tmp_path):
    evals = {"sft": _fake_metrics({"aime24": 0.1, "math500": 0.5}),
             "grpo-s0": _fake_metrics({"aime24": 0.2, "math500": 0.6}),
             "grpo-s1": _fake_metrics({"aime24": 0.4, "math500": 0.8})}
    t = report.maj_table(evals)
    assert list(t.index) == ["sft", "grpo"] and list(t.columns) == ["AIME24", "MATH-500", "Avg.", "seeds"]
    assert t.loc["grpo", "AIME24"] == pytest.approx(30.0) and t.loc["grpo", "Avg."] == pytest.approx(50.0)
    assert t.loc["grpo", "seeds"] == 2 and t.index.name == "maj@4 (%)"
    md, csv = report.write_table(t, tmp_path / "maj_table")
    assert md.read_text().splitlines()[0] == "| maj@4 (%) | AIME24 | MATH-500 | Avg. | seeds |"
    assert "| grpo | 30.0 | 70.0 | 50.0 | 2 |" in md.read_text() and csv.read_text().startswith("maj@4 (%),AIME24")
    with pytest.raises(KeyError, match="no maj@8"):
        report.maj_table(evals, k=8)


def test_pass_at_k_figure_against_the_starting_model(tmp_path):
    evals = {"sft": _fake_metrics({"aime24": 0.1, "math500": 0.5}), "grpo-s0": _fake_metrics({"aime24": 0.2, "math500": 0.6})}
    fig = plots.pass_at_k(evals, title="pass@k")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["aime24", "math500", "macro average"]
    styles = {line.get_label(): line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert styles == {"sft": "--", "grpo-s0": "-"}
    assert plots.save(fig, tmp_path / "p.png").stat().st_size > 10_000
    one = plots.pass_at_k({"sft": {"pass@1": 0.2, "pass@2": 0.3}, "grpo-s0": {"pass@1": 0.4, "pass@2": 0.5}})
    assert [ax.get_title() for ax in one.axes] == ["held-out pass@k"]


def test_registered_benchmarks_load_from_the_same_path():
    """Each benchmark's fixture reads through `benchmark_tasks` as the notebook does."""
    tasks = E.benchmark_tasks(list(BENCHMARKS), FIXTURES, limit=2)
    assert [t.name for t in tasks] == list(BENCHMARKS) and all(len(t.records) == 2 for t in tasks)
    assert tasks[0].records == load_benchmark("gsm8k", FIXTURES, limit=2) and tasks[0].reward == "math"
