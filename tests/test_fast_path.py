"""Each speed-up of the RL step against the path it replaces (issue 15): the lean sampling loop returns the tokens
``generate`` returns for the seed, and its token statistics equal a recomputed pass; forward passes grouped by
length equal one full-width pass (values and gradients); a step on the sampler's statistics equals a step on
recomputed ones; the reference pass runs only where it is read; every row carries its phase timings."""
import dataclasses
import json

import pytest
import torch

import entropy_rl.policy as policy_mod
import entropy_rl.rollout.sampling as sampling
from entropy_rl.notebooks import WALL_CLOCK_TAG, scrub
from entropy_rl.policy import _causal_lm, frozen_stats, length_groups, policy_stats
from entropy_rl.rl import TIMING_PREFIX, compute_dtype, heldout_eval, rl_step, without_timings
from entropy_rl.rollout import HFRollout
from entropy_rl.rollout.sampling import PreallocLayer
from entropy_rl.token_stats import token_stats

from test_train import load_policy, load_tokenizer, make_run

PROMPTS = ["1+2=", "345+678=", "9="]
EOS_SCALE = 0.4  # a mix of lengths (1 to the cap) for these prompts and seeds


@pytest.fixture
def policy(tiny_model_dir, small_model_cfg):
    """The tiny policy with a random (non-zero) adapter, so that LoRA takes part in every pass, and an EOS row of the
    head along the mean hidden state, so that responses end at lengths from 1 to the cap (rows leave the batch)."""
    p = load_policy(tiny_model_dir, small_model_cfg, seed=0)
    tok = load_tokenizer(tiny_model_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, w in p.named_parameters():
            if "lora_B" in name:
                w.copy_(torch.randn(w.shape, generator=g) * 0.3)
        enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
        h = _causal_lm(p).model(**enc).last_hidden_state.reshape(-1, _causal_lm(p).config.hidden_size).mean(0)
        _causal_lm(p).lm_head.weight[tok.eos_token_id] = h / h.norm() * EOS_SCALE
    return p


@pytest.mark.parametrize("temperature,seed,batch_size", [(1.0, 0, 256), (0.7, 3, 5)])
def test_lean_loop_samples_the_tokens_generate_samples(policy, tiny_model_dir, temperature, seed, batch_size):
    tok = load_tokenizer(tiny_model_dir)
    make = lambda loop: HFRollout(policy, tok, 12, temperature, batch_size, loop=loop)  # noqa: E731
    lean, gen = make("lean").generate(PROMPTS, n=4, seed=seed), make("generate").generate(PROMPTS, n=4, seed=seed)
    assert torch.equal(lean.response_ids, gen.response_ids) and torch.equal(lean.response_mask, gen.response_mask)
    assert lean.texts == gen.texts and torch.equal(lean.truncated, gen.truncated)
    assert 0 < int(lean.truncated.sum()) < len(lean.texts)  # some responses stop early, some hit the cap
    g_lean = make("lean").generate(PROMPTS, n=2, seed=seed, greedy=True)
    assert torch.equal(g_lean.response_ids, make("generate").generate(PROMPTS, n=2, seed=seed, greedy=True).response_ids)
    assert gen.sampler_stats is None and lean.sampler_stats is not None


@pytest.mark.parametrize("compact_at", [0.0, 1.0])
def test_dropping_finished_rows_changes_no_token(policy, tiny_model_dir, monkeypatch, compact_at):
    """Never dropping finished rows (0) and dropping them at every EOS (1) give the default's tokens and stats."""
    tok = load_tokenizer(tiny_model_dir)
    want = HFRollout(policy, tok, 12, 1.0).generate(PROMPTS, n=4, seed=2)
    monkeypatch.setattr(sampling, "COMPACT_AT", compact_at)
    got = HFRollout(policy, tok, 12, 1.0).generate(PROMPTS, n=4, seed=2)
    assert torch.equal(got.response_ids, want.response_ids)
    torch.testing.assert_close(got.sampler_stats.logp, want.sampler_stats.logp, rtol=0, atol=1e-6)


def test_sampler_statistics_equal_a_recomputed_pass(policy, tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    ro = HFRollout(policy, tok, 12, 0.8).generate(PROMPTS, n=4, seed=0)
    old = frozen_stats(policy, ro, 0.8)
    m = ro.response_mask.bool()
    torch.testing.assert_close(ro.sampler_stats.logp[m], old.logp[m], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ro.sampler_stats.entropy[m], old.entropy[m], rtol=1e-4, atol=1e-5)
    assert not ro.sampler_stats.logp[~m].any() and not ro.sampler_stats.entropy[~m].any()
    assert not ro.sampler_stats.logp.requires_grad and not torch.is_inference(ro.sampler_stats.logp)


def test_the_cache_refuses_to_overflow():
    layer = PreallocLayer(3)
    layer.update(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))
    with pytest.raises(RuntimeError, match="3 positions is full"):
        layer.update(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))


def test_length_groups_by_hand():
    assert length_groups([5, 50, 6, 49], pass_cost=10) == [[0, 2], [3, 1]]  # 12 + 100 + 20 beats 210 and 150
    assert length_groups([5, 50, 6, 49], pass_cost=1000) == [[0, 2, 3, 1]]  # one pass when passes are dear
    assert length_groups([7], pass_cost=0) == [[0]]


def _one_full_pass(model, ro, temperature):
    """The replaced path: one forward pass over every column of the batch."""
    causal = _causal_lm(model)
    ids, am = ro.input_ids(), ro.attention_mask()
    hidden = causal.model(input_ids=ids, attention_mask=am, position_ids=(am.cumsum(-1) - 1).clamp(min=0),
                          use_cache=False).last_hidden_state
    n = ro.prompt_ids.shape[1]
    return token_stats(hidden[:, n - 1 : -1], causal.lm_head.weight, ro.response_ids, ro.response_mask, temperature)


@pytest.mark.parametrize("max_groups,pass_cost", [(1, 0), (2, 0), (4, 0), (4, 64)])
def test_grouped_passes_equal_one_full_pass(policy, tiny_model_dir, monkeypatch, max_groups, pass_cost):
    tok = load_tokenizer(tiny_model_dir)
    ro = HFRollout(policy, tok, 12, 1.0).generate(PROMPTS, n=4, seed=1)
    m = ro.response_mask
    loss = lambda s: (s.logp * m).sum() + 0.3 * (s.entropy * m).sum()  # noqa: E731
    params = [p for p in policy.parameters() if p.requires_grad]

    def grads(fn):
        policy.zero_grad()
        s = fn(policy, ro, 1.0)
        loss(s).backward()
        return s, [p.grad.clone() for p in params]

    want, g_want = grads(_one_full_pass)
    monkeypatch.setattr(policy_mod, "MAX_GROUPS", max_groups)
    monkeypatch.setattr(policy_mod, "PASS_COST", pass_cost)
    monkeypatch.setattr(policy_mod, "length_groups",
                        lambda lengths, f=length_groups: f(lengths, max_groups=max_groups, pass_cost=pass_cost))
    got, g_got = grads(policy_stats)
    for f in ("logp", "entropy", "topp_entropy", "top2_gap", "lse"):
        torch.testing.assert_close(getattr(got, f), getattr(want, f), rtol=1e-4, atol=1e-5)
    assert torch.equal(got.topp_size, want.topp_size) and torch.equal(got.topp_overflow, want.topp_overflow)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_step_on_the_sampler_statistics_equals_a_step_on_recomputed_ones(tiny_model_dir, small_model_cfg):
    rows = {}
    for mode in ("sampler", "recompute"):
        run = make_run(tiny_model_dir, small_model_cfg, steps=4, rl={"old_stats": mode, "eval_every": 4})
        rows[mode] = without_timings([rl_step(run, 0), rl_step(run, 1)])
    for a, b in zip(rows["sampler"], rows["recompute"]):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), k


def test_auto_uses_the_sampler_in_float32_and_sampler_needs_one_that_reports(tiny_model_dir, small_model_cfg,
                                                                             monkeypatch):
    calls = []
    inner = frozen_stats
    monkeypatch.setattr("entropy_rl.rl.frozen_stats", lambda *a, **k: calls.append(k) or inner(*a, **k))
    run = make_run(tiny_model_dir, small_model_cfg, steps=4, rl={"eval_every": 4})
    assert compute_dtype(run.policy) == torch.float32
    row = rl_step(run, 0)
    assert calls == [] and row["timing_s/old"] < 0.01  # no no-grad pass: neither pi_old nor the reference
    run.sampler = HFRollout(run.policy, run.tokenizer, run.rl.max_new_tokens, run.rl.temperature, loop="generate")
    rl_step(run, 1)
    assert calls == [{"batch_size": run.rl.forward_batch_size, "nucleus": False}]  # generate reports nothing: recomputed
    run.rl = dataclasses.replace(run.rl, old_stats="sampler")
    with pytest.raises(ValueError, match="rl.old_stats: 'sampler' needs a sampler"):
        rl_step(run, 2)


def test_the_reference_pass_runs_only_where_it_is_read(tiny_model_dir, small_model_cfg, monkeypatch):
    refs = []
    inner = frozen_stats
    monkeypatch.setattr("entropy_rl.rl.frozen_stats",
                        lambda *a, **k: refs.append(k.get("reference", False)) or inner(*a, **k))
    run = make_run(tiny_model_dir, small_model_cfg, steps=3, rl={"eval_every": 2})  # GRPO, kl_coef 0
    log = [rl_step(run, s) for s in range(3)]
    assert ["stats/kl_ref" in r for r in log] == [False, True, True]  # evaluation steps 2 and 3 (the last)
    assert ["timing_s/ref" in r for r in log] == [False, True, True] and refs == [True, True]
    refs.clear()
    run = make_run(tiny_model_dir, small_model_cfg, steps=3, rl={"eval_every": 2}, kl_coef=0.1)
    assert all("stats/kl_ref" in rl_step(run, s) for s in range(3)) and refs == [True] * 3


@pytest.mark.parametrize("objective,nucleus", [("grpo", False), ("paec", True)])
def test_only_paec_asks_for_the_nucleus_statistics(tiny_model_dir, small_model_cfg, monkeypatch, objective,
                                                     nucleus):
    """The update's pass computes topp/top2 statistics only for an objective whose needs() reads them (PAEC);
    no other pass of the step (pi_old, the reference) computes them."""
    asked = []
    inner_p, inner_f = policy_stats, frozen_stats
    monkeypatch.setattr("entropy_rl.rl.policy_stats", lambda *a, **k: asked.append(k["nucleus"]) or inner_p(*a, **k))
    monkeypatch.setattr("entropy_rl.rl.frozen_stats",
                        lambda *a, **k: asked.append(("frozen", k["nucleus"])) or inner_f(*a, **k))
    run = make_run(tiny_model_dir, small_model_cfg, steps=1, objective=objective, rl={"old_stats": "recompute"})
    row = rl_step(run, 0)
    assert run.obj_cfg.needs().nucleus is nucleus
    assert [a for a in asked if not isinstance(a, tuple)] == [nucleus] * run.rl.minibatches
    assert {a for a in asked if isinstance(a, tuple)} == {("frozen", False)}
    assert ("stats/paec_topp_entropy" in row) is nucleus


def test_every_row_carries_its_phase_timings(tiny_model_dir, small_model_cfg):
    run = make_run(tiny_model_dir, small_model_cfg, steps=2)
    row = rl_step(run, 0)
    phases = {"rollout", "reward", "old", "update", "controllers"}
    assert {f"{TIMING_PREFIX}{p}" for p in phases | {"step"}} <= set(row)
    assert all(row[f"{TIMING_PREFIX}{p}"] >= 0 for p in phases)
    assert row["timing_s/step"] >= sum(row[f"{TIMING_PREFIX}{p}"] for p in phases)
    assert heldout_eval(run, 1)["timing_s/heldout"] > 0
    assert without_timings([row])[0] == {k: v for k, v in row.items() if not k.startswith(TIMING_PREFIX)}


def test_scrub_leaves_wall_clock_output_out(tmp_path):
    cell = lambda tags, text: {"cell_type": "code", "metadata": {"tags": tags}, "source": [],  # noqa: E731
                               "outputs": [{"output_type": "stream", "name": "stdout", "text": [text]}]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": [cell([WALL_CLOCK_TAG], "0.93 s\n"), cell([], "kept\n")], "metadata": {}}))
    scrub(path)
    cells = json.loads(path.read_text())["cells"]
    assert "0.93" not in json.dumps(cells[0]) and "wall-clock seconds" in cells[0]["outputs"][0]["text"][0]
    assert cells[1]["outputs"][0]["text"] == ["kept\n"]
