"""Fused activation / normalisation kernels (minitx/kernels/fused_act.py, minitx_c/fused_act.pyx):
each twin against the float64 formula, the C kernel against its twin (property-tested on both
backends, float32 and float64), erf within 1 ulp of float64 math.erf, the embedding backward bit
for bit and reproducible, the same errors on both backends, and every C entry point on
adversarial layouts (tests/adversarial.py)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from adversarial import Kernel, assert_survives, register
from minitx import backend
from minitx.kernels import fused_act

needs_c = pytest.mark.skipif(not backend.c_available(), reason="minitx_c is not built")
DTYPES = (np.float32, np.float64)
# result dtype -> (rtol, atol), relative to the largest |value| of the compared array.
# twin vs float64 formula: float32 rounding of a handful of steps (the tanh twin runs in float32).
TOL_FORMULA = {np.float32: (2e-6, 2e-6), np.float64: (1e-12, 1e-13)}
# C kernel vs twin: the C kernel computes float32 in double, the GELU twins in float32.
TOL_TWIN = {np.float32: (2e-6, 2e-6), np.float64: (1e-12, 1e-13)}
# rows (RMSNorm): float32 sums in a different order
TOL_ROWS = {np.float32: (2e-5, 2e-6), np.float64: (1e-12, 1e-13)}
SPECIAL = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-8, 0.5, 0.9999, 1.0, 1.0001, 2.5, 3.9, 4.0,
                    4.5, 10.0, -10.0, 80.0, -80.0, 1e20, -1e20, np.inf, -np.inf, np.nan])


def _close(actual, expected, tol, dtype, what):
    rtol, atol = tol[np.dtype(dtype).type]
    finite = np.abs(expected[np.isfinite(expected)])             # inf would make atol inf
    scale = max(1.0, float(finite.max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale,
                               err_msg=f"{what} ({np.dtype(dtype).name}, shape {expected.shape})")


@st.composite
def _elementwise_case(draw):
    shape = draw(st.sampled_from([(), (0,), (7,), (3, 5), (2, 3, 33), (1, 1 << 15)]))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(shape) * draw(st.sampled_from([0.3, 2.0, 8.0]))
    if x.size > len(SPECIAL) and draw(st.booleans()):
        x.reshape(-1)[:len(SPECIAL)] = SPECIAL
    dy = rng.standard_normal(shape)
    return np.asarray(x, dtype=dtype), np.asarray(dy, dtype=dtype)


# ------------------------------------------------------------------------- formulas in float64
def _gelu64(x, approximate):
    x = x.astype(np.float64)
    if approximate == "tanh":
        th = np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))
        du = math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x * x)
        return 0.5 * x * (1 + th), 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * du
    phi = 0.5 * (1 + np.vectorize(math.erf, otypes=[float])(x / math.sqrt(2)))
    return x * phi, phi + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _silu64(x):
    x = x.astype(np.float64)
    s = 1 / (1 + np.exp(-x))
    return x * s, s * (1 + x * (1 - s))


def _finite(x):
    return np.abs(x) < 1e6                # the formulas in float64 overflow (x^3) beyond


# ------------------------------------------------------------------------- erf
def _ulps(actual32, exact64):
    """|actual - exact| in float32 ulps of the exact value, 2^(floor(log2 |exact|) - 23)."""
    _, e = np.frexp(exact64)
    ulp = np.ldexp(1.0, np.maximum(e - 24, -149))
    return np.abs(actual32.astype(np.float64) - exact64) / ulp


def test_erf_float32_is_faithfully_rounded_math_erf():
    rng = np.random.default_rng(0)
    x = np.concatenate([SPECIAL[:-3], rng.standard_normal(20000) * 2,
                        rng.uniform(-4.5, 4.5, 20000), 10.0 ** rng.uniform(-40, 1, 5000)])
    x = x.astype(np.float32)
    exact = np.vectorize(math.erf, otypes=[float])(x.astype(np.float64))
    ulps = _ulps(fused_act.erf(x), exact)
    # the nearest or next-nearest float32: the fits' 1e-12 error only matters at a midpoint
    # (the C kernel measured at most 0.5000 ulp over every float32, benchmarks/erf_accuracy.py)
    assert ulps.max() <= 0.51, f"max {ulps.max():.4f} ulp at x = {x[np.argmax(ulps)]!r}"
    assert np.mean(ulps <= 0.5) > 0.999                     # correctly rounded almost always
    y = fused_act.erf(np.array([np.inf, -np.inf, np.nan, -0.0], dtype=np.float32))
    assert y[0] == 1 and y[1] == -1 and np.isnan(y[2]) and np.signbit(y[3])


def test_erf_ulp_check_can_fail():
    """The ulp measure above catches an erf that is 2 ulp off."""
    x = np.float32([0.3, 2.0])
    exact = np.vectorize(math.erf, otypes=[float])(x.astype(np.float64))
    off = (exact.astype(np.float32) + 2 * np.spacing(exact.astype(np.float32))).astype(np.float32)
    assert _ulps(off, exact).max() > 1.0


@given(_elementwise_case())
@settings(deadline=None)
def test_erf_kernel_equals_twin(on_backend, case):
    x, _ = case
    y = backend.kernel("erf")(x)
    ref = fused_act.erf(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    if x.dtype == np.float64:
        np.testing.assert_array_equal(y, ref)               # both are libm's erf
    else:
        ok = np.isnan(ref) & np.isnan(y) | (_ulps(y, ref.astype(np.float64)) <= 1)
        assert ok.all(), f"erf differs by > 1 ulp at {x[~ok][:5]}"


# ------------------------------------------------------------------------- GELU and SiLU
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@given(_elementwise_case())
@settings(deadline=None)
def test_gelu_twin_is_the_formula(approximate, case):
    x, dy = case
    y, saved = fused_act.gelu_forward(x, approximate)
    dx = fused_act.gelu_backward(dy, x, saved, approximate)
    assert y.dtype == dx.dtype == saved.dtype == x.dtype and dx.shape == x.shape
    f = _finite(x)
    ref_y, ref_d = _gelu64(x[f], approximate)
    _close(y[f], ref_y, TOL_FORMULA, x.dtype, f"gelu {approximate}")
    _close(dx[f], dy[f] * ref_d, TOL_FORMULA, x.dtype, f"gelu {approximate} backward")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@given(_elementwise_case())
@settings(deadline=None)
def test_gelu_kernel_equals_twin(on_backend, approximate, case):
    x, dy = case
    y, saved = backend.kernel("gelu_forward")(x, approximate)
    dx = backend.kernel("gelu_backward")(dy, x, saved, approximate)
    ref_y, ref_saved = fused_act.gelu_forward(x, approximate)
    ref_dx = fused_act.gelu_backward(dy, x, ref_saved, approximate)
    for got, ref, what in ((y, ref_y, "y"), (saved, ref_saved, "saved"), (dx, ref_dx, "dx")):
        assert got.shape == x.shape and got.dtype == x.dtype
        _close(got, ref, TOL_TWIN, x.dtype, f"gelu {approximate} {what}")


def test_exact_gelu_tails_elementwise(on_backend):
    """Per element, not scaled by the array's largest value: far in the negative tail GELU is
    about 0 (not x times a leftover erfc), far in the positive tail it is x. Below -4 sqrt 2
    the kernels take erfc as 0 (Phi < 7.7e-9 there), hence the 5e-8 absolute floor."""
    x = np.array([-1e20, -1e6, -80.0, -10.0, -6.0, -5.7, -5.6, -3.0, 3.0, 5.7, 10.0, 80.0, 1e20],
                 dtype=np.float32)
    y, phi = backend.kernel("gelu_forward")(x, "none")
    ref = _gelu64(x, "none")[0]
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= 2e-6 * np.abs(ref) + 5e-8), (x, y, ref)
    assert np.all(phi[x < -6] == 0) and np.all(phi[x > 6] == 1)


@given(_elementwise_case())
@settings(deadline=None)
def test_silu_twin_is_the_formula_and_kernel_equals_twin(on_backend, case):
    x, dy = case
    y, s = backend.kernel("silu_forward")(x)
    dx = backend.kernel("silu_backward")(dy, x, s)
    f = _finite(x)
    ref_y, ref_d = _silu64(x[f])
    _close(y[f], ref_y, TOL_FORMULA, x.dtype, "silu")
    _close(dx[f], dy[f] * ref_d, TOL_FORMULA, x.dtype, "silu backward")
    twin_y, twin_s = fused_act.silu_forward(x)
    _close(y, twin_y, TOL_TWIN, x.dtype, "silu vs twin")
    _close(dx, fused_act.silu_backward(dy, x, twin_s), TOL_TWIN, x.dtype, "silu bwd vs twin")


@needs_c
def test_parallel_blocks_give_the_serial_bits():
    import minitx_c
    x = np.random.default_rng(1).standard_normal((5, 40000)).astype(np.float32)
    before = minitx_c.get_num_threads()
    try:
        minitx_c.set_num_threads(1)
        serial = minitx_c.gelu_forward(x, "none")
        minitx_c.set_num_threads(2)
        parallel = minitx_c.gelu_forward(x, "none")
    finally:
        minitx_c.set_num_threads(before)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------- RMSNorm
@st.composite
def _rows_case(draw):
    shape = draw(st.sampled_from([(4, 7), (2, 3, 64), (0, 5), (3, 1), (128, 128)]))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (rng.standard_normal(shape) * draw(st.sampled_from([1e-3, 1.0, 30.0]))).astype(dtype)
    w = rng.standard_normal(shape[-1]).astype(dtype) if draw(st.booleans()) else None
    return x, w, rng.standard_normal(shape).astype(dtype)


@given(_rows_case())
@settings(deadline=None)
def test_rms_norm_kernel_is_the_formula(on_backend, case):
    x, w, dy = case
    eps = 1e-6
    y, rrms = backend.kernel("rms_norm_forward")(x, w, eps)
    dx, dw = backend.kernel("rms_norm_backward")(dy, x, w, rrms)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    w64 = np.ones(x.shape[-1]) if w is None else w.astype(np.float64)
    r = 1 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps)
    xhat = x64 * r
    g = dy64 * w64
    ref_dx = r * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    _close(y, xhat * w64, TOL_ROWS, x.dtype, "rms_norm y")
    _close(rrms, r[..., 0], TOL_ROWS, x.dtype, "rrms")
    _close(dx, ref_dx, TOL_ROWS, x.dtype, "rms_norm dx")
    if w is None:
        assert dw is None
    else:
        _close(dw, (dy64 * xhat).reshape(-1, x.shape[-1]).sum(axis=0), TOL_ROWS, x.dtype, "dw")


# ------------------------------------------------------------------------- embedding backward
@given(st.integers(0, 300), st.integers(1, 40), st.integers(0, 20), st.integers(0, 2**32 - 1),
       st.sampled_from(DTYPES))
@settings(deadline=None)
def test_embedding_backward_bits_match_across_backends(on_backend, N, V, D, seed, dtype):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, (N,)).reshape(-1, 1) if N % 2 else rng.integers(0, V, (N,))
    dy = rng.standard_normal(idx.shape + (D,)).astype(dtype)
    dy.reshape(-1)[::7] = -0.0
    dw = backend.kernel("embedding_backward")(idx, dy, V)
    ref = np.zeros((V, D))
    np.add.at(ref, idx.reshape(-1), dy.reshape(idx.size, D).astype(np.float64))
    _close(dw, ref, TOL_ROWS, dtype, "embedding dW")
    twin = fused_act.embedding_backward(idx, dy, V)
    assert dw.dtype == dtype
    np.testing.assert_array_equal(dw.view(np.uint8), twin.view(np.uint8))   # bits, -0.0 too
    again = backend.kernel("embedding_backward")(idx, dy, V)
    np.testing.assert_array_equal(again.view(np.uint8), dw.view(np.uint8))


# ------------------------------------------------------------------------- bad input
BAD_CALLS = [
    ("gelu_forward", lambda: (np.zeros(3, np.int32), "none"), TypeError),
    ("gelu_forward", lambda: (np.zeros(3, np.float32), "erf"), ValueError),
    ("gelu_forward", lambda: ([1.0, 2.0], "none"), TypeError),
    ("gelu_forward", lambda: (np.zeros(3, ">f4"), "tanh"), TypeError),
    ("gelu_backward", lambda: (np.zeros(3, np.float32), np.zeros(4, np.float32),
                               np.zeros(4, np.float32), "none"), ValueError),
    ("gelu_backward", lambda: (np.zeros(3, np.float64), np.zeros(3, np.float32),
                               np.zeros(3, np.float32), "tanh"), ValueError),
    ("silu_backward", lambda: (np.zeros(3, np.float32), np.zeros(3, np.float32), None),
     TypeError),
    ("erf", lambda: (np.zeros(3, np.float16),), TypeError),
    ("rms_norm_forward", lambda: (np.zeros((2, 3), np.float32), np.zeros(4, np.float32), 1e-6),
     ValueError),
    ("rms_norm_forward", lambda: (np.zeros((2, 3), np.float32), None, -1.0), ValueError),
    ("rms_norm_backward", lambda: (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32),
                                   None, np.zeros(3, np.float32)), ValueError),
    ("embedding_backward", lambda: (np.array([0, 5]), np.zeros((2, 3), np.float32), 5),
     ValueError),
    ("embedding_backward", lambda: (np.array([-1, 0]), np.zeros((2, 3), np.float32), 5),
     ValueError),
    ("embedding_backward", lambda: (np.array([0.0, 1.0]), np.zeros((2, 3), np.float32), 5),
     TypeError),
    ("embedding_backward", lambda: (np.array([0, 1]), np.zeros((3, 3), np.float32), 5),
     ValueError),
]


@pytest.mark.parametrize("name, args, error", BAD_CALLS)
def test_bad_input_raises_the_same_error(on_backend, name, args, error):
    with pytest.raises(error):
        backend.kernel(name)(*args())


# ------------------------------------------------------------------------- adversarial layouts
def _randn(rng, shape, dtype, scale=1.0):
    return np.asarray(rng.standard_normal(shape) * scale, dtype=dtype)   # an ndarray, 0-d too


def make_erf(rng, shape, dtype=np.float32):
    return dict(x=_randn(rng, shape, dtype, 2.0))


def make_gelu_forward(rng, shape, dtype=np.float32, approximate="none"):
    return dict(x=_randn(rng, shape, dtype, 2.0), approximate=approximate)


def make_gelu_backward(rng, shape, dtype=np.float32, approximate="none"):
    x = _randn(rng, shape, dtype, 2.0)
    return dict(dy=_randn(rng, shape, dtype), x=x,
                saved=fused_act.gelu_forward(x, approximate)[1], approximate=approximate)


def make_silu_forward(rng, shape, dtype=np.float32):
    return dict(x=_randn(rng, shape, dtype, 2.0))


def make_silu_backward(rng, shape, dtype=np.float32):
    x = _randn(rng, shape, dtype, 2.0)
    return dict(dy=_randn(rng, shape, dtype), x=x, saved=fused_act.silu_forward(x)[1])


def make_rms_forward(rng, shape, dtype=np.float32, affine=True):
    return dict(x=_randn(rng, shape, dtype),
                weight=_randn(rng, shape[-1:], dtype) if affine else None, eps=1e-6)


def make_rms_backward(rng, shape, dtype=np.float32, affine=True):
    kw = make_rms_forward(rng, shape, dtype, affine)
    with np.errstate(all="ignore"):
        _, rrms = fused_act.rms_norm_forward(kw["x"], kw["weight"], kw["eps"])
    return dict(dy=_randn(rng, shape, dtype), x=kw["x"], weight=kw["weight"], rrms=rrms)


def make_embedding_backward(rng, N, V, D, dtype=np.float32):
    return dict(idx=rng.integers(0, V, N), dy=_randn(rng, (N, D), dtype), num_embeddings=V)


ELEMENTWISE_DIMS = [dict(shape=(4, 7)), dict(shape=(3, 5), dtype=np.float64), dict(shape=(0, 7)),
                    dict(shape=(9,)), dict(shape=())]
GELU_DIMS = ELEMENTWISE_DIMS + [dict(shape=(4, 7), approximate="tanh"),
                                dict(shape=(2, 5), dtype=np.float64, approximate="tanh")]
ROW_DIMS = [dict(shape=(4, 7)), dict(shape=(2, 3, 5), dtype=np.float64), dict(shape=(0, 7)),
            dict(shape=(7,)), dict(shape=(4, 0)), dict(shape=(3, 6), affine=False)]
ADVERSARIAL = [
    Kernel("erf", make=make_erf, dims=ELEMENTWISE_DIMS, tol=TOL_TWIN),
    Kernel("gelu_forward", make=make_gelu_forward, dims=GELU_DIMS, tol=TOL_TWIN),
    Kernel("gelu_backward", make=make_gelu_backward, dims=GELU_DIMS, tol=TOL_TWIN),
    Kernel("silu_forward", make=make_silu_forward, dims=ELEMENTWISE_DIMS, tol=TOL_TWIN),
    Kernel("silu_backward", make=make_silu_backward, dims=ELEMENTWISE_DIMS, tol=TOL_TWIN),
    Kernel("rms_norm_forward", make=make_rms_forward, dims=ROW_DIMS, tol=TOL_ROWS),
    Kernel("rms_norm_backward", make=make_rms_backward, dims=ROW_DIMS, tol=TOL_ROWS),
    Kernel("embedding_backward", make=make_embedding_backward,
           dims=[dict(N=9, V=4, D=3), dict(N=5, V=3, D=2, dtype=np.float64),
                 dict(N=0, V=3, D=2), dict(N=4, V=2, D=0), dict(N=3, V=5, D=4)],
           tol={}),
]
for _k in ADVERSARIAL:
    register(_k)


@needs_c
@pytest.mark.parametrize("name", [k.name for k in ADVERSARIAL])
def test_fused_act_adversarial(name):
    assert_survives([name])
