"""Autograd's matmul on the Cython GEMM: routing, and a GPT trained on it follows the same loss
curve as on NumPy/OpenBLAS."""
import os
import subprocess
import sys

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
    """One OpenMP thread for the test, restored afterwards."""
    import minitx_c
    before = minitx_c.get_num_threads()
    minitx_c.set_num_threads(1)
    yield
    minitx_c.set_num_threads(before)


@pytest.fixture
def minitx_policy(monkeypatch):
    """GEMM_POLICY with minitx_c.matmul serving every float32 product on 1 and 2 threads."""
    monkeypatch.setattr(backend, "GEMM_POLICY", {k: "minitx" for k in backend.GEMM_POLICY})


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


def test_forward_and_both_backward_products_use_minitx_c(spy, minitx_policy):
    rng = np.random.default_rng(0)
    a = minitx.tensor(rng.standard_normal((2, 5, 7)).astype(np.float32), requires_grad=True)
    b = minitx.tensor(rng.standard_normal((7, 3)).astype(np.float32), requires_grad=True)
    with backend.using("c"):
        (a @ b).sum().backward()
    assert len(spy) == 3, spy                        # forward, grad a, grad b
    np.testing.assert_allclose(b.grad, a.data.reshape(-1, 7).sum(0)[:, None] * np.ones((1, 3)),
                               rtol=1e-5)


def test_numpy_backend_and_float64_stay_on_np_matmul(spy, minitx_policy):
    x32 = np.ones((4, 4), np.float32)
    with backend.using("numpy"):
        backend.matmul(x32, x32)
    with backend.using("c"):
        out = backend.matmul(x32.astype(np.float64), x32.astype(np.float64))
    assert spy == [] and out.dtype == np.float64


def test_linear_products_are_classified_as_autograd_makes_them():
    """Forward x @ W^T, input grad dY @ W, weight grad dY^T @ X (nn.functional.linear)."""
    x = np.ones((2, 5, 7), np.float32)
    W = np.ones((3, 7), np.float32)
    g = np.ones((2, 5, 3), np.float32)
    assert backend.gemm_class(x, W.T) == "x@W^T"
    assert backend.gemm_class(g, W) == "dY@W"
    assert backend.gemm_class(g.reshape(-1, 3).T, x.reshape(-1, 7)) == "dY^T@X"
    assert backend.gemm_class(x, np.ones((2, 7, 3), np.float32)) == "other"
    assert backend.gemm_class(np.ones(7, np.float32), W.T) == "other"


@pytest.mark.parametrize("threads", [1, 2])
def test_policy_table_decides_who_serves(monkeypatch, spy, threads):
    """Each (threads, class) entry is obeyed: flipping one entry moves only that class."""
    import minitx_c
    if threads > 1 and not minitx_c.have_openmp():
        pytest.skip("built without OpenMP: one thread only")
    minitx_c.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 7)).astype(np.float32)
    W = rng.standard_normal((3, 7)).astype(np.float32)
    policy = {k: "openblas" for k in backend.GEMM_POLICY}
    policy[(threads, "dY@W")] = "minitx"
    monkeypatch.setattr(backend, "GEMM_POLICY", policy)
    monkeypatch.setattr(backend, "OPENBLAS_SLEEPS", True)
    g = rng.standard_normal((2, 5, 3)).astype(np.float32)
    with backend.using("c"):
        y = backend.matmul(x, W.T)                   # x @ W^T: OpenBLAS
        gx = backend.matmul(g, W)                    # dY @ W: minitx
    assert spy == [((2, 5, 3), (3, 7))]
    np.testing.assert_allclose(y, np.matmul(x, W.T), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx, np.matmul(g, W), rtol=1e-5, atol=1e-6)


def test_spinning_openblas_leaves_two_thread_products_to_minitx(monkeypatch, spy):
    """When OpenBLAS's threads spin after a product (OPENBLAS_THREAD_TIMEOUT not in effect),
    every float32 product on 2 threads goes to minitx_c.matmul, whatever the table says."""
    import minitx_c
    if not minitx_c.have_openmp():
        pytest.skip("built without OpenMP: one thread only")
    monkeypatch.setattr(backend, "GEMM_POLICY", {k: "openblas" for k in backend.GEMM_POLICY})
    monkeypatch.setattr(backend, "OPENBLAS_SLEEPS", False)
    x = np.ones((4, 7), np.float32)
    W = np.ones((3, 7), np.float32)
    before = minitx_c.get_num_threads()
    try:
        for threads in (2, 1):                        # one thread: the table (OpenBLAS)
            minitx_c.set_num_threads(threads)
            with backend.using("c"):
                backend.matmul(x, W.T)
    finally:
        minitx_c.set_num_threads(before)
    assert spy == [((4, 7), (7, 3))]


def test_openblas_timeout_is_set_before_numpy_loads():
    """`import minitx` before NumPy sets OPENBLAS_THREAD_TIMEOUT so OpenBLAS's threads sleep."""
    code = ("import os, minitx.backend as b; "
            "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), b.OPENBLAS_SLEEPS)")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["4", "True"]
    code = "import numpy, minitx.backend as b; print(b.OPENBLAS_SLEEPS)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False"]                            # too late: NumPy's OpenBLAS is loaded


def test_policy_covers_every_class_and_thread_count():
    for n in (1, 2):
        for cls in ("x@W^T", "dY@W", "dY^T@X", "other"):
            assert backend.GEMM_POLICY[(n, cls)] in ("minitx", "openblas")


def test_folded_batch_product_equals_np_matmul():
    """x (..., K) @ W as one 2-D product: same values and shape as np.matmul."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    W = rng.standard_normal((6, 2)).astype(np.float32)
    with backend.using("numpy"):
        got = backend.matmul(x, W)
    assert got.shape == (3, 4, 5, 2)
    np.testing.assert_allclose(got, np.matmul(x, W), rtol=1e-5, atol=1e-6)
    for a, b in ((np.ones((2, 3, 0), np.float32), np.ones((0, 4), np.float32)),   # K = 0
                 (np.ones((2, 0, 3), np.float32), np.ones((3, 4), np.float32))):  # no rows
        np.testing.assert_array_equal(backend.matmul(a, b), np.matmul(a, b))


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


def test_gpt_training_same_loss_curve_on_c_and_numpy(spy, minitx_policy):
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
