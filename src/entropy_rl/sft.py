"""Supervised warm start: next-token loss on the target tokens only (prompt tokens are context).

The batch uses the same layout as a rollout (left-padded prompt, right-padded response ending in EOS), so
the loss goes through the same forward path as RL: ``loss = agg(-log pi(y_t | prefix), token-mean)``.
"""
from __future__ import annotations

import math
import random

import torch

from .config import SFTConfig
from .agg import agg_loss
from .policy import policy_stats
from .progress import progress
from .rollout import Rollouts


def sft_batch(tokenizer, rows: list[dict], device="cpu") -> Rollouts:
    """Teacher-forcing batch: ``problem`` as the prompt, ``target`` + EOS as the response."""
    enc = tokenizer([r["problem"] for r in rows], return_tensors="pt", padding=True, add_special_tokens=False)
    targets = [tokenizer(r["target"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for r in rows]
    t = max(len(x) for x in targets)
    resp = torch.full((len(rows), t), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, x in enumerate(targets):
        resp[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    return Rollouts(
        prompt_ids=enc["input_ids"].to(device), prompt_mask=enc["attention_mask"].to(device),
        response_ids=resp.to(device), response_mask=mask.to(device), texts=[r["target"] for r in rows],
        truncated=torch.zeros(len(rows), dtype=torch.bool, device=device),
    )


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_sft(model, tokenizer, rows: list[dict], cfg: SFTConfig, log_every: int = 25) -> list[dict]:
    """Train ``model`` in place; returns the loss curve ``[{"step", "loss", "lr"}]``."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    device = next(model.parameters()).device
    model.train()
    curve, running = [], []
    bar = progress(range(cfg.steps), desc="SFT")
    for step in bar:
        batch = sft_batch(tokenizer, rng.sample(rows, min(cfg.batch_size, len(rows))), device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        stats = policy_stats(model, batch, nucleus=False)
        loss = agg_loss(-stats.logp, batch.response_mask, "token-mean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            curve.append({"step": step + 1, "loss": sum(running) / len(running), "lr": lr_at(step, cfg)})
            bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
            running = []
    model.eval()
    return curve
