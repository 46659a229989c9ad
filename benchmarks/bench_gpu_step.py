"""One RL step of the ``consumer-gpu`` profile on the real Qwen2.5-Math-1.5B architecture with random weights.

    bash benchmarks/gpu_check.sh                 # on a GPU machine with torch (installs peft/bitsandbytes wheels)
    python benchmarks/bench_gpu_step.py --arch qwen2.5-math-1.5b --device cuda
    python benchmarks/bench_gpu_step.py --arch small --device cpu --out /tmp/x   # a CPU check of the script itself

No weights are downloaded: the architecture's config (hard-coded below from the model's ``config.json``) gets random
weights, saved once in bf16 and loaded through the project's own path, ``model.load_policy``: 4-bit nf4 with double
quantization, bf16 compute, LoRA (rank, alpha, target modules of the profile), gradient checkpointing, and the RL
step ``train.rl_step`` with the profile's objective settings, ``rl.optimizer`` (paged 8-bit AdamW) and the fused
token statistics. A synthetic word-level tokenizer with the model's vocabulary size stands for Qwen's (random
weights rarely sample EOS, so every response runs to the length cap: the worst case for memory). The reward is a
fixed coin per response, so that advantages, and gradients, are non-zero.

Measured: the step's wall time split into rollout and training (old/ref passes + updates), and
``torch.cuda.max_memory_allocated`` (and reserved) over the training phase, reset after the rollout; the rollout's
own peak too. The issue's target: at most 12 GB for the training step at G = 8, 8 prompts, 1,024 response tokens.
Rows (machine, GPU, versions, commit, date, settings, results) are appended to ``gpu_step.csv`` and the latest run
is summarized in ``gpu_step.md``.
"""
from __future__ import annotations

import argparse
import csv
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
os.environ.setdefault("ENTROPY_RL_PROGRESS", "off")

ARCHS = {
    # Qwen/Qwen2.5-Math-1.5B config.json (architecture only)
    "qwen2.5-math-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                              num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096,
                              rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, eos=151643),
    # Qwen/Qwen2.5-0.5B-Instruct config.json
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, eos=151643),
    # a check of this script on the CPU
    "small": dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, eos=2000),
}
FIELDS = ["date", "host", "gpu", "torch", "transformers", "bitsandbytes", "peft", "git_commit", "arch", "profile",
          "prompts", "group_size", "max_new_tokens", "micro_batch_seqs", "lora_r", "optimizer", "tokens",
          "rollout_s", "train_s", "step_s", "rollout_peak_gib", "train_peak_gib", "train_reserved_gib", "status"]
GIB = 2 ** 30


def word_tokenizer(vocab_size: int, eos: int):
    """A word-level tokenizer over ``vocab_size`` tokens ``t0 .. t{V-1}`` (EOS/pad at ``eos``), in HF format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    vocab["<|endoftext|>"] = eos
    del vocab[f"t{eos}"]
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="t0", padding_side="left")


def random_model_dir(arch: str, device: str, where: Path) -> Path:
    """The architecture with random weights, saved once in bf16 (the tokenizer is built in code: AutoTokenizer would
    give a qwen2 config Qwen's own tokenizer class)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = dict(ARCHS[arch])
    eos = spec.pop("eos")
    d = where / arch
    if (d / "config.json").exists():
        return d
    config = Qwen2Config(**spec, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, use_sliding_window=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(d)
    del model
    return d


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "bitsandbytes", "peft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "-"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="qwen2.5-math-1.5b", choices=sorted(ARCHS))
    ap.add_argument("--profile", default="consumer-gpu")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--micro-batch-seqs", type=int, default=4, help="responses per forward/backward pass")
    ap.add_argument("--objective", default="grpo")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "entropy_rl_gpu_step"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()

    import torch

    from entropy_rl.config import load_profile, resolve_objective
    from entropy_rl.model import load_policy
    from entropy_rl.objectives import make_objective_config
    from entropy_rl.train import RLRun, rl_step

    cuda = args.device.startswith("cuda")
    B = args.prompts * args.group_size
    minibatches = load_profile(ROOT / "params.yaml", args.profile).rl.minibatches
    overrides = {"rl.prompts_per_step": args.prompts, "rl.group_size": args.group_size,
                 "rl.max_new_tokens": args.max_new_tokens,
                 "rl.micro_batches": B // minibatches // args.micro_batch_seqs,
                 "rl.rollout.backend": "hf"}  # vLLM is not installed on the lent machine: the rollout is HF generate
    if not cuda:
        overrides.update({"model.compute_dtype": "float32", "rl.optimizer": "adamw"})
    cfg = load_profile(ROOT / "params.yaml", args.profile, overrides)
    base = random_model_dir(args.arch, args.device, Path(args.work))
    tok = word_tokenizer(ARCHS[args.arch]["vocab_size"], ARCHS[args.arch]["eos"])
    torch.manual_seed(0)
    policy = load_policy(base, cfg.model, seed=0)
    if not cfg.model.load_in_4bit or not cuda:
        policy.to(args.device)
    method, settings = resolve_objective(ROOT / "params.yaml", args.objective)
    V = ARCHS[args.arch]["vocab_size"]
    g = torch.Generator().manual_seed(0)
    rows = [{"id": str(i), "problem": " ".join(f"t{int(t)}" for t in torch.randint(3, V - 300, (args.prompt_tokens,), generator=g)),
             "answer": "0"} for i in range(4 * args.prompts)]
    coins = {}
    reward = lambda text, answer: coins.setdefault(len(coins), float(len(coins) % 3 == 0))  # noqa: E731
    run = RLRun(policy=policy, tokenizer=tok, objective=method, obj_cfg=make_objective_config(method, settings),
                rl=cfg.rl, train_rows=rows, eval_rows=rows[:2], reward_fn=reward, seed=0)

    # time the phases: wrap the sampler's generate (rollout) and everything after it (training)
    marks = {}
    generate = run.sampler.generate

    def timed_generate(*a, **kw):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        ro = generate(*a, **kw)
        if cuda:
            torch.cuda.synchronize()
            marks["rollout_peak"] = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        marks["rollout_s"] = marks.get("rollout_s", 0.0) + time.time() - t0
        marks["train_start"] = time.time()
        return ro

    run.sampler.generate = timed_generate
    status = "ok"
    t0 = time.time()
    try:
        row = rl_step(run, 0)
    except torch.cuda.OutOfMemoryError as e:  # recorded, not hidden
        status, row = f"OOM: {str(e).splitlines()[0][:120]}", {}
    if cuda:
        torch.cuda.synchronize()
    step_s = time.time() - t0
    train_s = time.time() - marks.get("train_start", t0)
    gpu = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "host": platform.node(), "gpu": gpu,
        **versions(), "git_commit": commit or "-", "arch": args.arch, "profile": args.profile, "prompts": args.prompts,
        "group_size": args.group_size, "max_new_tokens": args.max_new_tokens, "micro_batch_seqs": args.micro_batch_seqs,
        "lora_r": cfg.model.lora.r, "optimizer": cfg.rl.optimizer, "tokens": int(row.get("stats/response_length", 0) * B),
        "rollout_s": round(marks.get("rollout_s", 0.0), 2), "train_s": round(train_s, 2), "step_s": round(step_s, 2),
        "rollout_peak_gib": round(marks.get("rollout_peak", 0) / GIB, 3),
        "train_peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 3) if cuda else 0.0,
        "train_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3) if cuda else 0.0, "status": status,
    }
    print(json.dumps({**result, "row": row}, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    new = not (out / "gpu_step.csv").exists()
    with open(out / "gpu_step.csv", "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow(result)
    write_summary(out)
    return 0 if status == "ok" else 1


def write_summary(out: Path) -> None:
    """``gpu_step.md``: every row of ``gpu_step.csv``, and whether each GPU row meets the 12 GB training target."""
    with open(out / "gpu_step.csv") as f:
        rows = list(csv.DictReader(f))
    lines = ["# One RL step of the GPU profiles (real architectures, random weights)", "",
             "Written by `benchmarks/bench_gpu_step.py` from `gpu_step.csv` (one row per run). Each run: the profile's "
             "4-bit nf4 base + LoRA, gradient checkpointing, its optimizer and objective settings, G = `group_size` "
             "samples of `prompts` prompts, every response run to `max_new_tokens` (random weights rarely sample EOS), "
             "rollout with Hugging Face `generate` (no vLLM on the lent machine). Peaks are "
             "`torch.cuda.max_memory_allocated`; the training phase is the old/reference passes plus the updates.", "",
             "| date | GPU | arch | prompts x G | tokens | rollout s | training s | step s | rollout peak GiB | "
             "training peak GiB (reserved) | 12 GB target | status |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gpu_run = r["train_peak_gib"] not in ("", "0.0")
        target = ("n/a (CPU)" if not gpu_run else
                  "met" if r["status"] == "ok" and float(r["train_peak_gib"]) * GIB <= 12e9 else "not met")
        lines.append(f"| {r['date']} | {r['gpu']} | {r['arch']} | {r['prompts']} x {r['group_size']} | {r['tokens']} | "
                     f"{r['rollout_s']} | {r['train_s']} | {r['step_s']} | {r['rollout_peak_gib']} | "
                     f"{r['train_peak_gib']} ({r['train_reserved_gib']}) | {target} | {r['status']} |")
    lines += ["", "Versions and settings of each row: `gpu_step.csv`.", ""]
    (out / "gpu_step.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
