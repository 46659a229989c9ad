"""Notebook helpers: find the repository root, save directories atomically, and clean notebooks.

* ``strip``: remove outputs and execution counts from source notebooks (they are committed clean).
* ``scrub``: remove the timing metadata that papermill writes into an executed notebook, so that an
  unchanged run produces a byte-identical output (and a second ``dvc repro`` changes nothing).

    python -m entropy_rl.notebooks strip notebooks/*.ipynb
    python -m entropy_rl.notebooks scrub runs/tiny/20_rl-grpo-s0.ipynb
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

from .io import write_text

_TIMING_KEYS = ("start_time", "end_time", "duration", "exception")


def find_root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) that holds ``params.yaml``."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").exists():
            return d
    raise FileNotFoundError(f"no params.yaml at or above {here}: run from inside the entropy-rl repository")


def enter_root() -> Path:
    """chdir to the repository root (notebooks use paths relative to it, under papermill and in Jupyter)."""
    root = find_root()
    os.chdir(root)
    return root


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def strip(path: str | Path) -> bool:
    """Strip outputs and execution counts in place; True if the file changed."""
    path = Path(path)
    nb = json.loads(path.read_text())
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell.get("metadata", {}).pop("execution", None)
    nb.setdefault("metadata", {}).pop("papermill", None)
    text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    changed = text != path.read_text()
    if changed:
        write_text(path, text)
    return changed


def scrub(path: str | Path) -> None:
    """Remove papermill's and Jupyter's timing metadata from an executed notebook."""
    path = Path(path)
    nb = json.loads(path.read_text())
    pm = nb.get("metadata", {}).get("papermill", {})
    for k in _TIMING_KEYS:
        pm.pop(k, None)
    pm.pop("input_path", None), pm.pop("output_path", None)
    for cell in nb.get("cells", []):
        md = cell.get("metadata", {})
        md.pop("execution", None)
        for k in _TIMING_KEYS:
            md.get("papermill", {}).pop(k, None)
    write_text(path, json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] not in ("strip", "scrub"):
        print(__doc__, file=sys.stderr)
        return 2
    for p in argv[1:]:
        strip(p) if argv[0] == "strip" else scrub(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
