"""The RL step and loop: sync → rollout → reward → advantage → token stats → objective → update → controllers → log.

Nothing here knows which objective runs, nor which rollout backend samples: the objective is looked up by name and
called with the same signature, the sampler is any :class:`~entropy_rl.rollout.Sampler` (synced with the policy's
adapter before each rollout, asleep during training), and the objective's
controller (if it registered one) updates ``run.state`` after each step. Rollout-level options of the objective's
config (DAPO dynamic sampling, overlong reward shaping) apply to any objective. Each optimizer update may
accumulate gradients over ``rl.micro_batches`` passes.
A run checkpoints atomically (adapter, optimizer, controller state, log rows, step) every ``checkpoint_every``
steps and a restarted run resumes from the last checkpoint; every step reseeds from ``(seed, step)``, so a resumed
run reproduces an uninterrupted one exactly.
"""
from __future__ import annotations

import dataclasses
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch

from peft import get_peft_model_state_dict, set_peft_model_state_dict

from .advantages import get_advantage, mixed_groups, overlong_penalty, solved_fraction
from .config import RLConfig, config_hash
from .evaluate import evaluate
from .io import atomic_path
from .objectives import (RLBatch, StatScope, agg_denominator, get_objective, init_controller_state,
                         update_controller_state)
from .policy import frozen_stats, policy_stats
from .progress import progress
from .prompts import build_prompt
from .rollout import HFRollout, Rollouts, tis_weights
from .token_stats import TokenStats

LOOP_METRICS = {
    "step": "RL step (one rollout batch and its updates), from 1",
    "reward/mean": "mean verifiable reward of the step's rollouts",
    "stats/entropy_rollout": "full-vocabulary token entropy of the policy that sampled the batch (before its updates)",
    "stats/kl_ref": "k3 KL of the sampling policy to the reference (the frozen base), token mean",
    "stats/response_length": "mean response length in tokens (including EOS)",
    "stats/truncation_rate": "fraction of responses that hit `max_new_tokens` without EOS",
    "stats/unique_responses": "distinct responses / all responses in the batch",
    "stats/groups_all_correct": "groups whose G rewards are all 1 (zero advantage)",
    "stats/groups_all_wrong": "groups whose G rewards are all 0 (zero advantage)",
    "stats/grad_norm": "gradient norm before clipping, mean over updates",
    "stats/filtered_groups": "(dynamic sampling) groups dropped because their rewards all agreed",
    "stats/gen_batches": "generation batches needed to fill the step (1 without dynamic sampling)",
    "stats/overlong_penalty": "mean DAPO soft overlong penalty added to the rewards (0 when off)",
    "stats/tis_weight_mean": "mean truncated importance-sampling weight min(π_old/π_rollout, C) over response tokens "
                             "(only when the mismatch correction is on: `rl.rollout.tis`, a backend that reports log-probs)",
    "stats/tis_capped_frac": "share of response tokens whose ratio π_old/π_rollout exceeded the cap C (`rl.rollout.tis_cap`)",
    "stats/kl_rollout": "k3 estimate of KL(π_rollout ‖ π_old) over response tokens: how far the sampler's distribution "
                        "is from the trainer's",
    "heldout/pass@1": "in-training evaluation on `rl.eval_prompts` held-out prompts, 4 samples each: pass@1",
    "heldout/entropy": "in-training evaluation: token entropy of the held-out samples",
    "heldout/length": "in-training evaluation: mean length of the held-out samples",
}
"""the glossary of what the loop itself logs (docs/metrics.md is generated from this and the objectives' registrations)"""


def step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def gen_seed(seed: int, step: int, k: int) -> int:
    """Sampling seed of generation batch ``k`` of a step (k = 0: the step seed, as without dynamic sampling)."""
    return step_seed(seed, step) + k * 1_000_000_007_000


@dataclasses.dataclass
class RLRun:
    """Everything one RL run needs; built by the notebook from the validated config."""

    policy: torch.nn.Module
    tokenizer: object
    objective: str
    obj_cfg: object
    rl: RLConfig
    train_rows: list[dict]
    eval_rows: list[dict]
    reward_fn: Callable[[str, str], float]
    seed: int = 0
    state: dict = dataclasses.field(default_factory=dict)
    """controller state (read by objectives, updated by controllers after each step; part of the checkpoint)"""
    sampler: object = None
    """the rollout backend (entropy_rl.rollout.make_sampler); None: Hugging Face `generate` on the policy"""

    def __post_init__(self):
        self.loss_fn = get_objective(self.objective)
        self.adv_fn = get_advantage(self.obj_cfg.advantage)
        if self.sampler is None:
            self.sampler = HFRollout(self.policy, self.tokenizer, self.rl.max_new_tokens, self.rl.temperature)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, self.rl)
        self.version = 0  # optimizer updates so far: names the policy's state for the sampler's sync
        if not self.state:
            self.state.update(init_controller_state(self.objective, self.obj_cfg))


def make_optimizer(params, rl: RLConfig) -> torch.optim.Optimizer:
    """AdamW (torch), or bitsandbytes' paged 8-bit AdamW (8-bit moments in paged memory that can spill to the CPU
    under memory pressure; `rl.optimizer: paged_adamw_8bit`, a GPU is needed)."""
    if rl.optimizer == "paged_adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=rl.lr, weight_decay=0.0)
    return torch.optim.AdamW(params, lr=rl.lr, weight_decay=0.0)


# ----------------------------------------------------------------------------------------------------------
# Rollout and reward (with DAPO's dynamic sampling and overlong shaping when the objective switches them on)
# ----------------------------------------------------------------------------------------------------------
def concat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """Stack rollout batches; prompts are left-padded to the widest (position ids follow the attention mask, so
    extra left padding does not change the model's outputs)."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.prompt_ids.shape[1] for p in parts)
    lpad = lambda x, v: torch.nn.functional.pad(x, (width - x.shape[1], 0), value=v)  # noqa: E731
    return Rollouts(
        prompt_ids=torch.cat([lpad(p.prompt_ids, pad_id) for p in parts]),
        prompt_mask=torch.cat([lpad(p.prompt_mask, 0) for p in parts]),
        response_ids=torch.cat([p.response_ids for p in parts]),
        response_mask=torch.cat([p.response_mask for p in parts]),
        texts=[t for p in parts for t in p.texts],
        truncated=torch.cat([p.truncated for p in parts]),
    )


def sample_groups(run: RLRun, step: int) -> tuple[Rollouts, torch.Tensor, dict[str, float]]:
    """``prompts_per_step`` groups of G responses, their verifier rewards ``[B]`` and the step's sampling stats.

    With ``dynamic_sampling`` (DAPO; verl ``filter_groups``) groups whose rewards all agree are dropped and new
    batches of ``prompts_per_step`` unused prompts are generated until enough groups qualify (the first ones are
    kept); more than ``max_gen_batches`` batches (<= 0: unlimited) is an error, as in verl.
    """
    rl, cfg, G = run.rl, run.obj_cfg, run.rl.group_size
    rng = random.Random(step_seed(run.seed, step))
    pool = list(range(len(run.train_rows)))
    parts, kept_rewards, all_rewards = [], [], []
    n_kept, k = 0, 0
    while n_kept < rl.prompts_per_step:
        if k and 0 < cfg.max_gen_batches <= k:
            raise RuntimeError(
                f"step {step}: dynamic sampling found {n_kept} of {rl.prompts_per_step} groups with mixed rewards in "
                f"{k} generation batches (max_gen_batches = {cfg.max_gen_batches}); raise it or check the data")
        if len(pool) < rl.prompts_per_step:
            raise RuntimeError(f"step {step}: dynamic sampling ran out of unused training prompts")
        picked = rng.sample(pool, rl.prompts_per_step)
        taken = set(picked)
        pool = [i for i in pool if i not in taken]
        prompts = [run.train_rows[i] for i in picked]
        texts = [build_prompt(p["problem"], run.tokenizer, rl.template) for p in prompts]
        ro = run.sampler.generate(texts, n=G, seed=gen_seed(run.seed, step, k))
        dev = ro.response_mask.device  # the policy's: every per-response tensor of the step lives there
        rewards = torch.tensor([run.reward_fn(t, p["answer"]) for t, p in zip(ro.texts, (p for p in prompts for _ in range(G)))],
                               device=dev)
        all_rewards.append(rewards)
        keep = mixed_groups(rewards, G) if cfg.dynamic_sampling else torch.ones(len(prompts), dtype=torch.bool, device=dev)
        keep_idx = keep.nonzero().squeeze(-1)[: rl.prompts_per_step - n_kept]  # truncate to the batch size
        rows = (keep_idx[:, None] * G + torch.arange(G, device=dev)).reshape(-1)
        parts.append(ro.select(rows))
        kept_rewards.append(rewards[rows])
        n_kept += keep_idx.numel()
        k += 1
    generated = torch.cat(all_rewards)
    info = {"reward/mean": generated.mean().item(), "stats/gen_batches": float(k),
            "stats/filtered_groups": 1.0 - mixed_groups(generated, G).float().mean().item() if cfg.dynamic_sampling else 0.0}
    info.update(solved_fraction(generated, G))
    return concat_rollouts(parts, run.tokenizer.pad_token_id), torch.cat(kept_rewards), info


def shaped_rewards(run: RLRun, ro: Rollouts, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards plus DAPO's soft overlong penalty (zero unless ``overlong_buffer > 0``), and the penalty ``[B]``."""
    cfg, l_max = run.obj_cfg, run.rl.max_new_tokens
    buffer = max(round(cfg.overlong_buffer * l_max), 1) if cfg.overlong_buffer > 0 else 0
    penalty = overlong_penalty(ro.lengths, l_max, buffer, cfg.overlong_penalty)
    return rewards.float() + penalty, penalty


# ----------------------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------------------
def rl_step(run: RLRun, step: int) -> dict[str, float]:
    """One rollout batch and its ``minibatches x epochs`` updates, then the controller update; returns the log row."""
    rl, G = run.rl, run.rl.group_size
    run.state.update(step=step, total_steps=rl.steps)  # for schedules; controllers update the rest after the step

    # ---- Sync: the sampler gets the current adapter (vLLM: a new LoRARequest; hf: nothing to do) ----
    run.sampler.sync(run.policy, run.version)
    # ---- Rollout + Reward: G samples per prompt from the current policy (= pi_old), scored by the verifier ----
    ro, rewards, info = sample_groups(run, step)
    run.sampler.sleep()  # a colocated engine frees its GPU memory for the training phase
    scores, penalty = shaped_rewards(run, ro, rewards)
    # ---- Advantage: group-relative, broadcast over the response tokens ----
    adv = run.adv_fn(scores, G)[:, None].expand_as(ro.response_mask).float() * ro.response_mask
    # ---- Old (and reference) log-probs: no gradient, same forward path as the update ----
    fb = rl.forward_batch_size
    old = logprob_precision(frozen_stats(run.policy, ro, rl.temperature, batch_size=fb), run.obj_cfg.logprob_dtype)
    ref = logprob_precision(frozen_stats(run.policy, ro, rl.temperature, reference=True, batch_size=fb),
                            run.obj_cfg.logprob_dtype)
    # ---- Mismatch correction: the sampler's own log-probs against the trainer's (truncated importance sampling) ----
    is_w = None
    if use_tis(rl.rollout.tis, ro):
        is_w, tis_info = tis_weights(old.logp, ro.rollout_logp, ro.response_mask, rl.rollout.tis_cap)
        info.update(tis_info)

    # ---- Loss & update: minibatches over the rollout batch ----
    sums: dict[str, float] = defaultdict(float)
    n_updates, grad_norms = 0, []
    gen = torch.Generator().manual_seed(step_seed(run.seed, step))
    B = rewards.numel()
    # the whole rollout batch (complete groups), for objectives that pool statistics over a group (ERPO)
    rollout = RLBatch(old_logp=old.logp, advantages=adv, mask=ro.response_mask, ref_logp=ref.logp, rewards=scores,
                      l_max=rl.max_new_tokens, group_ids=torch.arange(B, device=adv.device) // G,
                      old_entropy=old.entropy)
    for _ in range(rl.epochs):
        perm = torch.randperm(B, generator=gen)
        for idx in perm.view(rl.minibatches, -1):
            batch = RLBatch(old_logp=old.logp[idx], advantages=adv[idx], mask=ro.response_mask[idx],
                            ref_logp=ref.logp[idx], rewards=scores[idx], l_max=rl.max_new_tokens,
                            seed=step_seed(run.seed, step) * 4099 + n_updates, group_ids=rollout.group_ids[idx],
                            old_entropy=old.entropy[idx], rollout=rollout, rollout_rows=idx,
                            is_weights=None if is_w is None else is_w[idx])
            metrics, grad_norm = update(run, ro.select(idx), batch, step)
            grad_norms.append(grad_norm)
            for key, v in metrics.items():
                sums[key] += v
            n_updates += 1

    # ---- Log: step-level values are means over all updates of the step ----
    row = {"step": step + 1}
    row.update({k: v / n_updates for k, v in sorted(sums.items())})
    mask = ro.response_mask.float()
    row.update(info)
    row.update({
        "stats/entropy_rollout": ((old.entropy * mask).sum() / mask.sum()).item(),
        "stats/kl_ref": _k3_mean(old.logp, ref.logp, mask),
        "stats/response_length": ro.lengths.float().mean().item(),
        "stats/truncation_rate": ro.truncated.float().mean().item(),
        "stats/unique_responses": len(set(ro.texts)) / len(ro.texts),
        "stats/overlong_penalty": penalty.mean().item(),
        "stats/grad_norm": sum(grad_norms) / len(grad_norms),
    })
    # ---- Controllers: new values from this step's row, applied from the next step ----
    new_state = update_controller_state(run.objective, run.state, run.obj_cfg, row)
    run.state.clear()
    run.state.update(new_state)
    return row


def update(run: RLRun, mb: Rollouts, batch: RLBatch, step: int) -> tuple[dict[str, float], float]:
    """One optimizer update on a mini-batch, accumulating gradients over ``rl.micro_batches`` passes.

    Each pass's loss is weighted by its share of the aggregation's denominator, so the accumulated gradient equals
    the mini-batch's (global counts). For ``stat_scope: minibatch`` objectives a no-grad pass of the current policy
    over the mini-batch gives each micro-batch the mini-batch's statistics (``RLBatch.scope``).
    Returns the metrics (weighted like the loss) and the gradient norm before clipping.
    """
    rl, cfg, n_micro = run.rl, run.obj_cfg, run.rl.micro_batches
    params = [p for p in run.policy.parameters() if p.requires_grad]
    run.optimizer.zero_grad(set_to_none=True)
    metrics: dict[str, float] = defaultdict(float)
    if n_micro == 1:
        passes = [(batch, mb, 1.0)]
    else:
        scope = None
        if cfg.needs().stat_scope == "minibatch":
            cur = logprob_precision(frozen_stats(run.policy, mb, rl.temperature, batch_size=rl.forward_batch_size),
                                    cfg.logprob_dtype)  # params fixed
            scope = StatScope(logp=cur.logp, entropy=cur.entropy, old_logp=batch.old_logp,
                              advantages=batch.advantages, mask=batch.mask)
        total = max(agg_denominator(batch.mask, cfg.agg), 1.0)
        passes = []
        for j, rows in enumerate(torch.arange(batch.mask.shape[0]).view(n_micro, -1)):
            micro = batch.select(rows, scope)
            if scope is None:
                micro.seed = batch.seed * n_micro + j  # its own random draws per micro-batch
            passes.append((micro, mb.select(rows), agg_denominator(micro.mask, cfg.agg) / total))
    for micro, ro_micro, weight in passes:
        stats = policy_stats(run.policy, ro_micro, rl.temperature, top_p=cfg.needs().top_p)
        stats = logprob_precision(stats, cfg.logprob_dtype)
        loss, m = run.loss_fn(micro, stats, cfg, run.state)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: non-finite loss {loss.item()} ({run.objective})")
        (loss * weight if weight != 1.0 else loss).backward()
        for k, v in m.items():
            metrics[k] += weight * float(v)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, rl.grad_clip))
    run.optimizer.step()
    run.version += 1
    return dict(metrics), grad_norm


def use_tis(mode: str, ro: Rollouts) -> bool:
    """Whether the step applies the mismatch correction (``rl.rollout.tis``: on, off, or auto = when the sampler
    reports its log-probs)."""
    if mode == "on" and ro.rollout_logp is None:
        raise ValueError("rl.rollout.tis: 'on' needs the sampler's log-probs, and this backend reports none "
                         "(hf samples from the trained module itself); use 'auto' or 'off', or the vllm backend")
    return mode == "on" or (mode == "auto" and ro.rollout_logp is not None)


def logprob_precision(stats: TokenStats, dtype: str) -> TokenStats:
    """``stats`` with its log-probs rounded to ``dtype`` and back (``logprob_dtype``: the REPO/ADAPO precision
    experiment, docs/methods.md §2 Theorem 3, §9); gradients pass the rounding. ``float32``: ``stats`` unchanged."""
    if dtype == "float32":
        return stats
    return dataclasses.replace(stats, logp=stats.logp.to(getattr(torch, dtype)).to(stats.logp.dtype))


def _k3_mean(logp, ref_logp, mask) -> float:
    d = (ref_logp - logp).clamp(-20, 20)
    return (((d.exp() - d - 1) * mask).sum() / mask.sum().clamp(min=1)).item()


def heldout_eval(run: RLRun, step: int, n: int = 4) -> dict[str, float]:
    """Held-out pass@1 (n samples per prompt at the RL temperature, from the run's sampler) for the in-training
    curve."""
    run.sampler.sync(run.policy, run.version)
    _, summary = evaluate(
        run.policy, run.tokenizer, run.eval_rows[: run.rl.eval_prompts], run.reward_fn, n=n,
        temperature=run.rl.temperature, max_new_tokens=run.rl.max_new_tokens, seed=10_000 + step,
        show_progress=False, sampler=run.sampler, template=run.rl.template, stats_batch_size=run.rl.forward_batch_size,
    )
    run.sampler.sleep()
    return {"step": step, "heldout/pass@1": summary["pass@1"], "heldout/entropy": summary["mean_token_entropy"],
            "heldout/length": summary["mean_length"]}


# ----------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------
def _resume_key(run: RLRun) -> str:
    # extending a run's steps may resume it, unless a schedule of the objective depends on the total
    rl = run.rl if run.obj_cfg.uses_total_steps else dataclasses.replace(run.rl, steps=1)
    return config_hash({"rl": dataclasses.asdict(rl), "obj": dataclasses.asdict(run.obj_cfg),
                        "objective": run.objective, "seed": run.seed})


def save_checkpoint(path: str | Path, run: RLRun, step: int, log: list[dict], evals: list[dict]) -> None:
    payload = {
        "step": step, "key": _resume_key(run), "log": log, "evals": evals, "state": run.state,
        "adapter": get_peft_model_state_dict(run.policy), "optimizer": run.optimizer.state_dict(),
        "version": run.version,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, run: RLRun) -> tuple[int, list[dict], list[dict]] | None:
    """Restore ``run`` from ``path``; None when there is none or it belongs to other settings."""
    path = Path(path)
    if not path.exists():
        return None
    payload = torch.load(path, weights_only=False)
    if payload.get("key") != _resume_key(run):
        print(f"[resume] {path} was made with other settings: starting afresh")
        return None
    set_peft_model_state_dict(run.policy, payload["adapter"])
    run.optimizer.load_state_dict(payload["optimizer"])
    # the restored adapter is a new policy state for the sampler: it must not count as the fresh adapter's version 0
    run.version = payload.get("version", payload["step"] * run.rl.minibatches * run.rl.epochs)
    run.state.clear()
    run.state.update(payload["state"])
    print(f"[resume] continuing from step {payload['step']} ({path})")
    return payload["step"], payload["log"], payload["evals"]


def train_rl(run: RLRun, checkpoint: str | Path | None = None) -> tuple[list[dict], list[dict]]:
    """Run ``run.rl.steps`` steps (resuming from ``checkpoint`` when it matches); returns (log, evals)."""
    start, log, evals = 0, [], []
    restored = load_checkpoint(checkpoint, run) if checkpoint else None
    if restored:
        start, log, evals = restored
    run.policy.train()
    if start == 0:
        evals.append(heldout_eval(run, 0))
    bar = progress(range(start, run.rl.steps), desc=f"RL {run.objective}", initial=start, total=run.rl.steps)
    for step in bar:
        row = rl_step(run, step)
        if not all(math.isfinite(v) for v in row.values()):
            raise FloatingPointError(f"step {step + 1}: non-finite metrics {row}")
        log.append(row)
        done = step + 1
        if done % run.rl.eval_every == 0 or done == run.rl.steps:
            evals.append(heldout_eval(run, done))
        bar.set_postfix(reward=f"{row['reward/mean']:.2f}", H=f"{row['stats/entropy']:.3f}")
        if checkpoint and (done % run.rl.checkpoint_every == 0 or done == run.rl.steps):
            save_checkpoint(checkpoint, run, done, log, evals)
    return log, evals
