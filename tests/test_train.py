"""The RL loop: a step does what it says, a killed run resumes exactly, bad objectives fail clearly."""
import pytest
import torch

from entropy_rl.config import RLConfig
from entropy_rl.data import arithmetic_splits
from entropy_rl.config import DataConfig
from entropy_rl.model import load_policy, load_tokenizer
from entropy_rl.objectives import make_objective_config
from entropy_rl.rewards import arithmetic_reward
from entropy_rl.train import RLRun, rl_step, train_rl

RL = dict(prompts_per_step=4, group_size=4, max_new_tokens=8, minibatches=2, eval_every=2, eval_prompts=4,
          checkpoint_every=2, lr=1e-2)


def make_run(model_dir, model_cfg, steps, seed=0, **obj):
    rows = arithmetic_splits(DataConfig(n_sft=10, n_rl=40, n_eval=8, digits=2))
    policy = load_policy(model_dir, model_cfg, seed=seed)
    # a random-weight model never earns a reward: reward every response that has a token, to get gradients
    reward = lambda text, answer: float(len(text) % 2)  # noqa: E731
    return RLRun(policy=policy, tokenizer=load_tokenizer(model_dir), objective="grpo",
                 obj_cfg=make_objective_config("grpo", obj), rl=RLConfig(steps=steps, **RL),
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
