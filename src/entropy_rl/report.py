"""Gather a profile's runs for figures and tables.

Layout read (written by the notebooks): ``<runs_dir>/sft/eval/metrics.json`` and, for each RL run (the
objective may be a variant name such as ``paec-no_mask``),
``<runs_dir>/<objective>-s<seed>/train/{curves,heldout}.csv`` and ``.../eval/metrics.json``.

:func:`maj_table` lays the maj@k results out as the PAEC paper does (methods as rows, benchmarks as columns,
then the macro average); :func:`write_table` saves any such table as markdown and csv.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .io import read_json, write_text

_RUN = re.compile(r"^(?P<objective>.+)-s(?P<seed>\d+)$")
TABLE_KEYS = ("pass@1", "pass@2", "pass@4", "pass@8", "maj@8", "mean_length", "mean_token_entropy", "truncation_rate")


@dataclass
class Runs:
    steps: pd.DataFrame
    """per-step training rows of every run, with `run`, `objective`, `seed` columns"""
    heldout: pd.DataFrame
    """held-out pass@1 points along training"""
    eval_metrics: dict[str, dict]
    """final evaluation metrics by model name (`sft`, `<objective>-s<seed>`)"""

    @property
    def table(self) -> pd.DataFrame:
        rows = [{"model": name, **{k: m.get(k) for k in TABLE_KEYS if k in m}} for name, m in self.eval_metrics.items()]
        return pd.DataFrame(rows).set_index("model")

    def summary(self) -> dict:
        """Final metrics per model, mean over seeds per objective, and entropy start/end per run."""
        out: dict = {"models": {k: {kk: m[kk] for kk in TABLE_KEYS if kk in m} for k, m in self.eval_metrics.items()}}
        if not self.steps.empty:
            ent = self.steps.sort_values("step").groupby("run")["stats/entropy"]
            out["entropy"] = {run: {"first_step": float(s.iloc[0]), "last_step": float(s.iloc[-1])} for run, s in ent}
        return out


def collect(runs_dir: str | Path | list) -> Runs:
    """Every run under ``runs_dir``; a list of directories merges them (the seeds study adds its runs to the
    default pipeline's seed 0). The SFT baseline is the first directory's that has one; a run name found in two
    directories is an error."""
    dirs = [Path(d) for d in (runs_dir if isinstance(runs_dir, (list, tuple)) else [runs_dir])]
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such runs directory (run the pipeline first)")
    steps, heldout, metrics = [], [], {}
    for runs_dir in dirs:
        sft_metrics = runs_dir / "sft" / "eval" / "metrics.json"
        if sft_metrics.exists() and "sft" not in metrics:
            metrics["sft"] = read_json(sft_metrics)
        for d in sorted(p for p in runs_dir.iterdir() if p.is_dir() and _RUN.match(p.name)):
            if d.name in metrics or any(d.name == s["run"].iloc[0] for s in steps):
                raise ValueError(f"run {d.name} found twice (again in {runs_dir}); run names must be unique")
            tags = {"run": d.name, **_RUN.match(d.name).groupdict()}
            if (d / "train" / "curves.csv").exists():
                steps.append(pd.read_csv(d / "train" / "curves.csv").assign(**tags))
                heldout.append(pd.read_csv(d / "train" / "heldout.csv").assign(**tags))
            if (d / "eval" / "metrics.json").exists():
                metrics[d.name] = read_json(d / "eval" / "metrics.json")
    if not metrics:
        raise FileNotFoundError(f"{', '.join(map(str, dirs))}: no evaluation metrics found")
    cat = lambda xs: pd.concat(xs, ignore_index=True) if xs else pd.DataFrame()  # noqa: E731
    return Runs(steps=cat(steps), heldout=cat(heldout), eval_metrics=metrics)


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------
def method_of(model: str) -> str:
    """``grpo-s0`` → ``grpo``; other names (``sft``) unchanged."""
    m = _RUN.match(model)
    return m.group("objective") if m else model


def maj_table(eval_metrics: dict[str, dict], k: int | None = None, benchmarks: list[str] | None = None,
              metric: str = "maj", percent: bool = True) -> pd.DataFrame:
    """The PAEC layout (methods.md §3(d)): one row per method, one column per benchmark, then ``Avg.`` (the
    macro average over those benchmarks), values ``maj@k`` in percent.

    Runs of one method with several seeds are averaged (the ``seeds`` column counts them). ``k`` defaults to the
    largest k every model has; ``metric="pass"`` or ``"avg"`` gives the same layout for pass@k or avg@k."""
    from .benchmarks import BENCHMARKS

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
    table = table.rename(columns={b: BENCHMARKS[b].title if b in BENCHMARKS else b for b in names})
    table.index.name = f"{key}{' (%)' if percent else ''}"
    table["seeds"] = table["seeds"].astype(int)
    return table[[c for c in table.columns if c != "seeds"] + ["seeds"]]


def to_markdown(df: pd.DataFrame, floatfmt: str = ".1f") -> str:
    """A GitHub markdown table (index as the first column), without extra dependencies."""
    def cell(v):
        return format(v, floatfmt) if isinstance(v, float) else str(v)
    head = [str(df.index.name or "")] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(df.columns)) + "|"]
    for idx, row in zip(df.index, df.itertuples(index=False)):  # itertuples keeps each column's dtype
        lines.append("| " + " | ".join([str(idx)] + [cell(v) for v in row]) + " |")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, path: str | Path) -> tuple[Path, Path]:
    """``<path>.md`` and ``<path>.csv``, written atomically."""
    path = Path(path)
    md, csv = path.with_suffix(".md"), path.with_suffix(".csv")
    write_text(md, to_markdown(df))
    write_text(csv, df.to_csv(float_format="%.4f"))
    return md, csv


# ----------------------------------------------------------------------------------------------------------
# Objectives compared: mean and spread over seeds, and the entropy claims of the papers
# ----------------------------------------------------------------------------------------------------------
COMPARE_KEYS = ("pass@1", "pass@8", "maj@8", "mean_token_entropy", "mean_length")
# The papers' qualitative claim at a glance: against GRPO these keep the token entropy higher.
ENTROPY_PRESERVING = ("entropy_bonus", "dapo", "high_entropy_mask", "clip_cov", "kl_cov", "cov_annealed")


def training_entropy(steps: pd.DataFrame, last_frac: float = 0.5) -> pd.Series:
    """Mean token entropy (``stats/entropy``) over the last ``last_frac`` of each run's steps, by run."""
    out = {}
    for run, df in steps.groupby("run"):
        df = df.sort_values("step")
        out[run] = float(df["stats/entropy"].iloc[int(len(df) * (1 - last_frac)):].mean())
    return pd.Series(out, name="train_entropy_late")


def objective_table(runs: Runs) -> pd.DataFrame:
    """One row per objective: mean and std over seeds of the final metrics and the late training entropy."""
    rows = []
    late = training_entropy(runs.steps) if not runs.steps.empty else pd.Series(dtype=float)
    for model, m in runs.eval_metrics.items():
        row = {"objective": method_of(model), **{k: m.get(k) for k in COMPARE_KEYS}}
        row["train_entropy_late"] = late.get(model, float("nan"))
        rows.append(row)
    df = pd.DataFrame(rows)
    stats = df.groupby("objective").agg(["mean", "std", "count"])
    out = pd.DataFrame(index=stats.index)
    for k in (*COMPARE_KEYS, "train_entropy_late"):
        out[k] = stats[(k, "mean")]
        out[f"{k} sd"] = stats[(k, "std")].fillna(0.0)
    out["seeds"] = stats[(COMPARE_KEYS[0], "count")].astype(int)
    return out


def entropy_claims(table: pd.DataFrame, baseline: str = "grpo", claimed=ENTROPY_PRESERVING) -> list[dict]:
    """Does each objective keep the late training entropy above ``baseline``'s? With several seeds the claim
    holds only if the means differ by more than the two standard deviations added; with one seed it is a
    single-run comparison and says so."""
    if baseline not in table.index:
        return []
    b, b_sd = table.loc[baseline, "train_entropy_late"], table.loc[baseline, "train_entropy_late sd"]
    out = []
    for obj in claimed:
        if obj not in table.index:
            continue
        v, sd = table.loc[obj, "train_entropy_late"], table.loc[obj, "train_entropy_late sd"]
        seeds = int(min(table.loc[obj, "seeds"], table.loc[baseline, "seeds"]))
        margin = (sd + b_sd) if seeds > 1 else 0.0
        verdict = "holds" if v - b > margin else ("not reproduced" if v <= b else "within seed spread")
        out.append({"objective": obj, "entropy": float(v), f"{baseline}_entropy": float(b), "ratio": float(v / b),
                    "seeds": seeds, "verdict": verdict + ("" if seeds > 1 else " (1 seed)")})
    return out
