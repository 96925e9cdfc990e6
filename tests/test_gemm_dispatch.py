"""Autograd's matmul on the Cython GEMM: routing, and a GPT trained on it follows the same loss
curve as on NumPy/OpenBLAS."""
import numpy as np
import pytest

import minitx
from minitx import backend

pytestmark = pytest.mark.skipif("c" not in backend.available(), reason="minitx_c not built")

# Loss curves of the two backends: float32 training with different summation orders drifts
# apart slowly; over a few steps the losses agree to this relative tolerance.
LOSS_RTOL = {np.float32: 1e-4}


@pytest.fixture
def one_thread():
    """backend.matmul routes to minitx_c only with one OpenMP thread (see its docstring)."""
    import minitx_c
    before = minitx_c.get_num_threads()
    minitx_c.set_num_threads(1)
    yield
    minitx_c.set_num_threads(before)


@pytest.fixture
def spy(monkeypatch, one_thread):
    """Count the calls that reach minitx_c.matmul."""
    import minitx_c
    calls = []
    real = minitx_c.matmul

    def counting(a, b, *args, **kw):
        calls.append((a.shape, b.shape))
        return real(a, b, *args, **kw)
    monkeypatch.setattr(minitx_c, "matmul", counting)
    return calls


def test_forward_and_both_backward_products_use_minitx_c(spy):
    rng = np.random.default_rng(0)
    a = minitx.tensor(rng.standard_normal((2, 5, 7)).astype(np.float32), requires_grad=True)
    b = minitx.tensor(rng.standard_normal((7, 3)).astype(np.float32), requires_grad=True)
    with backend.using("c"):
        (a @ b).sum().backward()
    assert len(spy) == 3, spy                        # forward, grad a, grad b
    np.testing.assert_allclose(b.grad, a.data.reshape(-1, 7).sum(0)[:, None] * np.ones((1, 3)),
                               rtol=1e-5)


def test_numpy_backend_float64_and_threads_stay_on_np_matmul(spy):
    import minitx_c
    x32 = np.ones((4, 4), np.float32)
    with backend.using("numpy"):
        backend.matmul(x32, x32)
    with backend.using("c"):
        out = backend.matmul(x32.astype(np.float64), x32.astype(np.float64))
        if minitx_c.have_openmp():
            minitx_c.set_num_threads(2)
            backend.matmul(x32, x32)                 # multi-threaded: OpenBLAS
            minitx_c.set_num_threads(1)
    assert spy == [] and out.dtype == np.float64


def _train_losses(steps):
    """Losses of the default GPT trained for `steps` AdamW steps on a fixed byte stream."""
    from minitx.models.gpt import GPT, GPTConfig
    minitx.random.manual_seed(0)
    model = GPT(GPTConfig())
    opt = minitx.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    text = np.frombuffer(b"the quick brown fox jumps over the lazy dog. " * 40, np.uint8)
    B, T = 2, 32
    starts = np.random.default_rng(1).integers(0, len(text) - T - 1, size=(steps, B))
    losses = []
    for s in range(steps):
        idx = np.stack([text[i:i + T] for i in starts[s]]).astype(np.int64)        # (B, T)
        tgt = np.stack([text[i + 1:i + T + 1] for i in starts[s]]).astype(np.int64)
        _, loss = model(idx, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    return np.array(losses)


def test_gpt_training_same_loss_curve_on_c_and_numpy(spy):
    steps = 5
    with backend.using("numpy"):
        ref = _train_losses(steps)
    assert spy == []
    with backend.using("c"):
        got = _train_losses(steps)
    assert len(spy) > 0                              # the GEMM really ran
    assert ref[-1] < ref[0] - 0.5                    # the model learns on this stream
    np.testing.assert_allclose(got, ref, rtol=LOSS_RTOL[np.float32],
                               err_msg=f"loss curves differ: c {got} vs numpy {ref}")
