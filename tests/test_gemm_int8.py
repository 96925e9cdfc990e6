"""Integer kernels: matmul_int8 exactly equal to an int32 NumPy product; weight-only int8 / int4
linears against a float64 dequantized reference; the int4 packing convention; bad input."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minitx import backend
from minitx.kernels import int8 as ref

# linear_w*: |y - y_exact| <= TOL * K * eps * (|x| @ |W|^T), as for any float32 dot product.
TOL = {np.float32: 2.0}
EPS = {np.float32: float(np.finfo(np.float32).eps)}

BACKENDS = pytest.mark.parametrize("bk", backend.available())
SIZES = [1, 2, 5, 6, 7, 16, 17, 31]
K_SIZES = [1, 2, 3, 7, 16, 33, 513, 1030]             # odd K, and K beyond the KC=512 slice


def kernel(bk, name):
    with backend.using(bk):
        return backend.kernel(name)


def int8s(rng, shape):
    """Random int8 including the extremes -128 and 127."""
    return rng.integers(-128, 128, shape, dtype=np.int8)


def strided(x, kind):
    if kind == "C":
        return np.ascontiguousarray(x)
    if kind == "F":
        return np.asfortranarray(x)
    big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)   # every other column
    big[..., ::2] = x
    return big[..., ::2]


@BACKENDS
@given(M=st.sampled_from(SIZES), K=st.sampled_from(K_SIZES), N=st.sampled_from(SIZES),
       la=st.sampled_from(["C", "F", "slice"]), lb=st.sampled_from(["C", "F", "slice"]),
       seed=st.integers(0, 2**16))
def test_matmul_int8_exact(bk, M, K, N, la, lb, seed):
    rng = np.random.default_rng(seed)
    a, b = int8s(rng, (M, K)), int8s(rng, (K, N))
    got = kernel(bk, "matmul_int8")(strided(a, la), strided(b, lb))
    want = a.astype(np.int32) @ b.astype(np.int32)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want, err_msg=f"a {a.shape} @ b {b.shape}")


@BACKENDS
def test_matmul_int8_extremes_and_batch(bk):
    mm = kernel(bk, "matmul_int8")
    K = 1030
    a = np.full((7, K), -128, np.int8)
    b = np.full((K, 17), -128, np.int8)                 # every product is +16384
    np.testing.assert_array_equal(mm(a, b), np.full((7, 17), 16384 * K, np.int32))
    rng = np.random.default_rng(0)
    a3, b2 = int8s(rng, (3, 5, 40)), int8s(rng, (40, 9))
    np.testing.assert_array_equal(mm(a3, b2), a3.astype(np.int32) @ b2.astype(np.int32))


def check_linear(got, x, w, bias):
    """got ~= x @ w^T + bias with w the float64 dequantized weight."""
    exact = x.astype(np.float64) @ w.T + (bias if bias is not None else 0)
    bound = np.abs(x.astype(np.float64)) @ np.abs(w).T + (np.abs(bias) if bias is not None else 0)
    tol = TOL[np.float32] * x.shape[-1] * EPS[np.float32] * bound + 1e-30
    err = np.abs(got - exact)
    assert got.dtype == np.float32 and got.shape == exact.shape
    if not np.all(err <= tol):
        idx = np.unravel_index(np.argmax(err - tol), err.shape)
        raise AssertionError(f"x {x.shape}, w {w.shape}: worst at {idx}: got {got[idx]}, "
                             f"want {exact[idx]}, |err| {err[idx]:.3g} > tol {tol[idx]:.3g}")


def dequant64(q, scales, group_size):
    q = q.astype(np.float64)
    if group_size is None:
        return q * scales[:, None]
    return q * np.repeat(scales.astype(np.float64), group_size, axis=1)


@BACKENDS
@given(lead=st.sampled_from([(1,), (3,), (9,), (2, 5), (20,)]),   # M < 8 and M >= 8 paths
       N=st.sampled_from([1, 7, 33]), KG=st.sampled_from([(64, None), (64, 32), (96, 16),
                                                           (128, 128), (40, 8), (6, 2)]),
       use_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_w8_w4(bk, lead, N, KG, use_bias, seed):
    K, G = KG
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead + (K,)).astype(np.float32)
    n_groups = 1 if G is None else K // G
    scales = (rng.random((N,) if G is None else (N, n_groups)) * 0.1 + 0.01).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if use_bias else None
    q8 = rng.integers(-127, 128, (N, K), dtype=np.int8)
    got8 = kernel(bk, "linear_w8")(x, q8, scales, G, bias)
    check_linear(got8, x, dequant64(q8, scales, G), bias)
    q4 = rng.integers(-8, 8, (N, K)).astype(np.int8)
    got4 = kernel(bk, "linear_w4")(x, ref.pack_int4(q4), scales, G, bias)
    check_linear(got4, x, dequant64(q4, scales, G), bias)


def test_int4_packing_convention():
    # even k -> low nibble, odd k -> high nibble, each stored as q + 8
    packed = ref.pack_int4(np.array([[-8, 7, 0, -1]]))
    np.testing.assert_array_equal(packed, np.array([[0xF0, 0x78]], np.uint8))
    q = np.random.default_rng(0).integers(-8, 8, (5, 34))
    np.testing.assert_array_equal(ref.unpack_int4(ref.pack_int4(q)), q)
    with pytest.raises(ValueError, match="range"):
        ref.pack_int4(np.array([[8, 0]]))
    with pytest.raises(ValueError, match="even"):
        ref.pack_int4(np.zeros((2, 3), int))


@BACKENDS
def test_int_kernels_errors(bk):
    mm = kernel(bk, "matmul_int8")
    a8 = np.ones((3, 4), np.int8)
    with pytest.raises(TypeError, match="int8"):
        mm(a8.astype(np.int16), a8.T)
    with pytest.raises(ValueError, match="inner dims"):
        mm(a8, a8)
    with pytest.raises(ValueError, match="2 dims"):
        mm(np.ones(4, np.int8), a8.T)
    big = np.zeros((1, 131072), np.int8)
    with pytest.raises(ValueError, match="overflow"):
        mm(big, big.T)
    w8, w4 = kernel(bk, "linear_w8"), kernel(bk, "linear_w4")
    x = np.ones((2, 8), np.float32)
    q = np.ones((3, 8), np.int8)
    s = np.ones(3, np.float32)
    with pytest.raises(TypeError, match="float32"):
        w8(x.astype(np.float64), q, s)
    with pytest.raises(TypeError, match="int8"):
        w8(x, q.astype(np.int32), s)
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\)"):
        w8(np.ones((2, 7), np.float32), q, s)
    with pytest.raises(ValueError, match="scales must have shape"):
        w8(x, q, np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="group_size"):
        w8(x, q, np.ones((3, 2), np.float32), group_size=3)
    with pytest.raises(ValueError, match="bias"):
        w8(x, q, s, bias=np.ones(4, np.float32))
    with pytest.raises(TypeError, match="uint8"):
        w4(x, q, s)
    with pytest.raises(ValueError, match="even"):
        w4(np.ones((2, 6), np.float32), np.ones((3, 3), np.uint8), np.ones((3, 2), np.float32), 3)


@pytest.mark.skipif("c" not in backend.available(), reason="minitx_c not built")
def test_matmul_int8_threaded_exact():
    import minitx_c
    rng = np.random.default_rng(7)
    a, b = int8s(rng, (301, 700)), int8s(rng, (700, 290))      # row slabs, K over 512
    want = a.astype(np.int32) @ b.astype(np.int32)
    before = minitx_c.get_num_threads()
    try:
        for t in (1, 2):
            minitx_c.set_num_threads(t)
            np.testing.assert_array_equal(minitx_c.matmul_int8(a, b), want, err_msg=f"{t} threads")
    finally:
        minitx_c.set_num_threads(before)
