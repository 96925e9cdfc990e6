"""Bias + GELU (minitx/kernels/fused_bias.py, minitx_c/fused_act.pyx): the twin against the
float64 formula, the C kernel against the twin on both backends, F.bias_gelu against
F.gelu(x + b) through autograd, the same errors on both backends, adversarial layouts."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from adversarial import Kernel, assert_survives, register
from minitx import backend
from minitx.kernels import fused_bias
from minitx.nn import functional as F
from minitx.autograd import Tensor
from test_fused_act import (SPECIAL, TOL_FORMULA, TOL_ROWS, TOL_TWIN, _close, _finite, _gelu64,
                            _randn, needs_c)


@st.composite
def _case(draw):
    shape = draw(st.sampled_from([(1, 5), (0, 7), (4, 0), (3, 33), (2, 3, 17), (40, 4096)]))
    dtype = draw(st.sampled_from((np.float32, np.float64)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(shape) * draw(st.sampled_from([0.3, 2.0, 8.0]))
    if x.size > len(SPECIAL) and draw(st.booleans()):
        x.reshape(-1)[:len(SPECIAL)] = SPECIAL
    b = rng.standard_normal(shape[-1:])
    dy = rng.standard_normal(shape)
    return tuple(np.asarray(a, dtype=dtype) for a in (x, b, dy))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@given(_case())
@settings(deadline=None)
def test_bias_gelu_twin_is_the_formula(approximate, case):
    x, b, dy = case
    y, h, t = fused_bias.bias_gelu_forward(x, b, approximate)
    dx, db = fused_bias.bias_gelu_backward(dy, h, t, approximate)
    assert y.dtype == h.dtype == dx.dtype == db.dtype == x.dtype
    assert y.shape == h.shape == t.shape == dx.shape == x.shape and db.shape == b.shape
    np.testing.assert_array_equal(h, x + b)
    f = _finite(h)
    ref_y, ref_d = _gelu64(h[f], approximate)
    _close(y[f], ref_y, TOL_FORMULA, x.dtype, f"bias_gelu {approximate}")
    _close(dx[f], dy[f] * ref_d, TOL_FORMULA, x.dtype, f"bias_gelu {approximate} dx")
    if np.isfinite(x).all():
        ref_db = (dy.astype(np.float64) * _gelu64(h, approximate)[1])
        ref_db = ref_db.reshape(-1, x.shape[-1]).sum(axis=0) if x.size else np.zeros(b.shape)
        _close(db, ref_db, TOL_ROWS, x.dtype, f"bias_gelu {approximate} db")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@given(_case())
@settings(deadline=None)
def test_bias_gelu_kernel_equals_twin(on_backend, approximate, case):
    x, b, dy = case
    y, h, t = backend.kernel("bias_gelu_forward")(x, b, approximate)
    dx, db = backend.kernel("bias_gelu_backward")(dy, h, t, approximate)
    ref = fused_bias.bias_gelu_forward(x, b, approximate)
    ref_dx, ref_db = fused_bias.bias_gelu_backward(dy, ref[1], ref[2], approximate)
    np.testing.assert_array_equal(h, ref[1])               # one IEEE add either way
    for got, want, what in ((y, ref[0], "y"), (t, ref[2], "t"), (dx, ref_dx, "dx")):
        assert got.shape == x.shape and got.dtype == x.dtype
        _close(got, want, TOL_TWIN, x.dtype, f"bias_gelu {approximate} {what}")
    assert db.shape == b.shape and db.dtype == x.dtype
    _close(db, ref_db, TOL_ROWS, x.dtype, f"bias_gelu {approximate} db")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_F_bias_gelu_is_gelu_of_the_sum(on_backend, approximate):
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        x0, b0 = _randn(rng, (2, 5, 8), dtype, 2.0), _randn(rng, (8,), dtype)
        g = _randn(rng, (2, 5, 8), dtype)
        x, b = Tensor(x0, requires_grad=True), Tensor(b0, requires_grad=True)
        y = F.bias_gelu(x, b, approximate=approximate)
        (y * Tensor(g)).sum().backward()
        x2, b2 = Tensor(x0, requires_grad=True), Tensor(b0, requires_grad=True)
        y2 = F.gelu(x2 + b2, approximate=approximate)
        (y2 * Tensor(g)).sum().backward()
        _close(y.data, y2.data, TOL_TWIN, dtype, "F.bias_gelu y")
        _close(x.grad, x2.grad, TOL_TWIN, dtype, "F.bias_gelu dx")
        _close(b.grad, b2.grad, TOL_ROWS, dtype, "F.bias_gelu db")


BAD_CALLS = [
    ("bias_gelu_forward", lambda: (np.zeros((2, 3), np.float32), np.zeros(4, np.float32), "none"),
     ValueError),
    ("bias_gelu_forward", lambda: (np.zeros((2, 3), np.float32), np.zeros(3, np.float64), "none"),
     TypeError),
    ("bias_gelu_forward", lambda: (np.zeros((2, 3), np.float32), None, "tanh"), TypeError),
    ("bias_gelu_forward", lambda: (np.zeros((2, 3), np.float32), np.zeros(3, np.float32), "erf"),
     ValueError),
    ("bias_gelu_forward", lambda: (np.float32(1.0), np.zeros(1, np.float32), "none"), TypeError),
    ("bias_gelu_backward", lambda: (np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32),
                                    np.zeros((2, 4), np.float32), "none"), ValueError),
    ("bias_gelu_backward", lambda: (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int32),
                                    np.zeros((2, 3), np.float32), "none"), TypeError),
]


@pytest.mark.parametrize("name, args, error", BAD_CALLS)
def test_bad_input_raises_the_same_error(on_backend, name, args, error):
    with pytest.raises(error):
        backend.kernel(name)(*args())


def make_bias_gelu_forward(rng, shape, dtype=np.float32, approximate="none"):
    return dict(x=_randn(rng, shape, dtype, 2.0), bias=_randn(rng, shape[-1:], dtype),
                approximate=approximate)


def make_bias_gelu_backward(rng, shape, dtype=np.float32, approximate="none"):
    kw = make_bias_gelu_forward(rng, shape, dtype, approximate)
    _, h, t = fused_bias.bias_gelu_forward(**kw)
    return dict(dy=_randn(rng, shape, dtype), h=h, saved=t, approximate=approximate)


DIMS = [dict(shape=(4, 7)), dict(shape=(3, 5), dtype=np.float64), dict(shape=(0, 7)),
        dict(shape=(4, 0)), dict(shape=(9,)), dict(shape=(2, 3, 6), approximate="tanh")]
ADVERSARIAL = [
    Kernel("bias_gelu_forward", make=make_bias_gelu_forward, dims=DIMS, tol=TOL_TWIN),
    Kernel("bias_gelu_backward", make=make_bias_gelu_backward, dims=DIMS, tol=TOL_ROWS),
]
for _k in ADVERSARIAL:
    register(_k)


@needs_c
@pytest.mark.parametrize("name", [k.name for k in ADVERSARIAL])
def test_fused_bias_adversarial(name):
    assert_survives([name])
