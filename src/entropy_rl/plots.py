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


def pass_at_k(metrics: dict[str, dict], title: str = "held-out pass@k"):
    """pass@k against k (log2 axis) for each model; ``metrics`` maps a model name to its metrics dict."""
    sns.set_theme(style="whitegrid", context="notebook")
    rows = []
    for name, m in metrics.items():
        for key, v in m.items():
            if key.startswith("pass@"):
                rows.append({"model": name, "k": int(key.split("@")[1]), "pass@k": v})
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    sns.lineplot(data=df, x="k", y="pass@k", hue="model", marker="o", ax=ax)
    ax.set_xscale("log", base=2)
    ax.set_title(title)
    fig.tight_layout()
    return fig
