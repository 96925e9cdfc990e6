"""minitx.nn.functional: values against direct NumPy formulas, gradients against central
differences, on every backend (the fused softmax / LayerNorm kernels dispatch to minitx_c)."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minitx
import minitx.nn.functional as F
from minitx.gradcheck import gradcheck

from strategies import arrays

TOL = {"atol": 1e-6, "rtol": 1e-5}
VALUE_RTOL = {np.float64: 1e-12, np.float32: 2e-6}


def _t(x):
    return minitx.tensor(x)


@given(x=arrays(min_dims=1), data=st.data())
def test_softmax_and_log_softmax(on_backend, x, data):
    dim = data.draw(st.integers(-x.ndim, x.ndim - 1))
    e = np.exp(x - x.max(axis=dim, keepdims=True))
    ref = e / e.sum(axis=dim, keepdims=True)
    np.testing.assert_allclose(F.softmax(_t(x), dim=dim).data, ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(F.log_softmax(_t(x), dim=dim).data, np.log(ref), rtol=1e-10,
                               atol=1e-12)
    gradcheck(lambda t: F.softmax(t, dim=dim), [x], **TOL)
    gradcheck(lambda t: F.log_softmax(t, dim=dim), [x], **TOL)


def test_softmax_is_stable_for_huge_logits(on_backend):
    x = np.array([[1000.0, 1000.0, -1000.0]], dtype=np.float32)
    np.testing.assert_allclose(F.softmax(_t(x)).data, [[0.5, 0.5, 0.0]])


@st.composite
def ce_case(draw):
    n, c = draw(st.integers(1, 6)), draw(st.integers(2, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    target = rng.integers(0, c, size=n)
    target[rng.random(n) < 0.3] = -100
    if (target == -100).all():
        target[0] = 0
    return rng.standard_normal((n, c)), target, draw(st.sampled_from(["mean", "sum", "none"]))


@given(case=ce_case())
def test_cross_entropy_matches_definition_and_gradient(case):
    logits, target, reduction = case
    keep = target != -100
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = np.where(keep, -logp[np.arange(len(target)), np.where(keep, target, 0)], 0.0)
    ref = {"mean": nll.sum() / keep.sum(), "sum": nll.sum(), "none": nll}[reduction]
    out = F.cross_entropy(_t(logits), target, reduction=reduction)
    np.testing.assert_allclose(out.data, ref, rtol=1e-12)
    gradcheck(lambda t: F.cross_entropy(t, target, reduction=reduction), [logits], **TOL)


def test_cross_entropy_class_dim_1_and_errors():
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((2, 5, 3)), rng.integers(0, 5, (2, 3))
    flat = F.cross_entropy(_t(x.transpose(0, 2, 1).reshape(6, 5)), t.reshape(6))
    np.testing.assert_allclose(F.cross_entropy(_t(x), t).data, flat.data, rtol=1e-12)
    gradcheck(lambda a: F.cross_entropy(a, t), [x], **TOL)
    with pytest.raises(ValueError, match=r"target out of range.*5 classes"):
        F.cross_entropy(_t(np.zeros((2, 5))), np.array([0, 5]))
    with pytest.raises(TypeError, match="integer class ids"):
        F.cross_entropy(_t(np.zeros((2, 5))), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="does not match input"):
        F.cross_entropy(_t(np.zeros((2, 5))), np.array([0, 1, 2]))


@given(x=arrays(min_dims=1), affine=st.booleans())
def test_layer_norm(on_backend, x, affine):
    C = x.shape[-1]
    rng = np.random.default_rng(C)
    w, b = (rng.standard_normal(C), rng.standard_normal(C)) if affine else (None, None)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ref = (x - mu) / np.sqrt(var + 1e-5) * (1 if w is None else w) + (0 if b is None else b)
    wt = None if w is None else _t(w)
    bt = None if b is None else _t(b)
    np.testing.assert_allclose(F.layer_norm(_t(x), (C,), wt, bt).data, ref, rtol=1e-10, atol=1e-12)
    if affine:
        gradcheck(lambda a, w_, b_: F.layer_norm(a, (C,), w_, b_), [x, w, b], **TOL)
    else:
        gradcheck(lambda a: F.layer_norm(a, (C,)), [x], **TOL)


@given(x=arrays(min_dims=1))
def test_rms_norm(x):
    C = x.shape[-1]
    w = np.random.default_rng(C).standard_normal(C)
    ref = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(F.rms_norm(_t(x), C, _t(w), eps=1e-6).data, ref, rtol=1e-12)
    gradcheck(lambda a, w_: F.rms_norm(a, C, w_, eps=1e-6), [x, w], **TOL)


@given(x=arrays())
def test_activations(x):
    phi = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.ravel()]).reshape(x.shape)
    np.testing.assert_allclose(F.gelu(_t(x)).data, x * phi, rtol=1e-12, atol=1e-15)
    tanh_ref = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(F.gelu(_t(x), approximate="tanh").data, tanh_ref, rtol=1e-12,
                               atol=1e-15)
    np.testing.assert_allclose(F.silu(_t(x)).data, x / (1 + np.exp(-x)), rtol=1e-12, atol=1e-15)
    for fn in (F.gelu, lambda t: F.gelu(t, approximate="tanh"), F.silu, F.relu):
        gradcheck(fn, [x + 0.01], **TOL)


def test_gelu_float32_erf_is_accurate():
    x = np.linspace(-6, 6, 2001)
    exact = x * np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    got = F.gelu(_t(x.astype(np.float32))).data
    np.testing.assert_allclose(got, exact, rtol=0, atol=2e-6)


def test_linear_and_embedding():
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    np.testing.assert_allclose(F.linear(_t(x), _t(w), _t(b)).data, x @ w.T + b, rtol=1e-12)
    gradcheck(lambda a, w_, b_: F.linear(a, w_, b_), [x, w, b], **TOL)
    idx = np.array([[0, 2, 2], [4, 0, 1]])
    table = rng.standard_normal((5, 3))
    np.testing.assert_array_equal(F.embedding(idx, _t(table)).data, table[idx])
    gradcheck(lambda t: F.embedding(idx, t), [table], **TOL)       # repeated ids accumulate
    with pytest.raises(ValueError, match=r"out of range.*\[0, 5\].*5 rows"):
        F.embedding(np.array([0, 5]), _t(table))
    with pytest.raises(ValueError, match="input has 3 features"):
        F.linear(_t(np.ones((2, 3))), _t(w))


def test_dropout_scales_and_is_seeded():
    x = _t(np.ones((200, 50), dtype=np.float32))
    minitx.manual_seed(7)
    a = F.dropout(x, 0.3).data
    minitx.manual_seed(7)
    b = F.dropout(x, 0.3).data
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, np.float32(1 / 0.7)}
    assert abs((a == 0).mean() - 0.3) < 0.02
    assert F.dropout(x, 0.3, training=False) is x
    with pytest.raises(ValueError, match="probability"):
        F.dropout(x, 1.5)
    xs = np.random.default_rng(1).standard_normal((4, 3))
    gen = np.random.default_rng(5)
    state = gen.bit_generator.state

    def fixed_mask(t):                     # the same mask every call, so a gradient exists
        gen.bit_generator.state = state
        return F.dropout(t, 0.5, generator=gen)
    gradcheck(fixed_mask, [xs], **TOL)
