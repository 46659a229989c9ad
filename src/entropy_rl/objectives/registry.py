"""The objective registry, the batch every objective receives, and the settings base class.

Shapes, declared once: ``B`` responses (n_prompts x G, groups contiguous), ``T`` response positions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from ..config import ConfigError, choice, from_dict
from .agg import AGG_MODES


@dataclass
class RLBatch:
    """What an objective sees of one (mini-)batch; every tensor is ``[B, T]`` unless noted."""

    old_logp: Tensor
    """log-probs of the sampled tokens under the policy that generated them (detached)"""
    advantages: Tensor
    """per-token advantages (the group advantage broadcast over the response)"""
    mask: Tensor
    """1 on response tokens (including the closing EOS), 0 on padding"""
    ref_logp: Tensor | None = None
    """log-probs under the reference policy (the frozen base), when the objective asks for them"""
    rewards: Tensor | None = None
    """[B] scalar rewards"""


@dataclass(frozen=True)
class ObjectiveConfig:
    """Settings shared by every objective; each objective subclasses this with its own fields."""

    advantage: str = "grpo"
    """group advantage estimator (`grpo`, `dr_grpo`, `rloo`)"""
    agg: str = "token-mean"
    """loss aggregation mode (see `agg_loss`)"""
    kl_coef: float = 0.0
    """beta of the k3 KL penalty to the reference policy, kept in the loss (0 = no reference pass)"""

    def __post_init__(self):
        from ..advantages import ADVANTAGES

        choice("advantage", self.advantage, sorted(ADVANTAGES))
        choice("agg", self.agg, AGG_MODES)
        if self.kl_coef < 0:
            raise ConfigError(f"kl_coef: must be >= 0, got {self.kl_coef}")

    @property
    def needs_ref(self) -> bool:
        return self.kl_coef > 0


Objective = Callable[..., tuple[Tensor, dict[str, Tensor]]]
OBJECTIVES: dict[str, Objective] = {}
_CONFIGS: dict[str, type] = {}


def register_objective(name: str, config_cls: type):
    """Register ``fn`` under ``name`` with its settings class; a duplicate name raises."""
    if not (dataclasses.is_dataclass(config_cls) and issubclass(config_cls, ObjectiveConfig)):
        raise TypeError(f"objective '{name}': config class must be an ObjectiveConfig dataclass")

    def deco(fn: Objective) -> Objective:
        if name in OBJECTIVES:
            raise ValueError(f"objective '{name}' is registered twice")
        OBJECTIVES[name] = fn
        _CONFIGS[name] = config_cls
        fn.objective_name = name
        return fn

    return deco


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}'; valid objectives: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


def get_config_cls(name: str) -> type:
    get_objective(name)
    return _CONFIGS[name]


def make_objective_config(name: str, settings: dict | None = None):
    """Validate ``settings`` (from ``objectives.<name>`` in params.yaml) into the objective's config."""
    return from_dict(get_config_cls(name), settings or {}, f"objectives.{name}")
