"""The RL step and loop: sync → rollout → reward → advantage → token stats → objective → update → controllers → log.

Nothing here knows which objective runs, nor which rollout backend samples: the objective is looked up by name and
called with the same signature, the sampler is any :class:`~entropy_rl.rollout.Sampler` (synced with the policy's
adapter before each rollout, asleep during training), and the objective's
controller (if it registered one) updates ``run.state`` after each step. Rollout-level options of the objective's
config (DAPO dynamic sampling, overlong reward shaping) apply to any objective. Each optimizer update may
accumulate gradients over ``rl.micro_batches`` passes.
A run checkpoints atomically (adapter, optimizer, controller state, log rows, step) every ``checkpoint_every``
steps and a restarted run resumes from the last checkpoint; every step reseeds from ``(seed, step)``, so a resumed
run reproduces an uninterrupted one exactly. A checkpoint is resumed only when everything that shapes the result
is the same (:func:`run_identity`: the model section, the starting policy's and the data's content, the rl and
objective settings, the seed and the code), and a run that meets a non-finite loss, gradient norm, controller
value or metric stops before applying it, naming it (or, with ``rl.nonfinite: skip``, drops that update).
"""
from __future__ import annotations

import dataclasses
import io
import math
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import peft
import torch
import transformers

from peft import get_peft_model_state_dict, set_peft_model_state_dict

from .advantages import get_advantage, mixed_groups, overlong_penalty, solved_fraction
from .config import ConfigError, Profile, RLConfig, config_hash
from .evaluate import evaluate
from .io import content_hash, write_bytes
from .objectives import (RLBatch, StatScope, agg_denominator, get_objective, init_controller_state,
                         update_controller_state)
from .policy import frozen_stats, policy_stats
from .progress import PhaseClock, notice, progress
from .prompts import build_prompt
from .rewards import random_rewards, score_batch
from .rollout import HFRollout, Rollouts, tis_weights
from .token_stats import TokenStats

LOOP_METRICS = {
    "step": "RL step (one rollout batch and its updates), from 1",
    "reward/mean": "mean reward of the step's rollouts (the verifier's; with `rl.reward: random`, the coin flips')",
    "reward/verifier_mean": "(`rl.reward: random`) mean verifier score of the step's rollouts, which the random reward "
                            "ignores",
    "stats/entropy_rollout": "full-vocabulary token entropy of the policy that sampled the batch (before its updates)",
    "stats/kl_ref": "k3 KL of the sampling policy to the reference (the frozen base), token mean; logged at the "
                    "held-out evaluation steps only, unless the objective reads reference log-probs (then every step)",
    "stats/response_length": "mean response length in tokens (including EOS)",
    "stats/truncation_rate": "fraction of responses that hit `max_new_tokens` without EOS",
    "stats/unique_responses": "distinct responses / all responses in the batch",
    "stats/groups_all_correct": "groups whose G rewards are all 1 (zero advantage)",
    "stats/groups_all_wrong": "groups whose G rewards are all 0 (zero advantage)",
    "stats/grad_norm": "gradient norm before clipping, mean over the applied updates",
    "stats/skipped_updates": "(`rl.nonfinite: skip`) updates of the step dropped because their loss or gradient norm "
                             "was not finite",
    "stats/filtered_groups": "(dynamic sampling) groups dropped because their rewards all agreed",
    "stats/gen_batches": "generation batches needed to fill the step (1 without dynamic sampling)",
    "stats/overlong_penalty": "mean DAPO soft overlong penalty added to the rewards (0 when off)",
    "stats/tis_weight_mean": "mean truncated importance-sampling weight min(π_old/π_rollout, C) over response tokens "
                             "(only when the mismatch correction is on: `rl.rollout.tis`, a backend that reports log-probs)",
    "stats/tis_capped_frac": "share of response tokens whose ratio π_old/π_rollout exceeded the cap C (`rl.rollout.tis_cap`)",
    "stats/kl_rollout": "k3 estimate of KL(π_rollout ‖ π_old) over response tokens: how far the sampler's distribution "
                        "is from the trainer's",
    "timing_s/rollout": "seconds of the step spent sampling (the sampler's sync and generation, every generation "
                        "batch of dynamic sampling included)",
    "timing_s/reward": "seconds spent scoring the responses (the verifier)",
    "timing_s/old": "seconds spent on pi_old's log-probs and entropies (0 when the sampler reported them: "
                    "`rl.old_stats`)",
    "timing_s/ref": "seconds of the no-grad reference pass (only at steps that compute it: see stats/kl_ref)",
    "timing_s/update": "seconds of the optimizer updates (forward, loss, backward, clipping, step)",
    "timing_s/controllers": "seconds of the objective's controller update after the step",
    "timing_s/step": "seconds of the whole step, from sync to the controller update (the phases plus the rest)",
    "timing_s/heldout": "(held-out rows) seconds of the in-training evaluation",
    "heldout/pass@1": "in-training evaluation on `rl.eval_prompts` held-out prompts, 4 samples each: pass@1",
    "heldout/entropy": "in-training evaluation: token entropy of the held-out samples",
    "heldout/length": "in-training evaluation: mean length of the held-out samples",
}
"""the glossary of what the loop itself logs (docs/metrics.md is generated from this and the objectives' registrations)"""


TIMING_PREFIX = "timing_s/"


def without_timings(rows: list[dict]) -> list[dict]:
    """Log rows without their ``timing_s/*`` keys: wall-clock seconds differ from run to run, everything else in a
    row is reproducible (a resumed run equals an uninterrupted one)."""
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIX)} for r in rows]


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
    identity: dict = dataclasses.field(default_factory=dict)
    """what else shapes the result and is part of the resume key: :func:`start_identity` (model section, starting
    policy, data)"""

    def __post_init__(self):
        if len(self.train_rows) < self.rl.prompts_per_step:
            raise ConfigError(f"rl.prompts_per_step: {self.rl.prompts_per_step} prompts per step, but the training "
                              f"set has {len(self.train_rows)}; lower it or raise data.n_rl")
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
    extra left padding does not change the model's outputs); the sampler's log-probs and statistics come along."""
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
        rollout_logp=None if any(p.rollout_logp is None for p in parts) else torch.cat([p.rollout_logp for p in parts]),
        sampler_stats=None if any(p.sampler_stats is None for p in parts) else TokenStats.cat(
            [p.sampler_stats for p in parts]),
    )


def sample_groups(run: RLRun, step: int, clock: PhaseClock | None = None) -> tuple[Rollouts, torch.Tensor, dict[str, float]]:
    """``prompts_per_step`` groups of G responses, their verifier rewards ``[B]`` and the step's sampling stats.

    With ``dynamic_sampling`` (DAPO; verl ``filter_groups``) groups whose rewards all agree are dropped and new
    batches of ``prompts_per_step`` unused prompts are generated until enough groups qualify (the first ones are
    kept); more than ``max_gen_batches`` batches (<= 0: unlimited) is an error, as in verl.
    """
    rl, cfg, G = run.rl, run.obj_cfg, run.rl.group_size
    clock = clock or PhaseClock()
    rng = random.Random(step_seed(run.seed, step))
    pool = list(range(len(run.train_rows)))
    parts, kept_rewards, all_rewards, verifier = [], [], [], []
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
        with clock("rollout"):
            ro = run.sampler.generate(texts, n=G, seed=gen_seed(run.seed, step, k))
        dev = ro.response_mask.device  # the policy's: every per-response tensor of the step lives there
        with clock("reward"):  # the whole batch at once: a pooled verifier (task `math`) spreads it over its workers
            rewards = torch.tensor(score_batch(run.reward_fn, ro.texts,
                                               [p["answer"] for p in prompts for _ in range(G)]), device=dev)
        if rl.reward == "random":  # the probe: the verifier's scores are only logged; the reward is a coin flip
            verifier.append(rewards)
            rewards = torch.tensor(random_rewards(rewards.numel(), f"random-reward/{run.seed}/{step}/{k}",
                                                  rl.random_reward_p), device=dev)
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
    if verifier:
        info["reward/verifier_mean"] = torch.cat(verifier).mean().item()
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
    started = time.perf_counter()
    rl, G = run.rl, run.rl.group_size
    run.state.update(step=step, total_steps=rl.steps)  # for schedules; controllers update the rest after the step

    clock = PhaseClock(run.policy.device if hasattr(run.policy, "device") else None)
    # ---- Sync: the sampler gets the current adapter (vLLM: a new LoRARequest; hf: nothing to do) ----
    with clock("rollout"):
        run.sampler.sync(run.policy, run.version)
    # ---- Rollout + Reward: G samples per prompt from the current policy (= pi_old), scored by the verifier ----
    ro, rewards, info = sample_groups(run, step, clock)
    run.sampler.sleep()  # a colocated engine frees its GPU memory for the training phase
    scores, penalty = shaped_rewards(run, ro, rewards)
    # ---- Advantage: group-relative, broadcast over the response tokens ----
    adv = run.adv_fn(scores, G)[:, None].expand_as(ro.response_mask).float() * ro.response_mask
    # ---- Old log-probs: the sampler's own when it is the trained module, else a no-grad pass (the update's
    # forward path). Reference log-probs: for an objective that reads them, or the KL logged at evaluation steps ----
    fb = rl.forward_batch_size
    with clock("old"):
        old = ro.sampler_stats if sampler_is_old(run, ro) else frozen_stats(run.policy, ro, rl.temperature,
                                                                             batch_size=fb, nucleus=False)
        old = logprob_precision(old, run.obj_cfg.logprob_dtype)
    ref = None
    if run.obj_cfg.needs().ref_logp or is_eval_step(rl, step + 1):
        with clock("ref"):
            ref = logprob_precision(frozen_stats(run.policy, ro, rl.temperature, reference=True, batch_size=fb,
                                                 nucleus=False), run.obj_cfg.logprob_dtype)
    ref_logp = ref.logp if ref is not None and run.obj_cfg.needs().ref_logp else None  # what the objective sees
    # ---- Mismatch correction: the sampler's own log-probs against the trainer's (truncated importance sampling) ----
    is_w = None
    if use_tis(rl.rollout.tis, ro):
        is_w, tis_info = tis_weights(old.logp, ro.rollout_logp, ro.response_mask, rl.rollout.tis_cap)
        info.update(tis_info)

    # ---- Loss & update: minibatches over the rollout batch ----
    sums: dict[str, float] = defaultdict(float)
    n_updates, grad_norms, skipped = 0, [], 0
    total_updates = rl.epochs * rl.minibatches
    gen = torch.Generator().manual_seed(step_seed(run.seed, step))
    B = rewards.numel()
    # the whole rollout batch (complete groups), for objectives that pool statistics over a group (ERPO)
    rollout = RLBatch(old_logp=old.logp, advantages=adv, mask=ro.response_mask, ref_logp=ref_logp, rewards=scores,
                      l_max=rl.max_new_tokens, group_ids=torch.arange(B, device=adv.device) // G,
                      old_entropy=old.entropy)
    for _ in range(rl.epochs):
        perm = torch.randperm(B, generator=gen)
        for idx in perm.view(rl.minibatches, -1):
            batch = RLBatch(old_logp=old.logp[idx], advantages=adv[idx], mask=ro.response_mask[idx],
                            ref_logp=None if ref_logp is None else ref_logp[idx], rewards=scores[idx],
                            l_max=rl.max_new_tokens,
                            seed=step_seed(run.seed, step) * 4099 + n_updates, group_ids=rollout.group_ids[idx],
                            old_entropy=old.entropy[idx], rollout=rollout, rollout_rows=idx,
                            is_weights=None if is_w is None else is_w[idx])
            where = f"step {step + 1}, update {n_updates + skipped + 1} of {total_updates}"
            with clock("update"):
                out = update(run, ro.select(idx), batch, where)
            if out is None:  # rl.nonfinite: skip
                skipped += 1
                continue
            metrics, grad_norm = out
            grad_norms.append(grad_norm)
            for key, v in metrics.items():
                sums[key] += v
            n_updates += 1
    if not n_updates:
        raise NonFiniteError(f"step {step + 1}: all {total_updates} updates had a non-finite loss or gradient norm "
                             f"and were skipped (rl.nonfinite: skip); {_ADVICE}")

    # ---- Log: step-level values are means over the applied updates of the step ----
    row = {"step": step + 1}
    row.update({k: v / n_updates for k, v in sorted(sums.items())})
    mask = ro.response_mask.float()
    row.update(info)
    row.update({
        "stats/entropy_rollout": ((old.entropy * mask).sum() / mask.sum()).item(),
        "stats/response_length": ro.lengths.float().mean().item(),
        "stats/truncation_rate": ro.truncated.float().mean().item(),
        "stats/unique_responses": len(set(ro.texts)) / len(ro.texts),
        "stats/overlong_penalty": penalty.mean().item(),
        "stats/grad_norm": sum(grad_norms) / len(grad_norms),
    })
    if ref is not None:
        row["stats/kl_ref"] = _k3_mean(old.logp, ref.logp, mask)
    if rl.nonfinite == "skip":
        row["stats/skipped_updates"] = float(skipped)
        if skipped:
            notice(f"[nonfinite] step {step + 1}: skipped {skipped} of {total_updates} updates (non-finite loss or "
                   "gradient norm)")
    bad = first_nonfinite(row)
    if bad:
        raise NonFiniteError(f"step {step + 1}: the logged metric {bad[0]} is {bad[1]}; the last checkpoint is kept; "
                             f"{_ADVICE}")
    # ---- Controllers: new values from this step's row, applied from the next step ----
    with clock("controllers"):
        new_state = update_controller_state(run.objective, run.state, run.obj_cfg, row)
    bad = first_nonfinite(new_state)
    if bad:
        raise NonFiniteError(f"step {step + 1}: the controller of {run.objective} set {bad[0]} to {bad[1]}; the "
                             f"last checkpoint is kept; {_ADVICE}")
    run.state.clear()
    run.state.update(new_state)
    row.update(clock.row())
    row["timing_s/step"] = time.perf_counter() - started
    return row


class NonFiniteError(FloatingPointError):
    """A non-finite loss, gradient norm, controller value or metric; the message names the first one and its step
    (1-based, as in the log)."""


_ADVICE = ("lower rl.lr, check the objective's coefficients, or set rl.nonfinite: skip to drop such updates as "
           "verl does")


def first_nonfinite(values: dict) -> tuple[str, float] | None:
    """The first ``(key, value)`` of ``values`` whose number is NaN or infinite (non-numbers are skipped)."""
    for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
            return k, v
    return None


def _nonfinite_tensor(name: str, t: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[str, float] | None:
    vals = t.detach()[mask.bool()] if mask is not None else t.detach().reshape(-1)
    bad = vals[~torch.isfinite(vals)]
    return (name, float(bad[0])) if bad.numel() else None


def update(run: RLRun, mb: Rollouts, batch: RLBatch, where: str = "") -> tuple[dict[str, float], float] | None:
    """One optimizer update on a mini-batch, accumulating gradients over ``rl.micro_batches`` passes.

    Each pass's loss is weighted by its share of the aggregation's denominator, so the accumulated gradient equals
    the mini-batch's (global counts). For ``stat_scope: minibatch`` objectives a no-grad pass of the current policy
    over the mini-batch gives each micro-batch the mini-batch's statistics (``RLBatch.scope``).
    Returns the metrics (weighted like the loss) and the gradient norm before clipping. A non-finite token
    statistic, loss, metric or gradient norm applies no optimizer step: with ``rl.nonfinite: stop`` it raises
    :class:`NonFiniteError` naming the first such quantity (``where``: its step and update), with ``skip`` the
    gradients are dropped and None is returned.
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
            cur = logprob_precision(frozen_stats(run.policy, mb, rl.temperature, batch_size=rl.forward_batch_size,
                                                 nucleus=False), cfg.logprob_dtype)  # params fixed
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
        stats = policy_stats(run.policy, ro_micro, rl.temperature, top_p=cfg.needs().top_p,
                             nucleus=cfg.needs().nucleus)
        stats = logprob_precision(stats, cfg.logprob_dtype)
        loss, m = run.loss_fn(micro, stats, cfg, run.state)
        bad = (_nonfinite_tensor("the token log-probs", stats.logp, micro.mask)
               or _nonfinite_tensor("the token entropies", stats.entropy, micro.mask)
               or _nonfinite_tensor(f"the loss of {run.objective}", loss)
               or first_nonfinite({f"its metric {k}": float(v) for k, v in m.items()}))
        if bad:
            return _reject(run, where, *bad)
        (loss * weight if weight != 1.0 else loss).backward()
        for k, v in m.items():
            metrics[k] += weight * float(v)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, rl.grad_clip))
    if not math.isfinite(grad_norm):
        return _reject(run, where, "the gradient norm", grad_norm)
    run.optimizer.step()
    run.version += 1
    return dict(metrics), grad_norm


def _reject(run: RLRun, where: str, what: str, value: float) -> None:
    """A non-finite quantity in an update: drop its gradients, then stop (raise) or skip (None)."""
    run.optimizer.zero_grad(set_to_none=True)
    if run.rl.nonfinite == "skip":
        return None
    raise NonFiniteError(f"{where}: {what} is {value}, so this update was not applied and the last checkpoint is "
                         f"kept; {_ADVICE}")


def sampler_is_old(run: RLRun, ro: Rollouts) -> bool:
    """Whether pi_old's statistics are the sampler's own (``rl.old_stats``): ``sampler`` when it reports them,
    ``auto`` when it reports them and the policy's LM head computes in float32 (then they equal a recomputed pass
    to float rounding; in bf16 the decode and the full pass round differently, so ``auto`` recomputes)."""
    mode = run.rl.old_stats
    if mode == "sampler" and ro.sampler_stats is None:
        raise ValueError("rl.old_stats: 'sampler' needs a sampler that reports the sampling policy's statistics "
                         "(the hf backend's lean loop, rl.rollout.hf_loop: lean); use 'auto' or 'recompute'")
    if mode == "recompute" or ro.sampler_stats is None:
        return False
    return mode == "sampler" or compute_dtype(run.policy) == torch.float32


def compute_dtype(model) -> torch.dtype:
    """The dtype the model computes in (``model.compute_dtype``: the weights' dtype, and the 4-bit layers' compute
    dtype)."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    quant = getattr(causal.config, "quantization_config", None)
    dtype = getattr(quant, "bnb_4bit_compute_dtype", None) if quant is not None else None
    if isinstance(quant, dict):
        dtype = quant.get("bnb_4bit_compute_dtype")
    dtype = dtype or causal.lm_head.weight.dtype
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def is_eval_step(rl: RLConfig, done: int) -> bool:
    """Whether the held-out evaluation runs after ``done`` steps (every ``eval_every`` and at the last step)."""
    return done % rl.eval_every == 0 or done == rl.steps


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
    started = time.perf_counter()
    run.sampler.sync(run.policy, run.version)
    _, summary = evaluate(
        run.policy, run.tokenizer, run.eval_rows[: run.rl.eval_prompts], run.reward_fn, n=n,
        temperature=run.rl.temperature, max_new_tokens=run.rl.max_new_tokens, seed=10_000 + step,
        show_progress=False, sampler=run.sampler, template=run.rl.template, stats_batch_size=run.rl.forward_batch_size,
    )
    run.sampler.sleep()
    return {"step": step, "heldout/pass@1": summary["pass@1"], "heldout/entropy": summary["mean_token_entropy"],
            "heldout/length": summary["mean_length"], "timing_s/heldout": time.perf_counter() - started}


# ----------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------
MEMORY_ONLY = {"rl": ("forward_batch_size", "checkpoint_every"),
               "rl.rollout": ("gpu_memory_utilization", "sleep_mode"),
               "model": ("gradient_checkpointing",)}
"""settings that set memory or bookkeeping, not results (up to float rounding): a checkpoint made with other values
of these is resumed"""
_PACKAGE = Path(__file__).resolve().parent


def start_identity(profile: Profile, sft_dir: str | Path, data_files: list[str | Path]) -> dict:
    """The part of a run's identity that the loop cannot see: the model section (without memory-only settings), the
    task, and the content of the starting policy and of the data files."""
    model = {k: v for k, v in dataclasses.asdict(profile.model).items() if k not in MEMORY_ONLY["model"]}
    return {"model": model, "task": profile.data.task, "sft_start": content_hash(sft_dir),
            "data": content_hash(*data_files)}


def code_version() -> dict:
    """The package's source (every ``.py`` file) and the libraries that compute the result."""
    return {"package": content_hash(_PACKAGE, pattern="*.py"), "torch": str(torch.__version__),
            "transformers": str(transformers.__version__), "peft": str(peft.__version__)}


def run_identity(run: RLRun) -> dict:
    """Everything that determines the run's result, and nothing that does not (``MEMORY_ONLY``): a checkpoint is
    resumed only when its identity equals this. Extending a run's steps may resume it, unless a schedule of the
    objective depends on the total."""
    rl = dataclasses.asdict(run.rl if run.obj_cfg.uses_total_steps else dataclasses.replace(run.rl, steps=1))
    for k in MEMORY_ONLY["rl"]:
        rl.pop(k)
    for k in MEMORY_ONLY["rl.rollout"]:
        rl["rollout"].pop(k)
    return {"rl": rl, "objective": run.objective, "objective_cfg": dataclasses.asdict(run.obj_cfg), "seed": run.seed,
            **run.identity, "code": code_version()}


def _resume_key(run: RLRun) -> str:
    return config_hash(run_identity(run))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def identity_changes(old: dict, new: dict, limit: int = 6) -> list[str]:
    """What differs between two run identities, one ``key: old -> new`` line each (at most ``limit``)."""
    a, b = _flat(old), _flat(new)
    keys = sorted(set(a) | set(b), key=lambda k: (k.startswith("code."), k))
    lines = [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in keys if a.get(k) != b.get(k)]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def save_checkpoint(path: str | Path, run: RLRun, step: int, log: list[dict], evals: list[dict]) -> None:
    """Write the checkpoint atomically: serialized in memory first, so a full disk fails with the path
    (io.DiskFullError) and leaves the previous checkpoint as it was."""
    identity = run_identity(run)
    payload = {
        "step": step, "key": config_hash(identity), "identity": identity, "log": log, "evals": evals,
        "state": run.state, "adapter": get_peft_model_state_dict(run.policy), "optimizer": run.optimizer.state_dict(),
        "version": run.version,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, run: RLRun) -> tuple[int, list[dict], list[dict]] | None:
    """Restore ``run`` from ``path``; None (and a notice that says why) when there is none, it cannot be read, or it
    belongs to another run identity (:func:`run_identity`)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means: start afresh, and say why
        lines = [x.strip() for x in str(e).splitlines() if x.strip()] or [""]
        why = next((x for x in lines if "error:" in x), lines[0])[:160]  # torch puts the cause on an inner line
        notice(f"[resume] {path} cannot be read ({type(e).__name__}: {why}): starting afresh")
        return None
    if payload.get("key") != _resume_key(run):
        changes = identity_changes(payload.get("identity") or {}, run_identity(run)) if "identity" in payload else [
            "made by an older version of entropy-rl (no run identity)"]
        notice(f"[resume] {path} was made with other settings, so this run starts afresh:\n  " + "\n  ".join(changes))
        return None
    set_peft_model_state_dict(run.policy, payload["adapter"])
    run.optimizer.load_state_dict(payload["optimizer"])
    # the restored adapter is a new policy state for the sampler: it must not count as the fresh adapter's version 0
    run.version = payload["version"]
    run.state.clear()
    run.state.update(payload["state"])
    notice(f"[resume] continuing from step {payload['step']} ({path})")
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
        log.append(row)
        done = step + 1
        if is_eval_step(run.rl, done):
            evals.append(heldout_eval(run, done))
        bar.set_postfix(reward=f"{row['reward/mean']:.2f}", H=f"{row['stats/entropy']:.3f}")
        if checkpoint and (done % run.rl.checkpoint_every == 0 or done == run.rl.steps):
            save_checkpoint(checkpoint, run, done, log, evals)
    return log, evals
