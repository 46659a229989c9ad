"""Forward + backward peak memory and time: the fused token statistics against the naive path, side by side.

    .venv/bin/python benchmarks/bench_token_stats.py                      # the full CPU grid (tens of minutes)
    .venv/bin/python benchmarks/bench_token_stats.py --n 256 --hidden 64  # a quick check
    python benchmarks/bench_token_stats.py --device cuda --dtype bf16     # on a GPU: same CSV, own summary
    .venv/bin/python benchmarks/bench_token_stats.py --sweep-vocab        # time only, V = 99 ... 151,936 (minutes)

* naive: full logits ``h W^T`` in the compute dtype (fp32 upcast for bf16), ``log_softmax``, gather, explicit
  entropy ``-(exp(logq) * logq).sum(-1)``, plain autograd;
* fused: :func:`entropy_rl.token_stats.token_stats_flat` (also computes top-p entropy, top-2 gap and lse).

Each (method, N, H, head) runs in a fresh process: inputs are built, a warm-up runs forward + backward on the first
``--warmup-rows`` rows, the peak-RSS counter is reset (``/proc/self/clear_refs``), then one timed forward and one
timed backward of ``(logp * c1).sum() + (entropy * c2).sum()`` run on all N rows. On the CPU the peak is the process's
peak RSS (``VmHWM``), reported in full and above the baseline (``VmRSS`` after the inputs and the warm-up); on CUDA it
is ``torch.cuda.max_memory_allocated``. A naive run whose predicted peak (from the smaller N already measured) exceeds
``--max-gib`` or the memory available now is not run: its row is marked ``extrapolated`` with the linear prediction
in N. Rows (machine, CPU, torch, git commit, date, config, load average, results) are appended to ``--csv``; a markdown
summary of this invocation goes to ``--md``.

``--sweep-vocab`` times the paths instead across vocabulary sizes (:data:`SWEEP`, H = ``--sweep-hidden``, one
thread unless ``--threads``, frozen and trainable head): per (V, head) one process alternates naive, fused and fused
without the nucleus statistics (``nucleus=False``) repeats and reports medians (:func:`sweep_worker`), to the same CSV
and to ``results/token_stats_vocab.md``.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import statistics
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIELDS = ["run_id", "date", "machine", "cpu", "device", "torch", "git_commit", "git_dirty", "threads", "method",
          "status", "dtype", "n", "hidden", "vocab", "head", "chunk_size", "vocab_chunk_size", "peak_gib",
          "baseline_gib", "peak_above_baseline_gib", "fwd_s", "bwd_s", "total_s", "cpu_s",
          "loadavg_start", "loadavg_end", "note"]
GIB = 2 ** 30


# ---------------------------------------------------------------------------------------------------------------
# Worker: one configuration, in a fresh process
# ---------------------------------------------------------------------------------------------------------------
def _proc_status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / GIB
    raise KeyError(key)


def naive_stats(hidden, weight, ids, temperature):
    import torch

    cd = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    z = (hidden.to(cd) @ weight.to(cd).T) / temperature  # [N, V]
    logq = torch.log_softmax(z, -1)
    return logq.gather(-1, ids[:, None]).squeeze(-1), -(logq.exp() * logq).sum(-1)


def _inputs(a):
    """Weight ``[V, H]`` (x 0.02: near-uniform logits, every nucleus wide), hidden states, ids and the loss weights."""
    import torch

    torch.manual_seed(0)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev, dtype = torch.device(a.device), {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    weight = (torch.randn(a.vocab, a.hidden, device=dev) * 0.02).to(dtype).requires_grad_(a.head == "trainable")
    hidden = torch.randn(a.n, a.hidden, device=dev).to(dtype).requires_grad_(True)
    ids = torch.randint(0, a.vocab, (a.n,), device=dev)
    return weight, hidden, ids, torch.randn(a.n, device=dev), torch.randn(a.n, device=dev)


def _step(a, method: str, inputs, rows: slice) -> tuple[float, float, float]:
    """One forward and one backward of ``(logp * c1).sum() + (entropy * c2).sum()`` on ``rows``: wall seconds of
    each, and the CPU seconds of all threads."""
    import torch

    from entropy_rl.token_stats import token_stats_flat

    weight, hidden, ids, c1, c2 = inputs
    h = hidden[rows].detach().requires_grad_(True)
    sync = torch.cuda.synchronize if h.is_cuda else (lambda: None)
    sync()
    t0, cpu0 = time.perf_counter(), time.process_time()
    if method == "naive":
        logp, ent = naive_stats(h, weight, ids[rows], a.temperature)
    else:
        st = token_stats_flat(h, weight, ids[rows], a.temperature, chunk_size=a.chunk_size,
                              vocab_chunk_size=a.vocab_chunk_size, nucleus=method != "fused_no_nucleus")
        logp, ent = st.logp, st.entropy
    loss = (logp.float() * c1[rows]).sum() + (ent.float() * c2[rows]).sum()
    sync()
    t1 = time.perf_counter()
    loss.backward()
    sync()
    t2, cpu2 = time.perf_counter(), time.process_time()
    weight.grad = None
    return t1 - t0, t2 - t1, cpu2 - cpu0


def worker(a) -> dict:
    import torch

    inputs = _inputs(a)
    cuda = inputs[0].is_cuda
    run = lambda rows: _step(a, a.method, inputs, rows)  # noqa: E731
    run(slice(0, min(a.warmup_rows, a.n)))  # warm-up: thread pools, kernels, allocator
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / GIB
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        baseline = _proc_status("VmRSS")
    fwd, bwd, cpu = run(slice(None))
    peak = torch.cuda.max_memory_allocated() / GIB if cuda else _proc_status("VmHWM")
    return dict(peak_gib=peak, baseline_gib=baseline, peak_above_baseline_gib=peak - baseline, fwd_s=fwd, bwd_s=bwd,
                total_s=fwd + bwd, cpu_s=cpu, threads=torch.get_num_threads(), torch=torch.__version__,
                device=torch.cuda.get_device_name() if cuda else "cpu")


SWEEP_METHODS = ("naive", "fused", "fused_no_nucleus")
"""the sweep's methods: the fused pass with every statistic, and without the nucleus ones (``nucleus=False``: what
the RL update computes for every objective but PAEC)"""


def sweep_worker(a) -> dict:
    """Naive, fused and fused without the nucleus on one (V, N, head), alternating in one process: a warm-up of each, then ``R`` repeats (as
    many as fit ``--sweep-seconds``, within ``--min-repeats`` and ``--max-repeats``), the order swapped every repeat
    so that neither method always runs after the other. Medians (and the fastest total) per method, in seconds."""
    import torch

    inputs = _inputs(a)
    pair = sum(sum(_step(a, m, inputs, slice(None))[:2]) for m in SWEEP_METHODS)  # warm-up, timed
    reps = int(min(a.max_repeats, max(a.min_repeats, a.sweep_seconds // pair)))
    times = {m: [] for m in SWEEP_METHODS}
    for r in range(reps):
        for m in SWEEP_METHODS if r % 2 == 0 else SWEEP_METHODS[::-1]:
            times[m].append(_step(a, m, inputs, slice(None)))
    med = lambda xs: statistics.median(xs)  # noqa: E731
    out = {m: dict(fwd_s=med([t[0] for t in ts]), bwd_s=med([t[1] for t in ts]), total_s=med([t[0] + t[1] for t in ts]),
                   min_total_s=min(t[0] + t[1] for t in ts), cpu_s=med([t[2] for t in ts])) for m, ts in times.items()}
    return dict(out, repeats=reps, threads=torch.get_num_threads(), torch=torch.__version__, device="cpu")


# ---------------------------------------------------------------------------------------------------------------
# Driver: the grid, each configuration in a fresh process, rows to CSV, a markdown summary
# ---------------------------------------------------------------------------------------------------------------
def _machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    git = lambda *c: subprocess.run(["git", *c], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa
    return dict(machine=f"{platform.node()} ({os.cpu_count()} cpus, "
                        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB)",
                cpu=cpu, git_commit=git("rev-parse", "--short", "HEAD"), git_dirty=bool(git("status", "--porcelain")))


def _mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("inf")


def _predict(rows: list[dict], method: str, hidden: int, head: str, n: int, key: str) -> float | None:
    """Linear prediction in N of ``key`` from the measured rows of the same method, H and head."""
    pts = sorted((r["n"], r[key]) for r in rows if r["status"] == "measured" and r["method"] == method
                 and r["hidden"] == hidden and r["head"] == head)
    if not pts:
        return None
    if len(pts) == 1:  # through the first point with the slope of a per-row constant above the baseline
        (n0, y0), = pts
        base = next(r["baseline_gib"] for r in rows if r["n"] == n0 and r["method"] == method and r["hidden"] == hidden
                    and r["head"] == head) if key == "peak_gib" else 0.0
        return base + (y0 - base) * n / n0
    (n0, y0), (n1, y1) = pts[-2], pts[-1]
    return y1 + (y1 - y0) / (n1 - n0) * (n - n1)


SWEEP = [(99, 4000), (100, 4096), (1000, 4096), (8192, 4096), (32768, 4096), (151936, 1024)]
"""(V, N) of ``--sweep-vocab``: the tiny profile's character vocabulary (99 tokens, ``len(char_tokenizer())``) at its
~4,000 response tokens per call, then V = 100 to Qwen2.5's 151,936 (N = 1,024 there, so the naive path's [N, V]
tensors stay within a few GiB)"""


def _fused_path(vocab: int, n: int, vocab_chunk_size: int) -> str:
    from entropy_rl.token_stats import SAVE_LOGP_ELEMENTS

    if vocab > vocab_chunk_size:
        return f"tiled ({-(-vocab // vocab_chunk_size)} vocabulary tiles)"
    return "single pass" + (", log p kept" if n * vocab <= SAVE_LOGP_ELEMENTS else ", logits recomputed")


def sweep(a, info: dict, run_id: str):
    """``--sweep-vocab``: fused against naive at each (V, N) of :data:`SWEEP` and each head, one process each."""
    from entropy_rl.token_stats import auto_chunk_size

    rows = []
    for vocab, n in SWEEP:
        for head in a.head:
            load0 = round(os.getloadavg()[0], 2)
            cmd = [sys.executable, __file__, "--sweep-worker", "--n", str(n), "--hidden", str(a.sweep_hidden),
                   "--vocab", str(vocab), "--head", head, "--dtype", a.dtype, "--temperature", str(a.temperature),
                   "--vocab-chunk-size", str(a.vocab_chunk_size), "--threads", str(a.threads or 1),
                   "--sweep-seconds", str(a.sweep_seconds), "--min-repeats", str(a.min_repeats),
                   "--max-repeats", str(a.max_repeats)] + (["--chunk-size", str(a.chunk_size)] if a.chunk_size else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            res = next((json.loads(ln[7:]) for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            path = _fused_path(vocab, n, a.vocab_chunk_size)
            for method in SWEEP_METHODS:
                row = dict(run_id=run_id, date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **info,
                           method=method, dtype=a.dtype, n=n, hidden=a.sweep_hidden, vocab=vocab, head=head,
                           chunk_size=(a.chunk_size or auto_chunk_size(vocab, a.vocab_chunk_size)) if method != "naive"
                           else "", vocab_chunk_size=a.vocab_chunk_size if method != "naive" else "",
                           loadavg_start=load0, loadavg_end=round(os.getloadavg()[0], 2))
                if res is None:
                    row.update(status="failed", note=(out.stderr.strip().splitlines() or ["?"])[-1][:200])
                else:
                    r = res[method]
                    row.update(status="measured", **r, repeats=res["repeats"], threads=res["threads"],
                               torch=res["torch"], device=res["device"], note=(
                                   f"vocabulary sweep: medians of {res['repeats']} alternating repeats, fastest "
                                   f"forward + backward {r['min_total_s'] * 1e3:.2f} ms"
                                   + (f"; fused path: {path}" if method != "naive" else "")))
                rows.append(row)
            print(f"V={vocab:6d} N={n:5d} {head:9s} " + ("failed: " + rows[-1]["note"] if res is None else
                  f"naive {res['naive']['total_s'] * 1e3:9.2f} ms, fused {res['fused']['total_s'] * 1e3:9.2f} ms "
                  f"({path}), ratio {res['fused']['total_s'] / res['naive']['total_s']:.2f}, without the nucleus "
                  f"{res['fused_no_nucleus']['total_s'] / res['naive']['total_s']:.2f}, {res['repeats']} repeats"),
                  flush=True)
    return rows


def _header(rows: list[dict], csv_path: Path, title: str, flag: str, where_text: str, device=None) -> list[str]:
    """The preamble both summaries share: title, the run that wrote them, where the rows are, the machine line."""
    r0 = next((r for r in rows if r["status"] == "measured"), rows[0])
    where = csv_path.relative_to(ROOT) if csv_path.is_relative_to(ROOT) else csv_path
    dev = f"device `{r0.get('device', device)}`; " if device is not None else ""
    return [
        f"# {title}",
        "",
        f"Written by `benchmarks/bench_token_stats.py{' ' + flag if flag else ''}` (run `{r0['run_id']}`, "
        f"{r0['date']}); " + where_text.format(where=where),
        "",
        f"- Machine: {r0['machine']}, {r0['cpu']}; {dev}torch {r0.get('torch', '?')}, {r0.get('threads', '?')} "
        f"thread(s); commit `{r0['git_commit']}`{' plus uncommitted changes' if r0['git_dirty'] else ''}.",
    ]


def sweep_summary(rows: list[dict], csv_path: Path, a) -> str:
    """The markdown summary of a vocabulary sweep: per (V, head), naive and fused milliseconds and their ratio."""
    lines = _header(rows, csv_path, "Fused token statistics across vocabulary sizes", "--sweep-vocab",
                    "the rows, with the columns not shown here, are in `{where}` under that run id.")
    lines += [
        f"- Shapes: H = {a.sweep_hidden}, {a.dtype}, temperature {a.temperature:g}, no bias; weight x 0.02, so the "
        "logits are near-uniform and every nucleus is wide (the nucleus's worst case). Fused: the library's defaults "
        f"(vocab_chunk_size {a.vocab_chunk_size:,}: a vocabulary up to that is one single pass; the log-probabilities "
        "are kept for the backward when N x V <= 2^22).",
        "- Per (V, head) one process: a warm-up forward + backward of each method, then R repeats alternating the "
        "order, each one forward and one backward of `(logp * c1).sum() + (entropy * c2).sum()`. Times are the "
        "medians over the repeats of forward + backward wall milliseconds; ratio = fused / naive of the medians; "
        "`ratio of minima` is the same for the fastest repeat of each. Head *frozen*: gradient to the hidden states "
        "only (LoRA); *trainable*: to the weight too. *fused*: every statistic (also the top-p entropy, nucleus size "
        "and overflow, the top-2 gap and lse; PAEC's update); *no nucleus*: `nucleus=False`, logp, entropy and lse "
        "only (every other objective's update). The naive pass computes logp and entropy only.",
        "",
        "| V | N | head | fused path | R | naive ms | fused ms | ratio | ratio of minima | no nucleus ms | ratio "
        "| ratio of minima |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    missed = []
    k = len(SWEEP_METHODS)
    for nv, fu, fl in zip(rows[::k], rows[1::k], rows[2::k]):
        if any(_num(r, "total_s") is None for r in (nv, fu, fl)):
            lines.append(f"| {nv['vocab']:,} | {nv['n']:,} | {nv['head']} | - | - | {nv['status']} | {fu['status']} "
                         f"| - | - | {fl['status']} | - | - |")
            continue
        cells = []
        for r, label in ((fu, "fused"), (fl, "no nucleus")):
            ratio = r["total_s"] / nv["total_s"]
            if ratio > 1.0:
                missed.append(f"V = {nv['vocab']:,} ({nv['head']}, {label}: {ratio:.2f})")
            cells.append(f"{r['total_s'] * 1e3:.2f} | {ratio:.2f} | {r['min_total_s'] / nv['min_total_s']:.2f}")
        lines.append(f"| {nv['vocab']:,} | {nv['n']:,} | {nv['head']} | {_fused_path(nv['vocab'], nv['n'], a.vocab_chunk_size)} "
                     f"| {nv['repeats']} | {nv['total_s'] * 1e3:.2f} | " + " | ".join(cells) + " |")
    loads = [r["loadavg_start"] for r in rows] + [r["loadavg_end"] for r in rows]
    lines += [
        "",
        "Target, fused / naive <= 1.00 at every V (medians): " + ("met." if not missed else "missed at " + ", ".join(missed) + "."),
        "",
        f"The 1-minute load average ranged {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cpus during the run "
        "(other processes shared the machine).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[1024, 4096, 8192])
    p.add_argument("--hidden", type=int, nargs="+", default=[896, 1536])
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--head", nargs="+", default=["frozen", "trainable"], choices=["frozen", "trainable"],
                   help="LM head frozen (LoRA: gradient to the hidden states only) or trainable (also to the weight)")
    p.add_argument("--methods", nargs="+", default=["naive", "fused"], choices=["naive", "fused"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--chunk-size", type=int, default=None, help="fused: tokens per chunk (default: the library's)")
    p.add_argument("--vocab-chunk-size", type=int, default=None, help="fused: vocabulary columns per tile")
    p.add_argument("--warmup-rows", type=int, default=256)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--max-gib", type=float, default=20.0, help="do not start a run predicted to peak above this")
    p.add_argument("--csv", type=Path, default=RESULTS / "token_stats.csv", help="rows of every device are appended here")
    p.add_argument("--md", type=Path, default=None,
                   help="summary of this invocation (default: results/token_stats.md, token_stats_cuda.md on CUDA)")
    p.add_argument("--sweep-vocab", action="store_true",
                   help="time fused against naive at V = 99 (tiny profile), 100, 1,000, 8,192, 32,768, 151,936 instead "
                        "of the grid; summary to results/token_stats_vocab.md unless --md is given")
    p.add_argument("--sweep-hidden", type=int, default=128, help="sweep: H")
    p.add_argument("--sweep-seconds", type=float, default=20.0, help="sweep: time budget of the repeats per (V, head)")
    p.add_argument("--min-repeats", type=int, default=5, help="sweep: repeats at least")
    p.add_argument("--max-repeats", type=int, default=41, help="sweep: repeats at most")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sweep-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker or a.sweep_worker:
        a.n, a.hidden, a.head = a.n[0], a.hidden[0], a.head[0]
        print("RESULT " + json.dumps(worker(a) if a.worker else sweep_worker(a)), flush=True)
        return

    from entropy_rl.token_stats import DEFAULT_VOCAB_CHUNK_SIZE, auto_chunk_size

    a.vocab_chunk_size = a.vocab_chunk_size or DEFAULT_VOCAB_CHUNK_SIZE
    csv_path = a.csv
    info = _machine()
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if a.sweep_vocab:
        if a.device != "cpu":
            p.error("--sweep-vocab runs on the CPU")
        rows = sweep(a, info, run_id)
        _write_csv(csv_path, rows)
        md = a.md or RESULTS / "token_stats_vocab.md"
        md.write_text(sweep_summary(rows, csv_path, a))
        print(f"rows appended to {csv_path}; summary in {md}")
        return
    a.chunk_size = a.chunk_size or auto_chunk_size(a.vocab, a.vocab_chunk_size)
    a.md = a.md or RESULTS / ("token_stats_cuda.md" if a.device.startswith("cuda") else "token_stats.md")
    rows: list[dict] = []
    for head in a.head:
        for hidden in a.hidden:
            for n in sorted(a.n):
                for method in a.methods:
                    row = dict(run_id=run_id, date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               **info, method=method, dtype=a.dtype, n=n, hidden=hidden, vocab=a.vocab, head=head,
                               chunk_size=a.chunk_size if method == "fused" else "",
                               vocab_chunk_size=a.vocab_chunk_size if method == "fused" else "",
                               loadavg_start=round(os.getloadavg()[0], 2), note="")
                    pred = _predict(rows, method, hidden, head, n, "peak_gib")
                    avail = _mem_available_gib()
                    if method == "naive" and not a.device.startswith("cuda") and pred is not None and \
                            (pred > a.max_gib or pred + 1.0 > avail):
                        row.update(status="extrapolated", peak_gib=pred, note=(
                            f"not run: predicted peak {pred:.1f} GiB > limit {a.max_gib:g} GiB or available "
                            f"{avail:.1f} GiB; peak and times extrapolated linearly in N from the measured rows"))
                        for key in ("fwd_s", "bwd_s", "cpu_s"):
                            row[key] = _predict(rows, method, hidden, head, n, key)
                        row["total_s"] = row["fwd_s"] + row["bwd_s"]
                        row.update(baseline_gib="", peak_above_baseline_gib="", torch=rows[-1]["torch"],
                                   device=rows[-1]["device"], threads=rows[-1]["threads"])
                    else:
                        cmd = [sys.executable, __file__, "--worker", "--method", method, "--n", str(n), "--hidden",
                               str(hidden), "--vocab", str(a.vocab), "--head", head, "--device", a.device,
                               "--dtype", a.dtype, "--temperature", str(a.temperature), "--chunk-size",
                               str(a.chunk_size), "--vocab-chunk-size", str(a.vocab_chunk_size), "--warmup-rows",
                               str(a.warmup_rows), "--threads", str(a.threads)]
                        out = subprocess.run(cmd, capture_output=True, text=True,
                                             env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
                        res = next((json.loads(ln[7:]) for ln in out.stdout.splitlines() if ln.startswith("RESULT ")),
                                   None)
                        if res is None:
                            row.update(status="failed", note=(out.stderr.strip().splitlines() or ["?"])[-1][:200])
                        else:
                            row.update(status="measured", **res)
                    row["loadavg_end"] = round(os.getloadavg()[0], 2)
                    rows.append(row)
                    print(_fmt(row), flush=True)
    _write_csv(csv_path, rows)
    a.md.parent.mkdir(parents=True, exist_ok=True)
    a.md.write_text(summary(rows, csv_path, a))
    print(f"rows appended to {csv_path}; summary in {a.md}")


def _fmt(r: dict) -> str:
    f = lambda k: f"{r[k]:.2f}" if isinstance(r.get(k), float) else str(r.get(k, ""))  # noqa: E731
    return (f"{r['method']:5s} {r['head']:9s} H={r['hidden']:5d} N={r['n']:5d} {r['status']:12s} "
            f"peak {f('peak_gib')} GiB (base {f('baseline_gib')}), fwd {f('fwd_s')} s, bwd {f('bwd_s')} s, "
            f"load {r['loadavg_start']}->{r['loadavg_end']} {r['note']}")


def _write_csv(path: Path, rows: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})


def _num(r: dict | None, key: str) -> float | None:
    return r[key] if r is not None and isinstance(r.get(key), float) else None


def _ratio(x: float | None, y: float | None, fmt: str) -> str:
    return format(x / y, fmt) if x is not None and y else "-"


def summary(rows: list[dict], csv_path: Path, a) -> str:
    lines = _header(rows, csv_path, "Fused token statistics: benchmark summary", "",
                    "all rows, with the columns not shown here, are in `{where}`.", device=a.device)
    lines += [
        f"- Shapes: V = {a.vocab:,}, {a.dtype}, temperature {a.temperature:g}, no bias. Fused tiles: {a.chunk_size} "
        f"tokens x {a.vocab_chunk_size} vocabulary columns. Head *frozen*: gradient to the hidden states only (LoRA); "
        "*trainable*: to the LM-head weight too.",
        "- Each configuration runs in a fresh process: a warm-up forward + backward on the first "
        f"{a.warmup_rows} rows, then one timed forward and one timed backward of "
        "`(logp * c1).sum() + (entropy * c2).sum()` on all N rows. The fused forward also computes the top-p "
        "entropy, top-2 gap and lse; the naive one does not.",
        "- Peak: peak RSS of the process during the timed run (VmHWM, reset just before it), *including* the baseline "
        "(interpreter, torch, the weight and hidden states; the RSS just before the timed run, in the CSV); "
        "`above base` is the difference. Memory ratio = naive peak / fused peak. Time ratio = fused / naive wall "
        "seconds (forward + backward); `CPU` is the same ratio of CPU seconds (all threads).",
        "- *extrapolated*: the naive run was not started because its predicted peak exceeded the memory limit "
        f"({a.max_gib:g} GiB) or the memory available; its peak and times are a linear fit in N through the "
        "measured naive rows of the same H and head, not measurements.",
        "",
        "| head | H | N | naive peak GiB (above base) | fused peak GiB (above base) | memory ratio | naive fwd + bwd s "
        "| fused fwd + bwd s | time ratio (CPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    pick = lambda m, head, h, n: next((r for r in rows if (r["method"], r["head"], r["hidden"], r["n"])  # noqa: E731
                                       == (m, head, h, n)), None)
    targets = []
    for head in a.head:
        for hidden in a.hidden:
            for n in sorted(a.n):
                nv, fu = pick("naive", head, hidden, n), pick("fused", head, hidden, n)
                if nv is None or fu is None:
                    continue
                tag = " *extrapolated*" if nv["status"] == "extrapolated" else ""

                def peak(r):
                    if _num(r, "peak_gib") is None:
                        return r["status"]
                    above = _num(r, "peak_above_baseline_gib")
                    return f"{r['peak_gib']:.2f}" + (f" ({above:.2f})" if above is not None else "")

                def secs(r):
                    return f"{r['fwd_s']:.1f} + {r['bwd_s']:.1f}" if _num(r, "total_s") is not None else r["status"]

                mem = _ratio(_num(nv, "peak_gib"), _num(fu, "peak_gib"), ".1f")
                mem_x = mem + "x" if mem != "-" else mem
                tim = _ratio(_num(fu, "total_s"), _num(nv, "total_s"), ".2f")
                cpu = _ratio(_num(fu, "cpu_s"), _num(nv, "cpu_s"), ".2f")
                lines.append(f"| {head} | {hidden} | {n:,} | {peak(nv)}{tag} | {peak(fu)} | {mem_x}{tag} | "
                             f"{secs(nv)}{tag} | {secs(fu)} | {tim} ({cpu}){tag} |")
                if n == max(a.n):
                    targets.append((head, hidden, mem, tim, tag))
    if targets:
        lines += ["", f"Targets at N = {max(a.n):,} (memory ratio >= 10x, time ratio <= 1.10):", ""]
        for head, hidden, mem, tim, tag in targets:
            ok = lambda v, good: "-" if v == "-" else ("met" if good(float(v)) else "missed")  # noqa: E731
            lines.append(f"- {head} head, H = {hidden}: memory {mem}{'x' if mem != '-' else ''} ({ok(mem, lambda x: x >= 10)}), time "
                         f"{tim} ({ok(tim, lambda x: x <= 1.10)}){' -- against an extrapolated naive run' if tag else ''}.")
    loads = [r["loadavg_start"] for r in rows] + [r["loadavg_end"] for r in rows]
    lines += [
        "",
        f"The 1-minute load average ranged {min(loads):.1f}-{max(loads):.1f} during the run on {os.cpu_count()} "
        "cpus: other processes shared the machine, so wall times are noisy. The naive and fused rows of one "
        "configuration ran back to back; compare those, and the CPU-seconds ratio.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
