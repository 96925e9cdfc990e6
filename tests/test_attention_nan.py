"""NaN through attention (issue 14): one rule for naive, flash1, flash2 and the Cython kernel.

The rule: NaN spreads from every (query, key) pair the mask allows, as in PyTorch's math path;
masked pairs and skipped tiles never contribute, NaN or not; forward and backward. Checked against
(1) values PyTorch computed over the allowed pairs (tests/data/attention_nan_torch.npz, made by
benchmarks/make_attention_nan.py) and (2) an independent per-row NumPy reference on random
problems with a NaN dropped into q, k, v or dO.
"""
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitx import backend
from minitx.attention import flash1, flash2, naive
from minitx.attention import scaled_dot_product_attention as sdpa
from minitx.attention.masks import mask_to_bias
import minitx
from strategies import attention_cases

# Tolerances, in one place, keyed by dtype (on the finite entries; NaN positions must match).
TOL = {
    "float64": 1e-10,
    "float32": 5e-5,      # float32 kernels against PyTorch's float64 values (entries of size ~1)
}
DATA = os.path.join(os.path.dirname(__file__), "data", "attention_nan_torch.npz")
C_FLASH = None
if backend.c_available():
    import minitx_c.flash as C_FLASH
KERNELS = ["naive", "flash1", "flash2"] + (["c"] if C_FLASH is not None else [])


def run_kernel(impl, q, k, v, bias, do, is_causal, window, Br=3, Bc=3):
    """o, dq, dk, dv from one implementation's own forward and backward (small tiles, so that
    causal and window problems have skipped, partial and full tiles)."""
    opts = dict(is_causal=is_causal, window=window)
    if impl == "naive":
        o, P = naive.naive_forward(q, k, v, bias, **opts)
        return (o, *naive.naive_backward(q, k, v, P, do, bias=bias, **opts))
    if impl == "flash1":
        o, m, l = flash1.flash1_forward(q, k, v, bias, **opts, Br=Br, Bc=Bc)
        return (o, *flash1.flash1_backward(q, k, v, bias, o, m, l, do, **opts, Br=Br, Bc=Bc))
    mod = flash2 if impl == "flash2" else C_FLASH
    o, L = mod.flash2_forward(q, k, v, bias, **opts, Br=Br, Bc=Bc)
    return (o, *mod.flash2_backward(q, k, v, bias, o, L, do, **opts, Br=Bc, Bc=Br))


def assert_nan_rule(name, got, want, tol):
    """Same NaN positions; finite entries within tol. Failure names the first differing index."""
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    if not np.array_equal(nan_got, nan_want):
        idx = tuple(np.argwhere(nan_got != nan_want)[0])
        raise AssertionError(f"{name}: NaN pattern differs at {idx} (got {got[idx]}, want "
                             f"{want[idx]}); {nan_got.sum()} NaN vs {nan_want.sum()} expected")
    diff = np.abs(np.where(nan_want, 0, got.astype(np.float64) - want))
    assert diff.max(initial=0) <= tol, (f"{name}: max diff {diff.max():.3g} > {tol:g} at "
                                        f"{np.unravel_index(np.argmax(diff), diff.shape)}")


def torch_cases():
    with np.load(DATA, allow_pickle=False) as z:
        data = {key: z[key] for key in z.files}
    names = sorted({key.split("/")[0] for key in data})
    return [(n, {key.split("/")[1]: a for key, a in data.items() if key.startswith(n + "/")})
            for n in names]


def bias_of(case, dtype):
    if "mask" not in case:
        return None
    return mask_to_bias(case["mask"], (1,), case["q"].shape[1], case["q"].shape[2],
                        case["k"].shape[2], dtype)


# ---------------------------------------------------------------- against PyTorch's values
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("name, case", torch_cases(), ids=[n for n, _ in torch_cases()])
def test_kernels_follow_the_nan_rule_like_torch(name, case, impl, dtype):
    q, k, v, do = (case[x].astype(dtype) for x in ("q", "k", "v", "do"))
    window = tuple(int(w) for w in case["window"])
    got = run_kernel(impl, q, k, v, bias_of(case, dtype), do, bool(case["is_causal"]), window)
    for g, key in zip(got, ("o", "dq", "dk", "dv")):
        assert_nan_rule(f"{name} {impl} {key}", g, case[key], TOL[dtype])


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("name, case", torch_cases()[:6], ids=[n for n, _ in torch_cases()[:6]])
def test_entry_point_follows_the_nan_rule(name, case, impl):
    """Through F.scaled_dot_product_attention and autograd (each impl's own backward)."""
    ts = [minitx.tensor(case[x], requires_grad=True) for x in ("q", "k", "v")]
    y = sdpa(*ts, attn_mask=case.get("mask"), is_causal=bool(case["is_causal"]), impl=impl,
             window=tuple(int(w) for w in case["window"]), enable_gqa=True)
    (y * minitx.tensor(case["do"])).sum().backward()
    for g, key in zip((y.data, *(t.grad for t in ts)), ("o", "dq", "dk", "dv")):
        assert_nan_rule(f"{name} {impl} {key}", g, case[key], TOL["float64"])


# ---------------------------------------------------------------- random problems
def rowwise_reference(q, k, v, bias, do, is_causal, window):
    """Attention and its gradients row by row over the allowed keys only (plain IEEE arithmetic:
    NaN spreads naturally), written independently of minitx's kernels."""
    B, Hq, Nq, d = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    left, right = window if window is not None else (-1, -1)
    if is_causal:
        right = 0 if right < 0 else min(right, 0)
    o, dq = np.zeros_like(q), np.zeros_like(q)
    dk, dv = np.zeros_like(k), np.zeros_like(v)
    bg = None if bias is None else np.broadcast_to(bias, (B, Hq, Nq, Nk))
    for b in range(B):
        for h in range(Hq):
            hk = h // (Hq // Hkv)
            for i in range(Nq):
                j = np.arange(Nk)
                pos = i + Nk - Nq
                ok = ((left < 0) | (j >= pos - left)) & ((right < 0) | (j <= pos + right))
                if bg is not None:
                    ok &= bg[b, h, i] != -np.inf
                A = np.flatnonzero(ok)
                if len(A) == 0:
                    continue
                s = k[b, hk, A] @ q[b, h, i] / np.sqrt(d)
                if bg is not None:
                    s = s + bg[b, h, i, A]
                p = np.exp(s - s.max())
                p = p / p.sum()
                o[b, h, i] = p @ v[b, hk, A]
                dp = v[b, hk, A] @ do[b, h, i]
                ds = p * (dp - p @ dp)
                dq[b, h, i] = ds @ k[b, hk, A] / np.sqrt(d)
                dk[b, hk, A] += np.outer(ds, q[b, h, i]) / np.sqrt(d)
                dv[b, hk, A] += np.outer(p, do[b, h, i])
    return o, dq, dk, dv


@st.composite
def nan_cases(draw):
    c = draw(attention_cases(max_n=12, max_d=5))
    for _ in range(draw(st.integers(1, 2))):
        where = draw(st.sampled_from(["q", "k", "v", "do"]))
        a = c[where]
        idx = tuple(draw(st.integers(0, n - 1)) for n in a.shape)
        a[idx] = np.nan
    return c


@given(nan_cases(), st.sampled_from(KERNELS))
def test_random_nan_follows_the_rule(c, impl):
    q, k, v, bias, do = c["q"], c["k"], c["v"], c["bias"], c["do"]
    want = rowwise_reference(q, k, v, bias, do, c["is_causal"], c["window"])
    with np.errstate(invalid="ignore"):
        got = run_kernel(impl, q, k, v, bias, do, c["is_causal"], c["window"], c["Br"], c["Bc"])
    for g, w, key in zip(got, want, ("o", "dq", "dk", "dv")):
        assert_nan_rule(f"{impl} {key} q{q.shape} k{k.shape}", g, w, TOL["float64"])


@pytest.mark.parametrize("impl", KERNELS)
def test_random_nan_float32_vector_paths(impl):
    """float32 rows long enough for the Cython kernel's 8-wide max/exp loops (and their tails)."""
    rng = np.random.default_rng(3)
    q, k, v, do = (rng.standard_normal((1, 2, 37, 16)).astype(np.float32) for _ in range(4))
    for where, n in (("k", 9), ("v", 20), ("q", 30), ("k", 35)):
        {"q": q, "k": k, "v": v}[where][0, 1, n, 3] = np.nan
    for causal, window in ((True, None), (False, (5, 3))):
        want = rowwise_reference(*(a.astype(np.float64) for a in (q, k, v)), None,
                                 do.astype(np.float64), causal, window)
        got = run_kernel(impl, q, k, v, None, do, causal, window, Br=16, Bc=16)
        for g, w, key in zip(got, want, ("o", "dq", "dk", "dv")):
            assert_nan_rule(f"{impl} {key} causal={causal}", g, w, TOL["float32"])


def test_reference_itself_spreads_and_contains_nan():
    """The row-wise reference is not vacuous: a NaN key reaches exactly the rows that see it."""
    rng = np.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((1, 1, 6, 3)) for _ in range(4))
    k[0, 0, 3, 0] = np.nan
    o, dq, dk, dv = rowwise_reference(q, k, v, None, do, True, None)
    assert np.isnan(o[0, 0, 3:]).all() and np.isfinite(o[0, 0, :3]).all()
    assert np.isnan(dq[0, 0, 3:]).all() and np.isfinite(dq[0, 0, :3]).all()
    q[0, 0, 1, 0] = np.nan                                       # row 1 sees keys 0 and 1 only
    k[0, 0, 3, 0] = 0.0
    o, dq, dk, dv = rowwise_reference(q, k, v, None, do, True, None)
    assert np.isnan(o[0, 0, 1]).all() and np.isfinite(np.delete(o[0, 0], 1, axis=0)).all()
    assert np.isnan(dk[0, 0, :2]).all() and np.isfinite(dk[0, 0, 2:]).all()
