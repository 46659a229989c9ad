"""The suite's objectives inside verl 0.9: policy losses and group advantage estimators in verl's own registries
(docs/scaling.md). Nothing of verl is patched: :func:`register_policy_loss` and :func:`register_advantage` call
``verl.trainer.ppo.core_algos.register_policy_loss`` / ``register_adv_est``, and verl finds them by name
(``actor_rollout_ref.actor.policy_loss.loss_mode=entropy_rl.kl_cov``, ``algorithm.adv_estimator=entropy_rl.grpo``).

What verl hands a policy loss (``verl.workers.utils.losses.ppo_loss`` -> ``policy_loss_fn(old_log_prob, log_prob,
advantages, response_mask, loss_agg_mode, config, rollout_is_weights)``) becomes the objective's batch:

=====================  ===========================================================================================
RLBatch / TokenStats   from verl
=====================  ===========================================================================================
``stats.logp``         ``log_prob`` (the current policy, with gradient; verl's own fp32 log-softmax)
``old_logp``           ``old_log_prob``
``advantages``         ``advantages`` (``[B, T]``, from ``algorithm.adv_estimator``)
``mask``               ``response_mask``
``is_weights``         ``rollout_is_weights`` (verl's rollout correction, when configured)
``l_max``              the objective's ``l_max``, else ``config.loss_scale_factor``, else the padded width
=====================  ===========================================================================================

The policy-loss interface carries no token entropy, no reference log-probs, no group ids and no hidden states, so
an objective that reads any of them is refused by name (:data:`VERL_MISSING`): the entropy bonus (verl's own
``actor.entropy_coeff`` is the fixed-alpha bonus), the 80/20 mask, centred REPO, PAEC and ERPO; a KL term
(``kl_coef > 0``) maps to verl's own ``actor.use_kl_loss`` with ``kl_loss_type=low_var_kl`` (k3) instead. The
advantage-estimator interface (``token_level_rewards``, ``response_mask``, ``index``, ``config``) carries no
log-probs or entropies either, so REPO / REPO-R / ERPO cannot be advantage estimators in verl 0.9: REPO-R's
rescale (raw log pi, ``centered: false``) runs inside the policy loss instead, where the current log-probs are;
the project's group estimators (``grpo``, ``dr_grpo``, ``rloo``) are registered as advantage estimators.

Aggregation: each micro-batch's loss is rescaled by its share of the global denominator that verl puts in
``config.global_batch_info`` (tokens or sequences of the mini-batch over all data-parallel ranks, times
``dp_size``), so the accumulated, all-reduced gradient is the mini-batch's, as with verl's own losses.

Statistic scope: the loss sees one micro-batch. ``stat_scope: microbatch`` is verl's own behaviour (a KL-Cov /
Clip-Cov selection per micro-batch: it changes with the micro-batch size, verl#7829); ``stat_scope: minibatch``
is honoured only when each micro-batch is the rank's whole mini-batch (no gradient accumulation) and refused
otherwise, rather than silently becoming micro-batch-local.

Controllers: verl runs the loss in Ray worker processes and 0.9 has no hook that carries per-step controller state
from the driver into them, so an objective with a controller (ADAPO's eps_high, REPO-R's zeta, the annealing step)
registers only with its controller off (``adaptive: false``, ``schedule: constant``) or with an explicit, fixed
``controller_state``.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import numpy as np
import torch
import verl  # noqa: F401  (the optional engine; this module is for verl's environment)
from verl.trainer.ppo import core_algos

from entropy_rl.advantages import get_advantage
from entropy_rl.config import ConfigError, read_params
from entropy_rl.objectives import RLBatch, agg_denominator, get_objective, init_controller_state, load_objective
from entropy_rl.token_stats import TokenStats

PREFIX = "entropy_rl."
"""registered names are ``PREFIX + <params.yaml entry>``: verl ships its own ``clip_cov`` / ``kl_cov``, which the
bare names would replace (``prefix=""`` does that on purpose)"""

LOSS_LEVEL = ("grpo", "dr_grpo", "dapo", "clip_cov", "kl_cov", "cov_annealed", "adapo", "repo_r", "repo")
"""methods that can be verl policy losses (``repo`` / ``repo_r`` with ``centered: false`` only)"""

VERL_MISSING = {
    "entropy_bonus": "the token entropy with its gradient (verl's policy-loss interface passes log_prob only; verl's "
                     "own actor.entropy_coeff is the fixed-alpha bonus)",
    "high_entropy_mask": "the token entropies of the micro-batch (verl's policy-loss interface passes log_prob only)",
    "paec": "the token entropy with its gradient, the top-p entropy and the top-two gap (verl's policy-loss "
            "interface passes log_prob only)",
    "erpo": "old_entropy, ref_logp and group_ids (neither verl's policy-loss nor its advantage-estimator interface "
            "passes entropies, reference log-probs or, to the loss, group ids)",
}
"""objectives verl cannot run, and what its interfaces do not pass"""

ADVANTAGES = ("grpo", "dr_grpo", "rloo")
"""the project's group advantage estimators registered with verl (``PREFIX + name``)"""

_STATES: dict[str, dict] = {}
_CALLS: dict[str, int] = defaultdict(int)


def check_verl_support(name: str, method: str, cfg, controller_state: dict | None = None) -> None:
    """Raise :class:`ConfigError`, naming the objective and the missing input, when verl's policy-loss interface
    cannot supply what the objective reads."""
    if method in VERL_MISSING:
        raise ConfigError(f"objective '{name}' ({method}) cannot be a verl policy loss: it needs {VERL_MISSING[method]}")
    if method not in LOSS_LEVEL:
        raise ConfigError(f"objective '{name}' ({method}) has no verl plug-in")
    if method in ("repo", "repo_r") and cfg.centered:
        raise ConfigError(f"objective '{name}' ({method}) with centered: true needs the token entropy (L = log pi + H), "
                          f"which verl's policy-loss interface does not pass; centered: false uses log pi alone")
    if cfg.kl_coef > 0:
        raise ConfigError(f"objective '{name}': kl_coef > 0 needs ref_logp, which verl's policy-loss interface does not "
                          f"pass; set kl_coef: 0 and use verl's actor.use_kl_loss=True, kl_loss_type=low_var_kl (k3), "
                          f"kl_loss_coef={cfg.kl_coef}")
    controlled = bool(init_controller_state(method, cfg)) or (method == "cov_annealed" and cfg.schedule != "constant")
    if controlled and controller_state is None:
        raise ConfigError(
            f"objective '{name}': its controller needs each step's statistics on the driver and a way into verl's "
            f"workers, which verl 0.9's policy-loss interface lacks; switch it off (adaptive: false, or schedule: "
            f"constant for cov_annealed) or pass a fixed controller_state (e.g. {{'zeta': 1e-3}}, {{'clip_high': 0.28}}, "
            f"{{'step': s, 'total_steps': n}})")


def _number(x) -> float | None:
    if x is None:
        return None
    return float(x.item() if torch.is_tensor(x) else x)


def global_scale(mask: torch.Tensor, mode: str, info: dict) -> float:
    """Weight of a micro-batch's objective loss so that verl's accumulation and all-reduce give the mini-batch's
    gradient: ``local denominator / global denominator * dp_size`` (1 without ``global_batch_info``)."""
    dp = int(_number(info.get("dp_size")) or 1)
    glob = _number(info.get("batch_num_tokens") if mode == "token-mean" else info.get("global_batch_size"))
    local = agg_denominator(mask, mode)
    if glob is None:
        return float(dp)
    return local / max(glob, 1.0) * dp


def make_policy_loss(name: str, method: str, cfg, controller_state: dict | None = None, objective: str | None = None):
    """The verl policy-loss function (verl 0.9's signature), registered as ``name``, that computes the objective
    ``method`` with ``cfg`` (``objective``: the params.yaml entry, for messages)."""
    fn = get_objective(method)
    label = objective or method
    state = dict(controller_state or init_controller_state(method, cfg))
    _STATES[name] = state

    def policy_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                    response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config=None,
                    rollout_is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        if loss_agg_mode != cfg.agg:
            raise ConfigError(f"objective '{label}': agg is '{cfg.agg}' but verl's actor.loss_agg_mode is "
                              f"'{loss_agg_mode}'; set actor_rollout_ref.actor.loss_agg_mode={cfg.agg} (verl "
                              f"aggregates its entropy and KL terms with it too)")
        info = dict(getattr(config, "global_batch_info", None) or {}) if config is not None else {}
        mask = response_mask.float()
        dp = int(_number(info.get("dp_size")) or 1)
        gbs = _number(info.get("global_batch_size"))
        if cfg.needs().stat_scope == "minibatch" and gbs is not None and mask.shape[0] * dp < gbs:
            raise ConfigError(
                f"objective '{label}': stat_scope 'minibatch' needs the rank's whole mini-batch in one pass, but verl "
                f"split it into micro-batches ({mask.shape[0]} of {gbs / dp:g} rows per rank); set "
                f"ppo_micro_batch_size_per_gpu to the per-GPU mini-batch (and use_dynamic_bsz=False), or stat_scope: "
                f"microbatch (verl's own selection per micro-batch)")
        l_max = getattr(cfg, "l_max", None) or _number(info.get("loss_scale_factor"))
        _CALLS[name] += 1
        batch = RLBatch(old_logp=old_log_prob.float(), advantages=advantages.float() * mask, mask=mask,
                        l_max=int(l_max) if l_max else None, seed=_CALLS[name], is_weights=rollout_is_weights)
        stats = TokenStats(logp=log_prob, entropy=torch.zeros_like(log_prob))  # no entropy reaches a verl loss
        loss, metrics = fn(batch, stats, cfg, state)
        scale = global_scale(mask, cfg.agg, info)
        out = {f"entropy_rl/{k}": float(v) for k, v in metrics.items() if k != "stats/entropy"}
        return (loss * scale if scale != 1.0 else loss), out

    policy_loss.__name__ = f"entropy_rl_{method}"
    policy_loss.objective = label
    return policy_loss


def register_policy_loss(objective: str, params: str | os.PathLike | None = "params.yaml",
                         overrides: dict | None = None, controller_state: dict | None = None,
                         prefix: str = PREFIX) -> str:
    """Register ``objectives.<objective>`` of ``params`` as a verl policy loss; returns its name in verl
    (``prefix + objective``), for ``actor_rollout_ref.actor.policy_loss.loss_mode``."""
    method, cfg = load_objective(objective, params, overrides)
    check_verl_support(objective, method, cfg, controller_state)
    name = prefix + objective
    core_algos.register_policy_loss(name)(make_policy_loss(name, method, cfg, controller_state, objective))
    return name


def register_all(params: str | os.PathLike | None = "params.yaml", prefix: str = PREFIX) -> dict[str, str]:
    """Register every params.yaml objective that verl can run as it stands; returns {objective: reason} for the
    ones it skipped (the :class:`ConfigError` messages)."""
    names = [n for n in _objective_names(params)]
    skipped = {}
    for n in names:
        try:
            register_policy_loss(n, params, prefix=prefix)
        except ConfigError as e:
            skipped[n] = str(e)
    return skipped


def _objective_names(params) -> list[str]:
    return sorted(read_params(params).get("objectives") or {})


def controller_state(name: str) -> dict:
    """The (fixed) controller state a registered loss reads; mutate it in the worker process to change it."""
    return _STATES[name]


# ---------------------------------------------------------------------------------------------- advantages
def group_advantage(estimator: str, token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                    index: np.ndarray) -> torch.Tensor:
    """The project's estimator ``estimator`` on verl's batch: scalar rewards ``token_level_rewards.sum(-1)``,
    groups by ``index`` (verl's ``uid``, any order), broadcast over the response and masked."""
    scores = token_level_rewards.sum(-1).float()
    out = torch.zeros_like(scores)
    fn = get_advantage(estimator)
    _, inverse = np.unique(np.asarray(index, dtype=object).astype(str), return_inverse=True)
    inverse = torch.as_tensor(inverse, device=scores.device)
    for g in torch.unique(inverse):
        rows = (inverse == g).nonzero().squeeze(-1)
        out[rows] = fn(scores[rows], rows.numel()).to(out.dtype)
    return out[:, None] * response_mask.to(out.dtype)


def register_advantage(estimator: str, prefix: str = PREFIX) -> str:
    """Register the project's group estimator ``estimator`` (``grpo``, ``dr_grpo``, ``rloo``) with verl's
    advantage-estimator registry as ``prefix + estimator`` (for ``algorithm.adv_estimator``); returns the name."""
    if estimator not in ADVANTAGES:
        raise ConfigError(f"advantage estimator '{estimator}' has no verl plug-in (valid: {', '.join(ADVANTAGES)}); "
                          f"REPO / REPO-R / ERPO need log-probs or entropies, which verl's estimator interface does "
                          f"not pass")
    name = prefix + estimator
    if name in core_algos.ADV_ESTIMATOR_REGISTRY:
        return name

    def estimator_fn(token_level_rewards, response_mask, index=None, config=None, **kwargs):
        if index is None:
            raise ConfigError(f"advantage '{name}' needs the group ids (verl's non_tensor_batch['uid'])")
        adv = group_advantage(estimator, token_level_rewards, response_mask, index)
        return adv, adv

    core_algos.register_adv_est(name)(estimator_fn)
    return name


# ---------------------------------------------------------------------------------------------- Ray workers
ENV_OBJECTIVES = "ENTROPY_RL_VERL_OBJECTIVES"
"""comma-separated params.yaml entries to register when this module is imported (in every verl process)"""
ENV_PARAMS = "ENTROPY_RL_PARAMS"
"""the params.yaml they are read from (default: ``params.yaml`` in the working directory)"""


def register_from_env() -> list[str]:
    """Register the policy losses named in ``$ENTROPY_RL_VERL_OBJECTIVES`` (and the project's advantage
    estimators). verl imports the modules of ``$VERL_USE_EXTERNAL_MODULES`` in every process it starts, its Ray
    workers included, so ``VERL_USE_EXTERNAL_MODULES=entropy_rl.integrations.verl`` plus this variable registers
    the objectives where verl's actor computes its loss (docs/scaling.md)."""
    names = [n.strip() for n in os.environ.get(ENV_OBJECTIVES, "").split(",") if n.strip()]
    if not names:
        return []
    params = os.environ.get(ENV_PARAMS, "params.yaml")
    for estimator in ADVANTAGES:
        register_advantage(estimator)
    return [register_policy_loss(n, params) for n in names]


register_from_env()
