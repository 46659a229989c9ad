"""End to end: a fresh clone's `make repro` runs the whole pipeline, GRPO beats its SFT start, a second
`dvc repro` changes nothing, and `git status` is clean: the run reproduces the committed dvc.lock byte for byte.

Byte identity holds on the machine kind that wrote dvc.lock (its fingerprint is tests/fixtures/lock_machine.json:
CPU model and instruction-set flags, core count, torch and Python versions). Elsewhere float-level differences
change the hashes; there only dvc.lock may differ, and the difference is printed."""
import hashlib
import json
import os
import platform
import subprocess

import pytest

from entropy_rl.io import read_json

from conftest import ROOT

LOCK_MACHINE = ROOT / "tests" / "fixtures" / "lock_machine.json"


def machine_fingerprint() -> dict:
    import torch

    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return {"cpu": info.get("model name", platform.processor()),
            "cpu_flags_md5": hashlib.md5(info.get("flags", "").encode()).hexdigest(),
            "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def test_lock_machine_fingerprint_is_recorded():
    recorded = json.loads(LOCK_MACHINE.read_text())
    assert set(recorded) == set(machine_fingerprint())


def sh(args, cwd, env=None):
    return subprocess.run(args, cwd=cwd, env=env, check=True, text=True, capture_output=True).stdout


@pytest.mark.slow
def test_fresh_clone_make_repro(tmp_path):
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(ROOT), str(clone)], tmp_path)
    venv = ROOT / ".venv"  # the install step itself is what `make venv` already ran for this test session
    env = {**os.environ, "PYTHONPATH": str(clone / "src"), "ENTROPY_RL_PROGRESS": "off"}
    sh(["make", "repro", f"VENV={venv}"], clone, env)

    sft = read_json(clone / "runs/tiny/sft/eval/metrics.json")
    grpo = read_json(clone / "runs/tiny/grpo-s0/eval/metrics.json")
    assert 0.3 <= sft["pass@1"] <= 0.7, sft
    assert grpo["pass@1"] > sft["pass@1"] + 0.1, (sft["pass@1"], grpo["pass@1"])
    summary = read_json(clone / "reports/tiny/summary.json")
    assert summary["entropy"]["grpo-s0"]["last_step"] < summary["entropy"]["grpo-s0"]["first_step"]
    for f in ("training_curves.png", "pass_at_k.png"):
        assert (clone / "reports/tiny/figures" / f).exists()

    dvc = str(venv / "bin" / "dvc")
    again = sh([dvc, "repro"], clone, env)
    assert "Running stage" not in again, again
    changed = sh(["git", "status", "--porcelain"], clone).splitlines()
    diff = sh(["git", "diff", "dvc.lock"], clone) if changed else ""
    if machine_fingerprint() == json.loads(LOCK_MACHINE.read_text()):
        assert changed == [], f"git status after make repro on the lock's machine kind: {changed}\n{diff}"
        # the README's results are what this run wrote (docs/results/tiny/results.md is its committed copy)
        assert (clone / "reports/tiny/results.md").read_text() == (clone / "docs/results/tiny/results.md").read_text()
    else:
        assert all(line.endswith("dvc.lock") for line in changed), changed
        if changed:
            print("another machine kind: dvc.lock differs from the committed one:\n" + diff)
