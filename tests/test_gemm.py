"""float32 matmul: the NumPy BLIS twin and the Cython kernel against np.matmul (float64).

Shapes are drawn so that every block size is crossed and missed: sizes 1, primes, MR +- 1,
NR +- 1, MC + 1, and K beyond KC (256). Layouts: C order, Fortran order, transposed views,
strided slices, negative strides, broadcast batch dims.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minitx import backend
from minitx.kernels import gemm as ref_gemm

# Error bound per dtype: |C - C_exact| <= TOL * K * eps * (|A| @ |B|) (the classical gamma_K
# bound for a dot product of length K; blocked summation stays well inside it).
TOL = {np.float32: 2.0}
EPS = {np.float32: float(np.finfo(np.float32).eps)}

SIZES = [1, 2, 3, 5, 6, 7, 13, 16, 17, 31, 37]
K_SIZES = SIZES + [257, 300]
LAYOUTS = ["C", "F", "T", "slice", "neg"]


def layout(x, kind):
    """The same values as x (2-D or batched), stored in memory another way."""
    if kind == "C":
        return np.ascontiguousarray(x)
    if kind == "F":
        return np.asfortranarray(x)
    if kind == "T":                                   # a transposed view of a contiguous array
        return np.ascontiguousarray(np.swapaxes(x, -1, -2)).swapaxes(-1, -2)
    if kind == "slice":                               # every other column of a wider array
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        big[..., ::2] = x
        return big[..., ::2]
    if kind == "neg":                                 # rows stored in reverse order
        return np.ascontiguousarray(x[..., ::-1, :])[..., ::-1, :]
    raise ValueError(kind)


def check_close(got, a, b, accumulate_into=None):
    """Assert got == a @ b (+ accumulate_into) within the gamma_K bound; report the worst spot."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    exact = np.matmul(a64, b64)
    bound = np.matmul(np.abs(a64), np.abs(b64))
    if accumulate_into is not None:
        exact = exact + accumulate_into
        bound = bound + np.abs(accumulate_into)
    K = a.shape[-1]
    tol = TOL[np.float32] * max(K, 1) * EPS[np.float32] * bound + 1e-30
    assert got.shape == exact.shape, f"shape {got.shape} != {exact.shape}"
    assert got.dtype == np.float32
    err = np.abs(got - exact)
    if not np.all(err <= tol):
        idx = np.unravel_index(np.argmax(err - tol), err.shape)
        raise AssertionError(f"a {a.shape} @ b {b.shape}: worst at {idx}: got {got[idx]}, "
                             f"want {exact[idx]}, |err| {err[idx]:.3g} > tol {tol[idx]:.3g}")


BACKENDS = pytest.mark.parametrize("bk", backend.available())


def kernel(bk, name):
    """Kernel `name` of backend `bk` ("numpy" or "c")."""
    with backend.using(bk):
        return backend.kernel(name)


def rand(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


@BACKENDS
@given(M=st.sampled_from(SIZES), K=st.sampled_from(K_SIZES), N=st.sampled_from(SIZES),
       la=st.sampled_from(LAYOUTS), lb=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16))
def test_matmul_2d_layouts(bk, M, K, N, la, lb, seed):
    rng = np.random.default_rng(seed)
    a, b = rand(rng, (M, K)), rand(rng, (K, N))
    got = kernel(bk, "matmul")(layout(a, la), layout(b, lb))
    check_close(got, a, b)


@BACKENDS
@given(batch=st.sampled_from([((2,), (2,)), ((3,), ()), ((), (2,)), ((2, 1), (1, 3)),
                              ((1, 2), (2,))]),
       M=st.sampled_from([1, 7, 13]), K=st.sampled_from([1, 17, 260]),
       N=st.sampled_from([1, 16, 19]), la=st.sampled_from(LAYOUTS),
       lb=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16))
def test_matmul_batched_broadcast(bk, batch, M, K, N, la, lb, seed):
    rng = np.random.default_rng(seed)
    a, b = rand(rng, batch[0] + (M, K)), rand(rng, batch[1] + (K, N))
    got = kernel(bk, "matmul")(layout(a, la), layout(b, lb))
    check_close(got, a, b)


@BACKENDS
@given(M=st.sampled_from([1, 6, 11]), K=st.sampled_from([1, 9, 300]),
       N=st.sampled_from([1, 16, 23]), lo=st.sampled_from(["C", "F", "slice"]),
       seed=st.integers(0, 2**16))
def test_matmul_out_and_accumulate(bk, M, K, N, lo, seed):
    rng = np.random.default_rng(seed)
    a, b, c0 = rand(rng, (2, M, K)), rand(rng, (K, N)), rand(rng, (2, M, N))
    mm = kernel(bk, "matmul")
    out = layout(c0.copy(), lo)
    assert mm(a, b, out=out) is out
    check_close(out, a, b)
    out = layout(c0.copy(), lo)
    mm(a, b, out=out, accumulate=True)
    check_close(out, a, b, accumulate_into=c0.astype(np.float64))


@BACKENDS
def test_matmul_vectors_and_empty(bk):
    rng = np.random.default_rng(0)
    mm = kernel(bk, "matmul")
    a, b, v = rand(rng, (5, 7)), rand(rng, (7, 3)), rand(rng, (7,))
    check_close(mm(v, b), v, b)                       # (K,) @ (K, N) -> (N,)
    check_close(mm(a, v), a, v)                       # (M, K) @ (K,) -> (M,)
    check_close(mm(v, v), v, v)                       # dot product -> ()
    out = np.full((2, 3), 7.0, np.float32)[0]         # (N,) out for (K,) @ (K, N)
    mm(v, b, out=out, accumulate=True)
    check_close(out, v, b, accumulate_into=np.full(3, 7.0))
    assert mm(rand(rng, (0, 4)), rand(rng, (4, 3))).shape == (0, 3)
    z = mm(rand(rng, (3, 0)), rand(rng, (0, 2)))      # K = 0: zeros, like np.matmul
    np.testing.assert_array_equal(z, np.zeros((3, 2), np.float32))


@BACKENDS
def test_matmul_out_aliasing_input(bk):
    rng = np.random.default_rng(1)
    a, b = rand(rng, (8, 8)), rand(rng, (8, 8))
    want = a.astype(np.float64) @ b
    a_in = a.copy()
    kernel(bk, "matmul")(a_in, b, out=a_in)       # out is a: must not read overwritten rows
    check_close(a_in, a, b)
    assert np.abs(a_in - want).max() < 1e-4


@BACKENDS
def test_matmul_errors(bk):
    mm = kernel(bk, "matmul")
    a, b = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)
    with pytest.raises(TypeError, match="float32"):
        mm(a.astype(np.float64), b)
    with pytest.raises(TypeError, match="int32"):
        mm(a, b.astype(np.int32))
    with pytest.raises(TypeError, match="ndarray"):
        mm([[1.0]], b)
    with pytest.raises(ValueError, match="inner dims"):
        mm(a, np.ones((5, 4), np.float32))
    with pytest.raises(ValueError, match="broadcast"):
        mm(np.ones((2, 3, 4), np.float32), np.ones((3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="shape"):
        mm(a, b, out=np.empty((3, 4), np.float32))
    ro = np.empty((3, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        mm(a, b, out=ro)
    with pytest.raises(TypeError, match="out"):
        mm(a, b, out=np.empty((3, 5), np.float64))
    with pytest.raises(ValueError, match="accumulate"):
        mm(a, b, accumulate=True)
    with pytest.raises(ValueError, match="scalar"):
        mm(np.ones((), np.float32), b)


def test_reference_pieces_follow_the_blis_layout():
    """pack_a / pack_b produce the documented order; the micro-kernel is sum of rank-1 updates."""
    rng = np.random.default_rng(2)
    A, B = rand(rng, (7, 5)), rand(rng, (5, 17))
    Ap, Bp = ref_gemm.pack_a(A), ref_gemm.pack_b(B)
    MR, NR = ref_gemm.MR, ref_gemm.NR
    assert Ap.shape == (2, 5, MR) and Bp.shape == (2, 5, NR)
    assert Ap[1, 3, 0] == A[MR, 3] and np.all(Ap[1, :, 1:] == 0)     # zero-padded rows
    assert Bp[1, 4, 0] == B[4, NR] and np.all(Bp[1, :, 1:] == 0)     # zero-padded columns
    tile = ref_gemm.micro_kernel(Ap[0], Bp[0])
    np.testing.assert_allclose(tile, A[:MR] @ B[:, :NR], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif("c" not in backend.available(), reason="minitx_c not built")
def test_c_matmul_threads_and_batch_paths_agree():
    """1 and 2 threads (row slabs, shared-B blocks, batch split) give bitwise the same result."""
    import minitx_c
    from minitx_c.gemm import set_parallel_split
    rng = np.random.default_rng(3)
    cases = [(rand(rng, (301, 270)), rand(rng, (270, 290))),            # threaded row blocks
             (rand(rng, (6, 40, 33)), rand(rng, (6, 33, 50)))]          # batch split
    before = minitx_c.get_num_threads()
    try:
        for a, b in cases:
            minitx_c.set_num_threads(1)
            one = minitx_c.matmul(a, b)
            minitx_c.set_num_threads(2)
            for split in ("rows", "blocks"):
                set_parallel_split(split)
                two = minitx_c.matmul(a, b)
                np.testing.assert_array_equal(one, two, err_msg=f"split={split}")
            check_close(two, a, b)
    finally:
        minitx_c.set_num_threads(before)
        set_parallel_split("rows")


@pytest.mark.skipif("c" not in backend.available(), reason="minitx_c not built")
def test_c_matmul_matches_numpy_twin_on_one_block():
    """Within one KC slice both twins sum k in the same order per tile, so they agree closely."""
    import minitx_c
    rng = np.random.default_rng(4)
    a, b = rand(rng, (13, 64)), rand(rng, (64, 21))
    np.testing.assert_allclose(minitx_c.matmul(a, b), ref_gemm.matmul(a, b), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.skipif("c" not in backend.available(), reason="minitx_c not built")
@pytest.mark.parametrize("order, block", [("ijk", 0), ("ikj", 0), ("ikj", 5)])
def test_c_matmul_loops_teaching_kernels(order, block):
    from minitx_c.gemm_loops import matmul_loops
    rng = np.random.default_rng(5)
    a, b = rand(rng, (13, 11)), rand(rng, (11, 7))
    check_close(matmul_loops(np.asfortranarray(a), b, order, block), a, b)
    with pytest.raises(ValueError, match="order"):
        matmul_loops(a, b, "kji")
    with pytest.raises(ValueError, match="block"):
        matmul_loops(a, b, "ikj", -1)
    with pytest.raises(ValueError, match=r"\(M, K\) @ \(K, N\)"):
        matmul_loops(a, a)


_ISSUE_14_CHILD = r"""
import numpy as np
import minitx_c
from minitx.kernels import gemm as ref
rng = np.random.default_rng(0)
a = rng.standard_normal((16, 16)).astype(np.float32)
b = rng.standard_normal((16, 16)).astype(np.float32)
for row in (4 * 16 + 2, -(4 * 16 + 2)):      # an out over a byte buffer, odd row stride
    buf = np.full(16 * 66 + 8, 0xA5, np.uint8)
    out = np.ndarray((16, 16), np.float32, buffer=buf, offset=0 if row > 0 else 15 * 66,
                     strides=(row, 4))
    guard = buf[16 * 66 - 2:].copy()
    assert minitx_c.matmul(a, b, out=out) is out
    np.testing.assert_array_equal(out, minitx_c.matmul(a, b))      # same kernel, bit for bit
    np.testing.assert_allclose(out, ref.matmul(a, b), rtol=1e-5, atol=1e-5)
    assert (buf[16 * 66 - 2:] == guard).all(), "bytes past out changed"
for fn in (minitx_c.matmul, ref.matmul):      # '>f4' on the 2-D fast path: the twin's error
    try:
        fn(a.astype(">f4"), b)
        raise SystemExit(f"{fn.__module__}: no error for >f4")
    except TypeError as e:
        assert "native byte order" in str(e)
print("ok")
"""


def test_c_matmul_issue_14_out_strides_and_byte_order():
    """The reported defects, in a child process (they corrupted the heap): an `out` with row
    stride 4*16+2 bytes, positive and negative, must be written exactly and nothing past it;
    '>f4' must raise the twin's TypeError on the 2-D fast path (it returned garbage)."""
    if not backend.c_available():
        pytest.skip("minitx_c is not built")
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-c", _ISSUE_14_CHILD], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-800:]
