"""Attention: naive, flash1, flash2 (NumPy) agree with each other and with an independent
reference; masks, windows, GQA, ragged blocks, fully masked rows; the public entry point."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minitx
from minitx import backend
from minitx.attention import IMPLS, scaled_dot_product_attention as sdpa
from minitx.attention.flash1 import flash1_backward, flash1_forward
from minitx.attention.flash2 import flash2_backward, flash2_forward
from minitx.attention.masks import mask_to_bias, tile_kind
from minitx.attention.naive import naive_backward, naive_forward
from strategies import attention_cases

# Tolerances, in one place, keyed by dtype.
TOL = {
    "float64": 1e-10,     # every NumPy implementation equals naive to ~1e-10 (issue 3)
    "float32": 2e-5,      # entry point in float32 vs the float64 reference
}
AVAILABLE_IMPLS = [i for i in IMPLS if i != "auto" and (i != "c" or backend.c_available())]


def assert_close(name, got, want, tol):
    """Compare arrays; on failure report shape, worst index and max difference."""
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert not np.isnan(got).any(), f"{name}: NaN in output of shape {got.shape}"
    diff = np.abs(got.astype(np.float64) - want)
    worst = np.unravel_index(np.argmax(diff), diff.shape) if diff.size else ()
    assert diff.max(initial=0) <= tol, (f"{name}: max diff {diff.max():.3g} > {tol:g} at {worst} "
                                        f"(shape {got.shape})")


def reference_sdpa(q, k, v, mask=None, is_causal=False, scale=None, window=None):
    """Textbook attention in float64 with explicit masks, written independently of minitx.

    q (..., Hq, Nq, d); k, v (..., Hkv, Nk, d), GQA by repeating KV heads (PyTorch's
    repeat_interleave); bottom-right causal; window (left, right); fully masked rows -> 0.
    """
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    if q.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = np.repeat(k, rep, axis=-3), np.repeat(v, rep, axis=-3)
    Nq, Nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    s = (q @ np.swapaxes(k, -1, -2)) * (1 / np.sqrt(d) if scale is None else scale)
    i, j = np.arange(Nq)[:, None] + (Nk - Nq), np.arange(Nk)[None, :]
    keep = np.ones((Nq, Nk), dtype=bool)
    left, right = window if window is not None else (-1, -1)
    if is_causal:
        right = 0 if right in (-1, None) else min(right, 0)
    if left not in (-1, None):
        keep &= j >= i - left
    if right not in (-1, None):
        keep &= j <= i + right
    keep = np.broadcast_to(keep, s.shape).copy()
    if mask is not None and mask.dtype == bool:
        keep &= mask
    elif mask is not None:
        s = s + mask
    s = np.where(keep, s, -np.inf)
    rows = np.isfinite(s).any(axis=-1)                            # rows with something to see
    p = np.exp(s - np.where(rows, s.max(axis=-1), 0)[..., None])
    p = p / np.where(rows, p.sum(axis=-1), 1)[..., None]
    return p @ v


# ---------------------------------------------------------------- kernels vs naive, float64
@given(attention_cases())
def test_flash_numpy_equal_naive_float64(c):
    opts = dict(is_causal=c["is_causal"], window=c["window"])
    q, k, v, bias, do = c["q"], c["k"], c["v"], c["bias"], c["do"]
    o_ref, P = naive_forward(q, k, v, bias, **opts)
    grads_ref = naive_backward(q, k, v, P, do)
    blocks = dict(Br=c["Br"], Bc=c["Bc"])
    o2, L = flash2_forward(q, k, v, bias, **opts, **blocks)
    grads2 = flash2_backward(q, k, v, bias, o2, L, do, **opts, **blocks)
    o1, m, l = flash1_forward(q, k, v, bias, **opts, **blocks)
    grads1 = flash1_backward(q, k, v, bias, o1, m, l, do, **opts, **blocks)
    tol = TOL["float64"]
    for impl, o, grads in (("flash2", o2, grads2), ("flash1", o1, grads1)):
        assert_close(f"{impl} o", o, o_ref, tol)
        for name, g, g_ref in zip(("dq", "dk", "dv"), grads, grads_ref):
            assert_close(f"{impl} {name}", g, g_ref, tol)
    dead = ~P.any(axis=-1)                                        # fully masked rows
    assert np.all(np.isinf(L[dead])) and np.all(np.isfinite(L[~dead]))


@given(attention_cases())
def test_naive_equals_independent_reference(c):
    q, k, v, bias = c["q"], c["k"], c["v"], c["bias"]
    o, _ = naive_forward(q, k, v, bias, is_causal=c["is_causal"], window=c["window"])
    want = reference_sdpa(q, k, v, bias, c["is_causal"], window=c["window"])
    assert_close("naive o", o, want, TOL["float64"])


def test_tile_kind_classifies_causal_tiles():
    # 4x4 tiles of a causal 8x8 problem: above the diagonal skipped, on it partial, below full
    kinds = [[tile_kind(r, r + 4, c, c + 4, 8, 8, -1, 0) for c in (0, 4)] for r in (0, 4)]
    assert kinds == [["partial", "skip"], ["full", "partial"]]
    # bottom-right alignment: 2 queries, 8 keys, causal: query 0 sees keys 0..6
    assert tile_kind(0, 1, 4, 8, 2, 8, -1, 0) == "partial"
    assert tile_kind(0, 1, 0, 4, 2, 8, -1, 0) == "full"
    # sliding window (2, 0): tiles far to the left are skipped
    assert tile_kind(6, 8, 0, 2, 8, 8, 2, 0) == "skip"


@pytest.mark.parametrize("impl", ["flash1", "flash2"])
def test_skipped_tiles_are_never_read(impl):
    """NaN in keys/values that lie only in tiles above the causal diagonal cannot reach the
    output when those tiles are skipped (the naive product would spread NaN * 0 = NaN)."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 1, 64, 8)) for _ in range(3))
    k[..., 48:, :] = np.nan
    v[..., 48:, :] = np.nan
    fwd = flash2_forward if impl == "flash2" else flash1_forward
    o = fwd(q, k, v, is_causal=True, Br=16, Bc=16)[0]
    assert np.isfinite(o[..., :48, :]).all()
    ref = reference_sdpa(q[..., :48, :], k[..., :48, :], v[..., :48, :], is_causal=True)
    assert_close(f"{impl} rows before the NaN keys", o[..., :48, :], ref, TOL["float64"])


# ---------------------------------------------------------------- the entry point
@pytest.mark.parametrize("impl", AVAILABLE_IMPLS)
@pytest.mark.parametrize("case", ["plain", "causal", "decode", "gqa", "window", "bool_mask",
                                  "float_mask", "batch_dims", "2d", "dead_rows"])
def test_entry_point_matches_reference(impl, case):
    rng = np.random.default_rng(abs(hash(case)) % 2 ** 32)
    shape_q, shape_k, kw, mask = (2, 3, 11, 8), (2, 3, 11, 8), {}, None
    if case == "causal":
        kw = dict(is_causal=True)
    elif case == "decode":                            # KV-cache step: 1 query, 9 keys
        shape_q, shape_k, kw = (2, 3, 1, 8), (2, 3, 9, 8), dict(is_causal=True)
    elif case == "gqa":
        shape_q, shape_k, kw = (2, 6, 7, 8), (2, 2, 12, 8), dict(enable_gqa=True, is_causal=True)
    elif case == "window":
        kw = dict(window=(3, 1))
    elif case == "bool_mask":
        mask = rng.random((11, 11)) < 0.6
    elif case == "float_mask":
        mask = rng.standard_normal((3, 1, 11))        # broadcast over query rows
    elif case == "batch_dims":
        shape_q, shape_k, kw = (2, 2, 3, 5, 8), (2, 2, 3, 13, 8), dict(is_causal=True)
    elif case == "2d":
        shape_q, shape_k = (11, 8), (6, 8)
    elif case == "dead_rows":                         # more queries than keys, causal
        shape_q, shape_k, kw = (1, 2, 9, 8), (1, 2, 4, 8), dict(is_causal=True)
    q = rng.standard_normal(shape_q).astype(np.float32)
    k = rng.standard_normal(shape_k).astype(np.float32)
    v = rng.standard_normal(shape_k).astype(np.float32)
    y = sdpa(minitx.tensor(q), minitx.tensor(k), minitx.tensor(v), attn_mask=mask, impl=impl,
             **kw)
    assert isinstance(y, minitx.Tensor) and y.dtype == np.float32
    want = reference_sdpa(q, k, v, mask, kw.get("is_causal", False), window=kw.get("window"))
    assert_close(f"{impl}/{case}", y.data, want, TOL["float32"])
    if case == "dead_rows":
        assert np.all(y.data[..., :5, :] == 0)


@pytest.mark.parametrize("impl", AVAILABLE_IMPLS)
def test_entry_point_backward_matches_naive(impl):
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s) for s in ((2, 4, 9, 8), (2, 2, 13, 8), (2, 2, 13, 8))]
    mask = rng.standard_normal((9, 13))
    grads = {}
    for name in ("naive", impl):
        ts = [minitx.tensor(a, requires_grad=True) for a in arrays]
        y = sdpa(*ts, is_causal=True, enable_gqa=True, impl=name, window=(5, 2), attn_mask=mask)
        (y * y).sum().backward()
        grads[name] = [t.grad for t in ts]
    for name, g, g_ref in zip(("dq", "dk", "dv"), grads[impl], grads["naive"]):
        assert_close(f"{impl} {name}", g, g_ref, TOL["float64"])


def test_attn_mask_to_bias_keeps_singleton_dims():
    bias = mask_to_bias(np.ones((4, 5), dtype=bool), (2, 3), 6, 4, 5, np.float32)
    assert bias.shape == (1, 1, 4, 5) and not bias.any()
    bias = mask_to_bias(np.zeros((2, 1, 6, 1, 5), dtype=bool), (2, 3), 6, 4, 5, np.float32)
    assert bias.shape == (6, 6, 4, 5) and np.all(np.isneginf(bias))


@pytest.mark.parametrize("bad, match", [
    (dict(impl="flash3"), "impl must be one of"),
    (dict(dropout_p=0.1, impl="flash2"), "only supported with impl='naive'"),
    (dict(dropout_p=1.5), "dropout_p must be in"),
    (dict(window=(2,)), "window must be None or a pair"),
    (dict(window=(-3, 0)), "window left must be"),
    (dict(scale=-1.0), "scale must be a positive"),
    (dict(attn_mask=np.zeros((3, 5))), "does not broadcast"),
    (dict(attn_mask=np.zeros((4, 4), dtype=np.int64)), "attn_mask must be bool or floating"),
])
def test_bad_arguments_raise(bad, match):
    q = np.zeros((2, 4, 3), dtype=np.float32)
    kw = dict(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        sdpa(q, q, q, **kw)


def test_bad_shapes_raise():
    q = np.zeros((1, 4, 3, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="enable_gqa"):
        sdpa(q, q[:, :2], q[:, :2])
    with pytest.raises(ValueError, match="multiple of key heads"):
        sdpa(q, q[:, :3], q[:, :3], enable_gqa=True)
    with pytest.raises(TypeError, match="dtypes differ"):
        sdpa(q, q.astype(np.float64), q)
    with pytest.raises(TypeError, match="float32 or float64"):
        sdpa(q.astype(np.int32), q, q)
    with pytest.raises(ValueError, match="value shape"):
        sdpa(q, q, q[..., :4])
    with pytest.raises(ValueError, match=r"shape \(\.\.\., N, d\)"):
        sdpa(q[0, 0, 0], q, q)
    with pytest.raises(ValueError, match="block size Br"):
        flash2_forward(q, q, q, Br=0)


def test_naive_dropout_is_inverted_dropout_on_probabilities():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 2, 6, 4)) for _ in range(3))
    minitx.random.manual_seed(5)
    y = sdpa(q, k, v, dropout_p=0.4).data
    minitx.random.manual_seed(5)
    keep = minitx.random.generator().random((1, 2, 6, 6)) >= 0.4
    s = q @ k.swapaxes(-1, -2) / 2.0
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    assert_close("dropout", y, (p * keep / 0.6) @ v, TOL["float64"])
    assert_close("dropout_p=0", sdpa(q, k, v, dropout_p=0.0).data, reference_sdpa(q, k, v),
                 TOL["float64"])


def test_auto_runs_the_backends_kernel(on_backend):
    """impl="auto" (the GPT's default) is the Cython kernel on the c backend and naive NumPy
    on the numpy backend or with dropout, and gives exactly what the impl it names gives."""
    from minitx.attention import resolve_impl
    want = "c" if on_backend == "c" else "naive"
    assert resolve_impl("auto") == want
    assert resolve_impl("auto", dropout_p=0.1) == "naive"
    assert resolve_impl("flash1") == "flash1"
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((2, 3, 9, 4)) for _ in range(3))
    got = sdpa(q, k, v, is_causal=True, impl="auto").data
    np.testing.assert_array_equal(got, sdpa(q, k, v, is_causal=True, impl=want).data)


@given(st.integers(1, 20000), st.sampled_from([16, 64, 96, 128, 256]))
def test_default_tiles_are_equal_and_fewest(n, target):
    """tile_for: as few tiles as tiles of `target` need, each a multiple of 16 (the kernel's
    padding) unless one tile holds all n, never above target or n."""
    from minitx.attention.checks import tile_for
    t = tile_for(n, target)
    assert 1 <= t <= min(n, target)
    assert -(-n // t) == -(-n // target)
    assert t % 16 == 0 or t == n
    assert tile_for(128, 96) == 64 and tile_for(256, 128) == 128
