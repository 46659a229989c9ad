"""The RL loop: a step does what it says, a killed run resumes exactly, bad objectives fail clearly."""
import math

import pytest
import torch

from entropy_rl.config import RLConfig
from entropy_rl.data import arithmetic_splits
from entropy_rl.glossary import glossary
from entropy_rl.config import DataConfig
from entropy_rl.model import load_policy, load_tokenizer
from entropy_rl.objectives import make_objective_config
from entropy_rl.rewards import arithmetic_reward
from entropy_rl.rl import (RLRun, _resume_key, load_checkpoint, rl_step, save_checkpoint, train_rl,
                           without_timings)

RL = dict(prompts_per_step=4, group_size=4, max_new_tokens=8, minibatches=2, eval_every=2, eval_prompts=4,
          checkpoint_every=2, lr=1e-2)


def make_run(model_dir, model_cfg, steps, seed=0, objective="grpo", rl=None, **obj):
    rows = arithmetic_splits(DataConfig(n_sft=10, n_rl=40, n_eval=8, digits=2))
    policy = load_policy(model_dir, model_cfg, seed=seed)
    # a random-weight model never earns a reward: reward every response that has a token, to get gradients
    reward = lambda text, answer: float(len(text) % 2)  # noqa: E731
    return RLRun(policy=policy, tokenizer=load_tokenizer(model_dir), objective=objective,
                 obj_cfg=make_objective_config(objective, obj), rl=RLConfig(steps=steps, **{**RL, **(rl or {})}),
                 train_rows=rows["rl"], eval_rows=rows["eval"], reward_fn=reward, seed=seed)


def adapter_state(run):
    return {k: v.clone() for k, v in run.policy.state_dict().items() if "lora_" in k}


def test_step_updates_the_adapter_and_logs_means(tiny_model_dir, small_model_cfg):
    run = make_run(tiny_model_dir, small_model_cfg, steps=1, kl_coef=0.1)
    before = adapter_state(run)
    row = rl_step(run, 0)
    after = adapter_state(run)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for key in ("reward/mean", "stats/entropy", "stats/clip_frac", "stats/kl_ref", "stats/response_length",
                "loss/pg", "loss/kl", "stats/groups_all_correct"):
        assert key in row and row[key] == row[key], key
    assert row["stats/entropy"] > 0 and 0 <= row["stats/clip_frac"] <= 1


def test_killed_run_resumes_exactly(tiny_model_dir, small_model_cfg, tmp_path):
    straight = make_run(tiny_model_dir, small_model_cfg, steps=4)
    log_a, evals_a = train_rl(straight, tmp_path / "a.pt")

    first = make_run(tiny_model_dir, small_model_cfg, steps=2)  # "killed" after step 2's checkpoint
    train_rl(first, tmp_path / "b.pt")
    resumed = make_run(tiny_model_dir, small_model_cfg, steps=4)
    log_b, evals_b = train_rl(resumed, tmp_path / "b.pt")

    assert without_timings(log_a) == without_timings(log_b) and without_timings(evals_a) == without_timings(evals_b)
    a, b = adapter_state(straight), adapter_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_other_settings_is_not_resumed(tiny_model_dir, small_model_cfg, tmp_path, capsys):
    train_rl(make_run(tiny_model_dir, small_model_cfg, steps=2), tmp_path / "c.pt")
    other = make_run(tiny_model_dir, small_model_cfg, steps=2, clip_high=0.28)
    log, _ = train_rl(other, tmp_path / "c.pt")
    assert "other settings" in capsys.readouterr().out and [r["step"] for r in log] == [1, 2]


def test_unknown_objective_fails_with_valid_names(tiny_model_dir, small_model_cfg):
    run = make_run(tiny_model_dir, small_model_cfg, steps=1)
    with pytest.raises(Exception, match="unknown objective 'ppo2'; valid: grpo, dr_grpo"):
        RLRun(policy=run.policy, tokenizer=run.tokenizer, objective="ppo2", obj_cfg=run.obj_cfg, rl=run.rl,
              train_rows=run.train_rows, eval_rows=run.eval_rows, reward_fn=run.reward_fn)


# ------------------------------------------------------------------------------------ controllers, accumulation
def test_controller_state_resumes_exactly(tiny_model_dir, small_model_cfg, tmp_path):
    # target far above any entropy: the adaptive coefficient climbs by delta each step and applies from step 2
    obj = dict(objective="entropy_bonus", adaptive=True, target=100.0, delta=0.01, coef_max=0.025)
    straight = make_run(tiny_model_dir, small_model_cfg, steps=3, **obj)
    rows_a = [rl_step(straight, s) for s in range(3)]
    assert [r["stats/entropy_coef"] for r in rows_a] == pytest.approx([0.0, 0.01, 0.02])
    assert straight.state["entropy_coef"] == pytest.approx(0.025)  # bounded by coef_max

    first = make_run(tiny_model_dir, small_model_cfg, steps=3, **obj)
    rows_b = [rl_step(first, s) for s in range(2)]
    save_checkpoint(tmp_path / "ctrl.pt", first, 2, rows_b, [])
    resumed = make_run(tiny_model_dir, small_model_cfg, steps=3, **obj)
    assert resumed.state == {"entropy_coef": 0.0, "entropy_last": None}  # the initial state, before loading
    assert load_checkpoint(tmp_path / "ctrl.pt", resumed)[0] == 2
    assert resumed.state == first.state
    rows_b.append(rl_step(resumed, 2))
    assert without_timings(rows_a) == without_timings(rows_b) and straight.state == resumed.state
    a, b = adapter_state(straight), adapter_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedules_that_use_the_total_do_not_resume_with_other_steps(tiny_model_dir, small_model_cfg):
    key = lambda steps, **o: _resume_key(make_run(tiny_model_dir, small_model_cfg, steps=steps, **o))  # noqa: E731
    assert key(2) == key(4)  # GRPO: a run may be extended
    assert key(2, objective="cov_annealed") != key(4, objective="cov_annealed")
    assert key(2, objective="cov_annealed", schedule="constant") == key(4, objective="cov_annealed", schedule="constant")


@pytest.mark.parametrize("objective", ["grpo", "high_entropy_mask", "erpo"])
def test_gradient_accumulation_matches_one_pass(tiny_model_dir, small_model_cfg, objective):
    rows = {}
    for n_micro in (1, 4):
        run = make_run(tiny_model_dir, small_model_cfg, steps=1, objective=objective, rl={"micro_batches": n_micro},
                       dynamic_sampling=False, overlong_buffer=0.0)
        rows[n_micro] = rl_step(run, 0), adapter_state(run)
    (row1, w1), (row4, w4) = rows[1], rows[4]
    for k in ("loss/pg", "stats/entropy", "stats/clip_frac", "stats/grad_norm"):
        assert row4[k] == pytest.approx(row1[k], rel=1e-4, abs=1e-7), k
    # Adam's first step is about lr * g / (|g| + eps): float noise in tiny gradients shows up to ~1e-6, while a
    # wrong weighting moves whole steps of lr = 1e-2
    bad = {k: float((w1[k] - w4[k]).abs().max()) for k in w1 if not torch.allclose(w1[k], w4[k], rtol=0, atol=1e-5)}
    assert not bad
    if objective == "high_entropy_mask":
        assert row4["stats/mask_frac"] == pytest.approx(row1["stats/mask_frac"], rel=1e-6)
        assert 0 < row1["stats/mask_frac"] < 0.5


def test_dapo_step_filters_groups_and_shapes_long_responses(tiny_model_dir, small_model_cfg):
    run = make_run(tiny_model_dir, small_model_cfg, steps=1, objective="dapo", overlong_buffer=0.5)
    row = rl_step(run, 0)
    assert row["stats/gen_batches"] >= 1 and 0 <= row["stats/filtered_groups"] < 1
    assert row["stats/overlong_penalty"] < 0  # random weights: many responses run into the 8-token cap
    for key in ("reward/mean", "stats/groups_all_correct", "loss/pg", "stats/clip_frac"):
        assert key in row


# ------------------------------------------------------------------------------- objectives II: ERPO, REPO, ADAPO, PAEC
@pytest.mark.parametrize("objective,obj,key,want", [
    ("repo_r", dict(target_entropy=100.0), "zeta", [1e-3, 2e-3]),  # entropy below target: zeta doubles
    ("repo", dict(target_entropy=0.0), "zeta", [1e-3, 5e-4]),  # above target: zeta halves
    ("adapo", dict(target_entropy=100.0), "clip_high", [0.28, 0.308]),  # below target: eps_high * 1.1
    ("paec", dict(anchor_steps=1), "anchor", None),  # H0 = the first step's masked entropy, penalty from step 2
])
def test_objective_controllers_resume_exactly(tiny_model_dir, small_model_cfg, tmp_path, objective, obj, key, want):
    import copy

    obj = dict(objective=objective, **obj, **({} if objective == "paec" else dict(dynamic_sampling=False)))
    straight = make_run(tiny_model_dir, small_model_cfg, steps=2, **obj)
    row1 = rl_step(straight, 0)
    save_checkpoint(tmp_path / "ctrl.pt", straight, 1, [row1], [])
    snapshot = copy.deepcopy(straight.state)
    row2 = rl_step(straight, 1)
    resumed = make_run(tiny_model_dir, small_model_cfg, steps=2, **obj)
    assert resumed.state != snapshot  # the initial state, before loading
    assert load_checkpoint(tmp_path / "ctrl.pt", resumed)[0] == 1
    assert resumed.state == snapshot
    assert without_timings([rl_step(resumed, 1)]) == without_timings([row2]) and resumed.state == straight.state
    a, b = adapter_state(straight), adapter_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    if want is not None:  # the value applied at each step (the controller acts from the next step)
        assert [row1[f"stats/{key}"], row2[f"stats/{key}"]] == pytest.approx(want)
    else:
        assert snapshot["anchor"] == pytest.approx(row1["stats/paec_masked_entropy"])
        assert row1["stats/paec_floor"] == 0.0 and row2["stats/paec_floor"] == pytest.approx(0.8 * snapshot["anchor"])


def test_erpo_sees_whole_groups_and_bf16_logprobs_reach_the_objective(tiny_model_dir, small_model_cfg):
    seen = []
    for objective, obj in (("erpo", {}), ("adapo", dict(dynamic_sampling=False, logprob_dtype="bfloat16"))):
        run = make_run(tiny_model_dir, small_model_cfg, steps=1, objective=objective, **obj)
        inner = run.loss_fn
        run.loss_fn = lambda batch, stats, cfg, state, f=inner: seen.append((batch, stats.logp.detach())) or f(
            batch, stats, cfg, state)
        row = rl_step(run, 0)
        assert all(v == v for v in row.values())
        if objective == "erpo":
            assert {"stats/erpo_gate_mean", "stats/erpo_progress", "stats/erpo_adv_abs"} <= set(row)
            batch = seen[0][0]
            B, G = batch.rollout.mask.shape[0], run.rl.group_size
            assert torch.equal(batch.rollout.group_ids, torch.arange(B) // G) and batch.mask.shape[0] == B // 2
            assert torch.equal(batch.group_ids, batch.rollout.group_ids[batch.rollout_rows])
            assert torch.equal(batch.old_logp, batch.rollout.old_logp[batch.rollout_rows])
            assert len(set(batch.group_ids.tolist())) > 1
    bf16 = lambda x: torch.equal(x, x.bfloat16().float())  # noqa: E731
    assert not bf16(seen[0][1]) and not bf16(seen[0][0].old_logp)  # float32 by default
    assert all(bf16(logp) and bf16(batch.old_logp) for batch, logp in seen[2:])
    assert all(batch.ref_logp is None for batch, _ in seen[2:])  # DAPO reads no reference log-probs: none computed


@pytest.mark.parametrize("objective", sorted(__import__("entropy_rl.objectives", fromlist=["OBJECTIVES"]).OBJECTIVES))
def test_every_objective_preset_runs_a_step_of_the_loop(tiny_model_dir, small_model_cfg, objective):
    """Each registered objective, with its params.yaml preset, goes through one real step of the loop."""
    from conftest import ROOT
    from entropy_rl.config import objective_settings

    settings = objective_settings(ROOT / "params.yaml", objective)
    settings["max_gen_batches"] = 0  # random weights rarely give mixed groups: let dynamic sampling keep looking
    run = make_run(tiny_model_dir, small_model_cfg, steps=2, objective=objective, **settings)
    before = adapter_state(run)
    row = rl_step(run, 0)
    assert all(math.isfinite(v) for v in row.values()), row
    undocumented = sorted(set(row) - set(glossary()))
    assert not undocumented, f"{objective} logs keys without a glossary line (register them with its metrics=): {undocumented}"
    after = adapter_state(run)
    assert any(not torch.equal(before[k], after[k]) for k in before), f"{objective}: no parameter moved"
