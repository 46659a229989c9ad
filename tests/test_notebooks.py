"""Every notebook runs under papermill on a small parameter set, and what it writes is checked."""
import json
import math

import pytest
import yaml

from entropy_rl.io import read_json, read_jsonl, write_json
from entropy_rl.notebooks import run, strip

from conftest import ROOT, fake_run

NOTEBOOKS = ["00_data", "10_sft", "20_rl", "30_eval", "40_figures", "45_probe"]

SMOKE = {
    "description": "smoke test",
    "data": {"n_sft": 300, "n_rl": 60, "n_eval": 12},
    "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
              "lora": {"r": 4, "alpha": 8}},
    "sft": {"steps": 6, "batch_size": 16, "warmup": 2},
    "rl": {"steps": 2, "prompts_per_step": 4, "group_size": 4, "minibatches": 2, "max_new_tokens": 12,
           "eval_every": 1, "eval_prompts": 4, "checkpoint_every": 1},
    "eval": {"n_samples": 2, "max_new_tokens": 12},
}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_source_notebooks_are_committed_clean(name):
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert "parameters" in code[0]["metadata"].get("tags", []), "first code cell must be the papermill parameters"
    assert not any("def " in "".join(c["source"]) for c in code), "notebooks import logic, they define none"


def test_strip_removes_outputs(tmp_path):
    p = tmp_path / "x.ipynb"
    p.write_text(json.dumps({"cells": [{"cell_type": "code", "source": "1", "outputs": [{"a": 1}],
                                        "execution_count": 3, "metadata": {}}], "metadata": {}, "nbformat": 4,
                             "nbformat_minor": 4}))
    assert strip(p) and not strip(p)
    assert json.loads(p.read_text())["cells"][0]["outputs"] == []


def smoke_root(path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["more_profiles"] = {"tiny": params["profiles"]["tiny"]}
    params["profiles"] = {"smoke": {"extends": "tiny", **SMOKE}}
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    return path


def test_all_notebooks_run_and_write_sane_outputs(tmp_path, monkeypatch):
    tmp_path = smoke_root(tmp_path / "a")
    monkeypatch.chdir(tmp_path)
    nb = lambda n: ROOT / "notebooks" / f"{n}.ipynb"  # noqa: E731
    r = "runs/smoke"
    run(nb("00_data"), f"{r}/00_data.ipynb", {"profile": "smoke", "out_dir": f"{r}/data"})
    run(nb("10_sft"), f"{r}/10_sft.ipynb", {"profile": "smoke", "data_dir": f"{r}/data", "out_dir": f"{r}/sft"})
    run(nb("20_rl"), f"{r}/20_rl.ipynb", {"profile": "smoke", "objective": "grpo", "seed": 0, "data_dir": f"{r}/data",
                                          "sft_dir": f"{r}/sft/model", "out_dir": f"{r}/grpo-s0/train"})
    run(nb("30_eval"), f"{r}/30_eval.ipynb", {"profile": "smoke", "data_dir": f"{r}/data", "base_dir": f"{r}/sft/model",
                                              "adapter_dir": f"{r}/grpo-s0/train/adapter", "out_dir": f"{r}/grpo-s0/eval"})
    run(nb("30_eval"), f"{r}/30_eval-sft.ipynb", {"profile": "smoke", "data_dir": f"{r}/data",
                                                  "base_dir": f"{r}/sft/model", "out_dir": f"{r}/sft/eval"})
    # a variant (params.yaml `method:`) runs through the same notebook under its own name
    run(nb("20_rl"), f"{r}/20_rl-paec.ipynb", {"profile": "smoke", "objective": "paec-no_mask", "seed": 0,
                                               "data_dir": f"{r}/data", "sft_dir": f"{r}/sft/model",
                                               "out_dir": f"{r}/paec-no_mask-s0/train"})
    run(nb("40_figures"), "reports/smoke/40_figures.ipynb", {"profile": "smoke", "runs_dir": r, "out_dir": "reports/smoke"})

    run_dir = tmp_path / r
    variant = read_json(run_dir / "paec-no_mask-s0" / "train" / "config.json")
    assert (variant["objective"], variant["method"]) == ("paec-no_mask", "paec")
    assert variant["objective_cfg"]["position_mask"] is False and variant["objective_cfg"]["rho"] == 0.8
    summary = read_json(tmp_path / "reports/smoke/summary.json")
    assert {r["objective"] for r in summary["objectives"]} == {"grpo"}  # the variant has curves, no evaluation
    for name, n_images in (("20_rl.ipynb", 1), ("../../reports/smoke/40_figures.ipynb", 2)):
        cells = json.loads((run_dir / name).read_text())["cells"]
        assert sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", [])) >= n_images, name
    assert len(read_jsonl(run_dir / "data" / "eval.jsonl")) == 12
    sft = read_json(run_dir / "sft" / "metrics.json")
    assert 0 <= sft["pass@1"] <= 1 and math.isfinite(sft["final_loss"]) and sft["params"] > 0
    log = read_jsonl(run_dir / "grpo-s0" / "train" / "log.jsonl")
    assert [row["step"] for row in log] == [1, 2]
    for row in log:
        for key in ("reward/mean", "stats/entropy", "stats/response_length", "stats/clip_frac", "stats/kl_ref"):
            assert math.isfinite(row[key]), key
        assert row["stats/entropy"] > 0
    assert (run_dir / "grpo-s0" / "train" / "adapter" / "adapter_config.json").exists()
    for which in ("grpo-s0", "sft"):
        m = read_json(run_dir / which / "eval" / "metrics.json")
        assert {"pass@1", "pass@2", "maj@2", "mean_length", "mean_token_entropy", "truncation_rate"} <= set(m)
        assert 0 <= m["pass@1"] <= m["pass@2"] <= 1
        assert len(read_jsonl(run_dir / which / "eval" / "samples.jsonl")) == 12 * 2
    for fig in ("training_curves.png", "pass_at_k.png"):
        assert (tmp_path / "reports/smoke/figures" / fig).stat().st_size > 10_000
    executed = json.loads((run_dir / "20_rl.ipynb").read_text())
    assert "start_time" not in executed["metadata"]["papermill"]
    assert not list(run_dir.glob("**/*.failed.ipynb")) and not list(run_dir.glob("**/.*running*"))
    assert not (tmp_path / "failed").exists() and not list((tmp_path / ".running").rglob("*.ipynb"))

    # The same stages in another directory give byte-identical outputs (what keeps dvc.lock stable).
    other = smoke_root(tmp_path.parent / "b")
    monkeypatch.chdir(other)
    run(nb("00_data"), f"{r}/00_data.ipynb", {"profile": "smoke", "out_dir": f"{r}/data"})
    run(nb("10_sft"), f"{r}/10_sft.ipynb", {"profile": "smoke", "data_dir": f"{r}/data", "out_dir": f"{r}/sft"})
    run(nb("20_rl"), f"{r}/20_rl.ipynb", {"profile": "smoke", "objective": "grpo", "seed": 0, "data_dir": f"{r}/data",
                                          "sft_dir": f"{r}/sft/model", "out_dir": f"{r}/grpo-s0/train"})
    for rel in ("00_data.ipynb", "10_sft.ipynb", "20_rl.ipynb", "sft/metrics.json", "grpo-s0/train/log.jsonl",
                "grpo-s0/train/adapter/adapter_config.json", "grpo-s0/train/adapter/adapter_model.safetensors"):
        assert (other / r / rel).read_bytes() == (run_dir / rel).read_bytes(), rel


def test_failing_notebook_leaves_no_output(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text().replace("n_eval: 200", "n_evl: 200"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="unknown key 'profiles.tiny.data.n_evl'"):
        run(ROOT / "notebooks" / "00_data.ipynb", "runs/tiny/00_data.ipynb", {"profile": "tiny", "out_dir": "runs/tiny/data"})
    assert not (tmp_path / "runs/tiny/00_data.ipynb").exists() and not (tmp_path / "runs/tiny/data").exists()
    assert json.loads((tmp_path / "failed/runs/tiny/00_data.ipynb").read_text())["cells"]  # kept, outside runs/
    assert not list((tmp_path / "runs").rglob("*.ipynb")) and not list((tmp_path / ".running").rglob("*.ipynb"))


def test_scrub_joins_streams_split_by_timing(tmp_path):
    from entropy_rl.notebooks import scrub

    def executed(outputs):
        return {"cells": [{"cell_type": "code", "source": "print(1)", "metadata": {}, "execution_count": 1,
                           "outputs": outputs}], "metadata": {"papermill": {"start_time": "x"}},
                "nbformat": 4, "nbformat_minor": 4}

    a, b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    a.write_text(json.dumps(executed([{"output_type": "stream", "name": "stdout", "text": ["x 1\n", "y 2\n"]}])))
    b.write_text(json.dumps(executed([
        {"output_type": "stream", "name": "stdout", "text": ["x 1"]},
        {"output_type": "stream", "name": "stderr", "text": ["warning at /some/path\n"]},
        {"output_type": "stream", "name": "stdout", "text": ["\n", "y 2\n"]},
    ])))
    assert scrub(a) == [] and scrub(b) == ["warning at /some/path\n"]
    assert a.read_bytes() == b.read_bytes()


def test_figures_notebook_on_the_seeds_study_layout(tmp_path, monkeypatch):
    """The tiny-seeds layout (every run in runs/tiny-seeds, the SFT baseline from runs/tiny/sft): every claim gets a
    verdict over 3 seeds and every claim figure is drawn."""
    from entropy_rl import report

    root = smoke_root(tmp_path)
    monkeypatch.chdir(root)
    write_json(root / "runs/tiny/sft/eval/metrics.json", {"n_samples": 8, "pass@1": 0.3, "pass@8": 0.6, "maj@8": 0.4})
    objectives = sorted({o for name in report.CLAIM_FIGURES for o in report.figure_objectives(name)})
    for i, obj in enumerate(objectives):
        for seed in range(3):
            fake_run(root / "runs/tiny-seeds", f"{obj}-s{seed}", (0.2, 0.02 * (i + 1) + 0.001 * seed),
                     {"pass@1": 0.5 + 0.01 * i, "pass@8": 0.9, "maj@8": 0.6 + 0.01 * i + 0.002 * seed})
    run(ROOT / "notebooks" / "40_figures.ipynb", "reports/s/40_figures.ipynb",
        {"profile": "smoke", "runs_dir": "runs/tiny-seeds", "baseline_dir": "runs/tiny/sft", "out_dir": "reports/s"})
    figures = sorted(p.name for p in (root / "reports/s/figures").glob("claim_*.png"))
    assert figures == sorted(f"claim_{name}.png" for name in report.CLAIM_FIGURES)
    summary = read_json(root / "reports/s/summary.json")
    assert len(summary["claims"]) == len(report.CLAIMS)
    assert all(c["seeds"] == 3 and "1 seed" not in c["verdict"] for c in summary["claims"])
    assert {o["objective"]: o["seeds"] for o in summary["objectives"]} == {o: 3 for o in objectives}
    assert "| paec |" in (root / "reports/s/objectives.md").read_text()
    results = (root / "reports/s/results.md").read_text()
    assert "| `paec` | 3 |" in results and results.count("**") == 2 * len(report.CLAIMS)


def test_probe_notebook_tables_and_draws_the_random_reward_probe(tmp_path, monkeypatch):
    """Training runs only (no evaluation): GRPO's entropy flat across 3 seeds, clip-higher's rising beyond its spread."""
    root = smoke_root(tmp_path)
    monkeypatch.chdir(root)
    for seed in range(3):
        fake_run(root / "runs/probe", f"grpo-s{seed}", (0.2, 0.2 + 0.002 * (seed - 1)), {},
                 logged={"stats/cov_logp_adv": 0.0, "stats/clip_frac_low": 0.01, "stats/clip_frac_high": 0.01})
        fake_run(root / "runs/probe", f"grpo-clip_higher-s{seed}", (0.2, 0.3 + 0.01 * seed), {},
                 logged={"stats/cov_logp_adv": -1e-3, "stats/clip_frac_low": 0.01, "stats/clip_frac_high": 0.002})
    for d in (root / "runs/probe").iterdir():
        (d / "eval" / "metrics.json").unlink()  # the probe evaluates nothing at the end
    run(ROOT / "notebooks" / "45_probe.ipynb", "reports/p/45_probe.ipynb",
        {"runs_dir": "runs/probe", "out_dir": "reports/p"})
    assert (root / "reports/p/figures/probe_entropy.png").stat().st_size > 0
    results = (root / "reports/p/results.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in results.splitlines()[2:]}
    assert "none beyond seed spread" in rows["`grpo`"] and "| up | higher |" in rows["`grpo-clip_higher`"]


def gpu_smoke_root(path, model_dir):
    """params.yaml with a `gpu-smoke` profile that extends `consumer-gpu` and changes only what a CPU needs:
    a local 4-bit model (fp32 compute), the hf backend, fixture data, tiny sizes."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    fixtures = ROOT / "tests" / "fixtures"
    params["profiles"] = {"gpu-smoke": {
        "extends": "consumer-gpu", "description": "the consumer-gpu recipe on the CPU",
        "data": {"source": str(fixtures / "train_data"), "sources": ["math_l3_5", "gsm8k", "dapo17k"], "n_eval": 2},
        "model": {"source": str(model_dir), "compute_dtype": "float32", "num_threads": 2, "lora": {"r": 4, "alpha": 8}},
        "rl": {"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8, "minibatches": 1,
               "micro_batches": 2, "eval_every": 1, "eval_prompts": 2, "optimizer": "adamw",
               "rollout": {"backend": "hf"}},
        "eval": {"data_source": str(fixtures / "benchmarks"), "benchmarks": ["math500", "aime24"], "limit": 2,
                 "n_samples": 2, "max_new_tokens": 8, "backend": "hf", "verify_workers": 1},
    }}
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    return path


def test_gpu_profile_runs_through_the_same_notebooks_on_the_cpu(tmp_path, monkeypatch, tiny_tok):
    """`consumer-gpu`'s path (task math from a local copy, no warm start, 4-bit base + LoRA with gradient
    checkpointing, math-verify rewards, benchmark evaluation) through the notebooks `tiny` uses: only parameters
    differ."""
    from entropy_rl.config import ModelConfig
    from entropy_rl.model import BASE_POINTER, build_tiny

    model_dir = tmp_path / "pretrained"  # stands for the hub model: 4-bit kernels need >= 64-wide layers
    build_tiny(ModelConfig(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128), tiny_tok).save_pretrained(model_dir)
    tiny_tok.save_pretrained(model_dir)
    root = gpu_smoke_root(tmp_path / "repo", model_dir)
    monkeypatch.chdir(root)
    nb = lambda n: ROOT / "notebooks" / f"{n}.ipynb"  # noqa: E731
    r, p = "runs/gpu-smoke", {"profile": "gpu-smoke"}
    run(nb("00_data"), f"{r}/00_data.ipynb", {**p, "out_dir": f"{r}/data"})
    run(nb("10_sft"), f"{r}/10_sft.ipynb", {**p, "data_dir": f"{r}/data", "out_dir": f"{r}/sft"})
    run(nb("20_rl"), f"{r}/20_rl.ipynb", {**p, "objective": "grpo", "seed": 0, "data_dir": f"{r}/data",
                                          "sft_dir": f"{r}/sft/model", "out_dir": f"{r}/grpo-s0/train"})
    run(nb("30_eval"), f"{r}/30_eval.ipynb", {**p, "data_dir": f"{r}/data", "base_dir": f"{r}/sft/model",
                                              "adapter_dir": f"{r}/grpo-s0/train/adapter", "out_dir": f"{r}/grpo-s0/eval"})

    out = root / r
    summary = read_json(out / "data" / "summary.json")
    assert summary["n"]["eval"] == 2 and set(summary["n"]) == {"rl", "eval"} and sum(summary["sources"].values()) > 5
    assert read_json(out / "sft" / "model" / BASE_POINTER) == {"source": str(model_dir)}  # a pointer, no weights
    assert read_json(out / "sft" / "metrics.json")["warm_start"] is False
    config = read_json(out / "grpo-s0" / "train" / "config.json")["profile"]
    assert config["model"]["load_in_4bit"] and config["model"]["gradient_checkpointing"]
    assert config["rl"]["template"] == "qwen_math"
    log = read_jsonl(out / "grpo-s0" / "train" / "log.jsonl")
    assert len(log) == 1 and math.isfinite(log[0]["stats/entropy"]) and log[0]["stats/entropy"] > 0
    assert not any(k.startswith("stats/tis") for k in log[0])  # hf samples from the trained module: no correction
    metrics = read_json(out / "grpo-s0" / "eval" / "metrics.json")
    assert set(metrics["benchmarks"]) == {"math500", "aime24"} and 0 <= metrics["pass@1"] <= 1


def test_dvc_yaml_serves_the_gpu_profile(tmp_path):
    """Switching profile is a parameter: with `consumer-gpu` active in params.yaml the same dvc.yaml expands to its
    stages, each running the same notebooks with `-p profile consumer-gpu`."""
    import shutil
    import subprocess
    import sys

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profiles"] = {"consumer-gpu": params["more_profiles"].pop("consumer-gpu")}
    params["rl_runs"] = {"profiles": ["consumer-gpu"], "objectives": ["grpo"], "seeds": [0]}
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc = [sys.executable, "-m", "dvc"]
    listed = subprocess.run(dvc + ["stage", "list", "--name-only"], cwd=tmp_path, capture_output=True, text=True,
                            env={**__import__("os").environ, "DVC_NO_ANALYTICS": "1"})
    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.split())
    assert {"data@consumer-gpu", "sft@consumer-gpu", "rl@consumer-gpu-grpo-0", "eval@consumer-gpu-grpo-0",
            "eval-sft@consumer-gpu", "figures@consumer-gpu"} <= names
    assert not any("tiny" in n for n in names)
    lock = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert "notebooks/20_rl.ipynb" in lock["stages"]["rl"]["cmd"]  # one notebook for every profile
