"""Group advantage estimators (outcome rewards, one scalar per response).

Rewards arrive as ``[B]`` with the G samples of each prompt contiguous (``B = n_prompts * G``).

* ``grpo`` (DeepSeekMath; verl ``compute_grpo_outcome_advantage``): ``A = (r - mean) / (std + eps)`` with
  the unbiased (N-1) std and eps = 1e-6. A group whose rewards are all equal gets A = 0.
* ``dr_grpo`` (Dr. GRPO, Liu et al. 2025): ``A = r - mean`` (no std normalization).
* ``rloo``: leave-one-out baseline ``A_i = r_i - mean_{j != i} r_j``.
See docs/methods.md §5.1 and §5.3.

Two reward-level pieces of DAPO (docs/methods.md §5.2) live here too, used by ``train.rl_step`` for any objective that
switches them on: :func:`mixed_groups` (the dynamic-sampling filter) and :func:`overlong_penalty` (soft
overlong punishment).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .registry import Registry, registry

ADVANTAGES: Registry[Callable[..., Tensor]] = registry("advantage estimator")
"""``advantage`` of an objective's settings: name -> ``fn(rewards [B], group_size) -> [B]``"""


def register_advantage(name: str):
    """Decorator: register an estimator ``fn(rewards, group_size) -> advantages`` under ``name``."""
    return ADVANTAGES.register(name)


def get_advantage(name: str) -> Callable[..., Tensor]:
    return ADVANTAGES.get(name)


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [n_prompts * G] with G={group_size}, got shape {tuple(rewards.shape)}")
    return rewards.float().view(-1, group_size)  # [P, G]


@register_advantage("grpo")
def grpo_advantage(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    g = _groups(rewards, group_size)
    if group_size == 1:
        return g.view(-1).clone()  # verl: mean 0, std 1 for singleton groups
    mean, std = g.mean(-1, keepdim=True), g.std(-1, keepdim=True, unbiased=True)
    return ((g - mean) / (std + eps)).view(-1)


@register_advantage("dr_grpo")
def dr_grpo_advantage(rewards: Tensor, group_size: int) -> Tensor:
    g = _groups(rewards, group_size)
    return (g - g.mean(-1, keepdim=True)).view(-1)


@register_advantage("rloo")
def rloo_advantage(rewards: Tensor, group_size: int) -> Tensor:
    g = _groups(rewards, group_size)
    if group_size < 2:
        raise ValueError("rloo needs at least 2 samples per group")
    loo = (g.sum(-1, keepdim=True) - g) / (group_size - 1)
    return (g - loo).view(-1)


def solved_fraction(rewards: Tensor, group_size: int) -> dict[str, float]:
    """Share of groups that are all correct / all wrong (these give zero advantage and no gradient)."""
    g = _groups(rewards, group_size)
    return {
        "stats/groups_all_correct": (g.min(-1).values > 0).float().mean().item(),
        "stats/groups_all_wrong": (g.max(-1).values <= 0).float().mean().item(),
    }


def mixed_groups(rewards: Tensor, group_size: int) -> Tensor:
    """``[P]`` bool: the groups whose rewards do not all agree (DAPO dynamic sampling keeps only these; verl
    ``filter_groups`` keeps a group when the std of its metric is > 0, or it has one sample)."""
    g = _groups(rewards, group_size)
    if group_size == 1:
        return torch.ones(g.shape[0], dtype=torch.bool, device=g.device)
    return g.max(-1).values > g.min(-1).values


def overlong_penalty(lengths: Tensor, l_max: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment, ``[B]`` (added to the reward before the advantage):

    0 for ``|y| <= L_max - L_cache``; ``((L_max - L_cache) - |y|) / L_cache * factor`` inside the buffer; ``-factor``
    at and beyond ``L_max`` (verl ``min(-(len - (L_max - buffer)) / buffer * penalty_factor, 0)``; the paper's -1
    for ``|y| > L_max`` is the clamp). ``buffer = 0`` gives zeros (off).
    """
    if buffer <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float32, device=lengths.device)
    if buffer > l_max:
        raise ValueError(f"overlong buffer {buffer} exceeds the length cap {l_max}")
    over = (lengths.float() - (l_max - buffer)) / buffer
    return (-over * factor).clamp(min=-factor, max=0.0)
