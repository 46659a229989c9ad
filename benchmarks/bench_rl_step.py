"""The project's RL step against TRL's ``GRPOTrainer``, side by side: same model, prompts, reward and shapes, one run.

    .venv-trl/bin/python benchmarks/bench_rl_step.py                         # every objective, 1 warm-up + 5 steps
    .venv-trl/bin/python benchmarks/bench_rl_step.py --quick --objectives grpo --out /tmp/rlbench   # a smoke run
    make bench-rl-step                                                       # the same as the first, via .venv-trl

TRL lives in its own environment (``make trl-venv`` builds ``.venv-trl``: trl 1.16 and the project, editable).

Setup (the ``tiny`` profile of params.yaml): the profile's SFT model (``runs/tiny/sft/model``, ``dvc repro sft@tiny``)
and RL prompts (``runs/tiny/data/rl.jsonl``, ``dvc repro data@tiny``); 16 prompts x G = 8 = 128 rollouts per rollout
batch, temperature 1.0 with no top-k / top-p, up to 48 new tokens, 4 mini-batch updates of 32 responses per rollout
batch, LoRA r 16 / alpha 32 / dropout 0 on every linear layer of the blocks (both policies are
``entropy_rl.model.load_policy`` with the same seed, so they start from the same weights), AdamW lr 3e-4, weight
decay 0, constant learning rate, gradient clipping at 1.0, no reference-KL term (beta 0), the task's verifier as the
reward, one CPU thread (``--threads``), fp32.

* Project: ``entropy_rl.rl.rl_step(run, step)`` on an ``RLRun`` built as notebooks/20_rl.ipynb builds it, with the
  objective under test (``entropy_rl.objectives.load_objective``).
* TRL: ``trl.GRPOTrainer`` with ``loss_type="grpo"``, ``per_device_train_batch_size=32``,
  ``gradient_accumulation_steps=1``, ``steps_per_generation=4`` (so ``generation_batch_size = 32 x 1 process x 4 =
  128``: one generation of 128 rollouts serves 4 optimizer steps; trl/trainer/grpo_config.py ``__post_init__``,
  grpo_trainer.py ``_prepare_inputs``), its ``transformers.generate`` path (no vLLM), the same prompt strings as its
  ``prompt`` column and the same verifier wrapped as a TRL reward function.

Timing: one process, one thread. For each configuration (project objective) a fresh project run and a fresh TRL
trainer start from the SFT model; ``trainer.train()`` runs ``(warmup + steps) x 4`` optimizer steps and a callback,
at the end of each TRL rollout batch (every 4th optimizer step), runs one project step, so the two alternate:
TRL batch 1, project step 1, TRL batch 2, project step 2, ... A TRL rollout batch is the wall time between two such
callbacks: its generation, rewards, advantages, old log-probs, 4 x (forward + backward + clip + AdamW) and the
Trainer's own loop; a project step is the wall time of ``rl_step``. The first ``warmup`` pairs are not counted. The
torch RNG state is saved before and restored after each project step, so the project's reseeding does not steer
TRL's sampling. Rows (one per configuration, with machine, versions, commit, date and load average) are appended to
``<out>/rl_step.csv``; ``<out>/rl_step.md`` summarises this invocation.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_token_stats import _machine  # noqa: E402  (stdlib only at import: machine, CPU model, git commit)

OBJECTIVES = ["grpo", "dapo", "kl_cov", "erpo", "repo_r", "paec"]
"""GRPO and one objective per family: DAPO (clip-higher, dynamic sampling), covariance (KL-Cov), ERPO, REPO(-R),
PAEC"""
TARGETS = {"grpo": 0.5}
"""project / TRL median seconds per rollout batch: GRPO at most 0.5, every other objective at most DEFAULT_TARGET"""
DEFAULT_TARGET = 0.6
PHASES = ["rollout", "reward", "old", "ref", "update", "controllers", "step"]
"""the per-phase timing keys ``timing_s/<phase>`` of rl_step's log row, when it carries them"""
TRL_PHASES = ["generate", "score_old", "fwd_bwd", "optim_other"]
"""TRL's split of a rollout batch: ``_generate`` (tokenize, generate, decode); the rest of
``_generate_and_score_completions`` (rewards, advantages, old log-probs); the rest of the 4 ``training_step`` calls
(forward + backward); the rest of the batch (clip, AdamW, scheduler, the Trainer's loop)"""

FIELDS = (["run_id", "date", "machine", "cpu", "torch", "transformers", "trl", "peft", "git_commit", "git_dirty",
           "threads", "profile", "objective", "method", "seed", "warmup", "steps", "prompts", "group_size",
           "rollouts_per_batch", "max_new_tokens", "minibatches",
           "project_median_s", "project_min_s", "project_max_s", "project_rollouts_per_s", "project_reward_mean",
           "project_gen_batches_mean", "project_response_length", "project_width", "project_grad_norm",
           "project_loss", "project_generate_s", "project_sampler"]
          + [f"project_timing_{p}_s" for p in PHASES]
          + ["project_timing_json",
             "trl_median_s", "trl_min_s", "trl_max_s", "trl_rollouts_per_s", "trl_reward_mean",
             "trl_response_length", "trl_width", "trl_grad_norm", "trl_loss"]
          + [f"trl_{p}_s" for p in TRL_PHASES]
          + ["ratio", "target", "target_met", "project_times_s", "trl_times_s", "loadavg_start", "loadavg_end",
             "note"])


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers (no torch; tests/test_bench_rl_step.py)
# ---------------------------------------------------------------------------------------------------------------
class MissingInput(SystemExit):
    """A required input is absent: the message names it and the command that makes it."""


def check_inputs(sft_dir: Path, data_dir: Path, profile: str = "tiny") -> None:
    """Fail with a message naming the missing path and the DVC stage (dvc.yaml: ``data``, ``sft``) that makes it."""
    missing = []
    if not (sft_dir / "config.json").is_file():
        missing.append(f"the SFT model {sft_dir} (no config.json there): make it with `dvc repro sft@{profile}` (it "
                       f"runs data@{profile} first), or pass --sft-dir")
    for split in ("rl", "eval"):
        if not (data_dir / f"{split}.jsonl").is_file():
            missing.append(f"the data {data_dir / f'{split}.jsonl'}: make it with `dvc repro data@{profile}`, or pass "
                           "--data-dir")
    if missing:
        raise MissingInput("bench_rl_step: missing " + "; and ".join(missing))


def target_for(objective: str) -> float:
    return TARGETS.get(objective, DEFAULT_TARGET)


def spread(xs: list[float]) -> dict[str, float | None]:
    """median, min and max of ``xs`` (None when empty)."""
    if not xs:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def median_or_none(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def mean_or_none(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def verdict(ratio: float | None, target: float) -> str:
    if ratio is None:
        return "-"
    return "met" if ratio <= target else "missed"


def timing_medians(rows: list[dict]) -> dict[str, float]:
    """Median of every ``timing_s/*`` key over the project's log rows (absent keys: not reported)."""
    keys = sorted({k for r in rows for k in r if k.startswith("timing_s/")})
    return {k[len("timing_s/"):]: statistics.median([float(r[k]) for r in rows if k in r]) for k in keys}


def config_row(objective: str, method: str, project: list[dict], trl_batches: list[dict], rollouts: int) -> dict:
    """The result columns of one configuration from its measured project steps and TRL rollout batches.

    ``project`` items: ``{"time": s, "generate": s, "width": padded response positions, "row": rl_step's log
    row}``; ``trl_batches`` items: ``{"time": s, "reward": mean, "loss": mean, "grad_norm": mean, "length": mean,
    "width": padded completion positions, <TRL_PHASES>: s}``."""
    p = spread([x["time"] for x in project])
    t = spread([x["time"] for x in trl_batches])
    rows = [x["row"] for x in project]
    timing = timing_medians(rows)
    ratio = p["median"] / t["median"] if p["median"] is not None and t["median"] else None
    target = target_for(objective)
    per_s = lambda m: rollouts / m if m else None  # noqa: E731
    out = {
        "objective": objective, "method": method,
        "project_median_s": p["median"], "project_min_s": p["min"], "project_max_s": p["max"],
        "project_rollouts_per_s": per_s(p["median"]),
        "project_reward_mean": mean_or_none([r.get("reward/mean") for r in rows]),
        "project_gen_batches_mean": mean_or_none([r.get("stats/gen_batches") for r in rows]),
        "project_response_length": mean_or_none([r.get("stats/response_length") for r in rows]),
        "project_width": mean_or_none([x.get("width") for x in project]),
        "project_grad_norm": mean_or_none([r.get("stats/grad_norm") for r in rows]),
        "project_loss": mean_or_none([r.get("loss/total") for r in rows]),
        "project_generate_s": median_or_none([x.get("generate") for x in project]),
        "project_timing_json": json.dumps({k: round(v, 4) for k, v in timing.items()}, sort_keys=True),
        "trl_median_s": t["median"], "trl_min_s": t["min"], "trl_max_s": t["max"],
        "trl_rollouts_per_s": per_s(t["median"]),
        "trl_reward_mean": mean_or_none([x.get("reward") for x in trl_batches]),
        "trl_response_length": mean_or_none([x.get("length") for x in trl_batches]),
        "trl_width": mean_or_none([x.get("width") for x in trl_batches]),
        "trl_grad_norm": mean_or_none([x.get("grad_norm") for x in trl_batches]),
        "trl_loss": mean_or_none([x.get("loss") for x in trl_batches]),
        "ratio": ratio, "target": target, "target_met": verdict(ratio, target),
        "project_times_s": " ".join(f"{x['time']:.3f}" for x in project),
        "trl_times_s": " ".join(f"{x['time']:.3f}" for x in trl_batches),
    }
    for ph in PHASES:
        out[f"project_timing_{ph}_s"] = timing.get(ph)
    for ph in TRL_PHASES:
        out[f"trl_{ph}_s"] = median_or_none([x.get(ph) for x in trl_batches])
    return out


def write_csv(path: Path, rows: list[dict]) -> None:
    """Append ``rows``; a file with another header is rewritten under the current one (unknown columns dropped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old: list[dict] = []
    if path.exists():
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames != FIELDS:
                old = list(reader)
    mode = "w" if old or not path.exists() else "a"
    with path.open(mode, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore", restval="")
        if mode == "w":
            w.writeheader()
            w.writerows(old)
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})


def _f(v, fmt=".2f") -> str:
    return "-" if v is None or v == "" else format(v, fmt)


def summary(rows: list[dict], csv_path: Path, a) -> str:
    r0 = rows[0]
    where = csv_path.relative_to(ROOT) if csv_path.is_relative_to(ROOT) else csv_path
    loads = [r["loadavg_start"] for r in rows] + [r["loadavg_end"] for r in rows]
    lines = [
        "# The RL step against TRL's GRPOTrainer: benchmark summary",
        "",
        f"Written by `benchmarks/bench_rl_step.py` (run `{r0['run_id']}`, {r0['date']}); all rows, with the columns "
        f"not shown here, are in `{where}`.",
        "",
        f"- Machine: {r0['machine']}, {r0['cpu']}; torch {r0['torch']}, transformers {r0['transformers']}, trl "
        f"{r0['trl']}, peft {r0['peft']}; {r0['threads']} thread(s); commit `{r0['git_commit']}`"
        f"{' plus uncommitted changes' if r0['git_dirty'] else ''}; 1-minute load average {min(loads):.1f}-"
        f"{max(loads):.1f} during the run.",
        f"- Setup: profile `{r0['profile']}` (its SFT model and RL prompts), {r0['prompts']} prompts x G = "
        f"{r0['group_size']} = {r0['rollouts_per_batch']} rollouts per rollout batch, temperature 1.0 (no top-k / "
        f"top-p), up to {r0['max_new_tokens']} new tokens, {r0['minibatches']} mini-batch updates of "
        f"{r0['rollouts_per_batch'] // r0['minibatches']} responses per batch, LoRA r 16 / alpha 32 on every linear "
        "layer (both policies from `load_policy` with the same seed), AdamW lr 3e-4 (constant, weight decay 0), clip "
        "1.0, beta 0, fp32, the task's verifier as the reward.",
        f"- TRL {r0['trl']}: `GRPOTrainer` with `loss_type=\"grpo\"`, `per_device_train_batch_size=32`, "
        "`gradient_accumulation_steps=1`, `steps_per_generation=4` (so `generation_batch_size` = 128: one generation "
        "serves 4 optimizer steps), `num_generations=8`, `max_completion_length=48`, `top_k=0`, `top_p=1.0`, "
        "`beta=0`, `scale_rewards=\"group\"`, transformers `generate` (no vLLM), no gradient checkpointing, no "
        "logging, saving or evaluation. TRL 1.16 has no prompt truncation; the prompt token ids TRL generated from "
        "are checked against the project's encoding (no BOS, no chat template; a mismatch is listed under Notes).",
        f"- Timing: one process, {r0['threads']} thread(s). For each objective a fresh project run and a fresh TRL "
        f"trainer start from the SFT model and alternate: TRL rollout batch 1, project step 1, TRL batch 2, project "
        f"step 2, ...; the first {r0['warmup']} pair(s) are warm-up, then {r0['steps']} measured of each. TRL is "
        "re-run (GRPO, its baseline) for every project objective, so every project row has TRL batches measured "
        "right next to its own steps, both policies at the same distance from the SFT start. A project step is the "
        "wall time of `entropy_rl.rl.rl_step` (sync, rollout, reward, advantages, old and reference log-probs, 4 "
        "updates, controllers, the log row); a TRL rollout batch is the wall time between two of the callbacks that "
        "hand over to the project (every 4th optimizer step): generation, rewards, advantages, old log-probs, 4 x "
        "(forward, backward, clip, AdamW) and the Trainer's own loop. Rollouts/s = rollouts trained per rollout batch "
        f"({r0['rollouts_per_batch']}) / median seconds.",
        "",
        "| objective | project s/batch: median (min-max) | TRL GRPO s/batch: median (min-max) | ratio | target | "
        "rollouts/s project / TRL | mean reward project / TRL | gen batches (project) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['objective']} | {_f(r['project_median_s'])} ({_f(r['project_min_s'])}-{_f(r['project_max_s'])}) | "
            f"{_f(r['trl_median_s'])} ({_f(r['trl_min_s'])}-{_f(r['trl_max_s'])}) | {_f(r['ratio'])} | "
            f"<= {r['target']:g}: **{r['target_met']}** | {_f(r['project_rollouts_per_s'], '.1f')} / "
            f"{_f(r['trl_rollouts_per_s'], '.1f')} | {_f(r['project_reward_mean'], '.3f')} / "
            f"{_f(r['trl_reward_mean'], '.3f')} | {_f(r['project_gen_batches_mean'])} |")
    have_phases = any(json.loads(r["project_timing_json"] or "{}") for r in rows)
    proj_cols = PHASES if have_phases else []
    lines += [
        "",
        "Per-phase medians, seconds per rollout batch. Project: "
        + ("the `timing_s/*` keys of `rl_step`'s log row" if have_phases else
           "`rl_step`'s log row carries no `timing_s/*` keys at this commit; only the rollout (`sampler.generate`, "
           "timed by a wrapper in this script) is split out")
        + "; `generate` is always the wrapper's. TRL: `generate` = `_generate` (tokenize, `model.generate`, decode), "
          "`score+old` = the rest of `_generate_and_score_completions` (rewards, advantages, the old log-prob "
          "forward), `fwd+bwd` = the rest of the 4 `training_step` calls, `optim+loop` = the rest of the batch "
          "(gradient clipping, AdamW, scheduler, Trainer loop).",
        "",
        "| objective | project generate | " + " | ".join(f"project {p}" for p in proj_cols)
        + (" | " if proj_cols else "") + "TRL generate | TRL score+old | TRL fwd+bwd | TRL optim+loop | "
        "resp. length project / TRL | padded width project / TRL | grad norm project / TRL |",
        "|---|---|" + "---|" * len(proj_cols) + "---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["objective"], _f(r["project_generate_s"])] + [_f(r[f"project_timing_{p}_s"]) for p in proj_cols]
        cells += [_f(r[f"trl_{p}_s"]) for p in TRL_PHASES]
        cells += [f"{_f(r['project_response_length'], '.1f')} / {_f(r['trl_response_length'], '.1f')}",
                  f"{_f(r['project_width'], '.0f')} / {_f(r['trl_width'], '.1f')}",
                  f"{_f(r['project_grad_norm'], '.3f')} / {_f(r['trl_grad_norm'], '.3f')}"]
        lines.append("| " + " | ".join(cells) + " |")
    ref_steps = [r["objective"] for r in rows if r["project_timing_ref_s"] not in (None, "")]
    lines += [
        "",
        "What differs between the two sides (kept, and measured where it can be):",
        "",
        f"- sampling: the project's sampler is `{r0['project_sampler']}` (entropy_rl.rollout), TRL's is transformers "
        "`generate` on the policy; both draw from the full distribution at temperature 1 (no top-k, top-p, "
        "repetition penalty) and stop a response at EOS or 48 tokens;",
        "- old log-probs: TRL recomputes them in a no-grad pass over the 128 rollouts (`steps_per_generation` > "
        "`gradient_accumulation_steps` makes updates 2-4 off-policy); the project's `old` phase shows what its step "
        "spends on them (a sampler that reports the sampling policy's own log-probs makes that pass unnecessary);",
        "- reference log-probs: TRL with beta 0 computes none; the project computes them only for an objective that "
        "reads them or at an in-training evaluation step (`project ref`: "
        + (", ".join(ref_steps) if ref_steps else "none in this run") + ");",
        "- padding: the `padded width` column is the number of response positions of the batch tensors (project: the "
        "sampler's `response_ids`, padded to the cap; its forward passes group the rows by length and stop at each "
        "group's longest row, `entropy_rl.policy.length_groups`; TRL: the longest completion of the batch);",
        "- the objectives other than GRPO do their own extra work (DAPO's dynamic sampling may generate more than one "
        "batch per step, `gen batches`; KL-Cov, ERPO, REPO-R and PAEC read entropies, covariances or group "
        "statistics) and are compared with TRL's GRPO, its baseline; TRL's `grpo` loss and the project's `grpo` "
        "agree in formula (sequence mean of token means, eps 0.2, group-normalised advantages, no KL);",
        "- bookkeeping: the project builds its full log row every step; TRL collects its `_metrics` every step "
        "(with `logging_strategy=\"no\"` they are never printed).",
        "",
    ]
    if any(r["note"] for r in rows):
        lines += ["Notes: " + "; ".join(f"{r['objective']}: {r['note']}" for r in rows if r["note"]), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The measurement (torch, transformers, trl imported here)
# ---------------------------------------------------------------------------------------------------------------
class TimedSampler:
    """A sampler proxy that times ``generate`` and notes the padded width of what it returns (everything else is
    forwarded)."""

    def __init__(self, inner):
        self._inner, self.elapsed, self.width = inner, 0.0, None

    def generate(self, *args, **kw):
        t = time.perf_counter()
        try:
            ro = self._inner.generate(*args, **kw)
        finally:
            self.elapsed += time.perf_counter() - t
        self.width = max(self.width or 0, int(ro.response_ids.shape[1]))
        return ro

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _trainer_class():
    import trl

    class BenchGRPOTrainer(trl.GRPOTrainer):
        """``GRPOTrainer`` with timers around generation, scoring and the training steps, and the gradient norms and
        losses recorded; nothing in TRL's code paths is changed."""

        def bench_reset(self):
            self.bench = defaultdict(float)
            self.bench_lists = defaultdict(list)

        def _generate(self, prompts):
            t = time.perf_counter()
            out = super()._generate(prompts)
            self.bench["generate"] += time.perf_counter() - t
            prompt_ids, completion_ids = out[0], out[1]
            self.bench_lists["length"] += [len(c) for c in completion_ids]
            self.bench_lists["width"].append(max(len(c) for c in completion_ids))  # padded to the longest
            if not getattr(self, "bench_prompts_checked", False):  # TRL's prompt tokens == the project's
                ref = self.bench_tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
                self.bench_prompt_mismatch = sum(list(a) != list(b) for a, b in zip(prompt_ids, ref))
                self.bench_prompts_checked = True
            return out

        def _generate_and_score_completions(self, inputs):
            t = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            self.bench["gen_and_score"] += time.perf_counter() - t
            return out

        def training_step(self, model, inputs, num_items_in_batch):
            t = time.perf_counter()
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.bench["training_step"] += time.perf_counter() - t
            self.bench_lists["loss"].append(float(loss))
            return loss

        def _clip_grad_norm(self, model):
            g = super()._clip_grad_norm(model)
            self.bench_lists["grad_norm"].append(float(g))
            return g

    return BenchGRPOTrainer


def measure(objective: str, a, info: dict) -> dict:
    """One configuration: a fresh project run and a fresh TRL trainer, alternating; the CSV row."""
    import peft
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback

    from entropy_rl.config import load_profile
    from entropy_rl.data import TASKS
    from entropy_rl.io import read_jsonl
    from entropy_rl.model import load_policy, load_tokenizer
    from entropy_rl.objectives import load_objective
    from entropy_rl.prompts import build_prompt
    from entropy_rl.rewards import get_reward
    from entropy_rl.rl import RLRun, rl_step
    from entropy_rl.rollout import make_sampler

    torch.set_num_threads(a.threads)
    load_start = os.getloadavg()[0]
    cfg = load_profile(a.params, a.profile)
    rl = cfg.rl
    method, obj_cfg = load_objective(objective, a.params)
    rows = {s: read_jsonl(a.data_dir / f"{s}.jsonl") for s in ("rl", "eval")}
    reward_fn = get_reward(TASKS.get(cfg.data.task).reward)
    rollouts = rl.prompts_per_step * rl.group_size

    # ---- project: as notebooks/20_rl.ipynb ----
    tok = load_tokenizer(a.sft_dir)
    policy = load_policy(a.sft_dir, cfg.model, seed=a.seed)
    sampler = TimedSampler(make_sampler(rl.rollout, policy, tok, base_dir=a.sft_dir, model_cfg=cfg.model,
                                        max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, seed=a.seed))
    run = RLRun(policy=policy, tokenizer=tok, objective=method, obj_cfg=obj_cfg, rl=rl, train_rows=rows["rl"],
                eval_rows=rows["eval"], reward_fn=reward_fn, seed=a.seed, sampler=sampler)
    policy.train()
    sampler_desc = " ".join(f"{k}={getattr(o, k)}" for o, k in ((rl.rollout, "backend"), (rl.rollout, "hf_loop"),
                                                                (rl, "old_stats")) if hasattr(o, k))

    # ---- TRL: the same prompts, reward, policy start and shapes ----
    trl_tok = load_tokenizer(a.sft_dir)
    trl_policy = load_policy(a.sft_dir, cfg.model, seed=a.seed)
    ds = Dataset.from_dict({"prompt": [build_prompt(r["problem"], trl_tok, rl.template) for r in rows["rl"]],
                            "answer": [r["answer"] for r in rows["rl"]]})
    seen_rewards: list[list[float]] = []

    def task_reward(prompts, completions, answer, **kw) -> list[float]:
        scores = reward_fn.batch(completions, answer)
        seen_rewards.append(scores)
        return scores

    spg = rl.minibatches
    n_batches = a.warmup + a.steps
    out_dir = tempfile.mkdtemp(prefix="bench_rl_step_")
    args = trl.GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=False, fp16=False, seed=a.seed, data_seed=a.seed,
        per_device_train_batch_size=rollouts // spg, gradient_accumulation_steps=1, steps_per_generation=spg,
        num_generations=rl.group_size, num_iterations=rl.epochs, max_completion_length=rl.max_new_tokens,
        temperature=rl.temperature, top_p=1.0, top_k=0, repetition_penalty=1.0,
        learning_rate=rl.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=rl.grad_clip, beta=0.0, loss_type="grpo", epsilon=0.2, scale_rewards="group",
        mask_truncated_completions=False, gradient_checkpointing=False, max_steps=n_batches * spg,
        report_to=[], logging_strategy="no", logging_steps=10**9, save_strategy="no", eval_strategy="no",
        disable_tqdm=True, log_completions=False, dataloader_num_workers=0, dataloader_pin_memory=False,
        remove_unused_columns=False,
    )
    if args.generation_batch_size != rollouts or args.steps_per_generation != spg:
        raise RuntimeError(f"TRL config: generation_batch_size {args.generation_batch_size}, steps_per_generation "
                           f"{args.steps_per_generation}; expected {rollouts}, {spg}")
    trainer = _trainer_class()(model=trl_policy, reward_funcs=task_reward, args=args, train_dataset=ds,
                               processing_class=trl_tok)
    trainer.bench_tokenizer = tok
    trainer.bench_reset()

    project_steps: list[dict] = []
    trl_batches: list[dict] = []
    threads_seen: set[int] = set()

    def project_step(k: int):
        rng = torch.get_rng_state()
        torch.set_num_threads(a.threads)
        sampler.elapsed, sampler.width = 0.0, None
        t = time.perf_counter()
        row = rl_step(run, k)
        elapsed = time.perf_counter() - t
        torch.set_rng_state(rng)
        threads_seen.add(torch.get_num_threads())
        project_steps.append({"time": elapsed, "generate": sampler.elapsed, "width": sampler.width, "row": row})
        get = lambda key: row.get(key, float("nan"))  # noqa: E731
        print(f"  [{objective}] project step {k + 1}/{n_batches}{' (warm-up)' if k < a.warmup else ''}: "
              f"{elapsed:.2f} s (generate {sampler.elapsed:.2f}), reward {get('reward/mean'):.3f}, "
              f"loss {get('loss/total'):.4f}, grad norm {get('stats/grad_norm'):.4f}", flush=True)

    class Alternate(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            torch.set_num_threads(a.threads)
            self.mark = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step % spg:
                return
            elapsed = time.perf_counter() - self.mark
            b, bl = trainer.bench, trainer.bench_lists
            threads_seen.add(torch.get_num_threads())
            k = len(trl_batches)
            batch = {"time": elapsed, "generate": b["generate"], "score_old": b["gen_and_score"] - b["generate"],
                     "fwd_bwd": b["training_step"] - b["gen_and_score"], "optim_other": elapsed - b["training_step"],
                     "reward": mean_or_none(seen_rewards[-1]) if seen_rewards else None,
                     "loss": mean_or_none(bl["loss"]), "grad_norm": mean_or_none(bl["grad_norm"]),
                     "length": mean_or_none(bl["length"]), "width": mean_or_none(bl["width"])}
            trl_batches.append(batch)
            print(f"  [{objective}] TRL batch {k + 1}/{n_batches}{' (warm-up)' if k < a.warmup else ''}: "
                  f"{elapsed:.2f} s (generate {b['generate']:.2f}), reward {batch['reward']:.3f}, loss "
                  f"{batch['loss']:.4f}, grad norm {batch['grad_norm']:.4f}", flush=True)
            trainer.bench_reset()
            project_step(k)
            self.mark = time.perf_counter()

    trainer.add_callback(Alternate())
    trainer.remove_callback(PrinterCallback)  # the end-of-training metrics line
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    if len(trl_batches) != n_batches or len(project_steps) != n_batches:
        raise RuntimeError(f"{objective}: {len(trl_batches)} TRL batches and {len(project_steps)} project steps, "
                           f"expected {n_batches} each")
    notes = []
    if not getattr(trainer, "bench_prompts_checked", False):
        notes.append("TRL's prompt tokens were not checked")
    elif trainer.bench_prompt_mismatch:
        notes.append(f"{trainer.bench_prompt_mismatch} TRL prompts tokenized differently from the project's")
    if threads_seen != {a.threads}:
        notes.append(f"torch threads seen: {sorted(threads_seen)}")
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)
    res = config_row(objective, method, project_steps[a.warmup:], trl_batches[a.warmup:], rollouts)
    res.update(info, date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), torch=torch.__version__,
               transformers=transformers.__version__, trl=trl.__version__, peft=peft.__version__,
               threads=a.threads, profile=a.profile, seed=a.seed, warmup=a.warmup, steps=a.steps,
               prompts=rl.prompts_per_step, group_size=rl.group_size, rollouts_per_batch=rollouts,
               max_new_tokens=rl.max_new_tokens, minibatches=rl.minibatches, project_sampler=sampler_desc,
               loadavg_start=round(load_start, 2),
               loadavg_end=round(os.getloadavg()[0], 2), note="; ".join(notes))
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--objectives", nargs="+", default=OBJECTIVES, help="project objectives (params.yaml names)")
    p.add_argument("--steps", type=int, default=5, help="measured rollout batches per side and configuration")
    p.add_argument("--warmup", type=int, default=1, help="rollout batches per side before the measured ones")
    p.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    p.add_argument("--quick", action="store_true", help="1 warm-up + 2 measured steps (a smoke run)")
    p.add_argument("--profile", default="tiny")
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sft-dir", type=Path, default=None,
                   help="the SFT model (default runs/<profile>/sft/model; relative paths: to the repository root)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="rl.jsonl and eval.jsonl (default runs/<profile>/data)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of rl_step.csv (appended) and rl_step.md")
    a = p.parse_args(argv)
    if a.quick:
        a.warmup, a.steps = 1, 2
    a.sft_dir = a.sft_dir or Path("runs") / a.profile / "sft" / "model"
    a.data_dir = a.data_dir or Path("runs") / a.profile / "data"
    a.sft_dir, a.data_dir = (x if x.is_absolute() else ROOT / x for x in (a.sft_dir, a.data_dir))
    check_inputs(a.sft_dir, a.data_dir, a.profile)
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("bench_rl_step: trl is not installed here; run it with .venv-trl/bin/python "
                         "(`make trl-venv` builds it) or `make bench-rl-step`")
    from entropy_rl.objectives import load_objective

    for obj in a.objectives:
        load_objective(obj, a.params)  # an unknown name fails now, not after the first configuration

    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renames (gradient_checkpointing, ...)
    info = {**_machine(), "run_id": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")}
    print(f"bench_rl_step {info['run_id']}: objectives {' '.join(a.objectives)}, {a.warmup} warm-up + {a.steps} "
          f"steps each, {a.threads} thread(s); {info['machine']}, {info['cpu']}", flush=True)
    rows = []
    for obj in a.objectives:
        row = measure(obj, a, info)
        rows.append(row)
        print(f"{obj}: project {_f(row['project_median_s'])} s, TRL {_f(row['trl_median_s'])} s per rollout batch, "
              f"ratio {_f(row['ratio'])} (target <= {row['target']:g}: {row['target_met']})", flush=True)
    csv_path, md_path = a.out / "rl_step.csv", a.out / "rl_step.md"
    write_csv(csv_path, rows)
    md_path.write_text(summary(rows, csv_path, a))
    print(f"rows appended to {csv_path}; summary in {md_path}")


if __name__ == "__main__":
    main()
