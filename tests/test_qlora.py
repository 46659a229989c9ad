"""QLoRA on the CPU: a 4-bit (bitsandbytes nf4, double quantization) base with fp32 compute, LoRA steps on it, and
an adapter save/load round trip that leaves generations unchanged."""
import dataclasses

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from entropy_rl.config import DataConfig, LoraConfig, ModelConfig, RLConfig  # noqa: E402
from entropy_rl.data import arithmetic_splits  # noqa: E402
from entropy_rl.model import build_tiny, keep_cpu_4bit_trainable, load_base, load_policy, save_adapter  # noqa: E402
from entropy_rl.objectives import make_objective_config  # noqa: E402
from entropy_rl.rollout import HFRollout  # noqa: E402
from entropy_rl.rl import RLRun, rl_step  # noqa: E402

# bitsandbytes' CPU 4-bit kernels need layers wider than the 32-wide test model
CFG = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, lora=LoraConfig(r=4, alpha=8),
                  load_in_4bit=True, compute_dtype="float32")


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory, tiny_tok):
    d = tmp_path_factory.mktemp("wide_model")
    build_tiny(CFG, tiny_tok, seed=0).save_pretrained(d)
    tiny_tok.save_pretrained(d)
    return d


def lora_grads(policy, ids):
    """The LoRA B gradients of the first decoder layer after a backward of the summed logits (train mode)."""
    policy.train()
    policy.zero_grad(set_to_none=True)
    policy(input_ids=ids).logits.float().pow(2).mean().backward()
    return {n: p.grad.clone() for n, p in policy.named_parameters() if "layers.0." in n and "lora_B" in n}


def test_4bit_load_on_the_cpu_is_nf4_double_quant_fp32_compute(wide_dir):
    model = load_base(wide_dir, CFG)
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 2 * 7  # every projection of both blocks
    qs = linears[0].weight.quant_state
    assert qs.quant_type == "nf4" and qs.nested  # double quantization: the absmax is quantized too
    assert linears[0].compute_dtype == torch.float32
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit) and model.lm_head.weight.dtype == torch.float32
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in linears)  # see the next test


def test_generate_does_not_cut_the_gradients_through_the_4bit_base(wide_dir, tiny_tok):
    """Regression: bitsandbytes repacks 4-bit weights for an inference-only CPU kernel on the first no-grad eval
    forward (inside generate); without `keep_cpu_4bit_trainable` every later gradient through the base is 0."""
    policy = load_policy(wide_dir, CFG, seed=0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)  # non-zero B, so that lora_A and everything below get gradients too
    ids = torch.tensor([tiny_tok("12+34=")["input_ids"]] * 2)
    before = lora_grads(policy, ids)
    HFRollout(policy, tiny_tok, max_new_tokens=4).generate(["1+2="], n=2, seed=0)
    after = lora_grads(policy, ids)
    assert all(before[k].abs().sum() > 0 for k in before)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=1e-4, atol=1e-7)


def test_the_repack_switch_is_what_keeps_them(wide_dir, tiny_tok):
    """The same model with the switch turned back on loses the gradients after generate: the fix is load-bearing
    on CPUs with AVX512-BF16 (where bitsandbytes repacks); elsewhere the flag was never set."""
    policy = load_policy(wide_dir, CFG, seed=0)
    linears = [m for m in policy.modules() if isinstance(m, bnb.nn.Linear4bit)]
    if not bnb.nn.modules.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    for m in linears:
        m.support_avx512bf16_for_cpu = True
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    ids = torch.tensor([tiny_tok("12+34=")["input_ids"]] * 2)
    right = lora_grads(policy, ids)
    HFRollout(policy, tiny_tok, max_new_tokens=4).generate(["1+2="], n=2, seed=0)
    wrong = lora_grads(policy, ids)  # only the LoRA paths still carry gradient, not the base layers
    assert max(((wrong[k] - right[k]).norm() / right[k].norm()).item() for k in right if "q_proj" in k) > 0.5
    assert keep_cpu_4bit_trainable(load_base(wide_dir, CFG)) == 0  # load_base already switched it off


def test_lora_rl_step_on_the_4bit_base(wide_dir, tiny_tok):
    rows = arithmetic_splits(DataConfig(n_sft=10, n_rl=40, n_eval=8, digits=2))
    policy = load_policy(wide_dir, dataclasses.replace(CFG, gradient_checkpointing=True), seed=0)
    run = RLRun(policy=policy, tokenizer=tiny_tok, objective="grpo", obj_cfg=make_objective_config("grpo", {}),
                rl=RLConfig(steps=1, prompts_per_step=4, group_size=4, max_new_tokens=6, minibatches=2,
                            micro_batches=2, lr=1e-2),
                train_rows=rows["rl"], eval_rows=rows["eval"], reward_fn=lambda t, a: float(len(t) % 2))
    lora = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad and p.dtype.is_floating_point}
    assert lora and all("lora_" in n for n in lora)
    row = rl_step(run, 0)
    assert row["stats/grad_norm"] > 0 and torch.isfinite(torch.tensor(row["loss/total"]))
    moved = {n for n, p in policy.named_parameters() if n in lora and not torch.equal(p, lora[n])}
    assert any("layers.0." in n and "lora_B" in n for n in moved)  # the first block learns: gradients went through
    assert all(torch.equal(p, frozen[n]) for n, p in policy.named_parameters() if n in frozen)


def test_adapter_round_trip_leaves_generations_unchanged(wide_dir, tiny_tok, tmp_path):
    policy = load_policy(wide_dir, CFG, seed=3)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # a trained-looking adapter that changes the outputs
    prompts = ["12+34=", "56+78=", "9+10="]
    greedy = HFRollout(policy, tiny_tok, max_new_tokens=10).generate(prompts, n=1, seed=0, greedy=True)
    sampled = HFRollout(policy, tiny_tok, max_new_tokens=10).generate(prompts, n=3, seed=7)
    save_adapter(policy, tmp_path / "adapter")
    loaded = load_policy(wide_dir, CFG, adapter_dir=tmp_path / "adapter")
    with loaded.disable_adapter():
        base = HFRollout(loaded, tiny_tok, max_new_tokens=10).generate(prompts, n=1, seed=0, greedy=True)
    greedy2 = HFRollout(loaded, tiny_tok, max_new_tokens=10).generate(prompts, n=1, seed=0, greedy=True)
    sampled2 = HFRollout(loaded, tiny_tok, max_new_tokens=10).generate(prompts, n=3, seed=7)
    assert torch.equal(greedy2.response_ids, greedy.response_ids) and greedy2.texts == greedy.texts
    assert torch.equal(sampled2.response_ids, sampled.response_ids)
    assert base.texts != greedy.texts  # the adapter matters, so the equality above is not vacuous
