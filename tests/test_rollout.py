"""The rollout interface: backends by name, the mismatch correction (truncated importance sampling), the vLLM
engine settings, the pointer to a pretrained base, and the RL loop driven through a sampler that reports log-probs."""
import dataclasses
import math

import pytest
import torch

from entropy_rl.config import ConfigError, DataConfig, RLConfig, RolloutConfig, load_profile
from entropy_rl.data import arithmetic_splits
from entropy_rl.model import BASE_POINTER, load_policy, load_tokenizer, resolve_source, write_base_pointer
from entropy_rl.objectives import RLBatch, get_objective, make_objective_config
from entropy_rl.policy import frozen_stats
from entropy_rl.rollout import HFRollout, Rollouts, finish_rollouts, make_sampler, tis_weights
from entropy_rl.rollout.vllm import engine_kwargs, max_lora_rank
from entropy_rl.token_stats import TokenStats
from entropy_rl.rl import RLRun, rl_step, use_tis

from conftest import ROOT


# ---- truncated importance sampling ---------------------------------------------------------------------------
def test_tis_weights_by_hand():
    old = torch.log(torch.tensor([[0.3, 0.5, 0.2], [0.1, 0.9, 0.5]]))
    rollout = torch.log(torch.tensor([[0.1, 0.5, 0.4], [0.2, 0.9, 0.5]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    w, info = tis_weights(old, rollout, mask, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.0, 1.0]]))  # 3 capped at 2; padding 0
    assert info["stats/tis_weight_mean"] == pytest.approx(5.5 / 5)
    assert info["stats/tis_capped_frac"] == pytest.approx(1 / 5)
    k3 = lambda r: r - math.log(r) - 1  # noqa: E731  (pi_old / pi_rollout = r)
    assert info["stats/kl_rollout"] == pytest.approx((k3(3.0) + k3(0.5)) / 5, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_tis_weights_match_a_float64_loop(seed):
    g = torch.Generator().manual_seed(seed)
    old, rollout = -torch.rand(3, 7, generator=g) * 3, -torch.rand(3, 7, generator=g) * 3
    mask = (torch.rand(3, 7, generator=g) > 0.3).long()
    w, _ = tis_weights(old, rollout, mask, cap=1.5)
    for b in range(3):
        for t in range(7):
            want = min(math.exp(float(old[b, t].double() - rollout[b, t].double())), 1.5) * int(mask[b, t])
            assert float(w[b, t]) == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert not w.requires_grad


@pytest.mark.parametrize("name", ["grpo", "dapo", "clip_cov", "paec", "repo_r"])
def test_is_weights_scale_each_tokens_policy_loss(name):
    """Weights of 1 change nothing; other weights reweight the per-token policy loss before aggregation."""
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(4, 5, generator=g)).requires_grad_()
    old = logp.detach() - 0.05 * torch.randn(4, 5, generator=g)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None].expand(4, 5).clone()
    mask = torch.ones(4, 5, dtype=torch.long)
    mask[1, 3:] = 0
    ent = torch.rand(4, 5, generator=g) + 0.1
    cfg = make_objective_config(name, {"kl_coef": 0.0} if name in ("grpo", "dapo") else {})
    fn = get_objective(name)
    stats = lambda lp: TokenStats(logp=lp, entropy=ent, topp_entropy=ent, topp_size=torch.full((4, 5), 4),  # noqa: E731
                                  top2_gap=ent)
    state = __import__("entropy_rl.objectives", fromlist=["x"]).init_controller_state(name, cfg)
    state.update(step=0, total_steps=10)
    plain, _ = fn(RLBatch(old_logp=old, advantages=adv, mask=mask), stats(logp), cfg, state)
    ones, _ = fn(RLBatch(old_logp=old, advantages=adv, mask=mask, is_weights=torch.ones(4, 5)), stats(logp), cfg, state)
    assert torch.equal(plain, ones)
    if name == "grpo":  # by hand: token-level weights inside the seq-mean-token-mean aggregation
        w = torch.rand(4, 5, generator=g) * 2
        loss, _ = fn(RLBatch(old_logp=old, advantages=adv, mask=mask, is_weights=w), stats(logp), cfg, state)
        ratio = torch.exp(logp - old)
        pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)) * w * mask
        want = (pg.sum(-1) / mask.sum(-1)).mean()
        torch.testing.assert_close(loss, want)


def test_use_tis_modes():
    ro = Rollouts(torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1, 2), torch.ones(1, 2), ["x"], torch.tensor([False]))
    assert not use_tis("auto", ro) and not use_tis("off", ro)
    with pytest.raises(ValueError, match="rl.rollout.tis: 'on' needs the sampler's log-probs"):
        use_tis("on", ro)
    ro.rollout_logp = torch.zeros(1, 2)
    assert use_tis("auto", ro) and use_tis("on", ro) and not use_tis("off", ro)


# ---- the RL loop with a sampler that reports its own log-probs ------------------------------------------------
class OffPolicySampler(HFRollout):
    """A test double of a separate engine: Hugging Face samples, reported with log-probs that are the trainer's
    shifted by a known amount (a sampler 'mismatched' by exp(shift))."""

    def __init__(self, *args, shift=0.0, **kw):
        super().__init__(*args, **kw)
        self.shift, self.synced = shift, []

    def generate(self, prompts, n, seed, greedy=False):
        ro = super().generate(prompts, n, seed, greedy)
        ro.rollout_logp = (frozen_stats(self.model, ro, self.temperature).logp - self.shift) * ro.response_mask
        return ro

    def sync(self, policy, version):
        self.synced.append(version)


def make_run(model_dir, model_cfg, tis="auto", shift=0.3):
    rows = arithmetic_splits(DataConfig(n_sft=10, n_rl=40, n_eval=8, digits=2))
    policy = load_policy(model_dir, model_cfg, seed=0)
    tok = load_tokenizer(model_dir)
    rl = RLConfig(steps=2, prompts_per_step=4, group_size=4, max_new_tokens=8, minibatches=2, lr=1e-2,
                  rollout=RolloutConfig(tis=tis, tis_cap=1.2))
    return RLRun(policy=policy, tokenizer=tok, objective="grpo", obj_cfg=make_objective_config("grpo", {}), rl=rl,
                 train_rows=rows["rl"], eval_rows=rows["eval"], reward_fn=lambda t, a: float(len(t) % 2),
                 sampler=OffPolicySampler(policy, tok, 8, shift=shift))


def test_loop_syncs_each_step_and_applies_the_correction(tiny_model_dir, small_model_cfg):
    run = make_run(tiny_model_dir, small_model_cfg)
    row0 = rl_step(run, 0)
    row1 = rl_step(run, 1)
    assert run.sampler.synced == [0, 2]  # the policy's version: optimizer updates so far (2 per step)
    # pi_old / pi_rollout = exp(0.3) = 1.35 > cap 1.2: every token is capped
    for row in (row0, row1):
        assert row["stats/tis_weight_mean"] == pytest.approx(1.2, rel=1e-5)
        assert row["stats/tis_capped_frac"] == pytest.approx(1.0)
        assert row["stats/kl_rollout"] == pytest.approx(math.exp(0.3) - 0.3 - 1, rel=1e-3)
    off = rl_step(make_run(tiny_model_dir, small_model_cfg, tis="off"), 0)
    assert not any(k.startswith("stats/tis") for k in off)
    # the weights scale the policy loss: a constant weight 1.2 scales the first update's loss by 1.2
    assert row0["loss/pg"] != off["loss/pg"]


def test_hf_backend_reports_no_log_probs_and_the_loop_skips_the_correction(tiny_model_dir, small_model_cfg):
    policy = load_policy(tiny_model_dir, small_model_cfg, seed=0)
    tok = load_tokenizer(tiny_model_dir)
    sampler = make_sampler(RolloutConfig(), policy, tok, base_dir=tiny_model_dir, model_cfg=small_model_cfg,
                           max_new_tokens=6, temperature=1.0)
    assert isinstance(sampler, HFRollout)
    sampler.sync(policy, 0), sampler.sleep(), sampler.wake()  # no-ops on the trained module itself
    ro = sampler.generate(["1+2="], n=2, seed=0)
    assert ro.rollout_logp is None and ro.select(torch.tensor([1])).rollout_logp is None


def test_finish_rollouts_from_reported_lengths(tiny_tok):
    ids = torch.tensor([[5, 6, tiny_tok.eos_token_id, 9], [5, 5, 5, 5]])
    logp = -torch.ones(2, 4)
    ro = finish_rollouts(tiny_tok, torch.ones(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long), ids, logp,
                         lengths=torch.tensor([3, 4]), truncated=torch.tensor([False, True]))
    assert ro.response_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert ro.response_ids[0, 3] == tiny_tok.pad_token_id and ro.rollout_logp[0].tolist() == [-1, -1, -1, 0]
    assert ro.truncated.tolist() == [False, True]


# ---- vLLM engine settings (pure; the engine itself runs in benchmarks/vllm_sync_check.py) ----------------------
def test_max_lora_rank():
    assert [max_lora_rank(r) for r in (1, 4, 8, 16, 33, 512)] == [1, 8, 8, 16, 64, 512]
    with pytest.raises(ValueError, match="model.lora.r"):
        max_lora_rank(1000)


def test_engine_kwargs_of_the_gpu_profile():
    cfg = load_profile(ROOT / "params.yaml", "consumer-gpu")
    kw = engine_kwargs("Qwen/Qwen2.5-Math-1.5B", cfg.model, cfg.rl.rollout, seed=3)
    assert kw["quantization"] == "bitsandbytes" and kw["dtype"] == "bfloat16"  # the 4-bit base, not merged
    assert kw["enable_lora"] and kw["max_loras"] == 1 and kw["max_lora_rank"] == 32
    assert kw["enable_sleep_mode"] and kw["gpu_memory_utilization"] == 0.3 and kw["max_model_len"] == 4096
    assert kw["logprobs_mode"] == "processed_logprobs"  # log-probs after the temperature, as the trainer's
    assert kw["generation_config"] == "vllm" and kw["seed"] == 3
    assert "revision" not in kw  # none pinned: the default branch, as the trainer loads
    pinned = engine_kwargs("Qwen/Qwen2.5-Math-1.5B", cfg.model, cfg.rl.rollout, seed=3, revision="4a8b1c2")
    assert pinned["revision"] == pinned["tokenizer_revision"] == "4a8b1c2"  # the engine samples the trainer's snapshot
    tiny = load_profile(ROOT / "params.yaml", "tiny")
    assert "quantization" not in engine_kwargs("x", tiny.model, tiny.rl.rollout, seed=0)


# ---- configuration ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, match", [
    ("rl.rollout.backend", "sglang", "rl.rollout.backend: invalid value 'sglang'; valid values: hf, vllm"),
    ("rl.rollout.tis", "yes", "rl.rollout.tis: invalid value 'yes'; valid values: auto, on, off"),
    ("rl.rollout.tis_cap", 0.5, "rl.rollout.tis_cap: must be >= 1"),
    ("rl.rollout.gpu_memory_utilization", 1.5, r"rl.rollout.gpu_memory_utilization: must be in \(0, 1\)"),
    ("rl.rollout.colocate", True, "unknown key 'profiles.tiny.rl.rollout.colocate'"),
    ("rl.optimizer", "sgd", "rl.optimizer: invalid value 'sgd'; valid values: adamw, paged_adamw_8bit"),
    ("rl.template", "chat", "rl.template: invalid value 'chat'"),
])
def test_bad_rollout_settings_are_named(key, value, match):
    with pytest.raises(ConfigError, match=match):
        load_profile(ROOT / "params.yaml", "tiny", {key: value})


def test_gpu_profiles_resolve():
    big, small = (load_profile(ROOT / "params.yaml", n) for n in ("consumer-gpu", "consumer-gpu-0.5b"))
    for cfg in (big, small):
        assert cfg.model.load_in_4bit and cfg.model.compute_dtype == "bfloat16" and cfg.model.gradient_checkpointing
        assert cfg.rl.optimizer == "paged_adamw_8bit" and cfg.rl.rollout.backend == "vllm"
        assert cfg.sft.steps == 0 and cfg.data.task == "math"
        assert set(cfg.eval.benchmarks) == {"math500", "aime24", "aime25", "amc23", "minerva", "olympiadbench"}
    assert big.model.source == "Qwen/Qwen2.5-Math-1.5B" and small.model.source == "Qwen/Qwen2.5-0.5B-Instruct"
    assert dataclasses.replace(small.model, source=big.model.source) == big.model  # only the model differs


# ---- the starting policy as a pointer to a pretrained model ---------------------------------------------------
def test_base_pointer_round_trip(tmp_path, tiny_model_dir, small_model_cfg):
    write_base_pointer(tmp_path / "start", str(tiny_model_dir))
    assert (tmp_path / "start" / BASE_POINTER).exists() and len(list((tmp_path / "start").iterdir())) == 1
    assert resolve_source(tmp_path / "start") == str(tiny_model_dir)
    assert resolve_source(tiny_model_dir) == str(tiny_model_dir) and resolve_source("org/model") == "org/model"
    via = load_policy(tmp_path / "start", small_model_cfg, seed=0)
    direct = load_policy(tiny_model_dir, small_model_cfg, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(via.state_dict().values(), direct.state_dict().values()))
    assert load_tokenizer(tmp_path / "start")("1+2=")["input_ids"] == load_tokenizer(tiny_model_dir)("1+2=")["input_ids"]
    (tmp_path / "start" / BASE_POINTER).write_text("{}")
    with pytest.raises(ValueError, match="entropy_rl_base.json: expected"):
        resolve_source(tmp_path / "start")


# ---- VLLMRollout's own logic against a stand-in engine (the real engine: benchmarks/vllm_sync_check.py) --------
class FakeEngine:
    """Records what VLLMRollout asks of `vllm.LLM` and answers like it: per request n completions with token ids,
    per-token log-prob dicts and a finish reason (the token ids include the EOS it stopped at)."""

    def __init__(self, eos, **kwargs):
        self.kwargs, self.eos, self.calls = kwargs, eos, []

    def generate(self, requests, params, lora_request=None, use_tqdm=True):
        from types import SimpleNamespace as NS

        self.calls.append(("generate", lora_request.lora_int_id if lora_request else None))
        outs = []
        for req, p in zip(requests, params):
            comps = []
            for j in range(p.n):
                n_tok = 2 + (j + p.seed) % 3
                toks = [10 + j] * n_tok + ([self.eos] if j % 2 == 0 else [])
                toks = toks[: p.max_tokens]
                comps.append(NS(index=j, token_ids=toks, finish_reason="stop" if j % 2 == 0 else "length",
                                logprobs=[{t: NS(logprob=-0.1 * (k + 1))} for k, t in enumerate(toks)]))
            outs.append(NS(outputs=comps[::-1]))  # out of order on purpose
        return outs

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self):
        self.calls.append(("wake",))


@pytest.fixture
def fake_vllm(monkeypatch, tiny_tok):
    import sys
    import types
    from types import SimpleNamespace as NS

    engines = []
    vllm = types.ModuleType("vllm")
    vllm.LLM = lambda **kw: engines.append(FakeEngine(tiny_tok.eos_token_id, **kw)) or engines[-1]
    vllm.SamplingParams = lambda **kw: NS(**kw)
    inputs, lora, request = (types.ModuleType(n) for n in ("vllm.inputs", "vllm.lora", "vllm.lora.request"))
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    request.LoRARequest = lambda name, lora_int_id, path: NS(lora_name=name, lora_int_id=lora_int_id, lora_path=path)
    for name, mod in (("vllm", vllm), ("vllm.inputs", inputs), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, mod)
    return engines


def test_vllm_rollout_sync_sleep_and_assembly(fake_vllm, tiny_model_dir, small_model_cfg, tmp_path):
    from entropy_rl.rollout.vllm import VLLMRollout

    tok = load_tokenizer(tiny_model_dir)
    cfg = RolloutConfig(backend="vllm", sleep_mode=True, max_model_len=64)
    sampler = VLLMRollout(tiny_model_dir, tok, small_model_cfg, cfg, max_new_tokens=4, temperature=0.7, seed=5,
                          work_dir=tmp_path)
    engine = fake_vllm[0]
    assert engine.kwargs["model"] == str(tiny_model_dir) and engine.kwargs["max_lora_rank"] == 8
    policy = load_policy(tiny_model_dir, small_model_cfg, seed=0)

    sampler.sync(policy, 0)
    first = sampler.adapter_path
    assert (first / "adapter_config.json").exists() and sampler.lora_request.lora_int_id == 1
    sampler.sync(policy, 0)  # the same version: nothing saved again
    assert sampler.adapter_path == first
    ro = sampler.generate(["1+2=", "34+5="], n=3, seed=100)
    assert engine.calls[-1] == ("generate", 1)
    # completion j of prompt i: 2 + (j + seed_i) % 3 tokens, EOS appended for even j, cut at max_new_tokens = 4
    for i, seed in enumerate((100, 101)):
        for j in range(3):
            n = min(2 + (j + seed) % 3 + (j % 2 == 0), 4)
            b = i * 3 + j
            assert int(ro.lengths[b]) == n and bool(ro.truncated[b]) == (j % 2 == 1)
            assert ro.response_ids[b, :n].tolist()[0] == 10 + j and (ro.response_ids[b, n:] == tok.pad_token_id).all()
            torch.testing.assert_close(ro.rollout_logp[b, :n], -0.1 * torch.arange(1, n + 1, dtype=torch.float32))
            assert (ro.rollout_logp[b, n:] == 0).all()
    assert ro.prompt_ids.shape[0] == 6 and ro.texts[0] == tok.decode(ro.response_ids[0], skip_special_tokens=True)

    sampler.sleep(), sampler.sleep()  # once
    sampler.sync(policy, 2)  # while asleep: only the adapter is saved
    assert sampler.lora_request.lora_int_id == 3 and not first.exists()  # the previous adapter is removed
    sampler.generate(["1+2="], n=1, seed=0)  # wakes first
    assert [c[0] for c in engine.calls] == ["generate", "sleep", "wake", "generate"]
    assert sampler.generate(["1+2="], n=2, seed=0, greedy=True).rollout_logp is None


def test_vllm_eval_backend_serves_the_adapter_without_entropies(fake_vllm, tiny_model_dir, small_model_cfg, tmp_path):
    from entropy_rl.evaluate import load_backend

    backend = load_backend("vllm", tiny_model_dir, tmp_path / "adapter", small_model_cfg, max_new_tokens=4,
                           temperature=1.0, batch_size=32, rollout_cfg=RolloutConfig(backend="vllm"))
    assert backend.batch_size == 32 and backend.tokenizer.eos_token == "</s>"
    gen = backend.generate(["1+2=", "3+4="], n=2, seed=0)
    assert fake_vllm[0].calls == [("generate", 1)]  # the saved adapter, as LoRARequest id 1
    assert gen.entropy_sums is None and len(gen.texts) == 4 and gen.truncated == [False, True, False, True]
