"""DAPO and Dr. GRPO losses, dynamic sampling and overlong shaping: hand-computed cases, float64 loop references,
gradients, edge cases and the padding invariance of Dr. GRPO."""
import math
from types import SimpleNamespace

import pytest
import torch

from entropy_rl.advantages import dr_grpo_advantage, grpo_advantage, mixed_groups, overlong_penalty
from entropy_rl.config import ConfigError, RLConfig
from entropy_rl.objectives import RLBatch, get_objective, make_objective_config
from entropy_rl.rollout import Rollouts
from entropy_rl.token_stats import TokenStats
from entropy_rl.rl import concat_rollouts, sample_groups, shaped_rewards


def run_obj(name, logp, old, adv, mask, ref=None, l_max=None, state=None, **cfg):
    stats = TokenStats(logp=logp, entropy=torch.zeros_like(logp))
    batch = RLBatch(old_logp=old, advantages=adv, mask=mask, ref_logp=ref, l_max=l_max)
    return get_objective(name)(batch, stats, make_objective_config(name, cfg), state or {})


def case(seed=0, B=4, T=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=dtype) * 3
    logp = (old + 0.4 * torch.randn(B, T, generator=g, dtype=dtype)).requires_grad_(True)
    adv = torch.randn(B, 1, generator=g, dtype=dtype).expand(B, T).clone()
    mask = (torch.rand(B, T, generator=g) > 0.25).long()
    mask[:, 0] = 1
    return logp, old, adv * mask, mask


def reference_pg(logp, old, adv, mask, eps_lo, eps_hi, mode, l_max=None):
    """Plain float64 loops of the clipped surrogate under one aggregation mode."""
    tokens, per_seq, n_tok = [], [], 0
    for i in range(len(mask)):
        s, n = 0.0, 0
        for t in range(len(mask[i])):
            if mask[i][t]:
                r = math.exp(logp[i][t] - old[i][t])
                s += -min(r * adv[i][t], min(max(r, 1 - eps_lo), 1 + eps_hi) * adv[i][t])
                n += 1
        per_seq.append((s, n))
        n_tok += n
    if mode == "token-mean":
        return sum(s for s, _ in per_seq) / n_tok
    if mode == "seq-mean-token-sum-norm":
        return sum(s for s, _ in per_seq) / (len(mask) * l_max)
    raise ValueError(mode)


# ----------------------------------------------------------------------------------------------------- DAPO
def test_dapo_hand_computed_2x4():
    old = torch.zeros(2, 4)
    logp = torch.tensor([[0.0, math.log(1.5), math.log(1.1), 0.0], [math.log(0.5), 0.0, 0.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-2.0, -2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    loss, m = run_obj("dapo", logp, old, adv, mask)
    # A>0: r = 1, 1.5 -> clipped at 1 + 0.28, 1.1 (inside); A<0: r = 0.5 -> max(1.0, 2 * 0.8) = 1.6, r = 1 -> 2
    want = (-1.0 - 1.28 - 1.1 + 1.6 + 2.0) / 5  # token-mean over all 5 tokens
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert m["stats/clip_frac"].item() == pytest.approx(2 / 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dapo_matches_float64_loop(seed):
    logp, old, adv, mask = case(seed)
    loss, _ = run_obj("dapo", logp, old, adv, mask)
    want = reference_pg(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.28, "token-mean")
    assert loss.item() == pytest.approx(want, rel=1e-12)


def test_dapo_gradcheck():
    logp, old, adv, mask = case(3)
    assert torch.autograd.gradcheck(lambda lp: run_obj("dapo", lp, old, adv, mask)[0], (logp,), eps=1e-6, atol=1e-8)


def test_dapo_token_mean_weighs_long_responses_more_than_grpo():
    # one long and one short response, ratio 1: DAPO = -(sum A)/tokens, GRPO = mean of per-response means
    logp = torch.zeros(2, 4, dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert run_obj("dapo", logp, logp, adv, mask)[0].item() == pytest.approx(-3 / 5)
    assert run_obj("grpo", logp, logp, adv, mask)[0].item() == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------------ Dr. GRPO
def test_dr_grpo_hand_computed_2x4():
    adv_r = dr_grpo_advantage(torch.tensor([1.0, 0.0]), 2)  # [0.5, -0.5]: no std division
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    adv = adv_r[:, None].double() * mask
    logp = torch.zeros(2, 4, dtype=torch.float64)
    loss, _ = run_obj("dr_grpo", logp, logp, adv, mask, l_max=8)
    assert loss.item() == pytest.approx((-0.5 * 3 + 0.5 * 2) / (2 * 8))  # token sum / (B * L_max)


@pytest.mark.parametrize("seed", [0, 1])
def test_dr_grpo_matches_float64_loop_and_gradcheck(seed):
    logp, old, adv, mask = case(seed)
    loss, _ = run_obj("dr_grpo", logp, old, adv, mask, l_max=10)
    want = reference_pg(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.2,
                        "seq-mean-token-sum-norm", l_max=10)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    f = lambda lp: run_obj("dr_grpo", lp, old, adv, mask, l_max=10)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (logp,), eps=1e-6, atol=1e-8)


def test_dr_grpo_loss_does_not_change_with_padding_length():
    logp, old, adv, mask = case(4, T=5)
    pad = lambda x, v=0.0: torch.cat([x, torch.full((x.shape[0], 7), v, dtype=x.dtype)], 1)  # noqa: E731
    padded = (pad(logp.detach()), pad(old), pad(adv), pad(mask, 0))
    a, _ = run_obj("dr_grpo", logp, old, adv, mask, l_max=16)  # the loop passes the length cap as batch.l_max
    b, _ = run_obj("dr_grpo", *padded, l_max=16)
    assert a.item() == pytest.approx(b.item(), rel=1e-14)
    stats = TokenStats(logp=padded[0], entropy=torch.zeros_like(padded[0]))  # the constant set in the config
    c, _ = get_objective("dr_grpo")(RLBatch(*padded[1:]), stats, make_objective_config("dr_grpo", {"l_max": 16}), {})
    assert c.item() == pytest.approx(a.item(), rel=1e-14)
    # without a constant the divisor falls back to the padded width, which is what the constant avoids
    d, _ = run_obj("dr_grpo", *padded)
    assert d.item() == pytest.approx(a.item() * 16 / 12, rel=1e-12)


def test_dr_grpo_edge_cases():
    # all rewards equal -> A = 0 -> zero loss and gradient; a length-1 response; an all-masked row
    adv = dr_grpo_advantage(torch.ones(2), 2)[:, None].double().expand(2, 3).clone()
    logp = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    loss, _ = run_obj("dr_grpo", logp, logp.detach() - 0.1, adv, torch.ones(2, 3, dtype=torch.long), l_max=3)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logp.grad == 0)
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[2.0, 0.0, 0.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
    loss, _ = run_obj("dr_grpo", logp, logp.detach(), adv, torch.tensor([[1, 0, 0], [0, 0, 0]]), l_max=4)
    assert loss.item() == pytest.approx(-2.0 / (2 * 4))  # the all-masked row still counts in B (constant divisor)
    loss.backward()
    assert logp.grad.tolist() == [[-2.0 / 8, 0.0, 0.0], [0.0, 0.0, 0.0]]


# ---------------------------------------------------------------------------------- rollout-level options
def test_mixed_groups_and_overlong_penalty_hand_built():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert mixed_groups(r, 2).tolist() == [False, True, False]
    assert mixed_groups(r, 3).tolist() == [True, True]
    lengths = torch.tensor([5, 6, 7, 8, 10, 12])
    assert overlong_penalty(lengths, 10, 4).tolist() == pytest.approx([0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    assert overlong_penalty(lengths, 10, 4, factor=0.5).tolist() == pytest.approx([0, 0, -0.125, -0.25, -0.5, -0.5])
    assert overlong_penalty(lengths, 10, 0).tolist() == [0.0] * 6
    with pytest.raises(ValueError, match="exceeds the length cap"):
        overlong_penalty(lengths, 10, 11)


def test_overlong_shaping_feeds_the_advantage():
    # two responses, both correct: without shaping A = 0; with the longer one penalized it gets A < 0
    run = SimpleNamespace(obj_cfg=make_objective_config("dapo", {"overlong_buffer": 0.25}), rl=RLConfig(max_new_tokens=8))
    ro = SimpleNamespace(lengths=torch.tensor([5, 8]))
    scores, penalty = shaped_rewards(run, ro, torch.tensor([1.0, 1.0]))  # L_cache = 2: 6 is the last free length
    assert penalty.tolist() == [0.0, -1.0] and scores.tolist() == [1.0, 0.0]
    assert grpo_advantage(scores, 2)[1] < 0 < grpo_advantage(scores, 2)[0]
    off = SimpleNamespace(obj_cfg=make_objective_config("grpo"), rl=RLConfig(max_new_tokens=8))
    assert shaped_rewards(off, ro, torch.tensor([1.0, 1.0]))[0].tolist() == [1.0, 1.0]


class ScriptedSampler:
    """Deterministic stand-in for HFRollout: prompt ``p<i>`` has i+1 prompt tokens; response j of a group is
    ``"<answer-kind>:<j>"`` with j+1 tokens, so the verifier below can script each group's rewards."""

    def __init__(self):
        self.calls = []

    def generate(self, problems, n, seed):
        self.calls.append((list(problems), seed))
        P = max(int(p[1:]) + 1 for p in problems)
        B, T = len(problems) * n, n
        prompt_ids = torch.zeros(B, P, dtype=torch.long)
        prompt_mask = torch.zeros(B, P, dtype=torch.long)
        resp = torch.zeros(B, T, dtype=torch.long)
        resp_mask = torch.zeros(B, T, dtype=torch.long)
        texts = []
        for b in range(B):
            i, j = int(problems[b // n][1:]), b % n
            prompt_ids[b, P - i - 1:] = 7
            prompt_mask[b, P - i - 1:] = 1
            resp[b, : j + 1] = 5
            resp_mask[b, : j + 1] = 1
            texts.append(f"{problems[b // n]}:{j}")
        return Rollouts(prompt_ids, prompt_mask, resp, resp_mask, texts, torch.zeros(B, dtype=torch.bool))


def scripted_run(kinds, prompts_per_step=2, G=2, **obj):
    rows = [{"problem": f"p{i}", "answer": k} for i, k in enumerate(kinds)]

    def reward(text, kind):  # "mixed": sample 0 right, others wrong; "right"/"wrong": all agree
        return {"right": 1.0, "wrong": 0.0}.get(kind, float(text.endswith(":0")))

    return SimpleNamespace(rl=RLConfig(prompts_per_step=prompts_per_step, group_size=G, minibatches=1),
                           obj_cfg=make_objective_config("dapo", obj), train_rows=rows, sampler=ScriptedSampler(),
                           reward_fn=reward, seed=0, tokenizer=SimpleNamespace(pad_token_id=0))


def test_dynamic_sampling_keeps_only_mixed_groups_until_enough():
    kinds = ["right", "wrong", "mixed", "right", "mixed", "wrong", "mixed", "right"]
    run = scripted_run(kinds)
    ro, rewards, info = sample_groups(run, step=3)
    groups = [t.split(":")[0] for t in ro.texts[::2]]
    assert len(groups) == 2 and all(kinds[int(g[1:])] == "mixed" for g in groups)
    assert rewards.tolist() == [1.0, 0.0, 1.0, 0.0] and mixed_groups(rewards, 2).all()
    n_batches = len(run.sampler.calls)
    assert info["stats/gen_batches"] == n_batches >= 2
    assert [len(p) for p, _ in run.sampler.calls] == [2] * n_batches
    seen = [p for ps, _ in run.sampler.calls for p in ps]
    assert len(set(seen)) == len(seen)  # no prompt is drawn twice in a step
    assert len({s for _, s in run.sampler.calls}) == n_batches  # each batch samples with its own seed
    n_mixed = sum(kinds[int(p[1:])] == "mixed" for p in seen)
    assert info["stats/filtered_groups"] == pytest.approx(1 - n_mixed / len(seen))
    # prompts of different widths are left-padded to the widest; response tensors are untouched
    assert ro.prompt_ids.shape[1] == max(int(g[1:]) + 1 for g in groups)
    assert ro.response_mask.tolist() == [[1, 0], [1, 1], [1, 0], [1, 1]]
    # the same step reproduces itself
    again = scripted_run(kinds)
    assert sample_groups(again, step=3)[0].texts == ro.texts


def test_dynamic_sampling_errors_past_max_gen_batches_and_off_keeps_first_batch():
    kinds = ["right", "wrong"] * 6 + ["mixed"]
    with pytest.raises(RuntimeError, match=r"max_gen_batches = 2"):
        sample_groups(scripted_run(kinds, max_gen_batches=2), step=0)
    with pytest.raises(RuntimeError, match="ran out of unused training prompts"):
        sample_groups(scripted_run(kinds, max_gen_batches=0), step=0)  # <= 0: unlimited, until the data runs out
    off = scripted_run(kinds, dynamic_sampling=False)
    ro, rewards, info = sample_groups(off, step=0)
    assert len(off.sampler.calls) == 1 and len(ro.texts) == 4
    assert info["stats/filtered_groups"] == 0.0 and info["stats/gen_batches"] == 1.0


def test_concat_rollouts_left_pads_prompts():
    s = ScriptedSampler()
    a, b = s.generate(["p0"], 2, 0), s.generate(["p2"], 2, 1)
    ro = concat_rollouts([a, b], pad_id=9)
    assert ro.prompt_ids.tolist() == [[9, 9, 7], [9, 9, 7], [7, 7, 7], [7, 7, 7]]
    assert ro.prompt_mask.tolist() == [[0, 0, 1], [0, 0, 1], [1, 1, 1], [1, 1, 1]]
    assert ro.texts == a.texts + b.texts


def test_rollout_options_are_validated():
    with pytest.raises(ConfigError, match="overlong_buffer"):
        make_objective_config("dapo", {"overlong_buffer": 1.5})
    with pytest.raises(ConfigError, match="unknown key 'objectives.dapo.dynamic'"):
        make_objective_config("dapo", {"dynamic": True})
    with pytest.raises(ConfigError, match="micro_batches"):
        RLConfig(prompts_per_step=2, group_size=4, minibatches=2, micro_batches=3)
