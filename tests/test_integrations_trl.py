"""The TRL plug-in (entropy_rl.integrations.trl) on the CPU, for real: a tiny Llama trains under the GRPOTrainer
subclass with each supported objective; on fixed batches the loss and gradients inside the trainer equal the
objective's own (token statistics from the project's fused pass, the objective called directly), with and without
gradient accumulation and for both statistic scopes; the controller state survives a checkpoint and resume;
what TRL cannot supply is refused by name.

Runs in its own environment (`make trl-check` builds .venv-trl); skipped where trl is not installed.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

trl = pytest.importorskip("trl", reason="TRL is not installed here: `make trl-check` builds .venv-trl and runs these")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from entropy_rl.config import ConfigError  # noqa: E402
from entropy_rl.integrations.trl import (STATE_FILE, TRL_UNSUPPORTED, EntropyRLGRPOTrainer, WindowScope,  # noqa: E402
                                         agg_denominator, check_trl_support, load_objective)
from entropy_rl.objectives import RLBatch, get_objective, init_controller_state  # noqa: E402
from entropy_rl.token_stats import token_stats  # noqa: E402

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
SUPPORTED = ["grpo", "dr_grpo", "dapo", "entropy_bonus", "high_entropy_mask", "clip_cov", "kl_cov", "cov_annealed",
             "repo", "repo_r", "adapo", "paec"]
WITH_CONTROLLER = ["entropy_bonus", "cov_annealed", "repo", "repo_r", "adapo", "paec"]
# states under which each controller's term is active (so that the fixed-batch checks exercise it)
ACTIVE_STATE = {
    "entropy_bonus": {"entropy_coef": 0.05, "entropy_last": 0.0},
    "paec": {"anchor": 10.0, "anchor_sum": 40.0, "anchor_steps": 4},
    "repo": {"zeta": 0.04, "entropy_target": 1.0},
    "repo_r": {"zeta": 0.04, "entropy_target": 1.0},
    "adapo": {"clip_high": 0.05, "entropy_target": 1.0},
    "cov_annealed": {"step": 2, "total_steps": 4},  # the cosine decay is half-way (the trainer's round 2 of 4)
}


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + list("0123456789+=abc "))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", padding_side="left")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny Llama with random weights and a character tokenizer, saved in Hugging Face format."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = char_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def reward_ones(completions, **kwargs):
    """A reward that varies within a group of random completions: the share of '1's plus a length term."""
    return [c.count("1") / max(len(c), 1) + 0.05 * len(c) for c in completions]


def make_trainer(model_dir, out, objective, *, ga=1, max_steps=2, save_steps=None, overrides=None, beta=0.0,
                 ignore_rollout_options=True, **kw):
    torch.manual_seed(0)
    _, cfg = load_objective(objective, PARAMS, overrides)
    kw.setdefault("scale_rewards", "none" if cfg.advantage == "dr_grpo" else "group")
    args = trl.GRPOConfig(
        output_dir=str(out), use_cpu=True, per_device_train_batch_size=4, gradient_accumulation_steps=ga,
        num_generations=4, max_completion_length=6, max_steps=max_steps, learning_rate=5e-3, logging_steps=1,
        report_to=[], save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, beta=beta,
        seed=0, dataloader_num_workers=0, temperature=1.0, bf16=False, **kw)
    ds = Dataset.from_dict({"prompt": ["1+2=", "3+4=", "5+6=", "7+8="] * 4})
    return EntropyRLGRPOTrainer(model=model_dir, reward_funcs=reward_ones, args=args, train_dataset=ds,
                                processing_class=char_tokenizer(), objective=objective, params=PARAMS,
                                overrides=overrides, ignore_rollout_options=ignore_rollout_options)


def fixed_inputs(model, B=4, P=3, C=6, seed=0, old_noise=0.05, ref=False) -> dict:
    """A fixed batch shaped like TRL's inputs: prompts without padding, right-padded completions of varying
    length, per-response advantages, old (and reference) log-probs near the current ones."""
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    prompt_ids = torch.randint(4, V, (B, P), generator=g)
    completion_ids = torch.randint(4, V, (B, C), generator=g)
    lengths = torch.tensor([C, C - 2, C - 1, 2] * (B // 4))
    completion_mask = (torch.arange(C)[None] < lengths[:, None]).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, 0)
    with torch.no_grad():
        cur = direct_stats(model, prompt_ids, completion_ids, completion_mask).logp
    out = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": completion_ids,
           "completion_mask": completion_mask, "advantages": torch.randn(B, generator=g),
           "old_per_token_logps": (cur + old_noise * torch.randn(B, C, generator=g)) * completion_mask,
           "num_items_in_batch": completion_mask.sum()}
    if ref:
        out["ref_per_token_logps"] = (cur + 0.2 * torch.randn(B, C, generator=g)) * completion_mask
    return out


def direct_stats(model, prompt_ids, completion_ids, completion_mask, top_p=None):
    """The project's token statistics straight from the decoder and the LM head (no trainer involved)."""
    ids = torch.cat([prompt_ids, completion_ids], 1)
    am = torch.cat([torch.ones_like(prompt_ids), completion_mask], 1)
    hidden = model.model(input_ids=ids, attention_mask=am).last_hidden_state[:, -completion_ids.shape[1] - 1 : -1]
    kw = {} if top_p is None else {"top_p": top_p}
    return token_stats(hidden, model.lm_head.weight, completion_ids, completion_mask, 1.0, model.lm_head.bias, **kw)


def direct_loss(trainer, inputs, seed, scope=None, rows=None):
    """The objective called directly on the same tensors (its own RLBatch, built here, not by the plug-in)."""
    model, cfg = trainer.model, trainer.objective_cfg
    m = inputs["completion_mask"].float()
    stats = direct_stats(model, inputs["prompt_ids"], inputs["completion_ids"], inputs["completion_mask"],
                         getattr(cfg, "top_p", None))
    batch = RLBatch(old_logp=inputs["old_per_token_logps"].float(), advantages=inputs["advantages"][:, None] * m,
                    mask=m, ref_logp=inputs.get("ref_per_token_logps"), l_max=trainer.args.max_completion_length,
                    seed=seed, scope=None if scope is None else dataclasses.replace(scope, rows=rows))
    return get_objective(trainer.method)(batch, stats, cfg, dict(trainer.controller_state))


def grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a: dict, b: dict):
    assert a.keys() == b.keys() and a
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-6, msg=n)


def cat_inputs(parts: list[dict]) -> dict:
    return {k: torch.cat([p[k] for p in parts]) if parts[0][k].dim() else sum(p[k] for p in parts) for k in parts[0]}


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("objective", SUPPORTED)
def test_tiny_model_trains_under_grpo_trainer(tiny_model_dir, tmp_path, objective):
    trainer = make_trainer(tiny_model_dir, tmp_path, objective, ga=2, max_steps=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(float(h["loss"])) for h in logs)
    assert all("stats/entropy" in h and "loss/total" in h for h in logs)  # the objective's own metrics
    moved = sum(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    assert moved > 0, "no parameter changed"
    assert len(trainer.controller_rows) == 2  # one controller update per generation round
    if objective in WITH_CONTROLLER:
        init = init_controller_state(trainer.method, trainer.objective_cfg)
        assert trainer.controller_state != init


# ---------------------------------------------------------------------------------------------- fixed batches
@pytest.mark.parametrize("objective", SUPPORTED)
def test_loss_and_gradients_equal_the_objectives(tiny_model_dir, tmp_path, objective):
    trainer = make_trainer(tiny_model_dir, tmp_path, objective)
    trainer.controller_state.update(ACTIVE_STATE.get(objective, {}))
    trainer.state.global_step, trainer.state.max_steps = 2, 4  # the trainer sets the round counter from these
    model = trainer.model
    model.train()
    inputs = fixed_inputs(model)
    model.zero_grad()
    ref_loss, ref_metrics = direct_loss(trainer, inputs, trainer.window_seed())
    ref_loss.backward()
    ref_grads = grads(model)
    model.zero_grad()
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=1e-5, atol=1e-7)
    assert_same_grads(grads(model), ref_grads)
    assert ref_loss.detach().abs() > 0


def test_kl_term_uses_trl_reference_logps(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, "grpo", beta=0.04, overrides={"kl_coef": 0.04})
    model = trainer.model
    model.train()
    inputs = fixed_inputs(model, ref=True)
    model.zero_grad()
    ref_loss, ref_metrics = direct_loss(trainer, inputs, 0)
    ref_loss.backward()
    ref_grads = grads(model)
    model.zero_grad()
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    assert ref_metrics["loss/kl"] > 0
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=1e-5, atol=1e-7)
    assert_same_grads(grads(model), ref_grads)


def test_log_probs_match_trl_own_pass(tiny_model_dir, tmp_path):
    """The fused pass over the hidden states gives TRL's own log-probs (so on-policy ratios start at exactly 1)."""
    trainer = make_trainer(tiny_model_dir, tmp_path, "grpo")
    inputs = fixed_inputs(trainer.model)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    am = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        theirs, ent, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, am, ids.shape[1] - 3,
                                                                    compute_entropy=True)
        ours = trainer.policy_token_stats(trainer.model, inputs, inputs["completion_mask"].float())
    m = inputs["completion_mask"].bool()
    torch.testing.assert_close(ours.logp[m], theirs[m], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.entropy[m], ent[m], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("objective,scope", [("kl_cov", "minibatch"), ("kl_cov", "microbatch"),
                                             ("high_entropy_mask", "minibatch"), ("clip_cov", "minibatch"),
                                             ("clip_cov", "microbatch"), ("dapo", None), ("dr_grpo", None)])
def test_accumulation_window_and_statistic_scope(tiny_model_dir, tmp_path, objective, scope):
    """Two micro-batches of one window: the accumulated gradient equals the objective's on the window
    (stat_scope: minibatch, or any objective without a selection statistic), or the sum of the objective on each
    micro-batch weighted by its share of the window's denominator (stat_scope: microbatch, verl's and TRL's own)."""
    over = {"k": 0.2} if objective == "kl_cov" else {"clip_ratio": 0.2, "cov_lb": -5.0} if objective == "clip_cov" else {}
    if scope:
        over["stat_scope"] = scope
    trainer = make_trainer(tiny_model_dir, tmp_path, objective, ga=2, overrides=over)
    model = trainer.model
    model.train()
    micro = [fixed_inputs(model, seed=1), fixed_inputs(model, seed=2)]
    trainer._buffered_inputs = micro
    model.zero_grad()
    for m in micro:
        trainer.compute_loss(model, m).backward()
    got = grads(model)
    model.zero_grad()
    agg, ws = trainer.objective_cfg.agg, trainer.window_seed()
    if scope == "microbatch":
        dens = [agg_denominator(m["completion_mask"].float(), agg) for m in micro]
        for j, m in enumerate(micro):
            (direct_loss(trainer, m, ws * 2 + j)[0] * dens[j] / sum(dens)).backward()
    else:
        direct_loss(trainer, cat_inputs(micro), ws)[0].backward()
    assert_same_grads(got, grads(model))
    if scope == "minibatch":  # the micro-batch-local selection would differ: the scope is what made them equal
        assert trainer.last_rl_batch.scope is not None and trainer.last_rl_batch.scope.mask.shape[0] == 8


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("objective", ["paec", "repo_r", "entropy_bonus"])
def test_controller_state_survives_checkpoint_and_resume(tiny_model_dir, tmp_path, objective):
    full = make_trainer(tiny_model_dir, tmp_path / "full", objective, max_steps=4, save_steps=2)
    full.train()
    ckpt = tmp_path / "full" / "checkpoint-2"
    saved = json.loads((ckpt / STATE_FILE).read_text())
    assert saved["method"] == objective and saved["state"] != init_controller_state(objective, full.objective_cfg)
    assert len(saved["rows"]) == 2

    resumed = make_trainer(tiny_model_dir, tmp_path / "resumed", objective, max_steps=4, save_steps=2)
    seen = []
    original = resumed._compute_loss

    def spy(model, inputs):
        seen.append(dict(resumed.controller_state))
        return original(model, inputs)

    resumed._compute_loss = spy
    resumed.train(resume_from_checkpoint=str(ckpt))
    first = {k: v for k, v in seen[0].items() if k not in ("step", "total_steps")}
    assert first == {k: v for k, v in saved["state"].items() if k not in ("step", "total_steps")}
    assert resumed.controller_state["step"] == full.controller_state["step"] == 3  # the round counter continues
    assert len(resumed.controller_rows) == 4
    # the resumed run continues the uninterrupted one exactly: same samples, same updates, same controller
    assert resumed.controller_state == pytest.approx(full.controller_state)


# ---------------------------------------------------------------------------------------------- refusals
def grpo_args(tmp_path, **kw):
    return trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, num_generations=4,
                          report_to=[], **kw)


def test_what_trl_cannot_supply_is_refused_by_name(tmp_path):
    args = grpo_args(tmp_path)
    method, cfg = load_objective("erpo", PARAMS)
    with pytest.raises(ConfigError, match=r"'erpo'.*old_entropy.*group_ids"):
        check_trl_support("erpo", method, cfg, args)
    assert set(TRL_UNSUPPORTED) == {"erpo"}
    method, cfg = load_objective("dapo", PARAMS)
    with pytest.raises(ConfigError, match=r"'dapo'.*dynamic_sampling and overlong_buffer"):
        check_trl_support("dapo", method, cfg, args)
    check_trl_support("dapo", method, cfg, args, ignore_rollout_options=True)
    method, cfg = load_objective("grpo", PARAMS, {"kl_coef": 0.04})
    with pytest.raises(ConfigError, match=r"'grpo'.*kl_coef.*beta.*ref_logp"):
        check_trl_support("grpo", method, cfg, args)
    method, cfg = load_objective("grpo", PARAMS, {"advantage": "rloo"})
    with pytest.raises(ConfigError, match=r"'grpo'.*rloo"):
        check_trl_support("grpo", method, cfg, args)
    method, cfg = load_objective("dr_grpo", PARAMS)
    with pytest.raises(ConfigError, match=r"scale_rewards='none'"):
        check_trl_support("dr_grpo", method, cfg, args)
    check_trl_support("dr_grpo", method, cfg, grpo_args(tmp_path, scale_rewards="none"))
    with pytest.raises(ConfigError, match=r"top_entropy_quantile"):
        check_trl_support("grpo", *load_objective("grpo", PARAMS), grpo_args(tmp_path, top_entropy_quantile=0.2))


def test_trainer_refuses_erpo(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"'erpo'.*old_entropy"):
        make_trainer(tiny_model_dir, tmp_path, "erpo")
    with pytest.raises(ConfigError, match=r"'kl_cov'.*dynamic_sampling"):
        make_trainer(tiny_model_dir, tmp_path, "kl_cov", ignore_rollout_options=False)
