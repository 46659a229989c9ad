"""The command of every DVC stage: check ``params.yaml``, run one notebook, and fail with a short banner.

    python -m entropy_rl.stage NOTEBOOK OUTPUT [-p NAME VALUE]...
    python -m entropy_rl.stage notebooks/00_data.ipynb runs/tiny/00_data.ipynb -p profile tiny

1. The whole ``params.yaml`` is validated (:mod:`.preflight`), with the notebook's profile, objective and
   ``overrides`` in particular, before a kernel starts: a bad key stops the stage with one line that names it
   (exit code 2), the first thing ``dvc repro`` shows.
2. The notebook runs through :func:`.notebooks.run` (atomic output, scrubbed, progress to the terminal).
3. A failing cell prints its error in three lines, and where the executed notebook with the full traceback was
   kept (``failed/...``), instead of papermill's traceback (exit code 1); a full disk names the path.

This module is not part of what a notebook executes, so it is not among the stages' dependencies: it checks and
reports, and never changes an output.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from . import preflight
from .config import ConfigError
from .io import is_disk_full
from .notebooks import NotebookFailed, find_root, run

USAGE = "usage: python -m entropy_rl.stage NOTEBOOK OUTPUT [-p NAME VALUE]..."


def parse_value(text: str):
    """A ``-p`` value: JSON first (``3``, ``1e-40``, ``{"rl.steps": 3}``: YAML 1.1 would read ``1e-40`` as a string),
    then YAML scalars (``true``), ``None``, or a plain string."""
    if text == "None":
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def check_parameters(parameters: dict) -> None:
    """Validate ``params.yaml`` for a notebook's parameters (the whole file, and its profile, objective and overrides
    in particular); raises ConfigError naming the key."""
    params_file = Path(parameters.get("params_file") or "params.yaml")
    if not params_file.is_absolute():
        params_file = find_root() / params_file
    preflight.check(params_file, profile=parameters.get("profile"), objective=parameters.get("objective"),
                    overrides=parameters.get("overrides"))


def banner(title: str, *lines: str) -> None:
    print(f"\nentropy-rl: {title}", *(f"  {line}" for line in lines if line), "", sep="\n", file=sys.stderr,
          flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[2:]
    if len(argv) < 2 or len(rest) % 3 or any(flag != "-p" for flag in rest[::3]):
        print(USAGE, file=sys.stderr)
        return 2
    notebook, output = argv[:2]
    params = {name: parse_value(value) for name, value in zip(rest[1::3], rest[2::3])}
    try:
        check_parameters(params)
        run(notebook, output, params)
    except ConfigError as e:
        banner(f"configuration error; nothing was run for {output}", str(e))
        return 2
    except NotebookFailed as e:
        banner(f"{e.notebook} failed in cell [{e.cell}]", f"{e.ename}: {e.evalue}",
               f"the executed notebook, with the traceback: {e.kept}" if e.kept else
               "the executed notebook could not be kept")
        return 1
    except OSError as e:
        if not is_disk_full(e):
            raise
        banner("out of disk space", str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
