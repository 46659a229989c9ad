"""Notebook helpers: find the repository root, save directories atomically, run and clean notebooks.

* ``run``: execute a notebook with papermill into a temporary file, scrub it, then move it into place,
  so a killed stage never leaves a half-executed notebook behind. The temporary file lives under ``.running/`` and
  a failed notebook is kept under ``failed/`` (both at the repository root, mirroring the output's path), so
  neither makes a stage that depends on ``runs/<profile>`` stale; a failed notebook is always valid JSON (on a full
  disk: a one-cell note that says so); a failing cell raises :class:`NotebookFailed`. Progress bars go to the
  terminal (``ENTROPY_RL_PROGRESS=terminal``), not into the executed notebook.
* ``strip``: remove outputs and execution counts from source notebooks (they are committed clean).
* ``scrub``: remove the timing metadata that papermill writes into an executed notebook, so that an
  unchanged run produces a byte-identical output (and a second ``dvc repro`` changes nothing).

The stage command around ``run`` (validate params.yaml first, short banners on failure) is :mod:`.stage`.

    python -m entropy_rl.notebooks strip notebooks/*.ipynb
"""
from __future__ import annotations

import json
import os
import re
import sys
import uuid
from pathlib import Path

import nbformat

from .io import atomic_dir, disk_full_error, is_disk_full, remove_stale, write_text  # noqa: F401  (atomic_dir: notebooks)
from .progress import quiet_libraries

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


WALL_CLOCK_TAG = "wall-clock"
"""the tag of a cell whose output is measured time (it differs from run to run): :func:`scrub` leaves it out"""
_WALL_CLOCK_NOTE = {"name": "stdout", "output_type": "stream",
                    "text": ["(wall-clock seconds: left out of the executed copy, which is reproducible; the run wrote "
                             "them to a file, and an interactive run shows them here)\n"]}


def scrub(path: str | Path) -> list[str]:
    """Make an executed notebook reproducible: drop papermill's and Jupyter's timing metadata, number the cell
    ids, join consecutive stream outputs (their split into messages depends on timing), take out ``stderr``
    streams (warnings that carry machine paths, progress remnants with rates), and replace the output of cells
    tagged :data:`WALL_CLOCK_TAG` by a note.

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
        if cell.get("cell_type") == "code" and WALL_CLOCK_TAG in md.get("tags", []):
            cell["outputs"] = [_WALL_CLOCK_NOTE]  # measured seconds: they differ from run to run
        elif cell.get("cell_type") == "code":
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


class NotebookFailed(RuntimeError):
    """A notebook raised: which cell, the error, and where the executed notebook (with the traceback) was kept."""

    def __init__(self, notebook: str, cell: int | None, ename: str, evalue: str, kept: Path | None):
        self.notebook, self.cell, self.ename, self.evalue, self.kept = notebook, cell, ename, evalue, kept
        super().__init__(f"{notebook} failed in cell {cell}: {ename}: {evalue}")


def scratch_paths(output: Path) -> tuple[Path, Path]:
    """``(running, failed)``: the temporary file a notebook executes into, and where it is kept if it fails.

    Under the repository root they mirror the output's path below ``.running/`` and ``failed/``; elsewhere they sit
    beside the output."""
    root = find_root()
    try:
        rel = output.resolve().relative_to(root)
        running_dir, failed = root / ".running" / rel.parent, root / "failed" / rel
    except ValueError:
        running_dir, failed = output.parent, output.with_name(f"{output.stem}.failed.ipynb")
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return running_dir / f".{output.stem}.running-{tag}.ipynb", failed


def _clean_leftovers(output: Path, running: Path) -> None:
    """Remove what killed runs of this notebook left: their temporary files (writer gone), and the temporary files
    of versions that wrote them beside the output."""
    stem = re.escape(output.stem)
    remove_stale(running.parent, rf"\.{stem}\.running-(?P<pid>\d+)-[0-9a-f]{{8}}\.ipynb")
    for old in output.parent.glob(f".{output.stem}.running-*.ipynb"):
        if re.fullmatch(rf"\.{stem}\.running-[0-9a-f]{{8}}\.ipynb", old.name):  # no writer id: before 2026-12
            old.unlink(missing_ok=True)


def _keep_failed(tmp: Path, failed: Path, notebook: str, error: BaseException | None) -> Path | None:
    """Move the executed notebook to ``failed``; if it is not valid JSON (a full disk cut it short), write a one-cell
    notebook that says what happened instead. Returns where it was kept (None if nothing could be written)."""
    failed.parent.mkdir(parents=True, exist_ok=True)
    try:
        json.loads(tmp.read_text())
        tmp.replace(failed)
        return failed
    except (ValueError, OSError):
        tmp.unlink(missing_ok=True)
    note = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        f"**{notebook} failed**, and its executed copy could not be written in full "
        f"({type(error).__name__ if error else 'unknown error'}: {str(error)[:300]}).")])
    try:
        write_text(failed, nbformat.writes(note) + "\n")
        return failed
    except OSError:
        return None


def run(notebook: str | Path, output: str | Path, parameters: dict) -> Path:
    """Execute ``notebook`` with papermill into ``output`` atomically (see module docstring); raises
    :class:`NotebookFailed` when a cell raises."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp, failed = scratch_paths(output)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(output, tmp)
    os.environ.setdefault("ENTROPY_RL_PROGRESS", "terminal")
    # tqdm.auto (imported by the hub libraries) warns once per kernel that ipywidgets is missing: our bars go to
    # the terminal, so the warning is noise on every stage
    quiet = "ignore:IProgress not found"
    if quiet not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
    import papermill  # here, not at the top: the notebooks import this module, and need not load papermill
    from papermill.exceptions import PapermillExecutionError

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
        failed.unlink(missing_ok=True)  # an earlier failure of this notebook is history now
        output.with_name(f"{output.stem}.failed.ipynb").unlink(missing_ok=True)  # where versions before 2026-12 kept it
    except PapermillExecutionError as e:
        kept = _keep_failed(tmp, failed, str(notebook), e)
        raise NotebookFailed(str(notebook), e.exec_count, e.ename, e.evalue, kept) from None
    except BaseException as e:
        if tmp.exists():
            _keep_failed(tmp, failed, str(notebook), e)
        if is_disk_full(e):
            raise disk_full_error(tmp, e) from e
        raise
    finally:
        if tmp.exists():  # never left behind
            tmp.unlink()
    return output


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
