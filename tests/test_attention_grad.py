"""Gradients of every attention implementation against central finite differences (float64),
and a check that the checker itself catches a wrong gradient."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minitx
from minitx import backend
from minitx.attention import IMPLS, scaled_dot_product_attention as sdpa

# Tolerances, in one place, keyed by dtype.
TOL = {"float64": {"step": 1e-6, "rel": 1e-6, "abs": 1e-8}}
AVAILABLE_IMPLS = [i for i in IMPLS if i != "auto" and (i != "c" or backend.c_available())]


def directional_check(f, arrays, grads, rng, n_dirs=3):
    """Compare <grad, u> with (f(x + h u) - f(x - h u)) / 2h for random directions u.

    Args:
        f: list of arrays -> float loss; arrays: the inputs; grads: claimed gradients.
    Returns:
        the worst (relative error, analytic value, numeric value) over the directions.
    """
    t = TOL["float64"]
    worst = (0.0, 0.0, 0.0)
    for _ in range(n_dirs):
        us = [rng.standard_normal(a.shape) for a in arrays]
        plus = f([a + t["step"] * u for a, u in zip(arrays, us)])
        minus = f([a - t["step"] * u for a, u in zip(arrays, us)])
        numeric = (plus - minus) / (2 * t["step"])
        analytic = sum(float((g * u).sum()) for g, u in zip(grads, us))
        err = abs(numeric - analytic) / (abs(numeric) * t["rel"] + t["abs"])
        worst = max(worst, (err, analytic, numeric))
    return worst


def loss_and_grads(impl, arrays, w, **kw):
    ts = [minitx.tensor(a, requires_grad=True) for a in arrays]
    y = sdpa(*ts, impl=impl, **kw)
    loss = (y * minitx.tensor(w)).sum()
    loss.backward()
    return float(loss.data), [t.grad for t in ts]


@given(impl=st.sampled_from(AVAILABLE_IMPLS), seed=st.integers(0, 2 ** 31),
       causal=st.booleans(), gqa=st.booleans(), window=st.sampled_from([None, (2, 1), (0, -1)]),
       mask=st.sampled_from([None, "bool", "float"]), nq=st.integers(1, 9), nk=st.integers(1, 9))
def test_gradients_match_finite_differences(impl, seed, causal, gqa, window, mask, nq, nk):
    rng = np.random.default_rng(seed)
    Hq, Hkv, d = (4, 2, 5) if gqa else (2, 2, 5)
    arrays = [rng.standard_normal((2, Hq, nq, d)), rng.standard_normal((2, Hkv, nk, d)),
              rng.standard_normal((2, Hkv, nk, d))]
    attn_mask = None
    if mask == "bool":
        attn_mask = rng.random((nq, nk)) < 0.7
    elif mask == "float":
        attn_mask = rng.standard_normal((Hq, nq, nk))
    kw = dict(is_causal=causal, enable_gqa=gqa, window=window, attn_mask=attn_mask)
    w = rng.standard_normal((2, Hq, nq, d))
    _, grads = loss_and_grads(impl, arrays, w, **kw)
    with minitx.no_grad():
        f = lambda xs: float((sdpa(*xs, impl=impl, **kw).data * w).sum())  # noqa: E731
        err, analytic, numeric = directional_check(f, arrays, grads, rng)
    assert err <= 1, (f"{impl}: directional derivative {analytic:.10g} vs finite difference "
                      f"{numeric:.10g}, q {arrays[0].shape}, k {arrays[1].shape}, {kw}")


def test_checker_catches_a_wrong_gradient():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((1, 2, 6, 4)) for _ in range(3)]
    w = rng.standard_normal((1, 2, 6, 4))
    _, grads = loss_and_grads("flash2", arrays, w, is_causal=True)
    f = lambda xs: float((sdpa(*xs, impl="flash2", is_causal=True).data * w).sum())  # noqa: E731
    assert directional_check(f, arrays, grads, rng)[0] <= 1
    wrong = [grads[0], grads[1] * 1.001, grads[2]]          # dK off by 0.1%
    assert directional_check(f, arrays, wrong, rng)[0] > 1


@pytest.mark.parametrize("p", [0.3])
def test_naive_dropout_gradient_with_fixed_mask(p):
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((1, 2, 5, 4)) for _ in range(3)]
    w = rng.standard_normal((1, 2, 5, 4))

    def f(xs):
        minitx.random.manual_seed(11)                       # the same dropout mask every call
        return float((sdpa(*xs, dropout_p=p).data * w).sum())

    minitx.random.manual_seed(11)
    _, grads = loss_and_grads("naive", arrays, w, dropout_p=p)
    assert directional_check(f, arrays, grads, rng)[0] <= 1
