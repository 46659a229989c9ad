"""The RL step and loop: rollout → reward → advantage → token stats → objective → update → log.

Nothing here knows which objective runs: it is looked up by name and called with the same signature.
A run checkpoints atomically (adapter, optimizer, log rows, step) every ``checkpoint_every`` steps and a
restarted run resumes from the last checkpoint; every step reseeds from ``(seed, step)``, so a resumed run
reproduces an uninterrupted one exactly.
"""
from __future__ import annotations

import dataclasses
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch

from .advantages import get_advantage, solved_fraction
from .config import RLConfig, config_hash
from .evaluate import evaluate
from .io import atomic_path
from .objectives import RLBatch, get_objective
from .policy import frozen_stats, policy_stats
from .progress import progress
from .rollout import HFRollout


def step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


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
    """controller state (read by objectives, updated by controllers; part of the checkpoint)"""

    def __post_init__(self):
        self.loss_fn = get_objective(self.objective)
        self.adv_fn = get_advantage(self.obj_cfg.advantage)
        self.sampler = HFRollout(self.policy, self.tokenizer, self.rl.max_new_tokens, self.rl.temperature)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.rl.lr, weight_decay=0.0)


def rl_step(run: RLRun, step: int) -> dict[str, float]:
    """One rollout batch and its ``minibatches x epochs`` updates; returns the step's log row."""
    rl, G = run.rl, run.rl.group_size
    rng = random.Random(step_seed(run.seed, step))
    prompts = rng.sample(run.train_rows, rl.prompts_per_step)

    # ---- Rollout: G samples per prompt from the current policy (= pi_old) ----
    ro = run.sampler.generate([p["problem"] for p in prompts], n=G, seed=step_seed(run.seed, step))
    # ---- Reward: the verifier scores each response ----
    rewards = torch.tensor([run.reward_fn(t, p["answer"]) for t, p in zip(ro.texts, (p for p in prompts for _ in range(G)))])
    # ---- Advantage: group-relative, broadcast over the response tokens ----
    adv = run.adv_fn(rewards, G)[:, None].expand_as(ro.response_mask).float() * ro.response_mask
    # ---- Old (and reference) log-probs: no gradient, same forward path as the update ----
    old = frozen_stats(run.policy, ro, rl.temperature)
    ref = frozen_stats(run.policy, ro, rl.temperature, reference=True)

    # ---- Loss & update: minibatches over the rollout batch ----
    sums: dict[str, float] = defaultdict(float)
    n_updates, grad_norms = 0, []
    gen = torch.Generator().manual_seed(step_seed(run.seed, step))
    B = rewards.numel()
    for _ in range(rl.epochs):
        perm = torch.randperm(B, generator=gen)
        for idx in perm.view(rl.minibatches, -1):
            mb = ro.select(idx)
            batch = RLBatch(old_logp=old.logp[idx], advantages=adv[idx], mask=mb.response_mask,
                            ref_logp=ref.logp[idx], rewards=rewards[idx])
            stats = policy_stats(run.policy, mb, rl.temperature)
            loss, metrics = run.loss_fn(batch, stats, run.obj_cfg, run.state)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step}: non-finite loss {loss.item()} ({run.objective})")
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for p in run.policy.parameters() if p.requires_grad]
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, rl.grad_clip)))
            run.optimizer.step()
            for k, v in metrics.items():
                sums[k] += float(v)
            n_updates += 1

    # ---- Log: step-level values are means over all updates of the step ----
    row = {"step": step + 1}
    row.update({k: v / n_updates for k, v in sorted(sums.items())})
    mask = ro.response_mask.float()
    row.update({
        "reward/mean": rewards.mean().item(),
        "stats/entropy_rollout": ((old.entropy * mask).sum() / mask.sum()).item(),
        "stats/kl_ref": _k3_mean(old.logp, ref.logp, mask),
        "stats/response_length": ro.lengths.float().mean().item(),
        "stats/truncation_rate": ro.truncated.float().mean().item(),
        "stats/unique_responses": len(set(ro.texts)) / len(ro.texts),
        "stats/grad_norm": sum(grad_norms) / len(grad_norms),
    })
    row.update(solved_fraction(rewards, G))
    return row


def _k3_mean(logp, ref_logp, mask) -> float:
    d = (ref_logp - logp).clamp(-20, 20)
    return (((d.exp() - d - 1) * mask).sum() / mask.sum().clamp(min=1)).item()


def heldout_eval(run: RLRun, step: int, n: int = 4) -> dict[str, float]:
    """Held-out pass@1 (n samples per prompt at the RL temperature) for the in-training curve."""
    _, summary = evaluate(
        run.policy, run.tokenizer, run.eval_rows[: run.rl.eval_prompts], run.reward_fn, n=n,
        temperature=run.rl.temperature, max_new_tokens=run.rl.max_new_tokens, seed=10_000 + step,
        show_progress=False,
    )
    return {"step": step, "heldout/pass@1": summary["pass@1"], "heldout/entropy": summary["mean_token_entropy"],
            "heldout/length": summary["mean_length"]}


# ----------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------
def _resume_key(run: RLRun) -> str:
    rl = dataclasses.replace(run.rl, steps=1)  # extending a run's steps may resume it
    return config_hash({"rl": dataclasses.asdict(rl), "obj": dataclasses.asdict(run.obj_cfg),
                        "objective": run.objective, "seed": run.seed})


def save_checkpoint(path: str | Path, run: RLRun, step: int, log: list[dict], evals: list[dict]) -> None:
    from peft import get_peft_model_state_dict

    payload = {
        "step": step, "key": _resume_key(run), "log": log, "evals": evals, "state": run.state,
        "adapter": get_peft_model_state_dict(run.policy), "optimizer": run.optimizer.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, run: RLRun) -> tuple[int, list[dict], list[dict]] | None:
    """Restore ``run`` from ``path``; None when there is none or it belongs to other settings."""
    from peft import set_peft_model_state_dict

    path = Path(path)
    if not path.exists():
        return None
    payload = torch.load(path, weights_only=False)
    if payload.get("key") != _resume_key(run):
        print(f"[resume] {path} was made with other settings: starting afresh")
        return None
    set_peft_model_state_dict(run.policy, payload["adapter"])
    run.optimizer.load_state_dict(payload["optimizer"])
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
