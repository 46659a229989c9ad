"""Tables as GitHub markdown and csv, written atomically (used by the reports and the evaluation self-check)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .io import write_text


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
