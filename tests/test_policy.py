"""The model, tokenizer, rollout layout and the shared forward path."""
import torch

from entropy_rl.model import count_params, load_policy, load_tokenizer
from entropy_rl.policy import frozen_stats, policy_stats
from entropy_rl.rollout import HFRollout, response_mask_from_ids


def test_tokenizer_round_trip(tiny_model_dir, tiny_tok):
    tok = load_tokenizer(tiny_model_dir)
    text = "347+589=7+9=16;\\boxed{936}"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.padding_side == "left" and tok.eos_token == "</s>"
    assert tok(text)["input_ids"] == tiny_tok(text)["input_ids"]


def test_response_mask_keeps_first_eos():
    ids = torch.tensor([[5, 6, 2, 0, 0], [5, 5, 5, 5, 5], [2, 0, 0, 0, 0]])
    mask, truncated = response_mask_from_ids(ids, eos_id=2)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_policy_stats_match_hf_logits_with_left_padding(tiny_model_dir, small_model_cfg):
    """The log-probs used for ratios equal log_softmax of the model's own logits on each unpadded sequence."""
    policy = load_policy(tiny_model_dir, small_model_cfg)
    tok = load_tokenizer(tiny_model_dir)
    ro = HFRollout(policy, tok, max_new_tokens=6).generate(["1+2=", "345+678="], n=2, seed=0)
    st = frozen_stats(policy, ro)
    for b in range(4):
        prompt = ro.prompt_ids[b][ro.prompt_mask[b].bool()]
        resp = ro.response_ids[b][ro.response_mask[b].bool()]
        full = torch.cat([prompt, resp])[None]
        with torch.no_grad():
            logits = policy(input_ids=full).logits[0].double()
        want = torch.log_softmax(logits[len(prompt) - 1 : -1], -1).gather(-1, resp[:, None]).squeeze(-1)
        got = st.logp[b][ro.response_mask[b].bool()]
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_rollout_is_seeded_and_padded_to_the_cap(tiny_model_dir, small_model_cfg):
    policy = load_policy(tiny_model_dir, small_model_cfg)
    tok = load_tokenizer(tiny_model_dir)
    sampler = HFRollout(policy, tok, max_new_tokens=7)
    a, b = sampler.generate(["1+2="], n=3, seed=5), sampler.generate(["1+2="], n=3, seed=5)
    assert a.texts == b.texts and a.response_ids.shape == (3, 7)
    assert torch.all(a.response_ids[a.response_mask == 0] == tok.pad_token_id)


def test_lora_trains_only_the_adapter(tiny_model_dir, small_model_cfg):
    policy = load_policy(tiny_model_dir, small_model_cfg)
    trainable, total = count_params(policy)
    assert 0 < trainable < total
    tok = load_tokenizer(tiny_model_dir)
    ro = HFRollout(policy, tok, max_new_tokens=5).generate(["1+2="], n=2, seed=0)
    st = policy_stats(policy, ro)
    (-(st.logp * ro.response_mask).sum()).backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in grads) and any(g is not None and g.abs().sum() > 0 for g in grads.values())
    ref = frozen_stats(policy, ro, reference=True)  # adapter off = the base model; LoRA B starts at 0
    torch.testing.assert_close(ref.logp, frozen_stats(policy, ro).logp)
