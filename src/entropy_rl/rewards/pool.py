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
  (``weakref.finalize``), and when the parent process dies, even in the middle of an item
  (:func:`_die_with_parent`):

  - on Linux each worker's first act is ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so the kernel kills it the moment
    its parent goes, whatever it is doing (a long C-level sympy call holding the GIL included); it then compares
    ``os.getppid()`` with the pid the parent passed in and exits at once if they differ (the parent died before
    ``prctl`` took effect);
  - everywhere, a daemon thread in the worker polls ``os.getppid()`` every :data:`WATCH_INTERVAL` seconds and
    exits when the worker has been re-parented (the portable fallback, and a second line on Linux; it needs the
    GIL, so a worker stuck in C code is left to the kernel signal or to the pool's timeout);
  - between items a worker also exits when its pipe reaches end-of-file.

  ``PR_SET_PDEATHSIG`` fires when the *thread* that started the child exits, not only the process: a pool
  created or refilled in a short-lived thread would see its workers killed when that thread ends. So every
  worker of a process is started by one long-lived daemon thread (:class:`_Spawner`), created on first use (and
  again in a forked child); the thread that calls :meth:`WorkerPool.map` only waits for it.
* :class:`MathVerifier` scores responses against gold answers with :mod:`.verifier` in such a pool, and groups
  a prompt's sampled answers into equivalence classes for majority voting (:meth:`MathVerifier.vote_classes`).

A pool is not thread-safe: use one per thread.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import Counter, deque
from concurrent.futures import Future
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


PR_SET_PDEATHSIG = 1
"""``prctl`` option: the signal a process receives when the thread that created it exits (linux/prctl.h)"""
WATCH_INTERVAL = 0.5
"""seconds between a worker's checks that its parent is still alive (the portable fallback)"""
ORPHANED = 70
"""exit code of a worker that exits because its parent is gone"""


def _watch(parent_pid: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent_pid:
            os._exit(ORPHANED)


def _die_with_parent(parent_pid: int, interval: float = WATCH_INTERVAL, pdeathsig: bool = True) -> bool:
    """(In the child, first thing.) Make this process end when process ``parent_pid`` ends: on Linux the kernel
    sends SIGKILL (``PR_SET_PDEATHSIG``); then, if the parent is already gone (``os.getppid()`` differs), exit now
    with :data:`ORPHANED`; and a daemon thread checks ``os.getppid()`` every ``interval`` seconds, everywhere.
    Returns whether the kernel signal was armed."""
    armed = False
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):  # no libc symbol: the watcher thread still covers it
            armed = False
    if os.getppid() != parent_pid:
        os._exit(ORPHANED)
    threading.Thread(target=_watch, args=(parent_pid, interval), name="parent-watch", daemon=True).start()
    return armed


def _child(rfd: int, wfd: int, preload: tuple[str, ...], memory_limit_mb: int | None, parent_pid: int) -> None:
    """The worker loop (runs in the child): read ``(fn, args)``, answer ``(status, value)``, until told to stop
    (``None``) or until the parent is gone (end-of-file, or :func:`_die_with_parent`)."""
    import resource

    _die_with_parent(parent_pid)
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


class _Spawner:
    """One long-lived daemon thread that starts every worker of this process (module docstring: the kernel's
    parent-death signal follows the thread that started a child, so that thread must outlive the workers)."""

    def __init__(self):
        self.pid = os.getpid()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="verifier-spawner", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
                fut.set_exception(e)

    def call(self, fn: Callable[[], "_Worker"]) -> "_Worker":
        fut: Future = Future()
        self._jobs.put((fn, fut))
        try:
            return fut.result()
        except BaseException:
            # Interrupted while waiting (or the start failed): a worker started after the caller gave up must go.
            fut.add_done_callback(_discard)
            raise


def _discard(fut: Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        _stop(fut.result())


_SPAWNER: _Spawner | None = None
_SPAWNER_LOCK = threading.Lock()


def _forget_spawner() -> None:
    """In a forked child: the parent's spawner thread (and maybe its held lock) did not come along."""
    global _SPAWNER, _SPAWNER_LOCK
    _SPAWNER, _SPAWNER_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_spawner)


def _spawner() -> _Spawner:
    """This process's spawner thread, started on first use (and anew in a forked child, which has no threads)."""
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None or _SPAWNER.pid != os.getpid() or not _SPAWNER.thread.is_alive():
            _SPAWNER = _Spawner()
        return _SPAWNER


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
        return _spawner().call(self._popen)

    def _popen(self) -> _Worker:
        """Start one worker (runs in the spawner thread)."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        code = (f"from {__name__} import _child; "
                f"_child({to_child_r}, {from_child_w}, {tuple(self.preload)!r}, {self.memory_limit_mb!r}, "
                f"{os.getpid()})")
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
    None; boxes close together are read as one answer, e.g. ``"5,6"``: :mod:`.verifier`, step 2), ``key`` (its
    canonical form, see :func:`.verifier.score`), ``parsed`` (whether math-verify turned it into a sympy object)
    and ``status`` (``ok``, ``timeout``, ``error``, ``crashed``). Anything but ``ok`` counts as incorrect, with no
    answer.
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
    """The process-wide verifier behind ``get_reward("math")`` (and its ``batch``): all cores, 10 s per item,
    started on first use and stopped at interpreter exit."""
    global _DEFAULT
    if _DEFAULT is None or not _DEFAULT.pool._finalizer.alive:
        _DEFAULT = MathVerifier()
    return _DEFAULT
