"""Tasks and data.

* A synthetic, verifiable arithmetic task generated from a seed (the offline default profile).
* The raw public math sets that the real-data profiles use, materialized into ``data/`` from a local copy
  (or exported from their Hugging Face hub ids) and verified against the hashes pinned in ``data.dvc``.

Every record is normalized to ``{"id", "problem", "answer", "source"}``; SFT records also carry ``target``.
"""
from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path

import yaml

from .config import DataConfig

# ----------------------------------------------------------------------------------------------------------
# Synthetic arithmetic
# ----------------------------------------------------------------------------------------------------------
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def boxed(answer: str) -> str:
    return "\\boxed{" + answer + "}"


def scratchpad(a: int, b: int, op: str) -> str:
    """Column-by-column working for addition, e.g. ``347+589`` → ``7+9=16;4+8+1=13;3+5+1=9;``.

    Other operators have no scratchpad (the target is the boxed answer alone)."""
    if op != "+":
        return ""
    xs, ys = str(a)[::-1], str(b)[::-1]
    carry, steps = 0, []
    for i in range(max(len(xs), len(ys))):
        x, y = int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0
        lhs = f"{x}+{y}" + (f"+{carry}" if carry else "")
        total = x + y + carry
        steps.append(f"{lhs}={total};")
        carry = total // 10
    return "".join(steps)


def arithmetic_splits(cfg: DataConfig) -> dict[str, list[dict]]:
    """Generate the ``sft``, ``rl`` and ``eval`` splits, with pairwise-disjoint problems.

    The SFT targets mix a scratchpad answer and a direct one (``scratchpad_frac``), so the policy starts
    with a real choice of format and length, which is where entropy collapse first shows.
    """
    rng = random.Random(cfg.seed)
    lo, hi = 10 ** (cfg.digits - 1), 10**cfg.digits - 1
    n_total = cfg.n_eval + cfg.n_rl + cfg.n_sft
    space = len(cfg.ops) * (hi - lo + 1) ** 2
    if n_total > space // 2:
        raise ValueError(f"data: {n_total} problems requested but only {space} exist for digits={cfg.digits}")
    seen: set[tuple[int, int, str]] = set()
    problems = []
    while len(problems) < n_total:
        key = (rng.randint(lo, hi), rng.randint(lo, hi), rng.choice(cfg.ops))
        if key not in seen:
            seen.add(key)
            problems.append(key)
    splits = {
        "eval": problems[: cfg.n_eval],
        "rl": problems[cfg.n_eval : cfg.n_eval + cfg.n_rl],
        "sft": problems[cfg.n_eval + cfg.n_rl :],
    }
    out: dict[str, list[dict]] = {}
    for split, items in splits.items():
        rows = []
        for i, (a, b, op) in enumerate(items):
            answer = str(_APPLY[op](a, b))
            row = {"id": f"arith-{split}-{i:06d}", "problem": f"{a}{op}{b}=", "answer": answer, "source": "arithmetic"}
            if split == "sft":
                pad = scratchpad(a, b, op) if rng.random() < cfg.scratchpad_frac else ""
                row["target"] = pad + boxed(answer)
            rows.append(row)
        out[split] = rows
    return out


# ----------------------------------------------------------------------------------------------------------
# Raw public data pinned by data.dvc
# ----------------------------------------------------------------------------------------------------------
# Hugging Face hub ids of the raw sets (used by `export_from_hub`; the files in data/ keep these names).
HUB_SOURCES = {
    "gsm8k/train.jsonl": ("openai/gsm8k", "main", "train"),
    "gsm8k/test.jsonl": ("openai/gsm8k", "main", "test"),
    "math_eval/math500.jsonl": ("HuggingFaceH4/MATH-500", None, "test"),
    "math_eval/aime24.jsonl": ("HuggingFaceH4/aime_2024", None, "train"),
    "math_eval/aime25.jsonl": ("math-ai/aime25", None, "test"),
    "math_eval/amc2023.jsonl": ("math-ai/amc23", None, "test"),
    "math_eval/minervamath.jsonl": ("math-ai/minervamath", None, "test"),
    "math_eval/olympiadbench.jsonl": ("math-ai/olympiadbench", None, "test"),
}


class DataMismatchError(RuntimeError):
    """The materialized raw data does not match the hashes pinned in data.dvc."""


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pinned_files(dvc_file: str | Path = "data.dvc") -> dict[str, str]:
    """The per-file md5s recorded under ``meta.files`` of ``data.dvc`` (relative path → md5)."""
    dvc_file = Path(dvc_file)
    if not dvc_file.exists():
        raise FileNotFoundError(f"{dvc_file}: not found (it pins the raw data; restore it from git)")
    meta = (yaml.safe_load(dvc_file.read_text()) or {}).get("meta") or {}
    files = meta.get("files")
    if not files:
        raise DataMismatchError(f"{dvc_file}: has no meta.files with the per-file hashes")
    return dict(files)


def verify_raw(dest: str | Path = "data", dvc_file: str | Path = "data.dvc") -> dict[str, str]:
    """Check every pinned file under ``dest`` against ``data.dvc``; raise naming each missing or changed file."""
    dest = Path(dest)
    problems = []
    pinned = pinned_files(dvc_file)
    for rel, md5 in sorted(pinned.items()):
        p = dest / rel
        if not p.exists():
            problems.append(f"missing {p}")
        elif (got := _md5(p)) != md5:
            problems.append(f"{p}: md5 {got}, data.dvc pins {md5}")
    if problems:
        raise DataMismatchError("raw data does not match data.dvc:\n  " + "\n  ".join(problems))
    return pinned


def fetch_raw(source: str | Path, dest: str | Path = "data", dvc_file: str | Path = "data.dvc") -> dict[str, str]:
    """Copy the pinned raw files from a local directory ``source`` into ``dest`` and verify their hashes.

    ``source`` has the layout of the project's offline copy (``gsm8k/*.jsonl``, ``math_eval/*.jsonl``),
    for example ``../shared/data`` or a directory written by :func:`export_from_hub`.
    """
    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise FileNotFoundError(f"data source {source}: not a directory (give a local copy of the raw sets)")
    pinned = pinned_files(dvc_file)
    missing = [rel for rel in pinned if not (source / rel).exists()]
    if missing:
        raise FileNotFoundError(f"data source {source}: missing {', '.join(sorted(missing))}")
    for rel in sorted(pinned):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source / rel, tmp)
        tmp.replace(target)
    return verify_raw(dest, dvc_file)


def export_from_hub(dest: str | Path) -> None:  # pragma: no cover - needs the network
    """Write the raw sets from their hub ids (``HUB_SOURCES``) into ``dest`` in the offline layout.

    Hub snapshots can differ from the pinned copy: ``fetch_raw(dest)`` then names the files that differ.
    """
    import datasets

    dest = Path(dest)
    for rel, (hub_id, config, split) in HUB_SOURCES.items():
        ds = datasets.load_dataset(hub_id, config, split=split)
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.to_json(str(path), lines=True, force_ascii=False)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Materialize the raw data pinned by data.dvc into data/")
    ap.add_argument("--source", default="../shared/data", help="local directory with the raw sets")
    ap.add_argument("--dest", default="data")
    ap.add_argument("--dvc-file", default="data.dvc")
    ap.add_argument("--from-hub", action="store_true", help="export from the Hugging Face hub into --source first")
    args = ap.parse_args(argv)
    if args.from_hub:
        export_from_hub(args.source)
    files = fetch_raw(args.source, args.dest, args.dvc_file)
    print(f"{len(files)} files in {args.dest}/ match {args.dvc_file}")


if __name__ == "__main__":
    main()
