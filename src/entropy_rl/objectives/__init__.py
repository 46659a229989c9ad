"""Objectives: pure functions behind one strict registry.

Every objective has the same signature::

    loss, metrics = objective(batch: RLBatch, stats: TokenStats, cfg: <its config>, state: dict)

and is looked up by name with :func:`get_objective`; its settings class with :func:`get_config_cls`, everything
else registered about it (controller, metrics, plot panels, claims) with :func:`get_spec`.
Importing this package registers every objective: one module per family, listed below; adding an objective is
one new module, one import line here and one card (docs/adding-an-objective.md).
"""
from ..agg import AGG_MODES, agg_denominator, agg_loss
from .registry import (
    CLAIM_FIGURES,
    OBJECTIVES,
    SPECS,
    STAT_SCOPES,
    Claim,
    ClaimFigure,
    EntropyTarget,
    Needs,
    ObjectiveConfig,
    ObjectiveSpec,
    Panel,
    RLBatch,
    ScopedStatistic,
    StatScope,
    all_claims,
    all_panels,
    figure_objectives,
    get_config_cls,
    get_objective,
    get_spec,
    init_controller_state,
    load_objective,
    make_objective_config,
    register_claim_figure,
    register_objective,
    update_controller_state,
)
from .common import POLICY_METRICS
from . import grpo  # noqa: F401,E402  (registers "grpo", "dr_grpo", "dapo")
from . import entropy  # noqa: F401,E402  (registers "entropy_bonus", "high_entropy_mask")
from . import covariance  # noqa: F401,E402  (registers "clip_cov", "kl_cov", "cov_annealed")
from . import erpo  # noqa: F401,E402  (registers "erpo")
from . import repo  # noqa: F401,E402  (registers "repo", "repo_r", "adapo")
from . import paec  # noqa: F401,E402  (registers "paec")
from . import whitened  # noqa: F401,E402  (registers "grpo_whitened", the example of docs/adding-an-objective.md)

__all__ = [
    "AGG_MODES", "agg_loss", "agg_denominator", "CLAIM_FIGURES", "OBJECTIVES", "SPECS", "STAT_SCOPES", "Claim",
    "ClaimFigure", "EntropyTarget", "Needs", "ObjectiveConfig", "ObjectiveSpec", "Panel", "RLBatch", "ScopedStatistic",
    "StatScope", "all_claims", "all_panels", "figure_objectives", "get_config_cls", "get_objective", "get_spec",
    "init_controller_state", "load_objective", "make_objective_config", "register_claim_figure", "register_objective",
    "update_controller_state", "POLICY_METRICS",
]
