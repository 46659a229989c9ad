"""Token statistics against a plain float64 reference (full logits, log_softmax, explicit entropy)."""
import pytest
import torch

from entropy_rl.token_stats import token_stats, token_stats_flat


def reference(hidden, weight, ids, temperature, bias=None):
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    logq = torch.log_softmax(z / temperature, -1)
    return logq.gather(-1, ids[:, None]).squeeze(-1), -(logq.exp() * logq).sum(-1)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("n,chunk", [(37, 8), (16, 16), (5, 64)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_match_float64(dtype, rtol, n, chunk, temperature):
    g = torch.Generator().manual_seed(n)
    H, V = 12, 50
    hidden = torch.randn(n, H, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=dtype, requires_grad=True)
    bias = torch.randn(V, generator=g, dtype=dtype)
    ids = torch.randint(0, V, (n,), generator=g)
    logp, ent = token_stats_flat(hidden, weight, ids, temperature, bias, chunk_size=chunk)
    h64, w64 = hidden.detach().double().requires_grad_(True), weight.detach().double().requires_grad_(True)
    rlogp, rent = reference(h64, w64, ids, temperature, bias)
    torch.testing.assert_close(logp.double(), rlogp, rtol=rtol, atol=rtol)
    torch.testing.assert_close(ent.double(), rent, rtol=rtol, atol=rtol)
    c1, c2 = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    ((logp.double() * c1).sum() + (ent.double() * c2).sum()).backward()
    ((rlogp * c1).sum() + (rent * c2).sum()).backward()
    torch.testing.assert_close(hidden.grad.double(), h64.grad, rtol=rtol * 10, atol=rtol * 10)
    torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=rtol * 10, atol=rtol * 10)


def test_bf16_inputs_accumulate_in_fp32():
    hidden, weight = torch.randn(4, 8).bfloat16(), torch.randn(20, 8).bfloat16()
    logp, ent = token_stats_flat(hidden, weight, torch.zeros(4, dtype=torch.long))
    assert logp.dtype == torch.float32 and ent.dtype == torch.float32


def test_ragged_mask_scatter_and_empty_mask():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(9, 6, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 9, (2, 3), generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    st = token_stats(hidden, weight, ids, mask)
    rlogp, rent = reference(hidden.reshape(-1, 6), weight, ids.reshape(-1), 1.0)
    sel = mask.reshape(-1).bool()
    assert torch.allclose(st.logp.reshape(-1)[sel], rlogp[sel]) and torch.all(st.logp[mask == 0] == 0)
    assert torch.allclose(st.entropy.reshape(-1)[sel], rent[sel])
    empty = token_stats(hidden, weight, ids, torch.zeros_like(mask))
    assert torch.all(empty.logp == 0) and empty.logp.shape == (2, 3)


def test_entropy_bounds():
    weight = torch.zeros(10, 4, dtype=torch.float64)  # uniform logits: H = log V
    _, ent = token_stats_flat(torch.randn(3, 4, dtype=torch.float64), weight, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(ent, torch.full((3,), torch.log(torch.tensor(10.0, dtype=torch.float64)).item(), dtype=torch.float64))
