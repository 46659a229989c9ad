"""Bounded-time math verification: a pool of worker processes with a per-item timeout.

math-verify can take unbounded time (or memory) on adversarial text, and its own timeouts rely on
``signal.alarm``, which only works in the main thread. So every check runs in a separate process:

* :class:`WorkerPool` starts ``workers`` fresh interpreters (``subprocess``, talking pickles over two pipes:
  no forked torch or CUDA state and, unlike ``multiprocessing``'s spawn, no re-import of the caller's
  ``__main__``, so scripts need no ``if __name__ == "__main__"`` guard) and hands each one item at a time.
  An item not answered ``timeout`` seconds after it was handed over is answered ``"timeout"``, its worker is
  killed (SIGKILL) and a fresh one is started in its place; a worker that dies (segfault, killed) answers
  ``"crashed"`` and is replaced too; an exception answers ``"error"``. Each worker's address space is capped
  (``memory_limit_mb``), so a sympy blow-up raises ``MemoryError`` there instead of exhausting the machine.
* Workers exit when the pool is closed, when the pool is garbage-collected, at interpreter exit
  (``weakref.finalize``), and on their own when the parent dies (their pipe reaches end-of-file).
* :class:`MathVerifier` scores responses against gold answers with :mod:`.verifier` in such a pool, and groups
  a prompt's sampled answers into equivalence classes for majority voting (:meth:`MathVerifier.vote_classes`).

A pool is not thread-safe: use one per thread.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
import weakref
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Sequence

from . import verifier

OK, TIMEOUT, ERROR, CRASHED = "ok", "timeout", "error", "crashed"
_SRC = str(Path(__file__).resolve().parents[2])  # so that a worker imports this very copy of the package


def _cores() -> int:
    """CPU cores this process may use (the affinity mask, which respects container limits)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _child(rfd: int, wfd: int, preload: tuple[str, ...], memory_limit_mb: int | None) -> None:
    """The worker loop (runs in the child): read ``(fn, args)``, answer ``(status, value)``, until told to stop
    (``None``) or until the parent is gone (end-of-file)."""
    import resource
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then kills us
    if memory_limit_mb:
        limit = int(memory_limit_mb) << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    inbox, outbox = Connection(rfd, writable=False), Connection(wfd, readable=False)
    for name in preload:
        importlib.import_module(name)
    outbox.send(("ready", os.getpid()))
    while True:
        try:
            msg = inbox.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if msg is None:
            return
        fn, args = msg
        try:
            out = (OK, fn(*args))
        except BaseException as e:  # noqa: BLE001 - any failure of one item is that item's answer
            # Only the type: printing some sympy objects inside an exception can itself hang.
            out = (ERROR, type(e).__name__)
        try:
            outbox.send(out)
        except (BrokenPipeError, OSError):
            return
        except Exception as e:  # noqa: BLE001 - an unpicklable result
            outbox.send((ERROR, f"unpicklable result: {type(e).__name__}"))


@dataclass(eq=False)
class _Worker:
    proc: subprocess.Popen
    inbox: Connection
    """the parent's end for sending items"""
    outbox: Connection
    """the parent's end for reading answers (end-of-file when the worker dies)"""
    started: float
    ready: bool = False
    task: int | None = None
    sent: float = 0.0
    deadline: float = float("inf")


def _stop(w: _Worker, grace: float = 0.0) -> None:
    if grace:
        try:
            w.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    if w.proc.poll() is None:
        w.proc.kill()
    w.proc.wait()
    w.inbox.close()
    w.outbox.close()


def _shutdown(workers: list[_Worker]) -> None:
    """Ask idle workers to exit, then kill whatever is left; leaves no child process behind."""
    told = set()
    for w in workers:
        if w.ready and w.task is None:
            try:
                w.inbox.send(None)
                told.add(w)
            except (BrokenPipeError, OSError):
                pass
    for w in workers:
        _stop(w, grace=2.0 if w in told else 0.0)
    workers.clear()


@dataclass(eq=False)
class WorkerPool:
    """``workers`` processes (default: all cores) answering ``fn(*args)`` items with a per-item ``timeout``."""

    workers: int | None = None
    timeout: float = 10.0
    """seconds an item may take once handed to a worker"""
    preload: tuple[str, ...] = ()
    """modules each worker imports before it reports ready (so start-up time is not counted as item time)"""
    memory_limit_mb: int | None = 4096
    """address-space cap of each worker (RLIMIT_AS); None = no cap"""
    start_timeout: float = 120.0
    """seconds a worker may take to start before the pool gives up with an error"""
    stats: Counter = field(default_factory=Counter)
    """items answered per status, and worker restarts"""

    def __post_init__(self):
        self.workers = int(self.workers or _cores())
        if self.workers < 1 or self.timeout <= 0:
            raise ValueError(f"WorkerPool needs workers >= 1 and timeout > 0, got {self.workers}, {self.timeout}")
        self._pool: list[_Worker] = []
        self._start_failures = 0
        self.last_times: list[float] = []
        """seconds from hand-over to answer of each item of the last ``map``"""
        self._finalizer = weakref.finalize(self, _shutdown, self._pool)

    # ------------------------------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        code = (f"from {__name__} import _child; "
                f"_child({to_child_r}, {from_child_w}, {tuple(self.preload)!r}, {self.memory_limit_mb!r})")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_SRC, os.environ.get("PYTHONPATH")]))}
        try:
            proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(to_child_r, from_child_w), env=env,
                                    stdin=subprocess.DEVNULL)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        return _Worker(proc, Connection(to_child_w, readable=False), Connection(from_child_r, writable=False),
                       started=time.monotonic())

    def _replace(self, w: _Worker) -> None:
        _stop(w)
        self._pool[self._pool.index(w)] = self._spawn()
        self.stats["restarts"] += 1

    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        return [w.proc.pid for w in self._pool]

    def start(self, wait: bool = False) -> "WorkerPool":
        """Start the missing workers; with ``wait``, return once every worker has reported ready."""
        while len(self._pool) < self.workers:
            self._pool.append(self._spawn())
        while wait and not all(w.ready for w in self._pool):
            self._collect([])
        return self

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "WorkerPool":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------------
    def map(self, fn: Callable, items: Sequence[tuple]) -> list[tuple[str, Any]]:
        """``[(status, value)]`` in the order of ``items``; status is ``ok`` (value = ``fn(*args)``),
        ``timeout``, ``error`` (value = the exception type) or ``crashed`` (value = the worker's exit code).

        ``fn`` must be importable by name (a module-level function)."""
        if not self._finalizer.alive:
            raise RuntimeError("WorkerPool is closed")
        self.start()
        pending = deque(enumerate(items))
        results: list[tuple[str, Any] | None] = [None] * len(items)
        self.last_times = [0.0] * len(items)
        remaining = len(items)
        try:
            while remaining:
                self._dispatch(fn, pending)
                remaining -= self._collect(results)
        except BaseException:
            # Interrupted: items in flight would answer into the next call, so their workers go.
            for w in list(self._pool):
                if w.task is not None:
                    self._replace(w)
            raise
        return results  # type: ignore[return-value]

    def _dispatch(self, fn: Callable, pending: deque) -> None:
        for w in list(self._pool):
            if not pending:
                return
            if w.ready and w.task is None:
                i, args = pending.popleft()
                try:
                    w.inbox.send((fn, tuple(args)))
                except (BrokenPipeError, OSError):  # died while idle: the item never ran, so it waits again
                    pending.appendleft((i, args))
                    self._replace(w)
                    continue
                w.task, w.sent = i, time.monotonic()
                w.deadline = w.sent + self.timeout

    def _collect(self, results: list) -> int:
        """Wait for the next answer, start-up or deadline; return how many items were answered."""
        now = time.monotonic()
        deadlines = [w.deadline if w.task is not None else w.started + self.start_timeout
                     for w in self._pool if w.task is not None or not w.ready]
        waiting = {w.outbox: w for w in self._pool if w.task is not None or not w.ready}
        ready = wait(list(waiting), timeout=max(0.0, min(deadlines) - now) if deadlines else None)
        answered = 0
        for w in {waiting[r] for r in ready}:
            try:
                msg = w.outbox.recv()
            except (EOFError, OSError):  # the worker died
                code = w.proc.wait()
                if not w.ready:  # during start-up: once may be bad luck (killed), in a row is a broken setup
                    self._start_failures += 1
                    if self._start_failures >= 3:
                        self.close()
                        raise RuntimeError(f"verifier workers exit during start-up (last exit code {code})")
                if w.task is not None:
                    results[w.task] = (CRASHED, code)
                    self.last_times[w.task] = time.monotonic() - w.sent
                    self.stats[CRASHED] += 1
                    answered += 1
                self._replace(w)
                continue
            if not w.ready:
                w.ready, self._start_failures = True, 0
                continue
            results[w.task] = msg
            self.last_times[w.task] = time.monotonic() - w.sent
            self.stats[msg[0]] += 1
            answered += 1
            w.task, w.deadline = None, float("inf")
        now = time.monotonic()
        for w in list(self._pool):
            if w.task is not None and now >= w.deadline:
                results[w.task] = (TIMEOUT, None)
                self.last_times[w.task] = now - w.sent
                self.stats[TIMEOUT] += 1
                answered += 1
                self._replace(w)
            elif not w.ready and now >= w.started + self.start_timeout:
                self.close()
                raise RuntimeError(f"verifier worker did not start within {self.start_timeout:.0f} s")
        return answered


# ----------------------------------------------------------------------------------------------------------
# Math verification in the pool
# ----------------------------------------------------------------------------------------------------------
class MathVerifier:
    """Score responses against gold answers with math-verify, each in bounded time.

    ``score`` returns one dict per response: ``correct`` (bool), ``answer`` (the extracted answer string or
    None), ``key`` (its canonical form, see :func:`.verifier.score`), ``parsed`` (whether math-verify turned it
    into a sympy object) and ``status`` (``ok``, ``timeout``, ``error``, ``crashed``). Anything but ``ok``
    counts as incorrect, with no answer.
    """

    def __init__(self, workers: int | None = None, timeout: float = 10.0, memory_limit_mb: int | None = 4096,
                 normalized: bool = True):
        self.normalized = normalized
        """apply :func:`.verifier.normalize` (off only to measure what it changes)"""
        self.pool = WorkerPool(workers=workers, timeout=timeout, preload=(verifier.__name__,),
                               memory_limit_mb=memory_limit_mb)

    def score(self, responses: Sequence[str], golds: Sequence[str]) -> list[dict]:
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        out = []
        for status, value in self.pool.map(verifier.score, [(r, g, self.normalized) for r, g in zip(responses, golds)]):
            if status == OK:
                out.append({**value, "status": OK})
            else:
                out.append({"correct": False, "answer": None, "key": None, "parsed": False, "status": status})
        return out

    def vote_classes(self, groups: Sequence[Sequence[dict]]) -> list[list[str | None]]:
        """For each prompt's scored samples, the answer each sample votes for in maj@k.

        Samples with the same canonical ``key`` vote together. Then, in order of first appearance, each new
        key whose answer math-verify parsed is compared with the representative (first sample) of each earlier
        class that also parsed, oldest first, by ``equivalent(representative, new)``; it joins the first class
        it is equivalent to, else starts its own. A sample votes for its class representative's answer string;
        a sample with no answer votes for nothing (None). Comparisons for all prompts run in parallel, one
        round per position in the order of first appearance.
        """
        reps: list[dict[str, dict]] = []  # per group: key -> its first sample
        classes: list[list[str]] = []  # per group: representative keys, oldest first
        assign: list[dict[str, str]] = []  # per group: key -> representative key
        order: list[list[str]] = []
        for samples in groups:
            first: dict[str, dict] = {}
            for s in samples:
                if s.get("key") is not None and s["key"] not in first:
                    first[s["key"]] = s
            reps.append(first)
            order.append(list(first))
            classes.append([])
            assign.append({})
        for r in range(max((len(o) for o in order), default=0)):
            tasks, owners = [], []
            for g, keys in enumerate(order):
                if r >= len(keys):
                    continue
                key = keys[r]
                cands = [c for c in classes[g] if reps[g][key].get("parsed") and reps[g][c].get("parsed")]
                for c in cands:
                    tasks.append((reps[g][c]["answer"], reps[g][key]["answer"]))
                owners.append((g, key, cands))
            answers = iter(self.pool.map(verifier.equivalent, tasks))
            for g, key, cands in owners:
                same = [c for c in cands if next(answers) == (OK, True)]
                if same:
                    assign[g][key] = same[0]
                else:
                    classes[g].append(key)
                    assign[g][key] = key
        return [[reps[g][assign[g][s["key"]]]["answer"] if s.get("key") is not None else None for s in samples]
                for g, samples in enumerate(groups)]

    def score_groups(self, groups: Sequence[tuple[str, Sequence[str]]]) -> list[list[dict]]:
        """Score ``[(gold, [responses])]`` and add each sample's ``vote`` (:meth:`vote_classes`)."""
        flat = self.score([r for _, rs in groups for r in rs], [g for g, rs in groups for _ in rs])
        scored, i = [], 0
        for _, rs in groups:
            scored.append(flat[i : i + len(rs)])
            i += len(rs)
        for samples, votes in zip(scored, self.vote_classes(scored)):
            for s, v in zip(samples, votes):
                s["vote"] = v
        return scored

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "MathVerifier":
        self.pool.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_DEFAULT: MathVerifier | None = None


def default_verifier() -> MathVerifier:
    """The process-wide verifier behind ``get_reward("math")``: all cores, 10 s per item, started on first use
    and stopped at interpreter exit."""
    global _DEFAULT
    if _DEFAULT is None or not _DEFAULT.pool._finalizer.alive:
        _DEFAULT = MathVerifier()
    return _DEFAULT
