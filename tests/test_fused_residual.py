"""Residual add + LayerNorm / RMSNorm (minitx/kernels/fused_residual.py, minitx_c/fused.pyx and
fused_act.pyx): the twin
against the float64 formula, the C kernel against the twin on both backends, the same errors on
both backends, adversarial layouts."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from adversarial import Kernel, assert_survives, register
from minitx import backend
from minitx.kernels import fused_residual
from test_fused_act import TOL_ROWS, _close, _randn, needs_c

EPS = 1e-5


def _layer_norm64(s, w, b, dy, ds):
    """y and the gradients of LayerNorm(s) (+ ds) in float64, from the definition."""
    s, dy = s.astype(np.float64), dy.astype(np.float64)
    mu = s.mean(axis=-1, keepdims=True)
    rstd = 1 / np.sqrt(((s - mu) ** 2).mean(axis=-1, keepdims=True) + EPS)
    xhat = (s - mu) * rstd
    y = xhat * w + b
    g = dy * w
    dx = rstd * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    C = s.shape[-1]
    return y, dx + ds, (dy * xhat).reshape(-1, C).sum(0), dy.reshape(-1, C).sum(0)


@st.composite
def _case(draw):
    shape = draw(st.sampled_from([(1, 5), (3, 33), (2, 3, 17), (0, 7), (300, 256)]))
    dtype = draw(st.sampled_from((np.float32, np.float64)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 30.0]))
    x, r, dy, ds = (_randn(rng, shape, dtype, scale) for _ in range(4))
    w, b = _randn(rng, shape[-1:], dtype), _randn(rng, shape[-1:], dtype)
    return x, r, w, b, dy, ds


@given(_case())
@settings(deadline=None)
def test_add_layer_norm_twin_is_the_formula(case):
    x, r, w, b, dy, ds = case
    s, y, mean, rstd = fused_residual.add_layer_norm_forward(x, r, w, b, EPS)
    dx, dw, db = fused_residual.add_layer_norm_backward(dy, ds, s, w, mean, rstd)
    np.testing.assert_array_equal(s, x + r)
    ref_y, ref_dx, ref_dw, ref_db = _layer_norm64(s, w, b, dy, ds)
    for got, want, what in ((y, ref_y, "y"), (dx, ref_dx, "dx"), (dw, ref_dw, "dw"),
                            (db, ref_db, "db")):
        assert got.dtype == x.dtype
        _close(got, want, TOL_ROWS, x.dtype, f"add_layer_norm {what}")


@given(_case(), st.booleans(), st.booleans())
@settings(deadline=None)
def test_add_layer_norm_kernel_equals_twin(on_backend, case, affine, with_ds):
    x, r, w, b, dy, ds = case
    w, b = (w, b) if affine else (None, None)
    ds = ds if with_ds else None
    got = backend.kernel("add_layer_norm_forward")(x, r, w, b, EPS)
    ref = fused_residual.add_layer_norm_forward(x, r, w, b, EPS)
    np.testing.assert_array_equal(got[0], ref[0])           # s: one IEEE add either way
    for g, want, what in zip(got[1:], ref[1:], ("y", "mean", "rstd")):
        assert g.shape == want.shape and g.dtype == x.dtype
        if want.size:
            _close(g, want, TOL_ROWS, x.dtype, f"add_layer_norm {what}")
    gb = backend.kernel("add_layer_norm_backward")(dy, ds, ref[0], w, ref[2], ref[3])
    rb = fused_residual.add_layer_norm_backward(dy, ds, ref[0], w, ref[2], ref[3])
    for g, want, what in zip(gb, rb, ("dx", "dweight", "dbias")):
        if want is None:
            assert g is None
            continue
        assert g.shape == want.shape and g.dtype == x.dtype
        _close(g, want, TOL_ROWS, x.dtype, f"add_layer_norm {what}")


def _rms_norm64(s, w, dy, ds):
    """y and the gradients of RMSNorm(s) (+ ds) in float64, from the definition."""
    s, dy = s.astype(np.float64), dy.astype(np.float64)
    r = 1 / np.sqrt((s * s).mean(axis=-1, keepdims=True) + EPS)
    xhat = s * r
    g = dy * w
    dx = r * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return xhat * w, dx + ds, (dy * xhat).reshape(-1, s.shape[-1]).sum(0)


@given(_case())
@settings(deadline=None)
def test_add_rms_norm_twin_is_the_formula(case):
    x, r, w, _, dy, ds = case
    s, y, rrms = fused_residual.add_rms_norm_forward(x, r, w, EPS)
    dx, dw = fused_residual.add_rms_norm_backward(dy, ds, s, w, rrms)
    np.testing.assert_array_equal(s, x + r)
    for got, want, what in zip((y, dx, dw), _rms_norm64(s, w, dy, ds), ("y", "dx", "dw")):
        assert got.dtype == x.dtype
        _close(got, want, TOL_ROWS, x.dtype, f"add_rms_norm {what}")


@given(_case(), st.booleans(), st.booleans())
@settings(deadline=None)
def test_add_rms_norm_kernel_equals_twin(on_backend, case, affine, with_ds):
    x, r, w, _, dy, ds = case
    w = w if affine else None
    ds = ds if with_ds else None
    got = backend.kernel("add_rms_norm_forward")(x, r, w, EPS)
    ref = fused_residual.add_rms_norm_forward(x, r, w, EPS)
    np.testing.assert_array_equal(got[0], ref[0])           # s: one IEEE add either way
    for g, want, what in zip(got[1:], ref[1:], ("y", "rrms")):
        assert g.shape == want.shape and g.dtype == x.dtype
        if want.size:
            _close(g, want, TOL_ROWS, x.dtype, f"add_rms_norm {what}")
    gb = backend.kernel("add_rms_norm_backward")(dy, ds, ref[0], w, ref[2])
    rb = fused_residual.add_rms_norm_backward(dy, ds, ref[0], w, ref[2])
    for g, want, what in zip(gb, rb, ("dx", "dweight")):
        if want is None:
            assert g is None
            continue
        assert g.shape == want.shape and g.dtype == x.dtype
        _close(g, want, TOL_ROWS, x.dtype, f"add_rms_norm {what}")


BAD_CALLS = [
    ("add_layer_norm_forward", lambda: (np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32),
                                        None, None, EPS), ValueError),
    ("add_layer_norm_forward", lambda: (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float64),
                                        None, None, EPS), ValueError),
    ("add_layer_norm_forward", lambda: (np.zeros((2, 3), np.float32), [[0.0] * 3] * 2, None, None,
                                        EPS), TypeError),
    ("add_layer_norm_backward", lambda: (np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32),
                                         np.zeros((2, 3), np.float32), None,
                                         np.zeros(2, np.float32), np.ones(2, np.float32)),
     ValueError),
    ("add_rms_norm_forward", lambda: (np.zeros((2, 3), np.float32), np.zeros((3, 3), np.float32),
                                      None, EPS), ValueError),
    ("add_rms_norm_forward", lambda: (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32),
                                      None, -1.0), ValueError),
    ("add_rms_norm_backward", lambda: (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64),
                                       np.zeros((2, 3), np.float32), None,
                                       np.ones(2, np.float32)), TypeError),
]


@pytest.mark.parametrize("name, args, error", BAD_CALLS)
def test_bad_input_raises_the_same_error(on_backend, name, args, error):
    with pytest.raises(error):
        backend.kernel(name)(*args())


def make_add_ln_forward(rng, shape, dtype=np.float32, affine=True):
    w, b = (_randn(rng, shape[-1:], dtype), _randn(rng, shape[-1:], dtype)) if affine else (None,
                                                                                          None)
    return dict(x=_randn(rng, shape, dtype), residual=_randn(rng, shape, dtype), weight=w, bias=b,
                eps=EPS)


def make_add_ln_backward(rng, shape, dtype=np.float32, affine=True):
    kw = make_add_ln_forward(rng, shape, dtype, affine)
    with np.errstate(all="ignore"):
        s, _, mean, rstd = fused_residual.add_layer_norm_forward(**kw)
    return dict(dy=_randn(rng, shape, dtype), ds=_randn(rng, shape, dtype), s=s,
                weight=kw["weight"], mean=mean, rstd=rstd)


def make_add_rms_forward(rng, shape, dtype=np.float32, affine=True):
    kw = make_add_ln_forward(rng, shape, dtype, affine)
    del kw["bias"]
    return kw


def make_add_rms_backward(rng, shape, dtype=np.float32, affine=True):
    kw = make_add_rms_forward(rng, shape, dtype, affine)
    with np.errstate(all="ignore"):
        s, _, rrms = fused_residual.add_rms_norm_forward(**kw)
    return dict(dy=_randn(rng, shape, dtype), ds=_randn(rng, shape, dtype), s=s,
                weight=kw["weight"], rrms=rrms)


DIMS = [dict(shape=(4, 7)), dict(shape=(2, 3, 5), dtype=np.float64), dict(shape=(0, 7)),
        dict(shape=(7,)), dict(shape=(3, 6), affine=False)]
ADVERSARIAL = [
    Kernel("add_layer_norm_forward", make=make_add_ln_forward, dims=DIMS, tol=TOL_ROWS),
    Kernel("add_layer_norm_backward", make=make_add_ln_backward, dims=DIMS, tol=TOL_ROWS),
    Kernel("add_rms_norm_forward", make=make_add_rms_forward, dims=DIMS, tol=TOL_ROWS),
    Kernel("add_rms_norm_backward", make=make_add_rms_backward, dims=DIMS, tol=TOL_ROWS),
]
for _k in ADVERSARIAL:
    register(_k)


@needs_c
@pytest.mark.parametrize("name", [k.name for k in ADVERSARIAL])
def test_fused_residual_adversarial(name):
    assert_survives([name])
