"""The verl plug-in (entropy_rl.integrations.verl) on the CPU, at the level verl allows there: each registered
policy loss, fetched back through verl's own `get_policy_loss_fn` and called with verl's `ActorConfig`, equals the
project's objective on the same tensors (values and gradients), with verl's global-batch aggregation and both
statistic scopes; the project's group estimators through verl's advantage-estimator registry; what verl cannot pass
is refused by name.

Runs in its own environment (`make verl-check` builds .venv-verl: verl 0.9 pins transformers < 5.11); skipped
where verl is not installed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("verl", reason="verl is not installed here: `make verl-check` builds .venv-verl and runs these")

import torch  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn  # noqa: E402
from verl.workers.config import ActorConfig, PolicyLossConfig  # noqa: E402

from entropy_rl.advantages import get_advantage  # noqa: E402
from entropy_rl.config import ConfigError  # noqa: E402
from entropy_rl.integrations.verl import (PREFIX, VERL_MISSING, agg_denominator, load_objective,  # noqa: E402
                                          register_advantage, register_all, register_policy_loss)
from entropy_rl.objectives import RLBatch, get_objective  # noqa: E402
from entropy_rl.token_stats import TokenStats  # noqa: E402

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
NO_ROLLOUT = {"dynamic_sampling": False, "overlong_buffer": 0.0}  # rollout-level: verl's own (recipe/dapo)
# (objective, overrides, fixed controller state)
LOSSES = [
    ("grpo", {}, None),
    ("dr_grpo", {}, None),
    ("dapo", {}, None),
    ("clip_cov", {"clip_ratio": 0.1, "cov_lb": -5.0, "stat_scope": "microbatch"}, None),
    ("clip_cov", {"clip_ratio": 0.1, "cov_lb": -5.0}, None),  # minibatch scope, one pass per mini-batch
    ("kl_cov", {"k": 0.1}, None),
    ("kl_cov", {"k": 0.1, "stat_scope": "microbatch"}, None),
    ("cov_annealed", {"k": 0.1}, {"step": 6, "total_steps": 10}),
    ("cov_annealed", {"k": 0.1, "schedule": "constant"}, None),
    ("adapo", {"adaptive": False}, None),
    ("adapo", {}, {"clip_high": 0.1}),
    ("repo_r", {"adaptive": False, "zeta": 0.04}, None),
    ("repo_r", {}, {"zeta": -0.03}),
    ("repo", {"centered": False, "adaptive": False, "zeta": 0.04}, None),
]


def actor_config(agg: str, loss_mode: str, **info) -> ActorConfig:
    cfg = ActorConfig(strategy="fsdp", ppo_mini_batch_size=8, ppo_micro_batch_size_per_gpu=4, loss_agg_mode=agg,
                      policy_loss=PolicyLossConfig(loss_mode=loss_mode), rollout_n=1)
    cfg.global_batch_info.update(info)
    return cfg


def tensors(B=8, T=12, seed=0, rows_empty=()):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    for r in rows_empty:
        mask[r] = 0
    logp = -torch.rand(B, T, generator=g) * 3 * mask
    old = (logp + 0.1 * torch.randn(B, T, generator=g)) * mask
    adv = torch.randn(B, 1, generator=g).expand(B, T) * mask
    return old, logp, adv, mask


def direct(method, cfg, old, logp, adv, mask, state, seed, l_max=None):
    """The project's objective on the same tensors (its own RLBatch)."""
    lp = logp.clone().requires_grad_(True)
    batch = RLBatch(old_logp=old, advantages=adv, mask=mask, l_max=l_max, seed=seed)
    loss, metrics = get_objective(method)(batch, TokenStats(logp=lp, entropy=torch.zeros_like(lp)), cfg, state)
    loss.backward()
    return loss.detach(), lp.grad


def through_verl(name, agg, old, logp, adv, mask, config=None, weights=None):
    lp = logp.clone().requires_grad_(True)
    fn = get_policy_loss_fn(name)  # verl's own lookup
    loss, metrics = fn(old_log_prob=old, log_prob=lp, advantages=adv, response_mask=mask.bool(), loss_agg_mode=agg,
                       config=config or actor_config(agg, name), rollout_is_weights=weights)
    loss.backward()
    return loss.detach(), lp.grad, metrics


@pytest.mark.parametrize("objective,overrides,state", LOSSES, ids=lambda x: str(x) if isinstance(x, str) else None)
def test_registered_loss_equals_the_objective(objective, overrides, state):
    over = {**NO_ROLLOUT, **overrides}
    name = register_policy_loss(objective, PARAMS, over, controller_state=state, prefix=f"t{id(overrides)}.")
    method, cfg = load_objective(objective, PARAMS, over)
    old, logp, adv, mask = tensors()
    got, g_got, metrics = through_verl(name, cfg.agg, old, logp, adv, mask)
    # the loss's seed is its call count: 1 on the first call of this freshly registered name
    want, g_want = direct(method, cfg, old, logp, adv, mask, dict(state or {}), 1, l_max=mask.shape[1])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_got, g_want, rtol=1e-6, atol=1e-8)
    assert g_want.abs().sum() > 0
    assert all(k.startswith("entropy_rl/") for k in metrics) and "entropy_rl/stats/entropy" not in metrics


def test_rollout_is_weights_multiply_the_policy_term():
    name = register_policy_loss("dapo", PARAMS, NO_ROLLOUT, prefix="isw.")
    method, cfg = load_objective("dapo", PARAMS, NO_ROLLOUT)
    old, logp, adv, mask = tensors(seed=3)
    w = torch.rand(mask.shape, generator=torch.Generator().manual_seed(1)) + 0.5
    got, g_got, _ = through_verl(name, cfg.agg, old, logp, adv, mask, weights=w)
    lp = logp.clone().requires_grad_(True)
    batch = RLBatch(old_logp=old, advantages=adv, mask=mask, is_weights=w)
    want = get_objective(method)(batch, TokenStats(logp=lp, entropy=torch.zeros_like(lp)), cfg, {})[0]
    want.backward()
    torch.testing.assert_close(got, want.detach())
    torch.testing.assert_close(g_got, lp.grad)


@pytest.mark.parametrize("objective,overrides", [("kl_cov", {"k": 0.1, "stat_scope": "microbatch"}),
                                                 ("dapo", {}), ("grpo", {}), ("dr_grpo", {"l_max": 12})])
def test_micro_batches_with_global_batch_info_give_the_mini_batch_gradient(objective, overrides):
    """verl splits a mini-batch into micro-batches and puts the global denominators in config.global_batch_info:
    the accumulated gradient of the registered loss is the objective's on the mini-batch (objectives without a
    selection statistic) or the denominator-weighted sum of the objective on each micro-batch (stat_scope:
    microbatch, verl's own scope)."""
    over = {**NO_ROLLOUT, **overrides}
    name = register_policy_loss(objective, PARAMS, over, prefix="gbi.")
    method, cfg = load_objective(objective, PARAMS, over)
    old, logp, adv, mask = tensors(B=8, seed=5)  # (a verl response is never empty: it holds at least EOS)
    halves = [slice(0, 4), slice(4, 8)]
    info = {"dp_size": 1, "batch_num_tokens": int(mask.sum()), "global_batch_size": 8,
            "loss_scale_factor": getattr(cfg, "l_max", None)}
    total = torch.zeros_like(logp)
    for h in halves:
        _, g, _ = through_verl(name, cfg.agg, old[h], logp[h], adv[h], mask[h], actor_config(cfg.agg, name, **info))
        total[h] += g
    if getattr(cfg, "stat_scope", None) == "microbatch":
        want = torch.zeros_like(logp)
        den = agg_denominator(mask, cfg.agg)
        for j, h in enumerate(halves):
            _, g = direct(method, cfg, old[h], logp[h], adv[h], mask[h], {}, j + 1)
            want[h] += g * agg_denominator(mask[h], cfg.agg) / den
    else:
        _, want = direct(method, cfg, old, logp, adv, mask, {}, 1, l_max=getattr(cfg, "l_max", None))
    torch.testing.assert_close(total, want, rtol=1e-6, atol=1e-8)


def test_kl_cov_microbatch_scope_equals_verls_own_kl_cov():
    """With stat_scope: microbatch the plug-in's KL-Cov is verl's built-in one (same top-k selection per
    micro-batch, same |log r| penalty): values and gradients."""
    over = {**NO_ROLLOUT, "k": 0.1, "coef": 1.0, "stat_scope": "microbatch"}
    name = register_policy_loss("kl_cov", PARAMS, over, prefix="vs.")
    old, logp, adv, mask = tensors(seed=7)
    ours, g_ours, _ = through_verl(name, "token-mean", old, logp, adv, mask)
    verl_cfg = ActorConfig(strategy="fsdp", ppo_mini_batch_size=8, ppo_micro_batch_size_per_gpu=4,
                           loss_agg_mode="token-mean", rollout_n=1,
                           policy_loss=PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.1, ppo_kl_coef=1.0))
    theirs, g_theirs, _ = through_verl("kl_cov", "token-mean", old, logp, adv, mask, verl_cfg)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-6, atol=1e-8)


def test_minibatch_scope_is_refused_under_micro_batching():
    name = register_policy_loss("kl_cov", PARAMS, {**NO_ROLLOUT, "k": 0.1}, prefix="mb.")
    old, logp, adv, mask = tensors()
    cfg = actor_config("token-mean", name, dp_size=1, batch_num_tokens=int(mask.sum()) * 2, global_batch_size=16)
    with pytest.raises(ConfigError, match=r"'kl_cov'.*stat_scope 'minibatch'.*micro-batches"):
        through_verl(name, "token-mean", old, logp, adv, mask, cfg)
    with pytest.raises(ConfigError, match=r"loss_agg_mode"):
        through_verl(name, "seq-mean-token-mean", old, logp, adv, mask)


def test_what_verl_cannot_pass_is_refused_by_name():
    for objective, missing in [("paec", "entropy"), ("entropy_bonus", "entropy"), ("high_entropy_mask", "entropy"),
                               ("erpo", "old_entropy"), ("repo", "entropy")]:
        with pytest.raises(ConfigError, match=rf"'{objective}'.*{missing}"):
            register_policy_loss(objective, PARAMS, {"adaptive": False} if objective == "repo" else None)
    assert set(VERL_MISSING) == {"entropy_bonus", "high_entropy_mask", "paec", "erpo"}
    with pytest.raises(ConfigError, match=r"'grpo'.*ref_logp.*use_kl_loss"):
        register_policy_loss("grpo", PARAMS, {"kl_coef": 0.04})
    with pytest.raises(ConfigError, match=r"'repo_r'.*controller"):
        register_policy_loss("repo_r", PARAMS)
    with pytest.raises(ConfigError, match=r"'cov_annealed'.*controller"):
        register_policy_loss("cov_annealed", PARAMS)


def test_register_all_presets():
    skipped = register_all(PARAMS, prefix="all.")
    registered = {n[len("all."):] for n in core_algos.POLICY_LOSS_REGISTRY if n.startswith("all.")}
    assert {"grpo", "dr_grpo", "dapo", "clip_cov", "kl_cov"} <= registered
    assert {"paec", "erpo", "entropy_bonus", "high_entropy_mask", "repo_r", "adapo"} <= set(skipped)
    assert registered.isdisjoint(skipped)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_group_advantages_through_verls_registry(estimator):
    name = register_advantage(estimator)
    assert name == PREFIX + estimator
    fn = get_adv_estimator_fn(name)
    g = torch.Generator().manual_seed(0)
    B, G, T = 12, 4, 5
    rewards = (torch.rand(B, generator=g) > 0.5).float()
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    mask[:, 0] = 1
    token_rewards = torch.zeros(B, T)
    token_rewards[:, -1] = rewards
    perm = torch.randperm(B, generator=g)  # verl's rows need not be in contiguous groups
    uid = np.array([f"p{int(i) // G}" for i in perm], dtype=object)
    adv, ret = fn(token_level_rewards=token_rewards[perm], response_mask=mask[perm], index=uid, config=None)
    want = get_advantage(estimator)(rewards, G)[perm][:, None] * mask[perm]
    torch.testing.assert_close(adv, want)
    if estimator in ("grpo", "dr_grpo"):  # and verl's own GRPO estimator agrees
        theirs, _ = core_algos.compute_grpo_outcome_advantage(token_rewards[perm], mask[perm], uid,
                                                             norm_adv_by_std_in_grpo=estimator == "grpo")
        torch.testing.assert_close(adv, theirs)
    with pytest.raises(ConfigError, match="REPO"):
        register_advantage("repo_r")


def test_registration_in_every_verl_process(tmp_path):
    """What a Ray worker does: verl imports $VERL_USE_EXTERNAL_MODULES on `import verl`, and the plug-in registers
    the objectives named in $ENTROPY_RL_VERL_OBJECTIVES; verl's own lookup then finds them."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "entropy_rl.integrations.verl",
           "ENTROPY_RL_VERL_OBJECTIVES": "kl_cov,dapo", "ENTROPY_RL_PARAMS": str(PARAMS)}
    code = ("import verl\nfrom verl.trainer.ppo.core_algos import get_policy_loss_fn, get_adv_estimator_fn\n"
            "print(get_policy_loss_fn('entropy_rl.kl_cov').objective, get_policy_loss_fn('entropy_rl.dapo').objective,"
            " get_adv_estimator_fn('entropy_rl.grpo').__name__)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["kl_cov", "dapo", "estimator_fn"]
