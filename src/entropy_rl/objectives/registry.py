"""The objective registry, the batch every objective receives, and the settings base classes.

Shapes, declared once: ``B`` responses (n_prompts x G, groups contiguous), ``T`` response positions.

Everything about an objective is registered in its own module, in one call of :func:`register_objective`:

* the loss (the decorated function) and its settings class (a frozen :class:`ObjectiveConfig` dataclass whose
  defaults are the paper's, each with its source in the field docstring);
* its *controller*, if any: ``init_state(cfg) -> dict`` gives the state before the first step and
  ``update_state(state, cfg, row) -> dict`` the state after a step, from that step's log row. The loop
  (``rl.rl_step``) calls it once per RL step; the state lives in ``RLRun.state`` and in every checkpoint, and
  objectives only read it (so all updates of one step use the same values; docs/methods.md §7 S10);
* the metrics it logs beyond the ones every policy-gradient objective logs, each with its one-line glossary entry
  (``docs/metrics.md`` is generated from these);
* the plot panels it adds to the training-curve figure, and the papers' claims it is tested on
  (:class:`Claim`; a claim names a figure of :data:`CLAIM_FIGURES`, which a module may register too).

What the loop must compute for an objective (reference log-probs, the nucleus of the top-p entropy, the scope of a
selection statistic) the settings declare through :meth:`ObjectiveConfig.needs`; the loop never probes them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import Tensor

from ..advantages import ADVANTAGES
from ..config import ANY, GE0, ConfigError, check_overrides, check_ranges, choice, from_dict, resolve_objective, within
from ..registry import Registry, registry
from ..token_stats import DEFAULT_TOP_P
from ..agg import AGG_MODES

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
    per-token loss that goes through ``pg_loss`` (KL-Cov's penalty included, as in verl), not the terms added after
    aggregation (the k3 KL, the entropy bonus, PAEC's terms). None: no correction"""

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
class Needs:
    """What the loop computes for an objective besides the current policy's log-probs and entropies."""

    ref_logp: bool = False
    """the reference policy's log-probs enter the loss (a KL term, ERPO's progress against the reference)"""
    top_p: float = DEFAULT_TOP_P
    """nucleus mass of the top-p entropy in the token statistics"""
    nucleus: bool = False
    """the nucleus statistics (``topp_entropy``, ``topp_size``, ``topp_overflow``, ``top2_gap``) are read (PAEC);
    otherwise the update's token-statistics pass skips them (None)"""
    stat_scope: str = "microbatch"
    """`minibatch`: under gradient accumulation each micro-batch gets the mini-batch's detached statistics"""


@dataclass(frozen=True)
class ObjectiveConfig:
    """Settings shared by every objective; each objective subclasses this (or a subclass) with its own fields.

    Besides the loss settings it holds the rollout/reward-level options of DAPO (docs/methods.md §5.2), so that any
    objective can switch them on: dynamic sampling and overlong reward shaping (used by ``rl.rl_step``).
    """

    advantage: str = "grpo"
    """group advantage estimator (`grpo`, `dr_grpo`, `rloo`)"""
    agg: str = "token-mean"
    """loss aggregation mode (see `agg_loss`)"""
    kl_coef: float = 0.0
    """beta of the k3 KL penalty to the reference policy, kept in the loss (DeepSeekMath: 0.04; most RLVR recipes
    and this suite's presets: 0)"""
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
    docs/methods.md §2/§7 S1), or `bfloat16`/`float16` to reproduce the REPO/ADAPO precision finding (§2 Theorem 3, §9)"""

    RANGES = {"kl_coef": GE0, "max_gen_batches": ANY, "overlong_buffer": within(0, 1, "[)", "a fraction of the length cap"),
              "overlong_penalty": GE0}
    """the valid values of the numeric fields (merged over the bases: :func:`~entropy_rl.config.ranges_of`); every
    subclass declares the ranges of the numeric fields it adds, and this ``__post_init__`` checks them all"""

    def __post_init__(self):
        check_ranges(self, "")
        choice("advantage", self.advantage, sorted(ADVANTAGES.names()))
        choice("agg", self.agg, AGG_MODES)
        choice("logprob_dtype", self.logprob_dtype, LOGPROB_DTYPES)

    def needs(self) -> Needs:
        """What the loop must compute for this objective (subclasses and mixins extend it)."""
        return Needs(ref_logp=self.kl_coef > 0)

    @property
    def uses_total_steps(self) -> bool:
        """True when a schedule depends on `rl.steps` (then a run cannot be resumed with more steps)."""
        return False


# ---------------------------------------------------------------------------------------------- shared parts
@dataclass(frozen=True)
class ScopedStatistic:
    """Mixin: a selection statistic (80/20 threshold, covariance top-k or band) taken over a scope of tokens."""

    stat_scope: str = "minibatch"
    """tokens the selection statistic is taken over: `minibatch` (the update's batch, also under gradient
    accumulation) or `microbatch` (each forward/backward pass: verl's and TRL's code)"""

    def __post_init__(self):
        super().__post_init__()
        choice("stat_scope", self.stat_scope, STAT_SCOPES)

    def needs(self) -> Needs:
        return dataclasses.replace(super().needs(), stat_scope=self.stat_scope)


@dataclass(frozen=True)
class EntropyTarget:
    """Mixin: a controller that steers toward a target token entropy, measured at the first step unless given."""

    adaptive: bool = True
    """the controller is on (false: its initial value stays fixed)"""
    target_entropy: float | None = None
    """H*: the target token entropy in nats (None = the first step's entropy; docs/methods.md §2(b), §9)"""

    RANGES = {"target_entropy": GE0}


# ---------------------------------------------------------------------------------------------- registrations
@dataclass(frozen=True)
class Panel:
    """A panel of the training-curve figure: a logged key and its title."""

    key: str
    label: str


@dataclass(frozen=True)
class Claim:
    """A paper's qualitative claim, as a comparison of two rows of ``report.objective_table``."""

    figure: str
    """the claim figure that shows it (:data:`CLAIM_FIGURES`)"""
    method: str
    """an objective name or a params.yaml variant"""
    baseline: str
    metric: str
    """a column of ``report.objective_table``"""
    direction: str
    """``higher`` or ``lower``: what the paper says ``method`` does to ``metric`` against ``baseline``"""
    text: str
    binding: str | None = None
    """the step-log key whose run mean says whether the claim's mechanism acted (a binding diagnostic); None: the
    mechanism has no diagnostic, and the verdict says so"""
    bound_if: str = ">="
    """``>=`` or ``<=``: the mechanism bound when the diagnostic's mean over the runs is on this side of ``threshold``"""
    threshold: float = 0.0
    binding_of: str = "method"
    """whose runs the diagnostic is read from: ``method`` or ``baseline`` (e.g. clip-higher acts only if the
    baseline's tokens reach its upper clip bound)"""
    why: str = ""
    """the reason for the threshold, one line (shown in docs/metrics.md and the claims table's notes)"""

    def __post_init__(self):
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"claim '{self.text}': direction must be 'higher' or 'lower', got {self.direction!r}")
        if self.bound_if not in (">=", "<="):
            raise ValueError(f"claim '{self.text}': bound_if must be '>=' or '<=', got {self.bound_if!r}")
        if self.binding_of not in ("method", "baseline"):
            raise ValueError(f"claim '{self.text}': binding_of must be 'method' or 'baseline', got {self.binding_of!r}")

    def bound(self, value: float) -> bool:
        """Whether a diagnostic mean ``value`` means the mechanism acted (NaN: not measured, so not bound)."""
        if value != value:
            return False
        return value >= self.threshold if self.bound_if == ">=" else value <= self.threshold


@dataclass(frozen=True)
class ClaimFigure:
    """A figure of claims: the objectives it shows are the baselines and methods of its claims, in the order the
    claims were registered (baselines first)."""

    name: str
    title: str
    kind: str
    """``curves`` (panels are step-log keys) or ``bars`` (panels are ``report.objective_table`` columns)"""
    panels: tuple[str, ...]


@dataclass(frozen=True)
class ObjectiveSpec:
    """Everything registered about one objective."""

    name: str
    fn: Callable[..., tuple[Tensor, dict[str, Tensor]]]
    config_cls: type
    init_state: Callable[[ObjectiveConfig], dict] | None = None
    update_state: Callable[[dict, ObjectiveConfig, dict], dict] | None = None
    metrics: dict[str, str] = field(default_factory=dict)
    """key -> one-line glossary entry, for the keys it logs beyond :data:`~.common.POLICY_METRICS`"""
    panels: tuple[Panel, ...] = ()
    claims: tuple[Claim, ...] = ()
    module: str = ""


Objective = Callable[..., tuple[Tensor, dict[str, Tensor]]]
InitState = Callable[[ObjectiveConfig], dict]
UpdateState = Callable[[dict, ObjectiveConfig, dict], dict]
SPECS: Registry[ObjectiveSpec] = registry("objective")
OBJECTIVES: dict[str, Objective] = {}
"""name -> loss function (a view of :data:`SPECS`)"""
CLAIM_FIGURES: Registry[ClaimFigure] = registry("claim figure")


def register_claim_figure(name: str, title: str, kind: str, panels: tuple[str, ...]) -> ClaimFigure:
    if kind not in ("curves", "bars"):
        raise ValueError(f"claim figure '{name}': kind must be 'curves' or 'bars', got {kind!r}")
    return CLAIM_FIGURES.register(name, ClaimFigure(name, title, kind, tuple(panels)))


def register_objective(name: str, config_cls: type, init_state: InitState | None = None,
                       update_state: UpdateState | None = None, *, metrics: dict[str, str] | None = None,
                       panels: tuple[Panel, ...] = (), claims: tuple[Claim, ...] = ()):
    """Register the decorated loss under ``name`` with its settings class, its controller hooks, the metrics it
    logs (key -> glossary line), its plot panels and its claims; a duplicate name raises."""
    if not (dataclasses.is_dataclass(config_cls) and issubclass(config_cls, ObjectiveConfig)):
        raise TypeError(f"objective '{name}': config class must be an ObjectiveConfig dataclass")
    for c in claims:
        if c.figure not in CLAIM_FIGURES:
            raise ValueError(f"objective '{name}': claim '{c.text}' names figure '{c.figure}', which is not "
                             f"registered (register_claim_figure); registered: {', '.join(CLAIM_FIGURES)}")

    def deco(fn: Objective) -> Objective:
        SPECS.register(name, ObjectiveSpec(name, fn, config_cls, init_state, update_state, dict(metrics or {}),
                                           tuple(panels), tuple(claims), fn.__module__))
        OBJECTIVES[name] = fn
        fn.objective_name = name
        return fn

    return deco


def get_spec(name: str) -> ObjectiveSpec:
    return SPECS.get(name)


def get_objective(name: str) -> Objective:
    return SPECS.get(name).fn


def get_config_cls(name: str) -> type:
    return SPECS.get(name).config_cls


def init_controller_state(name: str, cfg: ObjectiveConfig) -> dict:
    """The controller state before the first step (empty for objectives without a controller)."""
    init = SPECS.get(name).init_state
    return dict(init(cfg)) if init else {}


def update_controller_state(name: str, state: dict, cfg: ObjectiveConfig, row: dict) -> dict:
    """The controller state after a step, from that step's log row (unchanged without a controller)."""
    update = SPECS.get(name).update_state
    return dict(update(dict(state), cfg, row)) if update else dict(state)


def make_objective_config(name: str, settings: dict | None = None, where: str | None = None):
    """Validate ``settings`` into the config of registry objective ``name``; errors name the key under ``where``
    (the params.yaml entry the settings come from; default ``objectives.<name>``: pass ``objectives.<variant>`` for
    a variant, as :func:`load_objective` does)."""
    where = f"objectives.{name}" if where is None else where
    if name not in SPECS:
        at = f"{where}.method" if where != f"objectives.{name}" else where
        hint = "" if at.endswith(".method") else " (a variant names its registry objective with `method:`)"
        raise ConfigError(f"{at}: unknown objective '{name}'; valid: {', '.join(SPECS)}{hint}")
    return from_dict(get_config_cls(name), settings or {}, where)


def load_objective(objective: str, params: str | Path | None = "params.yaml",
                   overrides: dict | None = None) -> tuple[str, ObjectiveConfig]:
    """(registry method, validated config) of ``objectives.<objective>`` in the params file ``params`` (a variant
    resolved to its ``method``), with ``overrides`` on top; ``params=None``: the registry defaults of ``objective``.
    Errors name the entry's own key: ``objectives.paec-no_penalty.coef``."""
    if params is None:
        method, settings = SPECS.get(objective).name, {}
    else:
        method, settings = resolve_objective(params, objective)
    return method, make_objective_config(method, {**settings, **check_overrides(overrides, 'settings to values, e.g. {"kl_coef": 0.04}')}, f"objectives.{objective}")


def all_claims() -> list[Claim]:
    """Every registered claim, in registration order."""
    return [c for spec in SPECS.values() for c in spec.claims]


def figure_objectives(figure: str) -> list[str]:
    """The objectives a claim figure shows: each claim's baseline then its method, in registration order, once each."""
    CLAIM_FIGURES.get(figure)
    out: list[str] = []
    for c in all_claims():
        if c.figure == figure:
            out += [n for n in (c.baseline, c.method) if n not in out]
    return out


def all_panels() -> list[Panel]:
    """The objectives' plot panels, in registration order, each key once."""
    out: dict[str, Panel] = {}
    for spec in SPECS.values():
        for p in spec.panels:
            out.setdefault(p.key, p)
    return list(out.values())
