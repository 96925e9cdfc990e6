"""The GPT: shapes, parameter and FLOP counts, every architecture variant's gradients against
finite differences, causality, and KV-cache decoding equal to a full forward pass."""
import numpy as np
import pytest

import minitx
from minitx.generate import sample
from minitx.models.gpt import GPT, GPTConfig, get_config

VARIANTS = {
    "gpt2": dict(),
    "llama": dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, tie_weights=False),
}
KV_ATOL = {np.float32: 2e-5, np.float64: 1e-11}


def _tiny(**kw):
    return GPTConfig(**{**dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8), **kw})


def test_forward_shapes_and_counts():
    minitx.manual_seed(0)
    m = GPT(get_config("default"))
    logits, loss = m(np.zeros((2, 5), dtype=np.int64), np.zeros((2, 5), dtype=np.int64))
    assert logits.shape == (2, 5, 256) and loss.shape == ()
    C, L, V, T = 128, 4, 256, 128
    per_block = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    assert m.num_params() == V * C + T * C + L * per_block + 2 * C
    n = m.num_params(non_embedding=True)
    assert m.flops_per_token() == 6 * n + 12 * L * C * T


def test_initial_loss_is_near_uniform():
    minitx.manual_seed(0)
    m = GPT(get_config("tiny"))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (4, 32)), rng.integers(0, 256, (4, 32))
    _, loss = m(x, y)
    assert abs(loss.item() - np.log(256)) < 0.05


def test_config_validation_and_input_errors():
    with pytest.raises(ValueError, match="n_embd % n_head"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="unknown config"):
        get_config("huge")
    m = GPT(_tiny())
    with pytest.raises(ValueError, match="exceeds block_size 8"):
        m(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="out of range"):
        m(np.full((1, 3), 11))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        m(np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="integers"):
        m(np.zeros((1, 3)))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_model_gradients_against_finite_differences(on_backend, variant):
    """Spot-check d(loss)/d(param) for a few entries of every parameter, in float64."""
    minitx.manual_seed(1)
    m = GPT(_tiny(**VARIANTS[variant])).to(np.float64)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (2, 6)), rng.integers(0, 11, (2, 6))
    _, loss = m(x, y)
    loss.backward()
    eps = 1e-6
    for name, p in m.named_parameters():
        for j in [tuple(rng.integers(0, n) for n in p.shape) for _ in range(3)]:
            old = p.data[j]
            p.data[j] = old + eps
            up = m(x, y)[1].item()
            p.data[j] = old - eps
            down = m(x, y)[1].item()
            p.data[j] = old
            numeric = (up - down) / (2 * eps)
            assert abs(p.grad[j] - numeric) <= 1e-6 + 1e-4 * abs(numeric), \
                f"{name}{j}: analytic {p.grad[j]:.8g} vs numeric {numeric:.8g}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_causality_future_tokens_do_not_change_the_past(variant):
    minitx.manual_seed(2)
    m = GPT(_tiny(**VARIANTS[variant]))
    x = np.random.default_rng(1).integers(0, 11, (1, 8))
    x2 = x.copy()
    x2[0, 5:] = (x2[0, 5:] + 1) % 11
    a, b = m(x)[0].data, m(x2)[0].data
    np.testing.assert_array_equal(a[:, :5], b[:, :5])
    assert not np.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kv_cache_logits_equal_a_full_forward(on_backend, variant, dtype):
    minitx.manual_seed(3)
    m = GPT(_tiny(**VARIANTS[variant])).to(dtype).eval()
    x = np.random.default_rng(2).integers(0, 11, (2, 8))
    with minitx.no_grad():
        full = m(x)[0].data                                   # (2, 8, V)
        caches = m.new_caches()
        steps = [m(x[:, :3], caches=caches)[0].data]          # prefill 3
        for t in range(3, 8):                                 # then one token at a time
            steps.append(m(x[:, t:t + 1], caches=caches, start_pos=t)[0].data)
    cached = np.concatenate(steps, axis=1)
    np.testing.assert_allclose(cached, full, rtol=0, atol=KV_ATOL[dtype])


def test_sampling_is_seeded_greedy_is_argmax_and_long_runs_slide():
    minitx.manual_seed(4)
    m = GPT(_tiny())
    prompt = np.array([1, 2, 3])
    a = sample(m, prompt, 20, temperature=1.0, top_k=5, rng=np.random.default_rng(0))
    b = sample(m, prompt, 20, temperature=1.0, top_k=5, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, 23) and (a >= 0).all() and (a < 11).all()
    g = sample(m, prompt, 12, temperature=0)                   # beyond block_size 8
    with minitx.no_grad():
        for t in range(3, 15):
            ctx = g[:, max(0, t - 8):t] if t <= 8 else None
            if ctx is not None:
                assert g[0, t] == m(ctx)[0].data[0, -1].argmax()
    with pytest.raises(ValueError, match="at least one token"):
        sample(m, np.array([], dtype=np.int64), 3)
    with pytest.raises(ValueError, match="temperature"):
        sample(m, prompt, 3, temperature=-1)
    with pytest.raises(ValueError, match=r"in \[0, 11\)"):
        sample(m, np.array([11]), 3)


def test_top_k_one_is_greedy():
    minitx.manual_seed(5)
    m = GPT(_tiny())
    prompt = np.array([4, 2])
    np.testing.assert_array_equal(sample(m, prompt, 10, temperature=1.0, top_k=1),
                                  sample(m, prompt, 10, temperature=0))
