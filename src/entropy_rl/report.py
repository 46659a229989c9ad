"""Gather a profile's runs for figures and tables.

Layout read (written by the notebooks): ``<runs_dir>/sft/eval/metrics.json`` and, for each RL run (the
objective may be a variant name such as ``paec-no_mask``),
``<runs_dir>/<objective>-s<seed>/train/{curves,heldout}.csv`` and ``.../eval/metrics.json``.

:func:`maj_table` lays the maj@k results out as the PAEC paper does (methods as rows, benchmarks as columns,
then the macro average); :func:`write_table` saves any such table as markdown and csv.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import read_params
from .evaluate import RUN_NAME, maj_table, method_of  # noqa: F401  (maj_table, method_of: re-exported)
from .io import read_json
from .objectives import CLAIM_FIGURES, SPECS, Claim, all_claims, figure_objectives  # noqa: F401  (re-exported)
from .tables import to_markdown, write_table  # noqa: F401  (re-exported)

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


def collect(runs_dir: str | Path | list, baseline_dir: str | Path | None = None, require_eval: bool = True) -> Runs:
    """Every run under ``runs_dir``; a list of directories merges them. The SFT baseline is
    ``<baseline_dir>/eval/metrics.json`` when given, else the first directory's ``sft/eval`` that exists; a run
    name found in two directories is an error. ``require_eval=False``: training runs without evaluations (the
    random-reward probe) are enough."""
    dirs = [Path(d) for d in (runs_dir if isinstance(runs_dir, (list, tuple)) else [runs_dir])]
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such runs directory (run the pipeline first)")
    steps, heldout, metrics = [], [], {}
    if baseline_dir is not None:
        metrics["sft"] = read_json(Path(baseline_dir) / "eval" / "metrics.json")
    for runs_dir in dirs:
        sft_metrics = runs_dir / "sft" / "eval" / "metrics.json"
        if sft_metrics.exists() and "sft" not in metrics:
            metrics["sft"] = read_json(sft_metrics)
        for d in sorted(p for p in runs_dir.iterdir() if p.is_dir() and RUN_NAME.match(p.name)):
            if d.name in metrics or any(d.name == s["run"].iloc[0] for s in steps):
                raise ValueError(f"run {d.name} found twice (again in {runs_dir}); run names must be unique")
            tags = {"run": d.name, **RUN_NAME.match(d.name).groupdict()}
            if (d / "train" / "curves.csv").exists():
                steps.append(pd.read_csv(d / "train" / "curves.csv").assign(**tags))
                heldout.append(pd.read_csv(d / "train" / "heldout.csv").assign(**tags))
            if (d / "eval" / "metrics.json").exists():
                metrics[d.name] = read_json(d / "eval" / "metrics.json")
    if not metrics and (require_eval or not steps):
        raise FileNotFoundError(f"{', '.join(map(str, dirs))}: no {'evaluation metrics' if require_eval else 'runs'} "
                                "found")
    cat = lambda xs: pd.concat(xs, ignore_index=True) if xs else pd.DataFrame()  # noqa: E731
    return Runs(steps=cat(steps), heldout=cat(heldout), eval_metrics=metrics)


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------------
# Objectives compared: mean and spread over seeds, and the papers' claims
# ----------------------------------------------------------------------------------------------------------
COMPARE_KEYS = ("pass@1", "pass@8", "maj@8", "mean_token_entropy", "mean_length")


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


def binding_keys(claims=None) -> tuple[str, ...]:
    """The step-log keys the claims read as binding diagnostics, sorted (each becomes a run-mean column)."""
    return tuple(sorted({c.binding for c in (CLAIMS if claims is None else claims) if c.binding}))


def binding_means(steps: pd.DataFrame, keys) -> pd.DataFrame:
    """Per run: the mean over its steps of each binding diagnostic (NaN where the run does not log it)."""
    out = {}
    for run, df in steps.groupby("run"):
        out[run] = {k: float(df[k].mean()) if k in df.columns and df[k].notna().any() else float("nan") for k in keys}
    return pd.DataFrame.from_dict(out, orient="index", columns=list(keys))


def run_table(runs: Runs) -> pd.DataFrame:
    """One row per RL run (``model`` = ``<objective>-s<seed>``): final metrics, training entropy and the run means
    of the claims' binding diagnostics."""
    ent = training_entropy(runs.steps) if not runs.steps.empty else pd.DataFrame(columns=list(ENTROPY_KEYS))
    keys = binding_keys()
    bind = binding_means(runs.steps, keys) if not runs.steps.empty else pd.DataFrame(columns=list(keys))
    ent = ent.join(bind, how="outer") if len(bind.columns) else ent
    rows = []
    for model, m in runs.eval_metrics.items():
        match = RUN_NAME.match(model)
        if not match:
            continue
        row = {"model": model, "objective": match["objective"], "seed": int(match["seed"]),
               **{k: m.get(k) for k in COMPARE_KEYS}}
        row.update({k: (float(ent.loc[model, k]) if model in ent.index else float("nan"))
                    for k in (*ENTROPY_KEYS, *keys)})
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "objective", "seed", *COMPARE_KEYS, *ENTROPY_KEYS, *keys])


def objective_table(runs: Runs) -> pd.DataFrame:
    """One row per objective (or variant): mean and sd over seeds of :func:`run_table`'s columns; ``seeds``
    counts the runs."""
    df = run_table(runs).drop(columns=["model", "seed"])
    cols = (*COMPARE_KEYS, *ENTROPY_KEYS, *binding_keys())
    stats = df.astype({k: float for k in cols}).groupby("objective").agg(["mean", "std", "count"])
    out = pd.DataFrame(index=stats.index)
    for k in cols:
        out[k] = stats[(k, "mean")]
        out[f"{k} sd"] = stats[(k, "std")].fillna(0.0)
    out["seeds"] = stats[(COMPARE_KEYS[0], "count")].astype(int)
    return out


# ----------------------------------------------------------------------------------------------------------
# The random-reward probe: what each objective does to entropy when the advantages are pure noise
# ----------------------------------------------------------------------------------------------------------
PROBE_KEYS = ("stats/cov_logp_adv", "stats/clip_frac_low", "stats/clip_frac_high", "reward/verifier_mean")


def probe_table(steps: pd.DataFrame, last_frac: float = 0.25, baseline: str = "grpo") -> pd.DataFrame:
    """Per objective, mean and sd over seeds: the token entropy of the first step and over the last ``last_frac`` of
    the steps, its relative change, the run means of :data:`PROBE_KEYS`, and two verdicts against the seed spread:
    ``drift`` (the change against its own sd: ``down``, ``up`` or ``none beyond seed spread``) and ``vs baseline``
    (the change against ``baseline``'s, the two sds added)."""
    per_run = {}
    for run, df in steps.groupby("run"):
        df = df.sort_values("step")
        first = float(df["stats/entropy"].iloc[0])
        late = float(df["stats/entropy"].iloc[int(len(df) * (1 - last_frac)):].mean())
        per_run[run] = {"objective": df["objective"].iloc[0], "entropy_first": first, "entropy_late": late,
                        "entropy_change": late / first - 1,
                        **{k: float(df[k].mean()) if k in df.columns else float("nan") for k in PROBE_KEYS}}
    df = pd.DataFrame.from_dict(per_run, orient="index")
    cols = ["entropy_first", "entropy_late", "entropy_change", *PROBE_KEYS]
    g = df.groupby("objective")[cols]
    out = g.mean().join(g.std().fillna(0.0), rsuffix=" sd")
    out["seeds"] = g.size()

    def drift(row) -> str:
        if row["seeds"] < 2:
            return "1 seed, no verdict"
        if abs(row["entropy_change"]) <= row["entropy_change sd"]:
            return "none beyond seed spread"
        return "down" if row["entropy_change"] < 0 else "up"

    out["drift"] = out.apply(drift, axis=1)
    if baseline in out.index:
        b = out.loc[baseline]
        diff = out["entropy_change"] - b["entropy_change"]
        spread = out["entropy_change sd"] + b["entropy_change sd"]
        out["vs baseline"] = ["–" if name == baseline else
                              ("higher" if d > s else "lower" if d < -s else "within seed spread")
                              for name, d, s in zip(out.index, diff, spread)]
    return out


def probe_markdown(table: pd.DataFrame, baseline: str = "grpo") -> str:
    """The probe's table for a reader: entropy change, Cov(log π, A), clip shares, verdicts."""
    lines = ["| objective | seeds | entropy first | entropy late | change | Cov(log π, A) | at low clip | at high clip "
             f"| drift | vs `{baseline}` |", "|---" * 10 + "|"]
    f = lambda r, k, fmt: f"{_fmt(r[k], fmt)} ± {_fmt(r[k + ' sd'], fmt)}"  # noqa: E731
    for name, r in table.loc[sorted(table.index, key=_order)].iterrows():
        lines.append(f"| `{name}` | {int(r['seeds'])} | {f(r, 'entropy_first', '.4f')} | {f(r, 'entropy_late', '.4f')} "
                     f"| {r['entropy_change'] * 100:+.0f} % ± {r['entropy_change sd'] * 100:.0f} % "
                     f"| {f(r, 'stats/cov_logp_adv', '.2e')} | {f(r, 'stats/clip_frac_low', '.4f')} "
                     f"| {f(r, 'stats/clip_frac_high', '.4f')} | {r['drift']} | {r.get('vs baseline', '–')} |")
    return "\n".join(lines) + "\n"


CLAIMS: tuple[Claim, ...] = tuple(all_claims())
"""the papers' claims, as each objective's module registered them (entropy_rl.objectives.register_objective)"""


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


INACTIVE = "not tested (mechanism inactive)"


def binding_value(table: pd.DataFrame, c) -> float:
    """The claim's binding diagnostic: the mean over seeds of its runs' means, from ``c.binding_of``'s row (NaN when
    the claim has none or the table lacks it)."""
    who = c.method if c.binding_of == "method" else c.baseline
    if not c.binding or c.binding not in table.columns or who not in table.index:
        return float("nan")
    return float(table.loc[who, c.binding])


def claim_verdicts(table: pd.DataFrame, claims=CLAIMS) -> list[dict]:
    """One row per claim whose two objectives are in ``table``: both values, their seed sds, the binding diagnostic
    and whether it bound, and the verdict: :data:`INACTIVE` when the claim has a diagnostic and it did not bind
    (the comparison is then no evidence about the paper), else :func:`verdict`."""
    out = []
    for c in claims:
        if c.method not in table.index or c.baseline not in table.index:
            continue
        v, b = float(table.loc[c.method, c.metric]), float(table.loc[c.baseline, c.metric])
        sd = float(table.loc[c.method, f"{c.metric} sd"]) + float(table.loc[c.baseline, f"{c.metric} sd"])
        seeds = int(min(table.loc[c.method, "seeds"], table.loc[c.baseline, "seeds"]))
        diff = (v - b) if c.direction == "higher" else (b - v)
        d = binding_value(table, c)
        bound = c.bound(d) if c.binding else None
        out.append({"figure": c.figure, "claim": c.text, "metric": c.metric, "method": c.method, "value": v,
                    "baseline": c.baseline, "baseline_value": b, "sd_sum": sd, "seeds": seeds,
                    "binding": c.binding, "binding_of": c.binding_of if c.binding else None, "binding_value": d,
                    "threshold": f"{c.bound_if} {c.threshold:g}" if c.binding else None, "bound": bound,
                    "verdict": INACTIVE if bound is False else verdict(diff, sd, seeds)})
    return out


CLAIM_COLUMNS = ("claim", "figure", "metric", "method", "value", "baseline", "baseline_value", "sd_sum", "seeds",
                 "binding", "binding_of", "binding_value", "threshold", "bound", "verdict")


def claim_table(table: pd.DataFrame, claims=CLAIMS) -> pd.DataFrame:
    """:func:`claim_verdicts` as a table indexed by the claim (empty, with its columns, when none applies)."""
    return pd.DataFrame(claim_verdicts(table, claims), columns=list(CLAIM_COLUMNS)).set_index("claim")



# ----------------------------------------------------------------------------------------------------------
# The results a person reads: written by the figures stage, quoted by the README (never copied by hand)
# ----------------------------------------------------------------------------------------------------------
RESULT_COLUMNS = (("pass@1", "pass@1", ".3f"), ("pass@8", "pass@8", ".3f"), ("maj@8", "maj@8", ".3f"),
                  ("mean_token_entropy", "entropy (eval)", ".4f"), ("train_entropy_late", "entropy (late train)", ".4f"),
                  ("mean_length", "length", ".1f"))


def _fmt(v, f: str) -> str:
    return "–" if v is None or v != v else format(float(v), f)


def _order(name: str) -> tuple:
    """Registered objectives in registration order, then variants and others by name."""
    names = SPECS.names()
    return (0, names.index(name), "") if name in names else (1, 0, name)


def results_markdown(table: pd.DataFrame, claims: pd.DataFrame, sft: dict | None = None) -> str:
    """The results of one report as markdown: with one seed per objective, a row per model (the SFT start first);
    with several, mean ± sd per objective, then the claims and their verdicts. ``table`` is
    :func:`objective_table`, ``claims`` :func:`claim_table`."""
    lines: list[str] = []
    table = table.loc[sorted(table.index, key=_order)]
    seeds = int(table["seeds"].max()) if len(table) else 0
    if seeds <= 1:
        lines += ["| model | " + " | ".join(c[1] for c in RESULT_COLUMNS) + " |", "|---" * (len(RESULT_COLUMNS) + 1) + "|"]
        if sft is not None:
            lines.append("| `sft` (start) | " + " | ".join(
                "–" if k == "train_entropy_late" else _fmt(sft.get(k), f) for k, _, f in RESULT_COLUMNS) + " |")
        for name, row in table.iterrows():
            lines.append(f"| `{name}` | " + " | ".join(_fmt(row[k], f) for k, _, f in RESULT_COLUMNS) + " |")
        return "\n".join(lines) + "\n"
    cols = [c for c in RESULT_COLUMNS if c[0] != "mean_token_entropy"]
    lines += ["| objective | seeds | " + " | ".join(c[1] for c in cols) + " | entropy change |",
              "|---" * (len(cols) + 3) + "|"]
    for name, row in table.iterrows():
        cells = [f"{_fmt(row[k], f)} ± {_fmt(row[k + ' sd'], f)}" for k, _, f in cols]
        lines.append(f"| `{name}` | {int(row['seeds'])} | " + " | ".join(cells) +
                     f" | {row['entropy_change'] * 100:+.0f} % |")
    lines += ["", f"| claim | metric | method | baseline | mechanism: diagnostic (run mean), bound? | verdict ({seeds} seeds) |",
              "|---|---|---|---|---|---|"]
    for text, c in claims.iterrows():
        f = ".1f" if c["metric"] == "mean_length" else (".4f" if "entropy_late" in c["metric"] else ".3f")
        sd = lambda m: table.loc[m, f"{c['metric']} sd"] if m in table.index else float("nan")  # noqa: E731
        lines.append(f"| {text} | `{c['metric']}` | `{c['method']}` {_fmt(c['value'], f)} ± {_fmt(sd(c['method']), f)} "
                     f"| `{c['baseline']}` {_fmt(c['baseline_value'], f)} ± {_fmt(sd(c['baseline']), f)} "
                     f"| {_binding_cell(c)} | **{c['verdict']}** |")
    return "\n".join(lines) + "\n"


def _binding_cell(c) -> str:
    """The claims table's mechanism cell: the diagnostic, whose runs, its value against the threshold, bound or not."""
    if not c.get("binding"):
        return "no diagnostic"
    who = "" if c["binding_of"] == "method" else f" (of `{c['baseline']}`)"
    return (f"`{c['binding']}`{who} {_fmt(c['binding_value'], '.4g')} (bound if {c['threshold']}): "
            f"{'yes' if c['bound'] else 'no'}")


_BLOCK = re.compile(r"(<!-- generated from (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end of generated -->)", re.S)


def readme_blocks(readme: str) -> list[tuple[str, str]]:
    """``(path, body)`` of every generated block of the README (between ``<!-- generated from <path> -->`` and
    ``<!-- end of generated -->``)."""
    return [(m["path"], m["body"]) for m in _BLOCK.finditer(readme)]


def update_readme(readme: str | Path = "README.md", root: str | Path = ".") -> list[str]:
    """Rewrite every generated block of the README from the file it names; returns the paths that changed."""
    readme, root = Path(readme), Path(root)
    text = readme.read_text()
    changed = []

    def fill(m):
        body = (root / m["path"]).read_text()
        if body != m["body"]:
            changed.append(m["path"])
        return m.group(1) + body + m.group(4)

    new = _BLOCK.sub(fill, text)
    if new != text:
        readme.write_text(new)
    return changed


def summary_text(params_file: str | Path = "params.yaml", reports: str | Path = "reports") -> str:
    """What ``make repro`` prints at the end: per active profile its results table and where its figures are."""
    profiles = read_params(params_file).get("profiles") or {}
    out = []
    for name in profiles:
        d = Path(reports) / name
        if not (d / "results.md").exists():
            out.append(f"{name}: no results yet ({d}/results.md is missing)")
            continue
        figs = sorted(p.name for p in (d / "figures").glob("*.png"))
        out += [f"== {name}: {d}/results.md", (d / "results.md").read_text().rstrip(), "",
                f"figures ({len(figs)}) in {d}/figures/: {', '.join(figs)}",
                f"executed notebooks: runs/{name}/*.ipynb, {d}/40_figures.ipynb", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m entropy_rl.report readme``: rewrite the README's generated blocks from docs/results/;
    ``python -m entropy_rl.report summary``: print the active profiles' results (the end of ``make repro``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["summary"]:
        print(summary_text())
        return 0
    if argv[:1] != ["readme"]:
        print(main.__doc__, file=sys.stderr)
        return 2
    changed = update_readme(argv[1] if len(argv) > 1 else "README.md")
    print(f"README: {len(changed)} generated block(s) updated" + (f" ({', '.join(changed)})" if changed else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
