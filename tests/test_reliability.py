"""Reliability: no stale or wrong result is handed back (docs/reliability.md).

* a checkpoint is resumed only by the run it belongs to (model section, starting policy, data, settings, code), and
  a memory-only setting does not throw it away;
* a non-finite loss, gradient norm, metric or controller value applies nothing, is named with its 1-based step,
  and leaves the last checkpoint untouched (``rl.nonfinite: stop``), or is skipped and counted (``skip``);
* a kill during a checkpoint write leaves the old checkpoint or the new one, never a torn one, and the next write
  removes the killed writer's temporary file;
* a full disk names the path and replaces nothing;
* the stage command stops a bad params.yaml before any kernel starts, in one banner, and keeps failed notebooks
  outside the stages' dependencies, as valid JSON.

The config mutation table is tests/test_reliability_config.py; the verifier workers are
tests/test_reliability_verifier.py.
"""
import dataclasses
import errno
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from entropy_rl import notebooks, rl, stage
from entropy_rl.config import ConfigError, DataConfig, LoraConfig, Profile, RLConfig
from entropy_rl.data import arithmetic_splits
from entropy_rl.io import DiskFullError, write_bytes, write_jsonl
from entropy_rl.model import load_policy, load_tokenizer
from entropy_rl.objectives import make_objective_config
from entropy_rl.rl import (NonFiniteError, RLRun, load_checkpoint, run_identity, save_checkpoint, start_identity,
                           train_rl, without_timings)

from conftest import ROOT

SRC = str(ROOT / "src")
RL = dict(prompts_per_step=4, group_size=4, max_new_tokens=8, minibatches=2, eval_every=2, eval_prompts=4,
          checkpoint_every=1, lr=1e-2)


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def start(tmp_path_factory, tiny_model_dir):
    """A starting policy and data files on disk, as the notebook sees them."""
    d = tmp_path_factory.mktemp("start")
    shutil.copytree(tiny_model_dir, d / "sft")
    rows = arithmetic_splits(DataConfig(n_sft=10, n_rl=40, n_eval=8, digits=2))
    for split in ("rl", "eval"):
        write_jsonl(d / "data" / f"{split}.jsonl", rows[split])
    return d


def make_run(start_dir, model_cfg, steps=2, rl_over=None, objective="grpo", sft="sft", data="data", **obj):
    sft_dir, data_dir = start_dir / sft, start_dir / data
    rows = {s: [json.loads(line) for line in (data_dir / f"{s}.jsonl").read_text().splitlines()] for s in ("rl", "eval")}
    profile = Profile(name="t", model=model_cfg, data=DataConfig(n_sft=10, n_rl=40, n_eval=8, digits=2))
    reward = lambda text, answer: float(len(text) % 2)  # noqa: E731 - a random-weight model earns no real reward
    return RLRun(policy=load_policy(sft_dir, model_cfg, seed=0), tokenizer=load_tokenizer(sft_dir), objective=objective,
                 obj_cfg=make_objective_config(objective, obj), rl=RLConfig(steps=steps, **{**RL, **(rl_over or {})}),
                 train_rows=rows["rl"], eval_rows=rows["eval"], reward_fn=reward, seed=0,
                 identity=start_identity(profile, sft_dir, [data_dir / "rl.jsonl", data_dir / "eval.jsonl"]))


def adapter(run):
    return {k: v.clone() for k, v in run.policy.state_dict().items() if "lora_" in k}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------- stale checkpoints
def with_lora(cfg, **kw):
    return dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, **kw))


@pytest.fixture(scope="module")
def checkpoint(start, small_model_cfg, tmp_path_factory):
    """A 2-step run's checkpoint (and its log), made once."""
    path = tmp_path_factory.mktemp("ckpt") / "grpo-s0.pt"
    log, _ = train_rl(make_run(start, small_model_cfg), path)
    return path, log


def edited_copy(start, tmp_path, which):
    """A copy of the start with the starting policy's weights or one data row changed."""
    d = tmp_path / "edited"
    shutil.copytree(start, d)
    if which == "sft":
        from safetensors.torch import load_file, save_file

        f = d / "sft" / "model.safetensors"
        w = load_file(f)
        k = sorted(w)[0]
        w[k] = w[k] + 1e-3
        save_file(w, f, metadata={"format": "pt"})
    else:
        lines = (d / "data" / "rl.jsonl").read_text().splitlines()
        row = json.loads(lines[0])
        row["answer"] = str(int(row["answer"]) + 1)
        lines[0] = json.dumps(row)
        (d / "data" / "rl.jsonl").write_text("\n".join(lines) + "\n")
    return d


@pytest.mark.parametrize("change, expect", [
    ("lora_alpha", "model.lora.alpha: 8 -> 16"),
    ("lora_r", "model.lora.r: 4 -> 8"),
    ("sft", "sft_start:"),
    ("data", "data:"),
    ("seed_objective", "objective_cfg.clip_high"),
    ("code", "code.package:"),
])
def test_a_checkpoint_of_another_run_is_not_resumed_and_the_change_is_named(
        change, expect, checkpoint, start, small_model_cfg, tmp_path, capsys, monkeypatch):
    path, _ = checkpoint
    cfg, where, obj = small_model_cfg, start, {}
    if change == "lora_alpha":
        cfg = with_lora(cfg, alpha=16)
    elif change == "lora_r":
        cfg = with_lora(cfg, r=8)  # before: a 56-line size mismatch from PEFT
    elif change in ("sft", "data"):
        where = edited_copy(start, tmp_path, change)
    elif change == "seed_objective":
        obj = {"clip_high": 0.28}
    else:
        real = rl.code_version()
        monkeypatch.setattr(rl, "code_version", lambda: {**real, "package": "0" * 16})
    run = make_run(where, cfg, **obj)
    before = adapter(run)
    assert load_checkpoint(path, run) is None
    out = capsys.readouterr().out
    assert "starts afresh" in out and expect in out, out
    assert same(before, adapter(run))  # nothing of the other run was loaded


def test_the_stale_alpha_case_retrains_to_what_a_fresh_run_gives(checkpoint, start, small_model_cfg, tmp_path):
    """The tester's case: alpha 32 -> 64 used to finish in 14 s with the old weights; now it trains afresh."""
    path, log_alpha8 = checkpoint
    stale = tmp_path / "stale.pt"
    shutil.copyfile(path, stale)
    cfg = with_lora(small_model_cfg, alpha=16)
    log_stale, _ = train_rl(make_run(start, cfg), stale)
    log_fresh, _ = train_rl(make_run(start, cfg), tmp_path / "fresh.pt")
    log_stale, log_fresh, log_alpha8 = map(without_timings, (log_stale, log_fresh, log_alpha8))
    assert log_stale == log_fresh and log_stale != log_alpha8


def test_a_memory_only_setting_resumes_the_checkpoint(checkpoint, start, small_model_cfg, capsys):
    path, log = checkpoint
    for over in ({"forward_batch_size": 3}, {"checkpoint_every": 5}):
        run = make_run(start, dataclasses.replace(small_model_cfg, gradient_checkpointing=True), rl_over=over)
        restored = load_checkpoint(path, run)
        assert restored is not None and restored[0] == 2, over
        assert without_timings(restored[1]) == without_timings(log), over
        assert "continuing from step 2" in capsys.readouterr().out
    assert set(rl.MEMORY_ONLY["rl"]) == {"forward_batch_size", "checkpoint_every"}


def test_the_identity_holds_what_shapes_the_result(start, small_model_cfg):
    ident = run_identity(make_run(start, small_model_cfg))
    assert {"rl", "objective", "objective_cfg", "seed", "model", "task", "sft_start", "data", "code"} <= set(ident)
    assert "forward_batch_size" not in ident["rl"] and "gradient_checkpointing" not in ident["model"]
    assert ident["rl"]["steps"] == 1  # GRPO: a run may be extended; a schedule over the total keeps it
    assert set(ident["code"]) == {"package", "torch", "transformers", "peft"}


def test_an_unreadable_checkpoint_starts_afresh_and_says_why(start, small_model_cfg, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert load_checkpoint(bad, make_run(start, small_model_cfg)) is None
    assert "cannot be read" in capsys.readouterr().out


def test_a_pickled_object_is_refused_by_the_safe_loader(start, small_model_cfg, tmp_path, capsys):
    """weights_only=True: a checkpoint that would run code on load is not loaded."""
    evil = tmp_path / "evil.pt"
    torch.save({"key": "x", "obj": _Evil()}, evil)
    assert load_checkpoint(evil, make_run(start, small_model_cfg)) is None
    assert "cannot be read" in capsys.readouterr().out and not (tmp_path / "pwned").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


# ------------------------------------------------------------------------------------------- non-finite
def inject(run, at_call, what="loss"):
    """Make the objective's ``at_call``-th call (1-based) return a NaN loss or metric; records the adapter then."""
    real, calls, seen = run.loss_fn, [0], {}

    def loss_fn(batch, stats, cfg, state):
        loss, m = real(batch, stats, cfg, state)
        calls[0] += 1
        if calls[0] == at_call:
            seen["adapter"] = adapter(run)
            if what == "loss":
                loss = loss * float("nan")
            else:
                m = {**m, "stats/clip_frac": float("inf")}
        return loss, m

    run.loss_fn = loss_fn
    return seen


@pytest.mark.parametrize("what, named", [("loss", "the loss of grpo is nan"),
                                         ("metric", "its metric stats/clip_frac is inf")])
def test_a_nonfinite_loss_stops_before_the_update_and_keeps_the_checkpoint(
        what, named, start, small_model_cfg, tmp_path):
    path = tmp_path / "c.pt"
    run = make_run(start, small_model_cfg, steps=4)
    seen = inject(run, at_call=6, what=what)  # 2 updates per step: the 2nd update of step 3
    train_rl_until = None
    with pytest.raises(NonFiniteError) as e:
        train_rl_until = train_rl(run, path)
    assert train_rl_until is None
    msg = str(e.value)
    assert msg.startswith("step 3, update 2 of 2: ") and named in msg and "last checkpoint is kept" in msg, msg
    assert same(seen["adapter"], adapter(run))  # no optimizer step was applied
    payload = torch.load(path, weights_only=True)
    assert payload["step"] == 2 and [r["step"] for r in payload["log"]] == [1, 2]


def test_a_nonfinite_gradient_norm_stops_with_nothing_applied(start, small_model_cfg, tmp_path):
    run = make_run(start, small_model_cfg, steps=2)
    p = next(p for n, p in run.policy.named_parameters() if "lora_B" in n)
    seen, calls = {}, [0]

    def poison(grad):
        calls[0] += 1
        if calls[0] == 3:  # step 2, update 1
            seen["adapter"] = adapter(run)
            return grad * float("nan")
        return grad

    p.register_hook(poison)
    with pytest.raises(NonFiniteError, match=r"^step 2, update 1 of 2: the gradient norm is nan"):
        train_rl(run, tmp_path / "g.pt")
    assert same(seen["adapter"], adapter(run))
    assert all(q.grad is None for q in run.policy.parameters() if q.requires_grad)  # dropped, not left for later


def test_skip_drops_the_bad_update_and_counts_it(start, small_model_cfg, tmp_path):
    run = make_run(start, small_model_cfg, steps=3, rl_over={"nonfinite": "skip"})
    inject(run, at_call=3)  # step 2, update 1
    log, _ = train_rl(run, tmp_path / "s.pt")
    assert [r["stats/skipped_updates"] for r in log] == [0.0, 1.0, 0.0]
    assert all(math.isfinite(v) for r in log for v in r.values())
    clean = make_run(start, small_model_cfg, steps=3, rl_over={"nonfinite": "skip"})
    first, _ = train_rl(clean, tmp_path / "clean.pt")
    assert without_timings(first)[0] == without_timings(log)[0]  # the steps before it are the same as without the fault


def test_skip_of_every_update_of_a_step_stops(start, small_model_cfg, tmp_path):
    run = make_run(start, small_model_cfg, steps=2, rl_over={"nonfinite": "skip"})
    real = run.loss_fn
    run.loss_fn = lambda b, s, c, st: (real(b, s, c, st)[0] * float("nan"), {})
    with pytest.raises(NonFiniteError, match="^step 1: all 2 updates"):
        train_rl(run, tmp_path / "all.pt")


def test_a_nonfinite_controller_value_stops_with_its_name(start, small_model_cfg, tmp_path, monkeypatch):
    run = make_run(start, small_model_cfg, steps=3, objective="entropy_bonus", adaptive=True, target=100.0)
    real = rl.update_controller_state
    monkeypatch.setattr(rl, "update_controller_state",
                        lambda name, state, cfg, row: {**real(name, state, cfg, row),
                                                       **({"entropy_coef": float("nan")} if row["step"] == 2 else {})})
    with pytest.raises(NonFiniteError, match="^step 2: the controller of entropy_bonus set entropy_coef to nan"):
        train_rl(run, tmp_path / "ctl.pt")
    assert torch.load(tmp_path / "ctl.pt", weights_only=True)["step"] == 1


def test_a_training_set_smaller_than_a_step_is_refused(start, small_model_cfg):
    with pytest.raises(ConfigError, match="rl.prompts_per_step: 50 prompts per step, but the training set has 40"):
        make_run(start, small_model_cfg, rl_over={"prompts_per_step": 50, "minibatches": 1})


# ------------------------------------------------------------------------------- kills, full disks
KILLED_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {src!r})
    from entropy_rl.io import write_bytes
    i = 0
    while True:
        i += 1
        write_bytes({path!r}, bytes([i % 251]) * (8 << 20))  # 8 MiB, one byte value per generation
        print(i, flush=True)
""")


def test_a_kill_during_checkpoint_writes_leaves_a_whole_file(tmp_path):
    """SIGKILL a process that rewrites an 8 MiB file in a loop, at random moments, 16 times: the file is always one
    whole generation (or absent), and the next write removes the killed writer's temporary file."""
    path = tmp_path / "ckpt.pt"
    rng = random.Random(0)
    torn, leftovers = 0, 0
    for _ in range(16):
        p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER.format(src=SRC, path=str(path))],
                             stdout=subprocess.PIPE, text=True)
        p.stdout.readline()  # one generation is in place
        time.sleep(rng.uniform(0.0, 0.05))
        p.send_signal(signal.SIGKILL)
        p.wait()
        data = path.read_bytes()
        torn += len(data) != 8 << 20 or len(set(data[:: 1 << 16])) != 1
        leftovers += len(list(tmp_path.glob(".ckpt.pt.*.tmp")))
    assert torn == 0
    write_bytes(path, b"next")
    assert not list(tmp_path.glob(".ckpt.pt.*.tmp")) and path.read_bytes() == b"next"
    print(f"16 kills: {leftovers} left a temporary file, removed by the next write; 0 torn")


@contextmanager
def tiny_disk(tmp_path, size="256k"):
    """A real full disk: a tmpfs of ``size`` (needs root and mount); skipped where that is not allowed."""
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode}): the monkeypatched "
                    "full-disk test still runs")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_a_full_disk_names_the_checkpoint_and_keeps_the_old_one(start, small_model_cfg, tmp_path):
    run = make_run(start, small_model_cfg, steps=1)
    with tiny_disk(tmp_path, "256k") as disk:
        path = disk / "ckpt.pt"
        path.write_bytes(b"old checkpoint")
        with open(disk / "filler", "wb", buffering=0) as f:  # fill the disk to the last block
            try:
                while True:
                    f.write(b"x" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC
        with pytest.raises(DiskFullError, match=f"no space left on the device while writing {path}"):
            save_checkpoint(path, run, 1, [], [])
        assert path.read_bytes() == b"old checkpoint" and sorted(p.name for p in disk.iterdir()) == ["ckpt.pt", "filler"]


def test_a_full_disk_is_reported_with_the_path_even_when_simulated(tmp_path, monkeypatch):
    """The same where no tmpfs can be mounted: the write raises ENOSPC."""
    path = tmp_path / "x.pt"
    path.write_bytes(b"old")

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DiskFullError, match=str(path)):
        write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.pt"]


# ------------------------------------------------------------------------------------ the stage command
def stage_cli(cwd, *args):
    env = {**os.environ, "PYTHONPATH": SRC, "ENTROPY_RL_PROGRESS": "off"}
    return subprocess.run([sys.executable, "-m", "entropy_rl.stage", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_bad_params_file_stops_the_stage_in_one_banner_before_any_kernel(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text().replace("grad_clip: 1.0", "grad_clip: -1"))
    t0 = time.monotonic()
    r = stage_cli(tmp_path, ROOT / "notebooks/20_rl.ipynb", "runs/tiny/20_rl.ipynb", "-p", "profile", "tiny")
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout, r.stderr
    assert lines[0].startswith("entropy-rl: configuration error") and "profiles.tiny.rl.grad_clip" in lines[1], lines
    assert len(lines) == 2 and not (tmp_path / "runs").exists() and time.monotonic() - t0 < 60


def test_overrides_on_the_command_line_are_read_as_json(tmp_path):
    assert stage.parse_value('{"rl.temperature": 1e-40}') == {"rl.temperature": 1e-40}
    assert stage.parse_value("1e-3") == 1e-3 and stage.parse_value("tiny") == "tiny" and stage.parse_value("None") is None
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    r = stage_cli(tmp_path, ROOT / "notebooks/20_rl.ipynb", "out.ipynb", "-p", "profile", "tiny", "-p", "objective",
                  "grpo", "-p", "overrides", '{"rl.temperature": 1e-40}')
    assert r.returncode == 2 and "rl.temperature" in r.stderr and "Traceback" not in r.stderr, r.stderr


FAILING_NB = {"cells": [{"cell_type": "code", "execution_count": None, "id": "a", "metadata": {"tags": ["parameters"]},
                         "outputs": [], "source": "x = 1"},
                        {"cell_type": "code", "execution_count": None, "id": "b", "metadata": {}, "outputs": [],
                         "source": "print('working')\nraise ValueError(f'bad thing {x}')"}],
              "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
              "nbformat": 4, "nbformat_minor": 5}


def test_a_failing_notebook_is_kept_outside_the_stage_outputs_with_a_short_banner(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    nb = tmp_path / "fail.ipynb"
    nb.write_text(json.dumps(FAILING_NB))
    out = tmp_path / "runs" / "tiny" / "fail.ipynb"
    out.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / ".running" / "runs" / "tiny" / f".fail.running-{dead.stdout.strip()}-0123abcd.ipynb"
    stale.parent.mkdir(parents=True)
    stale.write_text("{")  # a killed run's leftover
    legacy = out.with_name(".fail.running-89abcdef.ipynb")
    legacy.write_text("{")
    r = stage_cli(tmp_path, nb, out, "-p", "x", "2")
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    # [3]: the execution count the kept notebook shows (papermill runs its injected parameters cell as [2])
    assert lines[-3:] == ["entropy-rl: " + f"{nb} failed in cell [3]", "  ValueError: bad thing 2",
                          "  the executed notebook, with the traceback: " + str(tmp_path / "failed/runs/tiny/fail.ipynb")]
    kept = json.loads((tmp_path / "failed/runs/tiny/fail.ipynb").read_text())  # valid JSON, with the traceback
    assert any(o.get("ename") == "ValueError" for c in kept["cells"] for o in c.get("outputs", []))
    assert list((tmp_path / "runs").rglob("*")) == [out.parent]  # runs/tiny: nothing inside, no leftovers
    assert not list((tmp_path / ".running").rglob("*.ipynb"))


def test_a_full_disk_during_a_notebook_leaves_valid_json(tmp_path, monkeypatch):
    """papermill cut short by ENOSPC: the kept notebook is a valid one-cell note, and the error names the path."""
    import papermill

    def cut_short(notebook, output, **kw):
        Path(output).write_text('{"cells": [{"cell_type": "co')
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(papermill, "execute_notebook", cut_short)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("profiles: {}\n")
    with pytest.raises(DiskFullError, match="no space left on the device while writing .*out.running-"):
        notebooks.run(tmp_path / "nb.ipynb", "runs/out.ipynb", {})
    kept = json.loads((tmp_path / "failed/runs/out.ipynb").read_text())
    assert "could not be written in full" in "".join(kept["cells"][0]["source"])
    assert not (tmp_path / "runs/out.ipynb").exists() and not list((tmp_path / ".running").rglob("*.ipynb"))


# ---------------------------------------------------------------------------------- slow: real kills
RESUMABLE = textwrap.dedent("""
    import sys, json
    sys.path.insert(0, {src!r}); sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from entropy_rl.config import LoraConfig, ModelConfig
    from pathlib import Path
    from test_reliability import make_run
    from entropy_rl.rl import train_rl
    cfg = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, lora=LoraConfig(r=4, alpha=8))
    log, evals = train_rl(make_run(Path({start!r}), cfg, steps=16), {ckpt!r})
    Path({out!r}).write_text(json.dumps([log, evals]))
""")


@pytest.mark.slow
def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_result(start, tmp_path):
    """SIGKILL a 16-step run at random moments (mid-step and mid-checkpoint alike) until it finishes: its log
    equals an uninterrupted run's."""
    def script(ckpt, out):
        return RESUMABLE.format(src=SRC, tests=str(ROOT / "tests"), start=str(start), ckpt=str(ckpt), out=str(out))

    env = {**os.environ, "ENTROPY_RL_PROGRESS": "off"}
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", script(tmp_path / "a.pt", tmp_path / "a.json")], check=True, env=env)
    whole = time.monotonic() - t0  # start-up (imports) + 16 steps
    rng, kills = random.Random(1), 0
    while not (tmp_path / "b.json").exists():
        p = subprocess.Popen([sys.executable, "-c", script(tmp_path / "b.pt", tmp_path / "b.json")], env=env)
        try:
            p.wait(timeout=rng.uniform(0.6, 0.95) * whole)  # mostly past the imports: mid-step or mid-checkpoint
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
        assert kills < 40
    assert kills >= 2
    print(f"{kills} kills, uninterrupted run {whole:.1f} s")
    (log_a, evals_a), (log_b, evals_b) = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert without_timings(log_a) == without_timings(log_b) and without_timings(evals_a) == without_timings(evals_b)
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------------------- no code from data
UNSAFE = [(r"(?<![\w.])eval\(", "eval of a string"), (r"(?<![\w.])exec\(", "exec of a string"),
          (r"shell\s*=\s*True", "a shell command line"), (r"yaml\.load\(", "an unsafe YAML loader"),
          (r"yaml\.unsafe_load", "an unsafe YAML loader"), (r"trust_remote_code\s*=\s*True", "hub code execution"),
          (r"weights_only\s*=\s*False", "an unpickling checkpoint load"), (r"pickle\.loads?\(", "unpickling data")]


def test_the_package_runs_no_code_from_model_output_or_files():
    """Model output reaches only the verifier (math-verify in a capped worker, tests/test_reliability_verifier.py);
    nothing in the package evaluates strings, runs a shell, unpickles files or loads hub code."""
    import re

    found = [f"{p.relative_to(ROOT)}:{i}: {why}" for p in sorted((ROOT / "src").rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) for rx, why in UNSAFE
             if re.search(rx, line.split("#")[0]) and not line.lstrip().startswith(('"', "'", "*", "``"))]
    assert found == []
