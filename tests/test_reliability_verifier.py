"""Verifier workers never outlive their parent process (issue 14): not between items, not in the middle of one."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from entropy_rl.rewards import pool as P
from entropy_rl.rewards.pool import WorkerPool

from conftest import ROOT

LINUX = sys.platform.startswith("linux")

# An item function the workers import by name: it says which worker runs it, then sleeps.
HELPER = textwrap.dedent("""
    import os, time
    from pathlib import Path

    def busy_sleep(marker_dir, seconds):
        Path(marker_dir, f"{os.getpid()}.busy").write_text("")
        time.sleep(seconds)
""")


def _alive(pids):
    """Pids still running; a dead child waiting to be reaped (zombie) counts as gone."""
    out = []
    for p in pids:
        try:
            if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_gone(pids, within: float) -> float:
    t0 = time.monotonic()
    while _alive(pids) and time.monotonic() - t0 < within:
        time.sleep(0.02)
    return time.monotonic() - t0


def test_busy_workers_die_when_the_parent_is_killed(tmp_path):
    """SIGKILL the parent while both workers are inside a 60 s item: both are gone within seconds."""
    (tmp_path / "slowhelper.py").write_text(HELPER)
    markers = tmp_path / "busy"
    markers.mkdir()
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'src')!r})
        from entropy_rl.rewards.pool import WorkerPool
        from slowhelper import busy_sleep
        pool = WorkerPool(workers=2, timeout=120.0).start(wait=True)
        print(" ".join(map(str, pool.pids())), flush=True)
        print("dispatching", flush=True)
        pool.map(busy_sleep, [({str(markers)!r}, 60), ({str(markers)!r}, 60)])
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert parent.stdout.readline().strip() == "dispatching"
        deadline = time.monotonic() + 30
        while len(list(markers.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(int(f.name.split(".")[0]) for f in markers.iterdir()) == sorted(pids)  # both are busy
        assert len(_alive(pids)) == 2
        t0 = time.monotonic()
        parent.kill()
        parent.wait(10)
        _wait_gone(pids, within=5.0)
        took = time.monotonic() - t0
        print(f"\nworkers gone {took:.3f} s after the parent's SIGKILL")
        assert not _alive(pids), f"workers still running {took:.1f} s after the parent died"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for p in _alive(locals().get("pids", [])):
            os.kill(p, 9)


def test_a_worker_whose_parent_is_already_gone_exits_at_once():
    """The parent may die before the child's prctl: the pid check catches it."""
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT / 'src')!r}); "
            "from entropy_rl.rewards.pool import _die_with_parent; "
            "_die_with_parent(2**22 + 12345); time.sleep(60)")
    t0 = time.monotonic()
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == P.ORPHANED
    assert time.monotonic() - t0 < 10


def test_the_watcher_thread_alone_notices_the_parent_dying():
    """The portable fallback (no PR_SET_PDEATHSIG): a grandchild polls getppid() and exits once re-parented."""
    grandchild = (f"import os, sys, time; sys.path.insert(0, {str(ROOT / 'src')!r}); "
                  "from entropy_rl.rewards.pool import _die_with_parent; "
                  "_die_with_parent(os.getppid(), interval=0.1, pdeathsig=False); print('armed', flush=True); "
                  "time.sleep(60)")
    middle = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {grandchild!r}], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "armed"
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", middle], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        assert _alive([pid])
        proc.kill()
        proc.wait(10)
        took = _wait_gone([pid], within=5.0)
        assert not _alive([pid]), f"grandchild still running {took:.1f} s after its parent died"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("via_spawner", [True, False])
def test_a_pool_started_in_a_short_lived_thread(monkeypatch, via_spawner):
    """PR_SET_PDEATHSIG follows the thread that started a worker: started directly from a thread that then ends,
    the workers die with it (the kernel behaviour the design works around); started by the pool's long-lived
    spawner thread (the default), they live on and serve the next call."""
    if not via_spawner:
        monkeypatch.setattr(WorkerPool, "_spawn", WorkerPool._popen)
    pool = WorkerPool(workers=2, timeout=10.0)
    try:
        t = threading.Thread(target=lambda: pool.start(wait=True))
        t.start()
        t.join(60)
        pids = pool.pids()
        _wait_gone(pids, within=1.0)  # a killed worker goes within milliseconds
        if via_spawner:
            assert _alive(pids) == pids
            assert pool.map(abs, [(-1,), (-2,)]) == [("ok", 1), ("ok", 2)]
            assert pool.pids() == pids and pool.stats["restarts"] == 0
        else:
            assert _alive(pids) == []
    finally:
        pool.close()
