"""Figures (seaborn) from the per-step logs and the evaluation metrics. Every figure is saved atomically."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .io import atomic_path  # noqa: E402

CURVE_PANELS = [
    ("reward/mean", "train reward (mean)"),
    ("stats/entropy", "token entropy (nats)"),
    ("heldout/pass@1", "held-out pass@1"),
    ("stats/response_length", "response length (tokens)"),
    ("stats/clip_frac", "clip fraction"),
    ("stats/kl_ref", "KL to reference (k3)"),
]


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight",
                    metadata={"Software": None} if path.suffix == ".png" else None)
    plt.close(fig)
    return path


def training_curves(steps: pd.DataFrame, heldout: pd.DataFrame, hue: str = "run", panels=CURVE_PANELS):
    """One panel per metric, one line per run. ``steps`` and ``heldout`` are long tables with ``step``."""
    sns.set_theme(style="whitegrid", context="notebook")
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels):
        src = heldout if key.startswith("heldout/") else steps
        if key in src:
            sns.lineplot(data=src, x="step", y=key, hue=hue, ax=ax, errorbar=("sd", 1), legend=ax is axes.flat[0])
        ax.set_title(label)
        ax.set_ylabel("")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


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
