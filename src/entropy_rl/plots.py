"""Figures (seaborn) from the per-step logs and the evaluation metrics. Every figure is saved atomically."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from IPython.display import Image  # noqa: E402

from .io import atomic_path  # noqa: E402
from .objectives import CLAIM_FIGURES, all_panels, figure_objectives  # noqa: E402
from .report import run_table  # noqa: E402

BASE_PANELS = [
    ("reward/mean", "train reward (mean)"),
    ("stats/entropy", "token entropy (nats)"),
    ("heldout/pass@1", "held-out pass@1"),
    ("stats/response_length", "response length (tokens)"),
    ("stats/clip_frac", "clip fraction"),
    ("stats/kl_ref", "KL to reference (k3)"),
]
"""the panels every run has; the objectives add theirs (what each method acts on) through their registrations"""
CURVE_PANELS = BASE_PANELS + [(p.key, p.label) for p in all_panels()]


def probe_figure(steps: pd.DataFrame, title: str = "Random-reward probe: entropy under pure-noise advantages"):
    """Token entropy and Cov(log π, A) over the steps, one line per objective (mean ± 1 sd over seeds)."""
    sns.set_theme(style="whitegrid", context="notebook")
    panels = [("stats/entropy", "token entropy (nats)"), ("stats/cov_logp_adv", "Cov(log π, A) per update")]
    order = sorted(set(steps["objective"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        if key in steps.columns:
            sns.lineplot(steps, x="step", y=key, hue="objective", hue_order=order, errorbar="sd", ax=ax)
        ax.set(title=label, xlabel="RL step", ylabel="")
    axes[0][-1].axhline(0.0, color="grey", lw=0.8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically (PNG without a software stamp, so a rerun is byte-identical) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight",
                    metadata={"Software": None} if path.suffix == ".png" else None)
    plt.close(fig)
    return path


def show(fig_or_path):
    """The inline image of a notebook cell: a saved PNG, or a figure rendered to PNG (then closed). This module
    draws with the Agg backend, so figures appear in the executed notebooks through this, with stable bytes."""
    if isinstance(fig_or_path, (str, Path)):
        return Image(filename=str(fig_or_path))
    buf = io.BytesIO()
    fig_or_path.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig_or_path)
    return Image(data=buf.getvalue())


def training_curves(steps: pd.DataFrame, heldout: pd.DataFrame, hue: str = "run", panels=CURVE_PANELS,
                    title: str | None = None):
    """One panel per metric, one line per ``hue`` value (mean ± 1 sd where several runs share it, e.g. seeds).

    Colours are fixed per ``hue`` value across panels; panels whose metric no run logs are left out."""
    sns.set_theme(style="whitegrid", context="notebook")
    panels = [(k, lbl) for k, lbl in panels if k in (heldout if k.startswith("heldout/") else steps)]
    order = sorted(set(steps.get(hue, pd.Series(dtype=str))) | set(heldout.get(hue, pd.Series(dtype=str))))
    palette = dict(zip(order, sns.color_palette("tab10" if len(order) <= 10 else "tab20", max(len(order), 1))))
    cols = max(1, min(3, len(panels)))
    rows = max(1, (len(panels) + cols - 1) // cols)
    ncol = min(len(order), 5)
    title_h = 0.4 if title else 0.0  # inches above the legend for the title
    head = title_h + 0.3 + 0.25 * ((len(order) + ncol - 1) // max(ncol, 1))  # title + legend, in inches
    height = 3.3 * rows + head
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, height), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels):
        src = heldout if key.startswith("heldout/") else steps
        sns.lineplot(data=src.dropna(subset=[key]), x="step", y=key, hue=hue, hue_order=order, palette=palette,
                     ax=ax, errorbar=("sd", 1), legend=False)
        ax.set_title(label)
        ax.set_ylabel("")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, y=1 - 0.08 / height, va="top")
    handles = [plt.Line2D([], [], color=palette[h], label=h) for h in order]
    fig.legend(handles=handles, title=hue, loc="upper center", ncol=max(ncol, 1),
               bbox_to_anchor=(0.5, 1 - title_h / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - head / height))
    return fig


def final_metrics(per_run: pd.DataFrame, metrics, order, title: str | None = None):
    """One panel per metric: a bar per objective (mean over seeds, ± 1 sd) with each seed as a dot."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.2 + 1.1 * len(order) * len(metrics), 3.8), squeeze=False)
    palette = dict(zip(order, sns.color_palette("tab10", len(order))))
    for ax, key in zip(axes.flat, metrics):
        sns.barplot(data=per_run, x="objective", y=key, hue="objective", order=order, hue_order=order,
                    palette=palette, errorbar=("sd", 1), alpha=0.6, ax=ax, legend=False)
        sns.stripplot(data=per_run, x="objective", y=key, order=order, color="0.15", size=4, ax=ax)
        ax.set_title(key)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", rotation=30)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def claim_figure(runs, name: str):
    """The figure of claim ``name`` (:data:`entropy_rl.objectives.CLAIM_FIGURES`) for the objectives ``runs`` has, or
    None when fewer than two of them ran."""
    fig = CLAIM_FIGURES.get(name)
    title, objectives, kind, panels = fig.title, figure_objectives(name), fig.kind, fig.panels
    have = set(runs.steps.get("objective", pd.Series(dtype=str)))
    order = [o for o in objectives if o in have]
    if len(order) < 2:
        return None
    if kind == "bars":
        per_run = run_table(runs)
        return final_metrics(per_run[per_run["objective"].isin(order)], panels, order, title)
    pick = lambda df: df[df["objective"].isin(order)]  # noqa: E731
    return training_curves(pick(runs.steps), pick(runs.heldout), hue="objective",
                           panels=[(k, dict(CURVE_PANELS).get(k, k)) for k in panels], title=title)


def _pass_rows(name: str, m: dict, panel: str) -> list[dict]:
    return [{"model": name, "panel": panel, "k": int(key.split("@")[1]), "pass@k": v}
            for key, v in m.items() if key.startswith("pass@") and isinstance(v, (int, float))]


def pass_at_k(metrics: dict[str, dict], title: str = "held-out pass@k", baseline: str | None = "sft",
              benchmarks: list[str] | None = None):
    """pass@k against k (log2 axis), one line per model; ``metrics`` maps a model name to its metrics dict.

    The starting model (``baseline``, when present) is drawn dashed in black, so RL models read against it.
    When the metrics cover several benchmarks (``metrics[m]["benchmarks"]``), there is one panel per benchmark
    (``benchmarks`` picks and orders them) plus the macro average."""
    sns.set_theme(style="whitegrid", context="notebook")
    names = benchmarks or list(next(iter(metrics.values())).get("benchmarks") or {})
    panels = (names + ["macro average"]) if len(names) > 1 else [title]
    rows = []
    for model, m in metrics.items():
        if len(panels) == 1:
            rows += _pass_rows(model, m, title)
            continue
        for b in names:
            rows += _pass_rows(model, (m.get("benchmarks") or {}).get(b, {}), b)
        rows += _pass_rows(model, m, "macro average")
    df = pd.DataFrame(rows)
    cols = min(len(panels), 4)
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 if cols == 1 else 4.2 * cols, 3.6 * nrows), squeeze=False)
    models = list(metrics)
    palette = dict(zip([m for m in models if m != baseline], sns.color_palette(n_colors=max(len(models), 1))))
    if baseline in models:
        palette[baseline] = (0.1, 0.1, 0.1)
    for ax, panel in zip(axes.flat, panels):
        sub = df[df["panel"] == panel] if not df.empty else df
        for model in models:
            line = sub[sub["model"] == model].sort_values("k")
            if line.empty:
                continue
            ax.plot(line["k"], line["pass@k"], marker="o", ms=3.5, color=palette[model],
                    linestyle="--" if model == baseline else "-", label=model)
        ax.set_xscale("log", base=2)
        ax.set_title(panel)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    if len(panels) > 1:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
