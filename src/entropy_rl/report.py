"""Gather a profile's runs for figures and tables.

Layout read (written by the notebooks): ``<runs_dir>/sft/eval/metrics.json`` and, for each RL run,
``<runs_dir>/<objective>-s<seed>/train/{curves,heldout}.csv`` and ``.../eval/metrics.json``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .io import read_json

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


def collect(runs_dir: str | Path) -> Runs:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir}: no such runs directory (run the pipeline first)")
    steps, heldout, metrics = [], [], {}
    sft_metrics = runs_dir / "sft" / "eval" / "metrics.json"
    if sft_metrics.exists():
        metrics["sft"] = read_json(sft_metrics)
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir() and _RUN.match(p.name)):
        tags = {"run": d.name, **_RUN.match(d.name).groupdict()}
        if (d / "train" / "curves.csv").exists():
            steps.append(pd.read_csv(d / "train" / "curves.csv").assign(**tags))
            heldout.append(pd.read_csv(d / "train" / "heldout.csv").assign(**tags))
        if (d / "eval" / "metrics.json").exists():
            metrics[d.name] = read_json(d / "eval" / "metrics.json")
    if not metrics:
        raise FileNotFoundError(f"{runs_dir}: no evaluation metrics found")
    cat = lambda xs: pd.concat(xs, ignore_index=True) if xs else pd.DataFrame()  # noqa: E731
    return Runs(steps=cat(steps), heldout=cat(heldout), eval_metrics=metrics)
