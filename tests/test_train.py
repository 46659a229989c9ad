"""The RL loop: a step does what it says, a killed run resumes exactly, bad objectives fail clearly."""
import pytest
import torch

from entropy_rl.config import RLConfig
from entropy_rl.data import arithmetic_splits
from entropy_rl.config import DataConfig
from entropy_rl.model import load_policy, load_tokenizer
from entropy_rl.objectives import make_objective_config
from entropy_rl.rewards import arithmetic_reward
from entropy_rl.train import RLRun, _resume_key, load_checkpoint, rl_step, save_checkpoint, train_rl

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

    assert log_a == log_b and evals_a == evals_b
    a, b = adapter_state(straight), adapter_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_other_settings_is_not_resumed(tiny_model_dir, small_model_cfg, tmp_path, capsys):
    train_rl(make_run(tiny_model_dir, small_model_cfg, steps=2), tmp_path / "c.pt")
    other = make_run(tiny_model_dir, small_model_cfg, steps=2, clip_high=0.28)
    log, _ = train_rl(other, tmp_path / "c.pt")
    assert "other settings" in capsys.readouterr().out and [r["step"] for r in log] == [1, 2]


def test_unknown_objective_fails_with_valid_names(tiny_model_dir, small_model_cfg):
    run = make_run(tiny_model_dir, small_model_cfg, steps=1)
    with pytest.raises(Exception, match="valid objectives: .*grpo"):
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
    assert rows_a == rows_b and straight.state == resumed.state
    a, b = adapter_state(straight), adapter_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedules_that_use_the_total_do_not_resume_with_other_steps(tiny_model_dir, small_model_cfg):
    key = lambda steps, **o: _resume_key(make_run(tiny_model_dir, small_model_cfg, steps=steps, **o))  # noqa: E731
    assert key(2) == key(4)  # GRPO: a run may be extended
    assert key(2, objective="cov_annealed") != key(4, objective="cov_annealed")
    assert key(2, objective="cov_annealed", schedule="constant") == key(4, objective="cov_annealed", schedule="constant")


@pytest.mark.parametrize("objective", ["grpo", "high_entropy_mask"])
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
