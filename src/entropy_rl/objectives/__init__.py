"""Objectives: pure functions behind one strict registry.

Every objective has the same signature::

    loss, metrics = objective(batch: RLBatch, stats: TokenStats, cfg: <its config>, state: dict)

and is looked up by name with :func:`get_objective`; its settings class with :func:`get_config_cls`.
Importing this package registers every objective.
"""
from .agg import AGG_MODES, agg_loss
from .registry import (
    OBJECTIVES,
    ObjectiveConfig,
    RLBatch,
    get_config_cls,
    get_objective,
    make_objective_config,
    register_objective,
)
from . import grpo  # noqa: F401  (registers "grpo")

__all__ = [
    "AGG_MODES", "agg_loss", "OBJECTIVES", "ObjectiveConfig", "RLBatch", "get_config_cls", "get_objective",
    "make_objective_config", "register_objective",
]
