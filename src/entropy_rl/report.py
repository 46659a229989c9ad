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


def write_table(df: pd.DataFrame, path: str | Path, floatfmt: str = ".1f") -> tuple[Path, Path]:
    """``<path>.md`` (floats as ``floatfmt``) and ``<path>.csv`` (4 decimals), written atomically."""
    path = Path(path)
    md, csv = path.with_suffix(".md"), path.with_suffix(".csv")
    write_text(md, to_markdown(df, floatfmt))
    write_text(csv, df.to_csv(float_format="%.4f"))
    return md, csv


# ----------------------------------------------------------------------------------------------------------
# Objectives compared: mean and spread over seeds, and the papers' claims
# ----------------------------------------------------------------------------------------------------------
COMPARE_KEYS = ("pass@1", "pass@8", "maj@8", "mean_token_entropy", "mean_length")
# The papers' qualitative claim at a glance: against GRPO these keep the token entropy higher.
ENTROPY_PRESERVING = ("entropy_bonus", "dapo", "high_entropy_mask", "clip_cov", "kl_cov", "cov_annealed")


def training_entropy(steps: pd.DataFrame, last_frac: float = 0.5) -> pd.DataFrame:
    """Per run: the token entropy (``stats/entropy``) of the first step, its mean over the last ``last_frac`` of
    the steps, the relative change between the two and its size (``entropy_drift``, 0 = held at the start)."""
    out = {}
    for run, df in steps.groupby("run"):
        df = df.sort_values("step")
        first = float(df["stats/entropy"].iloc[0])
        late = float(df["stats/entropy"].iloc[int(len(df) * (1 - last_frac)):].mean())
        out[run] = {"train_entropy_first": first, "train_entropy_late": late, "entropy_change": late / first - 1,
                    "entropy_drift": abs(late / first - 1)}
    return pd.DataFrame.from_dict(out, orient="index")


ENTROPY_KEYS = ("train_entropy_late", "entropy_change", "entropy_drift")


def run_table(runs: Runs) -> pd.DataFrame:
    """One row per RL run (``model`` = ``<objective>-s<seed>``): final metrics and training entropy."""
    ent = training_entropy(runs.steps) if not runs.steps.empty else pd.DataFrame(columns=list(ENTROPY_KEYS))
    rows = []
    for model, m in runs.eval_metrics.items():
        match = _RUN.match(model)
        if not match:
            continue
        row = {"model": model, "objective": match["objective"], "seed": int(match["seed"]),
               **{k: m.get(k) for k in COMPARE_KEYS}}
        row.update({k: (float(ent.loc[model, k]) if model in ent.index else float("nan")) for k in ENTROPY_KEYS})
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "objective", "seed", *COMPARE_KEYS, *ENTROPY_KEYS])


def objective_table(runs: Runs) -> pd.DataFrame:
    """One row per objective (or variant): mean and sd over seeds of :func:`run_table`'s columns; ``seeds``
    counts the runs."""
    df = run_table(runs).drop(columns=["model", "seed"])
    stats = df.astype({k: float for k in (*COMPARE_KEYS, *ENTROPY_KEYS)}).groupby("objective").agg(
        ["mean", "std", "count"])
    out = pd.DataFrame(index=stats.index)
    for k in (*COMPARE_KEYS, *ENTROPY_KEYS):
        out[k] = stats[(k, "mean")]
        out[f"{k} sd"] = stats[(k, "std")].fillna(0.0)
    out["seeds"] = stats[(COMPARE_KEYS[0], "count")].astype(int)
    return out


@dataclass(frozen=True)
class Claim:
    """A paper's qualitative claim, as a comparison of two rows of :func:`objective_table`."""

    figure: str
    """the claim figure that shows it (:data:`CLAIM_FIGURES`)"""
    method: str
    baseline: str
    metric: str
    """a column of :func:`objective_table`"""
    direction: str
    """``higher`` or ``lower``: what the paper says ``method`` does to ``metric`` against ``baseline``"""
    text: str


CLAIM_FIGURES = {
    # name: (title, objectives shown, kind, panels: step-log keys for "curves", table columns for "bars")
    "entropy": ("GRPO's entropy falls; bonus, clip-higher, 80/20, Clip-Cov and KL-Cov keep it higher (methods.md §4, §5)",
                ("grpo", *ENTROPY_PRESERVING), "curves", ("stats/entropy", "heldout/pass@1", "stats/response_length")),
    "erpo": ("ERPO against GRPO: accuracy and response length (methods.md §1(d))",
             ("grpo", "erpo"), "curves", ("heldout/pass@1", "stats/response_length", "stats/entropy")),
    "repo_adapo": ("REPO-R and ADAPO keep entropy up where GRPO lets it fall (methods.md §2(d))",
                   ("grpo", "dapo", "repo_r", "adapo"), "curves", ("stats/entropy", "heldout/pass@1", "stats/clip_frac")),
    "paec": ("PAEC: maj@k against GRPO and without its penalty or its mask (methods.md §3(d))",
             ("grpo", "paec", "paec-no_penalty", "paec-no_mask"), "bars", ("maj@8", "pass@1", "train_entropy_late")),
    "bf16": ("Log-probs and ratio in bf16 against fp32, on DAPO (ADAPO paper, methods.md §2(f))",
             ("dapo", "dapo-bf16"), "curves", ("stats/entropy", "stats/clip_frac", "heldout/pass@1")),
}

CLAIMS = (
    *(Claim("entropy", m, "grpo", "train_entropy_late", "higher", f"{m} keeps the late token entropy above GRPO's")
      for m in ENTROPY_PRESERVING),
    Claim("erpo", "erpo", "grpo", "pass@1", "higher", "ERPO's accuracy is above GRPO's"),
    Claim("erpo", "erpo", "grpo", "mean_length", "lower", "ERPO's responses are shorter than GRPO's"),
    Claim("erpo", "erpo", "grpo", "train_entropy_late", "higher", "ERPO's entropy does not collapse like GRPO's"),
    Claim("repo_adapo", "repo_r", "grpo", "train_entropy_late", "higher", "REPO-R keeps entropy above GRPO's"),
    Claim("repo_adapo", "adapo", "grpo", "train_entropy_late", "higher", "ADAPO keeps entropy above GRPO's"),
    Claim("repo_adapo", "repo_r", "grpo", "entropy_drift", "lower",
          "REPO-R holds entropy nearer its start than GRPO (paper: +7 % against -57 %)"),
    Claim("repo_adapo", "adapo", "dapo", "entropy_drift", "lower",
          "ADAPO holds entropy nearer its start than DAPO (paper: +102 % against +298 %)"),
    Claim("paec", "paec", "grpo", "maj@8", "higher", "PAEC's maj@k is above GRPO's (paper: 41.6 against 35.5)"),
    Claim("paec", "paec", "paec-no_penalty", "maj@8", "higher", "removing the floor penalty lowers maj@k (38.8)"),
    Claim("paec", "paec", "paec-no_mask", "maj@8", "higher", "removing the position mask lowers maj@k (38.3)"),
    Claim("bf16", "dapo-bf16", "dapo", "train_entropy_late", "lower", "a bf16 ratio biases toward entropy collapse"),
)


def verdict(diff: float, spread: float, seeds: int) -> str:
    """``diff`` = (method - baseline) signed so that > 0 is the claimed direction; ``spread`` = the two runs'
    standard deviations added. One seed gives no verdict, only the sign."""
    if seeds < 2:
        return f"1 seed, no verdict ({'as claimed' if diff > 0 else 'against the claim'})"
    if diff > spread:
        return "holds"
    if diff < -spread:
        return "reversed"
    return "within seed spread" if diff > 0 else "not reproduced (within seed spread)"


def claim_verdicts(table: pd.DataFrame, claims=CLAIMS) -> list[dict]:
    """One row per claim whose two objectives are in ``table``: both values, their seed sds, the verdict."""
    out = []
    for c in claims:
        if c.method not in table.index or c.baseline not in table.index:
            continue
        v, b = float(table.loc[c.method, c.metric]), float(table.loc[c.baseline, c.metric])
        sd = float(table.loc[c.method, f"{c.metric} sd"]) + float(table.loc[c.baseline, f"{c.metric} sd"])
        seeds = int(min(table.loc[c.method, "seeds"], table.loc[c.baseline, "seeds"]))
        diff = (v - b) if c.direction == "higher" else (b - v)
        out.append({"figure": c.figure, "claim": c.text, "metric": c.metric, "method": c.method, "value": v,
                    "baseline": c.baseline, "baseline_value": b, "sd_sum": sd, "seeds": seeds,
                    "verdict": verdict(diff, sd, seeds)})
    return out


CLAIM_COLUMNS = ("claim", "figure", "metric", "method", "value", "baseline", "baseline_value", "sd_sum", "seeds",
                 "verdict")


def claim_table(table: pd.DataFrame, claims=CLAIMS) -> pd.DataFrame:
    """:func:`claim_verdicts` as a table indexed by the claim (empty, with its columns, when none applies)."""
    return pd.DataFrame(claim_verdicts(table, claims), columns=list(CLAIM_COLUMNS)).set_index("claim")

