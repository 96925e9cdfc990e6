"""The GPT trains the same with every attention implementation (GPTConfig.attention), and
KV-cache decoding (Nq < Nk, bottom-right causal alignment) matches a full forward for each."""
import numpy as np
import pytest

import minitx
from minitx import backend
from minitx.attention import IMPLS
from minitx.models.gpt import GPT, GPTConfig
from minitx.optim import AdamW

# Tolerances, in one place, keyed by dtype: loss curves of different attention algorithms
# differ only by float32 rounding (summation order inside attention), amplified a little by
# training.
TOL = {"float32": {"loss_rel": 1e-4, "logits_abs": 2e-5}}
AVAILABLE_IMPLS = [i for i in IMPLS if i != "auto" and (i != "c" or backend.c_available())]
STEPS = 8


def _config(impl):
    return GPTConfig(vocab_size=32, block_size=24, n_layer=2, n_head=4, n_embd=32,
                     attention=impl)


def _loss_curve(impl):
    minitx.manual_seed(0)
    model = GPT(_config(impl))
    opt = AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 32, size=(4, 25))
    losses = []
    for _ in range(STEPS):
        x = (base + rng.integers(0, 2, size=base.shape)) % 32          # a learnable, noisy task
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    return np.array(losses)


@pytest.fixture(scope="module")
def naive_curve():
    return _loss_curve("naive")


@pytest.mark.parametrize("impl", [i for i in AVAILABLE_IMPLS if i != "naive"])
def test_training_loss_curve_matches_naive(impl, naive_curve):
    curve = _loss_curve(impl)
    assert naive_curve[-1] < naive_curve[0], f"naive did not learn: {naive_curve}"
    rel = np.abs(curve - naive_curve) / np.abs(naive_curve)
    step = int(np.argmax(rel))
    assert rel.max() <= TOL["float32"]["loss_rel"], (
        f"{impl}: loss {curve[step]:.7f} vs naive {naive_curve[step]:.7f} at step {step} "
        f"(rel {rel.max():.2e}); curves {curve} vs {naive_curve}")


@pytest.mark.parametrize("impl", AVAILABLE_IMPLS)
def test_kv_cache_decoding_matches_full_forward(impl):
    minitx.manual_seed(1)
    model = GPT(_config(impl))
    model.eval()
    x = np.random.default_rng(1).integers(0, 32, size=(2, 10))
    with minitx.no_grad():
        full = model(x)[0].data                                          # (B, T, V)
        caches = model.new_caches()
        steps = [model(x[:, :4], caches=caches)[0].data]                  # prefill 4
        for t in range(4, 10):                                           # then Nq = 1, Nk = t + 1
            steps.append(model(x[:, t:t + 1], caches=caches, start_pos=t)[0].data)
    got = np.concatenate(steps, axis=1)
    err = np.abs(got - full).max()
    assert err <= TOL["float32"]["logits_abs"], f"{impl}: KV-cache logits differ by {err:.2e}"


def test_config_rejects_unknown_attention_at_first_forward():
    model = GPT(_config("flash9"))
    with pytest.raises(ValueError, match="impl must be one of"):
        model(np.zeros((1, 4), dtype=np.int64))
