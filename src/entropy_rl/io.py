"""Atomic file output: every file is written to a temporary sibling and renamed into place, so a killed run
never leaves a half-written output behind.

Temporary names carry the writer's process id (``.<name>.<pid>-<random>.tmp``, ``.<name>.tmp-<pid>-<random>``):
a failed write removes its own, and the next write of the same path removes those whose process is gone (a
SIGKILL runs no clean-up), while a live writer's are left alone. A full disk is reported with the path that was
being written (:class:`DiskFullError`), not as a library's internal message.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable


class DiskFullError(OSError):
    """No space left (or quota exceeded) while writing ``path``; the message names it and the free space."""


def _tag() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale(directory: str | Path, pattern: str) -> list[Path]:
    """Remove the entries of ``directory`` whose name matches ``pattern`` (a regex with a group ``pid``) and whose
    writer process is gone; returns what was removed."""
    directory, removed = Path(directory), []
    if not directory.is_dir():
        return removed
    rx = re.compile(pattern)
    for entry in directory.iterdir():
        m = rx.fullmatch(entry.name)
        if m and not pid_alive(int(m.group("pid"))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _stale_siblings(path: Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` left by writers that were killed (see the module docstring)."""
    return remove_stale(path.parent, rf"\.{re.escape(path.name)}\.(?:tmp-|old-)?(?P<pid>\d+)-[0-9a-f]{{8}}(?:\.tmp)?")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or an exceeded quota; libraries that write through their
    own streams (safetensors) may lose the errno, so their message is read too."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(path: Path, exc: BaseException) -> DiskFullError:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    return DiskFullError(errno.ENOSPC, f"no space left on the device while writing {path} ({free}; "
                                       f"{type(exc).__name__}: {str(exc)[:200]}); nothing was replaced")


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically. On failure the
    temporary file is removed and ``path`` is left as it was (a full disk raises :class:`DiskFullError`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _stale_siblings(path)
    tmp = path.with_name(f".{path.name}.{_tag()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as e:
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise disk_full_error(path, e) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_default) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True, default=_default) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def _default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _stale_siblings(path)
    tmp = path.with_name(f".{path.name}.tmp-{_tag()}")
    tmp.mkdir()
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old-{_tag()}")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except Exception as e:
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise disk_full_error(path, e) from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def content_hash(*paths: str | Path, pattern: str = "*") -> str:
    """sha256 of the files at ``paths`` (a directory: every file under it whose name matches ``pattern``, by
    relative name and bytes), 16 hex digits."""
    h = hashlib.sha256()
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"{root}: not found")
        files = sorted(p for p in root.rglob(pattern) if p.is_file()) if root.is_dir() else [root]
        for f in files:
            h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()[:16]
