"""Binding diagnostics (does each mechanism act?): hand-computed cases for each objective's diagnostic, and the
claims' "not tested (mechanism inactive)" verdict when a diagnostic is on the wrong side of its threshold."""
import math

import pytest
import torch

from entropy_rl.objectives import RLBatch, get_objective, make_objective_config
from entropy_rl.objectives.common import centered_covariance, clipped_surrogate
from entropy_rl.token_stats import TokenStats


def run_obj(name, logp, old, adv, mask, entropy=None, state=None, **cfg):
    stats = TokenStats(logp=logp, entropy=torch.zeros_like(logp) if entropy is None else entropy)
    batch = RLBatch(old_logp=old, advantages=adv, mask=mask)
    return get_objective(name)(batch, stats, make_objective_config(name, cfg), state or {})


def three_high_two_low():
    """2 x 5 tokens, one padded: row 0 has A = +1 and ratios e^{0.5} (3 tokens, > 1.2), e^{0.1} (inside);
    row 1 has A = -1 and ratios e^{-0.5} (2 tokens, < 0.8), e^{0.3} (above 1.2 but A < 0: not clipped)."""
    old = torch.zeros(2, 5, dtype=torch.float64)
    logp = torch.tensor([[0.5, 0.5, 0.5, 0.1, 0.0], [-0.5, -0.5, 0.3, 0.3, 0.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0] * 5, [-1.0] * 5], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    return logp, old, adv * mask, mask


def test_clip_bounds_are_counted_separately_hand_computed():
    logp, old, adv, mask = three_high_two_low()
    _, parts = clipped_surrogate(logp, old, adv, 0.2, 0.2)
    assert parts["clipped_high"].sum() == 3 and parts["clipped_low"].sum() == 2
    assert torch.equal(parts["clipped"], parts["clipped_low"] + parts["clipped_high"])
    _, m = run_obj("grpo", logp.requires_grad_(True), old, adv, mask)
    assert float(m["stats/clip_frac_high"]) == pytest.approx(3 / 9)
    assert float(m["stats/clip_frac_low"]) == pytest.approx(2 / 9)
    assert float(m["stats/clip_frac"]) == pytest.approx(5 / 9)
    # clip-higher (DAPO's 0.28) leaves the e^0.5 = 1.65 tokens clipped; eps_high = 1 releases them
    _, m = run_obj("grpo", logp, old, adv, mask, clip_high=1.0)
    assert float(m["stats/clip_frac_high"]) == 0.0 and float(m["stats/clip_frac_low"]) == pytest.approx(2 / 9)


def test_covariance_of_logp_and_advantage_against_a_float64_loop():
    g = torch.Generator().manual_seed(3)
    logp, adv = -torch.rand(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64)
    mask = (torch.rand(3, 6, generator=g) > 0.3).long()
    pts = [(float(logp[i, j]), float(adv[i, j])) for i in range(3) for j in range(6) if mask[i, j]]
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    want = sum((x - mx) * (y - my) for x, y in pts) / len(pts)
    assert float(centered_covariance(logp, adv, mask)) == pytest.approx(want, rel=1e-12)
    _, m = run_obj("grpo", logp.clone().requires_grad_(True), logp.detach(), adv * mask, mask)
    assert float(m["stats/cov_logp_adv"]) == pytest.approx(want, rel=1e-12)
    assert float(centered_covariance(logp, adv, torch.zeros_like(mask))) == 0.0  # no tokens: 0, not NaN


def test_covariance_selections_report_their_token_counts():
    g = torch.Generator().manual_seed(0)
    B, T = 8, 10
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp + 0.1 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, 1, generator=g, dtype=torch.float64).expand(B, T).clone()
    mask = torch.ones(B, T, dtype=torch.long)
    _, m = run_obj("kl_cov", logp.requires_grad_(True), old, adv, mask, k=0.05)
    assert float(m["stats/cov_selected_count"]) == 4  # int(0.05 * 80)
    assert float(m["stats/cov_selected_frac"]) == pytest.approx(4 / 80)
    _, m = run_obj("clip_cov", logp, old, adv, mask, clip_ratio=0.05, cov_lb=-100.0, cov_ub=100.0)
    assert float(m["stats/cov_selected_count"]) == 4


def test_high_entropy_mask_counts_its_kept_tokens():
    ent = torch.arange(10, dtype=torch.float64).view(1, 10)
    logp = -torch.rand(1, 10, dtype=torch.float64).requires_grad_(True)
    mask = torch.ones(1, 10, dtype=torch.long)
    _, m = run_obj("high_entropy_mask", logp, logp.detach(), torch.ones(1, 10, dtype=torch.float64), mask,
                   entropy=ent)
    assert float(m["stats/mask_kept_count"]) == 2 and float(m["stats/mask_frac"]) == pytest.approx(0.2)


@pytest.mark.parametrize("name,state,cfg,key,want", [
    ("repo_r", {"zeta": 0.05}, {}, "stats/zeta_at_bound", 1.0),         # at zeta_max
    ("repo_r", {"zeta": -1e-4}, {}, "stats/zeta_at_bound", 1.0),        # |ζ| at zeta_min
    ("repo_r", {"zeta": 1e-3}, {}, "stats/zeta_at_bound", 0.0),
    ("repo_r", {}, {"adaptive": False, "zeta": 0.05}, "stats/zeta_at_bound", 0.0),  # no controller
    ("adapo", {"clip_high": 0.5}, {}, "stats/clip_high_at_bound", 1.0),
    ("adapo", {"clip_high": 0.3}, {}, "stats/clip_high_at_bound", 0.0),
    ("entropy_bonus", {"entropy_coef": 0.0, "entropy_last": 0.1}, {}, "stats/entropy_coef_at_bound", 1.0),
    ("entropy_bonus", {"entropy_coef": 0.01, "entropy_last": 0.1}, {}, "stats/entropy_coef_at_bound", 0.0),
    ("entropy_bonus", {}, {"adaptive": False, "coef": 0.0}, "stats/entropy_coef_at_bound", 0.0),
])
def test_controllers_report_when_they_sit_at_a_bound(name, state, cfg, key, want):
    logp, old, adv, mask = three_high_two_low()
    _, m = run_obj(name, logp.requires_grad_(True), old, adv, mask, entropy=torch.full_like(logp, 0.5),
                   state=state, **cfg)
    assert float(m[key]) == want


def test_paec_reports_whether_its_floor_penalty_is_active():
    from test_objectives_paec import make_stats, run_paec

    stats, batch = make_stats(0, B=5, T=8)
    # no anchor yet; a floor far below the masked entropy; a floor above it (active); the same with penalty: false
    for state, cfg, want in (({}, {}, 0.0), ({"anchor": 0.01}, {}, 0.0), ({"anchor": 3.0}, {}, 1.0),
                             ({"anchor": 3.0}, {"penalty": False}, 0.0)):
        _, m = run_paec(batch, stats, state, **cfg)
        assert float(m["stats/paec_penalty_active"]) == want, (state, cfg)


def test_every_claim_binding_is_a_registered_metric_with_a_reason():
    from entropy_rl.glossary import glossary
    from entropy_rl.report import CLAIMS

    known = glossary()
    for c in CLAIMS:
        if c.binding:
            assert c.binding in known, f"claim '{c.text}': binding {c.binding} is not in the metric glossary"
            assert c.why, f"claim '{c.text}': give the threshold's reason (`why`)"
    assert sum(c.binding is not None for c in CLAIMS) >= len(CLAIMS) - 1  # all but the bf16 claim


# ---------------------------------------------------------------------------------------------- random reward
def test_random_rewards_are_reproducible_coin_flips():
    from entropy_rl.rewards import random_rewards

    a = random_rewards(4000, "s/0/1/0")
    assert a == random_rewards(4000, "s/0/1/0") and a != random_rewards(4000, "s/0/2/0")
    assert set(a) == {0.0, 1.0} and abs(sum(a) / len(a) - 0.5) < 0.03
    assert abs(sum(random_rewards(4000, 1, p=0.2)) / 4000 - 0.2) < 0.03
    assert random_rewards(0, 1) == []


def test_the_random_reward_ignores_the_responses_and_the_verifier_is_still_logged(tiny_model_dir, small_model_cfg):
    """Two runs whose verifiers disagree on every response get the same rewards, hence the same advantages."""
    from entropy_rl.rl import sample_groups
    from test_train import make_run

    runs = [make_run(tiny_model_dir, small_model_cfg, steps=1, rl={"reward": "random"}) for _ in range(2)]
    runs[1].reward_fn = lambda text, answer: 1.0 - float(len(text) % 2)  # the opposite verdict on every response
    (_, r0, i0), (_, r1, i1) = (sample_groups(r, 0) for r in runs)
    assert torch.equal(r0, r1) and set(r0.tolist()) <= {0.0, 1.0}
    assert i0["reward/mean"] == pytest.approx(float(r0.mean()))
    assert i0["reward/verifier_mean"] == pytest.approx(1.0 - i1["reward/verifier_mean"])
    verifier = make_run(tiny_model_dir, small_model_cfg, steps=1)
    assert "reward/verifier_mean" not in sample_groups(verifier, 0)[2]


def test_rl_reward_rejects_an_unknown_mode():
    from entropy_rl.config import ConfigError, RLConfig

    with pytest.raises(ConfigError, match="rl.reward"):
        RLConfig(reward="coin")
    with pytest.raises(ConfigError, match="random_reward_p"):
        RLConfig(random_reward_p=1.5)
