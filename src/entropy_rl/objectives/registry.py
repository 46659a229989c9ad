"""The objective registry, the batch every objective receives, and the settings base class.

Shapes, declared once: ``B`` responses (n_prompts x G, groups contiguous), ``T`` response positions.

An objective may come with a *controller*: ``init_state(cfg) -> dict`` gives the state before the first step and
``update_state(state, cfg, row) -> dict`` the state after a step, from that step's log row. The loop
(``train.rl_step``) calls it once per RL step; the state lives in ``RLRun.state`` and in every checkpoint, and
objectives only read it (so all updates of one step use the same values; methods.md §7 S10).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from ..config import ConfigError, choice, from_dict
from .agg import AGG_MODES

STAT_SCOPES = ("minibatch", "microbatch")
LOGPROB_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class StatScope:
    """Detached statistics of the whole mini-batch, handed to each micro-batch under gradient accumulation, so
    that a selection statistic (80/20 threshold, covariance top-k/band) is taken over the mini-batch; ``[Bs, T]``."""

    logp: Tensor
    """current-policy log-probs of the sampled tokens (detached)"""
    entropy: Tensor
    """current-policy token entropies (detached)"""
    old_logp: Tensor
    advantages: Tensor
    mask: Tensor
    rows: Tensor | None = None
    """``[B]`` rows of the batch at hand within the scope (None: the batch is the whole scope)"""


@dataclass
class RLBatch:
    """What an objective sees of one (mini- or micro-)batch; every tensor is ``[B, T]`` unless noted."""

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
    l_max: int | None = None
    """the response-length cap: the constant divisor of `seq-mean-token-sum-norm` (None: the padded width T)"""
    seed: int = 0
    """seed of any randomness inside the objective (the loop derives it from run seed, step and update)"""
    scope: StatScope | None = None
    """the mini-batch this micro-batch belongs to, for `stat_scope: minibatch` (None: this batch is its own scope)"""
    group_ids: Tensor | None = None
    """``[B]`` int64: the prompt group of each row (rows with equal ids answer the same prompt)"""
    old_entropy: Tensor | None = None
    """token entropies under the policy that generated the responses (detached)"""
    rollout: "RLBatch | None" = None
    """the whole rollout batch this batch was drawn from (complete groups, detached), for statistics pooled over a
    group (ERPO); None: this batch is its own rollout"""
    rollout_rows: Tensor | None = None
    """``[B]`` the rows of this batch within ``rollout``"""
    is_weights: Tensor | None = None
    """per-token train/inference mismatch weights, detached: truncated importance sampling
    ``min(pi_old / pi_rollout, C)`` when the sampler is a separate engine (``rl.rollout.tis``); they multiply the
    per-token policy-gradient loss of every objective (``pg_loss``), not its regularizers. None: no correction"""

    def select(self, rows: Tensor, scope: StatScope | None = None) -> "RLBatch":
        """The rows ``rows`` (a ``[b]`` index tensor) as a micro-batch; ``scope`` (if given) gets those rows."""
        pick = lambda x: None if x is None else x[rows]  # noqa: E731
        if scope is not None:
            scope = dataclasses.replace(scope, rows=rows)
        return RLBatch(old_logp=self.old_logp[rows], advantages=self.advantages[rows], mask=self.mask[rows],
                       ref_logp=pick(self.ref_logp), rewards=pick(self.rewards), l_max=self.l_max, seed=self.seed,
                       scope=scope, group_ids=pick(self.group_ids), old_entropy=pick(self.old_entropy),
                       rollout=self.rollout, rollout_rows=pick(self.rollout_rows), is_weights=pick(self.is_weights))


@dataclass(frozen=True)
class ObjectiveConfig:
    """Settings shared by every objective; each objective subclasses this with its own fields.

    Besides the loss settings it holds the rollout/reward-level options of DAPO (methods.md §5.2), so that any
    objective can switch them on: dynamic sampling and overlong reward shaping (used by ``train.rl_step``).
    """

    advantage: str = "grpo"
    """group advantage estimator (`grpo`, `dr_grpo`, `rloo`)"""
    agg: str = "token-mean"
    """loss aggregation mode (see `agg_loss`)"""
    kl_coef: float = 0.0
    """beta of the k3 KL penalty to the reference policy, kept in the loss (0 = no reference pass)"""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose G rewards all agree and generate more until `prompts_per_step`
    groups qualify"""
    max_gen_batches: int = 10
    """dynamic sampling: generation batches allowed per step before it stops with an error (<= 0: unlimited)"""
    overlong_buffer: float = 0.0
    """DAPO soft overlong punishment: L_cache as a fraction of the response-length cap (DAPO: 4096 of 20480 =
    0.2); responses longer than L_max - L_cache get a linear penalty down to -overlong_penalty (0 = off)"""
    overlong_penalty: float = 1.0
    """DAPO/verl `penalty_factor`: the penalty at the length cap"""
    logprob_dtype: str = "float32"
    """precision of the per-token log-probs (current, old, reference) before any ratio: `float32` (the fix of
    methods.md §2/§7 S1), or `bfloat16`/`float16` to reproduce the REPO/ADAPO precision finding (§2 Theorem 3, §9)"""

    def __post_init__(self):
        from ..advantages import ADVANTAGES

        choice("advantage", self.advantage, sorted(ADVANTAGES))
        choice("agg", self.agg, AGG_MODES)
        choice("logprob_dtype", self.logprob_dtype, LOGPROB_DTYPES)
        if self.kl_coef < 0:
            raise ConfigError(f"kl_coef: must be >= 0, got {self.kl_coef}")
        if not 0.0 <= self.overlong_buffer < 1.0:
            raise ConfigError(f"overlong_buffer: must be in [0, 1) (a fraction of the length cap), got {self.overlong_buffer}")
        if self.overlong_penalty < 0:
            raise ConfigError(f"overlong_penalty: must be >= 0, got {self.overlong_penalty}")
        if scope := getattr(self, "stat_scope", None):
            choice("stat_scope", scope, STAT_SCOPES)

    @property
    def needs_ref(self) -> bool:
        return self.kl_coef > 0

    @property
    def minibatch_scope(self) -> bool:
        """True when the objective takes a selection statistic over the whole mini-batch (`stat_scope: minibatch`):
        under gradient accumulation the loop then hands each micro-batch the mini-batch's statistics."""
        return getattr(self, "stat_scope", None) == "minibatch"

    @property
    def uses_total_steps(self) -> bool:
        """True when a schedule depends on `rl.steps` (then a run cannot be resumed with more steps)."""
        return False


Objective = Callable[..., tuple[Tensor, dict[str, Tensor]]]
InitState = Callable[[ObjectiveConfig], dict]
UpdateState = Callable[[dict, ObjectiveConfig, dict], dict]
OBJECTIVES: dict[str, Objective] = {}
_CONFIGS: dict[str, type] = {}
_CONTROLLERS: dict[str, tuple[InitState | None, UpdateState | None]] = {}


def register_objective(name: str, config_cls: type, init_state: InitState | None = None,
                       update_state: UpdateState | None = None):
    """Register ``fn`` under ``name`` with its settings class and optional controller hooks; a duplicate name raises."""
    if not (dataclasses.is_dataclass(config_cls) and issubclass(config_cls, ObjectiveConfig)):
        raise TypeError(f"objective '{name}': config class must be an ObjectiveConfig dataclass")

    def deco(fn: Objective) -> Objective:
        if name in OBJECTIVES:
            raise ValueError(f"objective '{name}' is registered twice")
        OBJECTIVES[name] = fn
        _CONFIGS[name] = config_cls
        _CONTROLLERS[name] = (init_state, update_state)
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


def init_controller_state(name: str, cfg: ObjectiveConfig) -> dict:
    """The controller state before the first step (empty for objectives without a controller)."""
    get_objective(name)
    init, _ = _CONTROLLERS[name]
    return dict(init(cfg)) if init else {}


def update_controller_state(name: str, state: dict, cfg: ObjectiveConfig, row: dict) -> dict:
    """The controller state after a step, from that step's log row (unchanged without a controller)."""
    get_objective(name)
    _, update = _CONTROLLERS[name]
    return dict(update(dict(state), cfg, row)) if update else dict(state)


def make_objective_config(name: str, settings: dict | None = None):
    """Validate ``settings`` (from ``objectives.<name>`` in params.yaml) into the objective's config."""
    return from_dict(get_config_cls(name), settings or {}, f"objectives.{name}")
