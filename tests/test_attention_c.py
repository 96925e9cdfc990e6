"""The Cython FlashAttention-2 kernel (minitx_c.flash): equal to its NumPy twin in float64,
FlashAttention's accuracy rule in float32, input validation, threads, block skipping."""
import inspect

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitx.attention import flash2 as np_flash2
from minitx.attention.naive import naive_backward, naive_forward
from strategies import attention_cases

flash = pytest.importorskip("minitx_c.flash", reason="Cython extension not built")
import minitx_c  # noqa: E402

# Tolerances, in one place, keyed by dtype.
TOL = {
    "float64": 1e-12,   # kernel vs NumPy flash2, same algorithm, float64
    # FlashAttention's rule (flash-attn tests): max |kernel - ref64| <= 2 * max |naive32 - ref64|.
    # The floor covers cases where naive float32 happens to be exact (e.g. Nq = Nk = 1, where
    # dq = 0 exactly in naive but D = rowsum(dO * O) rounds differently): 4 float32 ulps of the
    # larger of the result and the terms that make it up (see `term_scale`).
    "float32_rule_factor": 2.0,
    "float32_rule_floor_ulps": 4,
}


def term_scale(name, q, k, v, do, scale):
    """Largest magnitude of one term in the sums forming o, dq, dk or dv."""
    m = {a: float(np.abs(x).max()) for a, x in (("q", q), ("k", k), ("v", v), ("do", do))}
    return {"o": m["v"], "dv": m["do"], "dq": scale * m["do"] * m["v"] * m["k"],
            "dk": scale * m["do"] * m["v"] * m["q"]}[name]


def max_err(a, ref):
    return float(np.abs(a.astype(np.float64) - ref).max(initial=0))


def test_signatures_match_numpy_twin():
    for name in ("flash2_forward", "flash2_backward"):
        c_sig = inspect.signature(getattr(flash, name))
        np_sig = inspect.signature(getattr(np_flash2, name))
        assert c_sig == np_sig, f"{name}: Cython {c_sig} != NumPy {np_sig}"
        assert getattr(minitx_c, name) is getattr(flash, name)


@given(attention_cases())
def test_kernel_equals_numpy_flash2_float64(c):
    args = (c["q"], c["k"], c["v"], c["bias"])
    opts = dict(is_causal=c["is_causal"], window=c["window"], Br=c["Br"], Bc=c["Bc"])
    o_np, L_np = np_flash2.flash2_forward(*args, **opts)
    o_c, L_c = flash.flash2_forward(*args, **opts)
    assert np.array_equal(np.isinf(L_c), np.isinf(L_np)), "fully masked rows differ"
    fin = np.isfinite(L_np)
    for name, a, b in (("o", o_c, o_np), ("L", L_c[fin], L_np[fin])):
        assert max_err(a, b) <= TOL["float64"], f"{name}: {max_err(a, b):.3g}, q {c['q'].shape}"
    g_np = np_flash2.flash2_backward(*args, o_np, L_np, c["do"], **opts)
    g_c = flash.flash2_backward(*args, o_c, L_c, c["do"], **opts)
    for name, a, b in zip(("dq", "dk", "dv"), g_c, g_np):
        err = max_err(a, b)
        worst = np.unravel_index(np.argmax(np.abs(a - b)), a.shape)
        assert err <= TOL["float64"], f"{name}: {err:.3g} at {worst}, q {c['q'].shape}"


@st.composite
def float32_cases(draw):
    """Bigger problems (several 64-blocks, d up to 64) in float32, with a float64 copy."""
    c = draw(attention_cases(max_n=150, max_d=64, dtype=np.float32))
    c["Br"], c["Bc"] = draw(st.sampled_from([(64, 64), (16, 48), (37, 5), (128, 32)]))
    return c


@given(float32_cases())
def test_kernel_meets_flash_attention_accuracy_rule_float32(c):
    q, k, v, bias, do = c["q"], c["k"], c["v"], c["bias"], c["do"]
    opts = dict(is_causal=c["is_causal"], window=c["window"])
    f64 = [None if a is None else a.astype(np.float64) for a in (q, k, v, bias, do)]
    o_ref, P_ref = naive_forward(*f64[:4], **opts)                      # float64 reference
    g_ref = naive_backward(*f64[:3], P_ref, f64[4])
    o_32, P_32 = naive_forward(q, k, v, bias, **opts)                  # naive float32
    g_32 = naive_backward(q, k, v, P_32, do)
    o_c, L_c = flash.flash2_forward(q, k, v, bias, **opts, Br=c["Br"], Bc=c["Bc"])
    g_c = flash.flash2_backward(q, k, v, bias, o_c, L_c, do, **opts, Br=c["Br"], Bc=c["Bc"])
    eps = np.finfo(np.float32).eps
    for name, mine, naive32, ref in zip(("o", "dq", "dk", "dv"), (o_c, *g_c), (o_32, *g_32),
                                        (o_ref, *g_ref)):
        bound = (TOL["float32_rule_factor"] * max_err(naive32, ref)
                 + TOL["float32_rule_floor_ulps"] * eps
                 * max(term_scale(name, q, k, v, do, 1 / np.sqrt(q.shape[-1])),
                       float(np.abs(ref).max(initial=0))))
        assert max_err(mine, ref) <= bound, (f"{name}: kernel error {max_err(mine, ref):.3g} > "
                                             f"{bound:.3g} (naive float32 "
                                             f"{max_err(naive32, ref):.3g}), q {q.shape}")


def test_threads_give_identical_results():
    rng = np.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((2, 3, 100, 32)).astype(np.float32) for _ in range(4))
    before = minitx_c.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            minitx_c.set_num_threads(n)
            o, L = flash.flash2_forward(q, k, v, is_causal=True)
            outs.append((o, L, *flash.flash2_backward(q, k, v, None, o, L, do, is_causal=True)))
    finally:
        minitx_c.set_num_threads(before)
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


def test_skipped_tiles_are_never_read():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 1, 64, 8)).astype(np.float32) for _ in range(3))
    k[..., 48:, :] = np.nan
    v[..., 48:, :] = np.nan
    o, L = flash.flash2_forward(q, k, v, is_causal=True, Br=16, Bc=16)
    assert np.isfinite(o[..., :48, :]).all() and np.isfinite(L[..., :48]).all()


def test_fully_masked_rows_are_zero_with_zero_gradient():
    rng = np.random.default_rng(0)
    q, do = (rng.standard_normal((1, 2, 9, 16)).astype(np.float32) for _ in range(2))
    k, v = (rng.standard_normal((1, 2, 4, 16)).astype(np.float32) for _ in range(2))
    o, L = flash.flash2_forward(q, k, v, is_causal=True)          # rows 0..4 see no key
    dq, dk, dv = flash.flash2_backward(q, k, v, None, o, L, do, is_causal=True)
    assert np.all(o[..., :5, :] == 0) and np.all(np.isposinf(L[..., :5]))
    assert np.all(dq[..., :5, :] == 0) and np.isfinite(dk).all() and np.isfinite(dv).all()


def test_validation_happens_before_the_kernel():
    q = np.zeros((1, 2, 5, 8), dtype=np.float32)
    cases = [
        ((q[0], q, q), {}, ValueError, "q must have 4 dims"),
        ((q.astype(np.int32), q, q), {}, TypeError, "float32 or float64"),
        ((q, q.astype(np.float64), q), {}, TypeError, "k has dtype float64"),
        ((q.tolist(), q, q), {}, TypeError, "numpy.ndarray"),
        ((q, q[:, :, :3], q), {}, ValueError, "same shape"),
        ((q, q[:, :1], q[:, :1], np.zeros((1, 1, 5, 4), np.float32)), {}, ValueError,
         "bias must be"),
        ((q, q[:, :, :, :4], q[:, :, :, :4]), {}, ValueError, "d=8"),
        ((q, q, q), dict(Br=0), ValueError, "block size Br"),
        ((q, q, q), dict(Bc=2.5), ValueError, "block size Bc"),
        ((q, q, q), dict(scale=float("nan")), ValueError, "scale"),
        ((q, q, q), dict(window=(1, 2, 3)), ValueError, "window"),
        ((q[:, :, :0], q, q), {}, ValueError, "empty"),
    ]
    for args, kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            flash.flash2_forward(*args, **kw)
    o, L = flash.flash2_forward(q, q, q)
    with pytest.raises(ValueError, match="L"):
        flash.flash2_backward(q, q, q, None, o, L[..., :3], q)
