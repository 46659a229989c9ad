"""Objectives: pure functions behind one strict registry.

Every objective has the same signature::

    loss, metrics = objective(batch: RLBatch, stats: TokenStats, cfg: <its config>, state: dict)

and is looked up by name with :func:`get_objective`; its settings class with :func:`get_config_cls`.
Importing this package registers every objective.
"""
from .agg import AGG_MODES, agg_loss
from .agg import agg_denominator
from .registry import (
    OBJECTIVES,
    STAT_SCOPES,
    ObjectiveConfig,
    RLBatch,
    StatScope,
    get_config_cls,
    get_objective,
    init_controller_state,
    make_objective_config,
    register_objective,
    update_controller_state,
)
from . import grpo  # noqa: F401  (registers "grpo", "dr_grpo", "dapo")
from . import entropy  # noqa: F401  (registers "entropy_bonus", "high_entropy_mask")
from . import covariance  # noqa: F401  (registers "clip_cov", "kl_cov", "cov_annealed")
from . import erpo  # noqa: F401  (registers "erpo")
from . import repo  # noqa: F401  (registers "repo", "repo_r", "adapo")
from . import paec  # noqa: F401  (registers "paec")

__all__ = [
    "AGG_MODES", "agg_loss", "agg_denominator", "OBJECTIVES", "STAT_SCOPES", "ObjectiveConfig", "RLBatch",
    "StatScope", "get_config_cls", "get_objective", "init_controller_state", "make_objective_config",
    "register_objective", "update_controller_state",
]
