"""Notebook helpers: find the repository root, save directories atomically, run and clean notebooks.

* ``run``: execute a notebook with papermill into a temporary file, scrub it, then move it into place, so a
  killed stage never leaves a half-executed notebook behind. Progress bars go to the terminal
  (``ENTROPY_RL_PROGRESS=terminal``), not into the executed notebook.
* ``strip``: remove outputs and execution counts from source notebooks (they are committed clean).
* ``scrub``: remove the timing metadata that papermill writes into an executed notebook, so that an
  unchanged run produces a byte-identical output (and a second ``dvc repro`` changes nothing).

    python -m entropy_rl.notebooks run notebooks/00_data.ipynb runs/tiny/00_data.ipynb -p profile tiny
    python -m entropy_rl.notebooks strip notebooks/*.ipynb
"""
from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

from .progress import quiet_libraries
from .io import atomic_dir, write_text  # noqa: F401  (atomic_dir: for the notebooks)

_TIMING_KEYS = ("start_time", "end_time", "duration", "exception")


def find_root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) that holds ``params.yaml``."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").exists():
            return d
    raise FileNotFoundError(f"no params.yaml at or above {here}: run from inside the entropy-rl repository")


def enter_root() -> Path:
    """chdir to the repository root (notebooks use paths relative to it, under papermill and in Jupyter), and
    quiet the libraries' own progress bars when ours go to the terminal."""
    root = find_root()
    os.chdir(root)
    quiet_libraries()
    return root


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


def scrub(path: str | Path) -> list[str]:
    """Make an executed notebook reproducible: drop papermill's and Jupyter's timing metadata, number the cell
    ids, join consecutive stream outputs (their split into messages depends on timing), and take out ``stderr``
    streams (warnings that carry machine paths, progress remnants with rates).

    Returns the removed stderr texts, so that the caller can show them in the terminal instead."""
    path = Path(path)
    nb = json.loads(path.read_text())
    pm = nb.get("metadata", {}).get("papermill", {})
    for k in (*_TIMING_KEYS, "input_path", "output_path"):
        pm.pop(k, None)
    removed: list[str] = []
    for i, cell in enumerate(nb.get("cells", [])):
        cell["id"] = f"cell-{i:03d}"
        md = cell.get("metadata", {})
        md.pop("execution", None)
        for k in _TIMING_KEYS:
            md.get("papermill", {}).pop(k, None)
        if cell.get("cell_type") == "code":
            keep: list[dict] = []
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream" and out.get("name") == "stderr":
                    removed.append("".join(out.get("text", "")))
                elif (out.get("output_type") == "stream" and keep and keep[-1].get("output_type") == "stream"
                      and keep[-1].get("name") == out.get("name")):
                    # the kernel splits a stream into messages by timing: join them, so the bytes do not vary
                    keep[-1]["text"] = "".join(keep[-1]["text"]) + "".join(out.get("text", ""))
                else:
                    keep.append(out)
            for out in keep:
                if out.get("output_type") == "stream":
                    out["text"] = "".join(out["text"]).splitlines(keepends=True)
            cell["outputs"] = keep
    write_text(path, json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    return removed


def parse_value(text: str):
    """A papermill ``-p`` value: YAML scalars (``3``, ``0.5``, ``true``), ``None``, or a plain string."""
    import yaml

    if text == "None":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def run(notebook: str | Path, output: str | Path, parameters: dict) -> Path:
    """Execute ``notebook`` with papermill into ``output`` atomically (see module docstring)."""
    import papermill

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.running-{uuid.uuid4().hex[:8]}.ipynb")
    os.environ.setdefault("ENTROPY_RL_PROGRESS", "terminal")
    # tqdm.auto (imported by the hub libraries) warns once per kernel that ipywidgets is missing: our bars go to
    # the terminal, so the warning is noise on every stage
    quiet = "ignore:IProgress not found"
    if quiet not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
    try:
        # capture_fd_output=False: what the kernel writes to its file descriptor 2 (our progress bars) reaches
        # this terminal live instead of the notebook. log_level=ERROR: the kernel's start-up notice that it talks
        # to papermill over local TCP (a loopback connection of this machine) is not shown on every stage.
        papermill.execute_notebook(str(notebook), str(tmp), parameters=parameters, kernel_name="python3",
                                   progress_bar=False, cwd=str(find_root()),
                                   extra_arguments=["--IPKernelApp.capture_fd_output=False",
                                                    "--IPKernelApp.log_level=ERROR"])
        for text in scrub(tmp):
            sys.stderr.write(text if text.endswith("\n") else text + "\n")
        tmp.replace(output)
    finally:
        if tmp.exists():
            failed = output.with_name(f"{output.stem}.failed.ipynb")  # kept for reading, never an output
            tmp.replace(failed)
            print(f"notebook failed: read {failed}", file=sys.stderr)
    return output


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"] and len(argv) >= 3:
        params, rest = {}, argv[3:]
        if len(rest) % 3 or any(flag != "-p" for flag in rest[::3]):
            print("usage: run NOTEBOOK OUTPUT [-p NAME VALUE]...", file=sys.stderr)
            return 2
        for _, name, value in zip(rest[::3], rest[1::3], rest[2::3]):
            params[name] = parse_value(value)
        run(argv[1], argv[2], params)
        return 0
    if len(argv) < 2 or argv[0] not in ("strip", "scrub"):
        print(__doc__, file=sys.stderr)
        return 2
    for p in argv[1:]:
        strip(p) if argv[0] == "strip" else scrub(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
