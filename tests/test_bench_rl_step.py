"""The pure helpers of benchmarks/bench_rl_step.py (no TRL, no model): the input check names the missing path and the
DVC stage that makes it; the configuration row's medians, ratio and verdicts; the per-phase medians of the log row's
``timing_s/*`` keys; the CSV appends (and survives a header change); the summary states met/missed per row."""
from __future__ import annotations

import csv
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_rl_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_rl_step", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_rl_step"] = mod
    spec.loader.exec_module(mod)  # stdlib only at import: torch and trl are imported inside measure()
    return mod


def test_import_needs_no_torch_or_trl(bench):
    assert "trl" not in vars(bench) and "torch" not in vars(bench)


def test_check_inputs_names_path_and_stage(bench, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.check_inputs(tmp_path / "sft", tmp_path / "data")
    msg = str(e.value)
    assert str(tmp_path / "sft") in msg and "dvc repro sft@tiny" in msg
    assert str(tmp_path / "data" / "rl.jsonl") in msg and "dvc repro data@tiny" in msg
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "config.json").write_text("{}")
    (tmp_path / "data").mkdir()
    for split in ("rl", "eval"):
        (tmp_path / "data" / f"{split}.jsonl").write_text("")
    bench.check_inputs(tmp_path / "sft", tmp_path / "data")  # all there: no error


def _project(times, **row):
    return [{"time": t, "generate": t / 2, "width": 48,
             "row": {"reward/mean": 0.5, "stats/gen_batches": 1.0, "stats/grad_norm": 0.3, "loss/total": -0.01,
                     "timing_s/rollout": t / 2, "timing_s/update": t / 3, "timing_s/step": t, **row}}
            for t in times]


def _trl(times):
    return [{"time": t, "reward": 0.5, "loss": -0.01, "grad_norm": 0.3, "length": 25.0, "width": 40.0,
             "generate": t / 2, "score_old": 0.1, "fwd_bwd": 0.3, "optim_other": 0.05} for t in times]


def test_config_row_ratio_and_verdict(bench):
    r = bench.config_row("grpo", "grpo", _project([1.0, 0.8, 1.2]), _trl([2.0, 2.4, 1.6]), 128)
    assert (r["project_median_s"], r["project_min_s"], r["project_max_s"]) == (1.0, 0.8, 1.2)
    assert r["trl_median_s"] == 2.0 and r["ratio"] == 0.5
    assert r["target"] == 0.5 and r["target_met"] == "met"  # <= is met
    assert r["project_rollouts_per_s"] == 128.0 and r["trl_rollouts_per_s"] == 64.0
    assert r["project_timing_rollout_s"] == 0.5 and r["project_timing_ref_s"] is None
    assert json.loads(r["project_timing_json"])["step"] == 1.0
    r = bench.config_row("paec", "paec", _project([1.3]), _trl([2.0]), 128)
    assert r["target"] == 0.6 and r["target_met"] == "missed"
    r = bench.config_row("dapo", "dapo", _project([1.1]), _trl([2.0]), 128)
    assert r["target_met"] == "met"


def test_timing_medians_only_present_keys(bench):
    rows = [{"timing_s/ref": 0.2, "timing_s/step": 1.0}, {"timing_s/step": 3.0}, {"reward/mean": 1.0}]
    assert bench.timing_medians(rows) == {"ref": 0.2, "step": 2.0}
    assert bench.timing_medians([{"reward/mean": 1.0}]) == {}


def _full_row(bench, objective, project, trl):
    r = bench.config_row(objective, objective, _project(project), _trl(trl), 128)
    r.update(run_id="20260101T000000Z", date="2026-01-01T00:00:00+00:00", machine="m (2 cpus, 8 GiB)", cpu="cpu",
             torch="2", transformers="5", trl="1", peft="0", git_commit="abc", git_dirty=False, threads=1,
             profile="tiny", seed=0, warmup=1, steps=len(project), prompts=16, group_size=8, rollouts_per_batch=128,
             max_new_tokens=48, minibatches=4, project_sampler="backend=hf", loadavg_start=0.5, loadavg_end=0.7,
             note="")
    return r


def test_csv_appends_and_rewrites_an_old_header(bench, tmp_path):
    path = tmp_path / "rl_step.csv"
    bench.write_csv(path, [_full_row(bench, "grpo", [1.0], [2.0])])
    bench.write_csv(path, [_full_row(bench, "dapo", [1.0], [2.0])])
    rows = list(csv.DictReader(path.open()))
    assert [r["objective"] for r in rows] == ["grpo", "dapo"] and rows[0]["target_met"] == "met"
    old = tmp_path / "old.csv"
    old.write_text("run_id,objective,gone\nX,erpo,1\n")
    bench.write_csv(old, [_full_row(bench, "grpo", [1.0], [2.0])])
    rows = list(csv.DictReader(old.open()))
    assert list(rows[0]) == bench.FIELDS and [r["objective"] for r in rows] == ["erpo", "grpo"]


def test_summary_states_met_or_missed_per_row(bench, tmp_path):
    rows = [_full_row(bench, "grpo", [1.0, 1.1], [2.0, 2.2]), _full_row(bench, "erpo", [1.5, 1.6], [2.0, 2.1])]
    md = bench.summary(rows, tmp_path / "rl_step.csv", types.SimpleNamespace())
    table = [ln for ln in md.splitlines() if ln.startswith("| grpo |") or ln.startswith("| erpo |")]
    assert len(table) == 4  # the main table and the per-phase table
    assert "**met**" in table[0] and "**missed**" in table[1]
    assert "project rollout" in md and "TRL generate" in md and "steps_per_generation=4" in md
