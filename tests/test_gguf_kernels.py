"""ggml block kernels: the Cython kernels equal their NumPy twins (minitx.kernels.ggml), both
equal the product with the decoded weight, and bad arguments are refused before any work."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adversarial import Kernel, assert_survives, register
from minitx import backend
from minitx.kernels import ggml as K
from minitx.quant import ggml as blocks

QTYPES = {2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}
# float32 sums of K products in a different order: error relative to sum_k |x_k w_k|
REL = {"float": 2e-6, "q8": 2e-6}
# rounding x to int8 per block: |x - x_hat| <= dx / 2 = absmax / 254 per value
Q8_ACT = 1.0 / 254 + 1e-6

needs_c = pytest.mark.skipif(not backend.c_available(), reason="minitx_c is not built")


@st.composite
def problems(draw):
    qtype = draw(st.sampled_from(sorted(QTYPES)))
    M, N, nb = draw(st.integers(1, 20)), draw(st.integers(1, 70)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0]))
    w = (rng.standard_normal((N, nb * 32)) * scale).astype(np.float32)
    x = rng.standard_normal((M, nb * 32)).astype(np.float32)
    if draw(st.booleans()):
        x[0, :32] = 0.0                                   # an all-zero activation block
    return x, blocks.quantize_rows(w, QTYPES[qtype]), qtype


def _decoded(raw, qtype, n):
    return blocks.dequantize_rows(raw, qtype, n)


def _check(y, want, bound, what):
    err = np.abs(y - want)
    i = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"{what}: shape {y.shape}, worst {i}: |diff| {err[i]:.3g} > "
                                  f"{bound[i]:.3g}")


@given(case=problems())
def test_float_kernel_is_the_product_with_decoded_weights(case, on_backend):
    x, raw, qtype = case
    W = _decoded(raw, qtype, x.shape[1])                                 # (N, K)
    y = backend.kernel("ggml_matmul")(x, raw, qtype)
    scale = np.abs(x) @ np.abs(W).T
    _check(y, (x.astype(np.float64) @ W.T.astype(np.float64)), REL["float"] * x.shape[1]
           * scale / 32 + 1e-30, f"ggml_matmul {QTYPES[qtype]} on {on_backend}")


@given(case=problems())
def test_q8_kernel_error_is_the_activation_rounding(case, on_backend):
    """|y_q8 - x W^T| <= sum_k |x_k - x̂_k| |w_k| <= sum_blocks absmax_b / 254 * sum |w|."""
    x, raw, qtype = case
    W = _decoded(raw, qtype, x.shape[1])
    y = backend.kernel("ggml_matmul_q8")(x, raw, qtype)
    amax = np.abs(x.reshape(x.shape[0], -1, 32)).max(-1)                 # (M, nb)
    wsum = np.abs(W.reshape(W.shape[0], -1, 32)).sum(-1)                 # (N, nb)
    bound = Q8_ACT * amax @ wsum.T + REL["q8"] * (np.abs(x) @ np.abs(W).T)
    _check(y, x.astype(np.float64) @ W.T.astype(np.float64), bound,
           f"ggml_matmul_q8 {QTYPES[qtype]} on {on_backend}")


@needs_c
@given(case=problems())
def test_cython_kernels_equal_their_numpy_twins(case):
    import minitx_c
    x, raw, qtype = case
    scale = np.abs(x) @ np.abs(_decoded(raw, qtype, x.shape[1])).T
    for name in ("ggml_matmul", "ggml_matmul_q8"):
        y_c = getattr(minitx_c, name)(x, raw, qtype)
        y_np = getattr(K, name)(x, raw, qtype)
        _check(y_c, y_np, REL["float"] * x.shape[1] * scale / 32 + 1e-30,
               f"{name} {QTYPES[qtype]} Cython vs NumPy")


def test_integer_dots_are_exact_on_integer_data(on_backend):
    """x on the int8 grid (dx = 1) and power-of-two weights: the q8 kernel is exact."""
    rng = np.random.default_rng(0)
    x = rng.integers(-127, 128, size=(3, 64)).astype(np.float32)
    x[:, ::32] = 127                                                    # absmax 127 -> dx = 1
    w = rng.integers(-8, 8, size=(5, 64)).astype(np.float32)
    w[:, ::32] = -8
    raw = blocks.quantize_rows(w, "Q4_0")
    np.testing.assert_array_equal(backend.kernel("ggml_matmul_q8")(x, raw, 2), x @ w.T)
    np.testing.assert_array_equal(backend.kernel("ggml_matmul")(x, raw, 2), x @ w.T)


@pytest.mark.parametrize("name", ["ggml_matmul", "ggml_matmul_q8"])
def test_bad_arguments_are_refused(name, on_backend):
    f = backend.kernel(name)
    raw = blocks.quantize_rows(np.ones((4, 64), np.float32), "Q4_1")
    x = np.ones((2, 64), np.float32)
    with pytest.raises(ValueError, match="qtype must be one of"):
        f(x, raw, 6)
    with pytest.raises(TypeError, match="x must be a 2-D float32"):
        f(x.astype(np.float64), raw, 3)
    with pytest.raises(TypeError, match="x must be a 2-D float32"):
        f(x[0], raw, 3)
    with pytest.raises(TypeError, match="w must be 2-D uint8"):
        f(x, raw.view(np.int8), 3)
    with pytest.raises(ValueError, match="Q4_0 rows must be 36 bytes"):
        f(x, raw, 2)                                                     # Q4_1 bytes as Q4_0
    with pytest.raises(ValueError, match="multiple of 32"):
        f(np.ones((2, 48), np.float32), raw, 3)
    with pytest.raises(ValueError, match="C-contiguous"):
        f(np.ones((64, 2), np.float32).T, raw, 3)
    assert f(np.ones((0, 64), np.float32), raw, 3).shape == (0, 4)


# ---------------------------------------------------------------- adversarial layouts (tests/adversarial.py)
def make_ggml(rng, M, K, N, qtype):
    """Valid arguments: x (M, K) float32 and N rows of real ggml blocks."""
    name = QTYPES[qtype]
    w = blocks.quantize_rows(rng.standard_normal((N, K)).astype(np.float32), name) if K else \
        np.zeros((N, 0), np.uint8)
    return dict(x=rng.standard_normal((M, K)).astype(np.float32), w=w, qtype=qtype)


GGML_DIMS = [dict(M=1, K=64, N=8, qtype=3), dict(M=3, K=96, N=5, qtype=2),
             dict(M=17, K=64, N=9, qtype=8), dict(M=0, K=64, N=4, qtype=3),
             dict(M=2, K=64, N=0, qtype=2), dict(M=2, K=0, N=3, qtype=8)]
for _name in ("ggml_matmul", "ggml_matmul_q8"):
    register(Kernel(_name, c=f"minitx_c.ggml:{_name}", twin=f"minitx.kernels.ggml:{_name}",
                    make=make_ggml, dims=GGML_DIMS, tol={np.float32: (1e-4, 1e-4)}))


@needs_c
@pytest.mark.parametrize("name", ["ggml_matmul", "ggml_matmul_q8"])
def test_ggml_kernels_survive_adversarial_layouts(name):
    assert_survives([name])
