"""Block-sparse attention (issue 12): layout builders, and every tiled implementation (flash1,
flash2, Cython) equal to the dense masked naive reference with a block layout, forward and
backward, composed with causal, windows, padding masks and GQA; tiles outside never read."""
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minitx
from minitx import backend
from minitx.attention import flash1, flash2, naive, sparse
from minitx.attention import scaled_dot_product_attention as sdpa
from minitx.attention.masks import layout_to_mask
from strategies import attention_cases

# Tolerances, in one place, keyed by dtype.
TOL = {
    "float64": 1e-10,                 # tiled vs dense masked naive (issue 12)
    "float32_rule_factor": 2.0,       # FlashAttention's rule: err <= 2 x naive float32's error
    "float32_rule_floor_ulps": 4,     # floor for cases where naive float32 is exact (as test_attention_c)
}
C_FLASH = None
if backend.c_available():
    import minitx_c.flash as C_FLASH
TILED = ["flash1", "flash2"] + (["c"] if C_FLASH is not None else [])
BUILDERS = ["sliding_window", "dilated_window", "global_blocks", "longformer", "strided", "fixed",
            "bigbird"]


# ---------------------------------------------------------------- layout builders
@pytest.mark.parametrize("name", BUILDERS)
def test_docstring_picture_is_the_builders_output(name):
    doc = getattr(sparse, name).__doc__
    m = re.search(r"Example: (\w+)\((.*)\)\n((?:\s+[#.]+\n)+)", doc)
    assert m and m.group(1) == name, f"{name}: no 'Example: {name}(...)' picture"
    args, kwargs = [], {}
    for part in re.split(r",\s*(?![^\[]*\])", m.group(2)):        # split outside [..]
        key, _, val = part.partition("=") if "=" in part else ("", "", part)
        val = [int(x) for x in val.strip(" []").split(",")] if "[" in val else val.strip()
        val = val if isinstance(val, list) else {"True": True, "False": False}.get(val, val)
        val = int(val) if isinstance(val, str) else val
        (kwargs.__setitem__(key.strip(), val) if key else args.append(val))
    picture = "\n".join(line.strip() for line in m.group(3).splitlines())
    assert sparse.draw(getattr(sparse, name)(*args, **kwargs)) == picture


def test_builder_properties():
    n = 11
    assert sparse.live_tiles(sparse.sliding_window(n, 2)) == n * 5 - 2 * (2 + 1)
    for lay in (sparse.sliding_window(n, 3, causal=True), sparse.strided(n, 3),
                sparse.fixed(n, 4, c=2), sparse.bigbird(n, 1, 2, 2, causal=True),
                sparse.dilated_window(n, 2, 3, causal=True)):
        assert not np.triu(lay, 1).any(), "causal layout with a tile above the diagonal"
        assert lay.diagonal().all(), "every block must see itself"
    heads = sparse.strided(n, 3, split=True)
    assert heads.shape == (2, n, n) and np.array_equal(heads[0] | heads[1], sparse.strided(n, 3))
    a, b = sparse.bigbird(n, 1, 1, 2, seed=4), sparse.bigbird(n, 1, 1, 2, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, sparse.bigbird(n, 1, 1, 2, seed=5))
    base = sparse.union(sparse.sliding_window(n, 1), sparse.global_blocks(n, [0]))
    extra = (a & ~base).sum(axis=1)
    assert np.all(extra == np.minimum(2, n - base.sum(axis=1)))     # exactly 2 random per row
    assert sparse.bigbird(n, 1, 1, 2, heads=3).shape == (3, n, n)
    assert sparse.n_blocks(100, 16) == 7


@pytest.mark.parametrize("call, match", [
    (lambda: sparse.sliding_window(0, 1), "n must be an int >= 1"),
    (lambda: sparse.sliding_window(4, -1), "w must be"),
    (lambda: sparse.dilated_window(4, 1, 0), "dilation"),
    (lambda: sparse.global_blocks(4, [4]), "global blocks must lie"),
    (lambda: sparse.fixed(8, 2, c=3), "c must be <= stride"),
    (lambda: sparse.bigbird(4, 1, 5, 1), "n_global"),
    (lambda: sparse.n_blocks(10, 0), "block_size"),
])
def test_builders_reject_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- kernels vs dense masked naive
@st.composite
def sparse_cases(draw, max_n=40, max_d=9, dtype=np.float64):
    c = draw(attention_cases(max_n=max_n, max_d=max_d, dtype=dtype))
    bs = draw(st.integers(1, 12))
    Hq, Nq, Nk = c["q"].shape[1], c["q"].shape[2], c["k"].shape[2]
    Tr, Tc = -(-Nq // bs), -(-Nk // bs)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    kind = draw(st.sampled_from(["random", "random_per_head", "bigbird", "strided_split"]))
    n = max(Tr, Tc)
    if kind == "random":
        lay = rng.random((Tr, Tc)) < draw(st.sampled_from([0.2, 0.5, 0.9]))
    elif kind == "random_per_head":
        lay = rng.random((Hq, Tr, Tc)) < 0.5
    elif kind == "bigbird":
        lay = sparse.bigbird(n, 1, 1, 1, seed=int(rng.integers(100)))[:Tr, :Tc]
    else:                                                          # one pattern per head
        two = sparse.strided(n, 2, split=True)[:, :Tr, :Tc]
        lay = two[np.arange(Hq) % 2]
    c.update(layout=lay, bs=bs)
    return c


def dense_reference(c, dtype=None):
    """naive with the layout folded into the additive bias as -inf: the dense masked reference."""
    q, k, v, bias, do = (None if a is None else (a if dtype is None else a.astype(dtype))
                         for a in (c["q"], c["k"], c["v"], c["bias"], c["do"]))
    Nq, Nk = q.shape[2], k.shape[2]
    lay = c["layout"][None] if c["layout"].ndim == 2 else c["layout"]
    dense = layout_to_mask(lay, c["bs"], Nq, Nk)[None]             # (1, Hl, Nq, Nk)
    full = np.where(dense, 0.0, -np.inf).astype(q.dtype)
    bias = full if bias is None else bias + full
    opts = dict(is_causal=c["is_causal"], window=c["window"])
    o, P = naive.naive_forward(q, k, v, bias, **opts)
    return (o, *naive.naive_backward(q, k, v, P, do, bias=bias, **opts))


def run_tiled(impl, c, dtype=None):
    q, k, v, bias, do = (None if a is None else (a if dtype is None else a.astype(dtype))
                         for a in (c["q"], c["k"], c["v"], c["bias"], c["do"]))
    opts = dict(is_causal=c["is_causal"], window=c["window"], Br=c["bs"], Bc=c["bs"],
                block_layout=c["layout"])
    if impl == "naive":
        o, P = naive.naive_forward(q, k, v, bias, is_causal=c["is_causal"], window=c["window"],
                                   block_layout=c["layout"], block_size=c["bs"])
        return (o, *naive.naive_backward(q, k, v, P, do, bias=bias, is_causal=c["is_causal"],
                                         window=c["window"], block_layout=c["layout"],
                                         block_size=c["bs"]))
    if impl == "flash1":
        o, m, l = flash1.flash1_forward(q, k, v, bias, **opts)
        return (o, *flash1.flash1_backward(q, k, v, bias, o, m, l, do, **opts))
    mod = flash2 if impl == "flash2" else C_FLASH
    o, L = mod.flash2_forward(q, k, v, bias, **opts)
    return (o, *mod.flash2_backward(q, k, v, bias, o, L, do, **opts))


def max_err(a, ref):
    return float(np.abs(a.astype(np.float64) - ref).max(initial=0))


@given(sparse_cases(), st.sampled_from(["naive"] + TILED))
def test_block_sparse_equals_dense_masked_naive_float64(c, impl):
    want = dense_reference(c)
    got = run_tiled(impl, c)
    for name, g, w in zip(("o", "dq", "dk", "dv"), got, want):
        assert g.shape == w.shape and np.isfinite(g).all(), f"{impl} {name}: not finite"
        assert max_err(g, w) <= TOL["float64"], (
            f"{impl} {name}: max diff {max_err(g, w):.3g}, q {c['q'].shape} k {c['k'].shape} "
            f"bs {c['bs']} layout {c['layout'].shape}")


@given(sparse_cases(max_n=120, max_d=32, dtype=np.float32), st.sampled_from(TILED))
def test_block_sparse_meets_flash_attention_rule_float32(c, impl):
    ref = dense_reference(c, np.float64)
    naive32 = dense_reference(c)
    got = run_tiled(impl, c)
    eps = np.finfo(np.float32).eps
    scale = 1 / np.sqrt(c["q"].shape[-1])
    m = {x: float(np.abs(c[x]).max()) for x in ("q", "k", "v", "do")}
    terms = {"o": m["v"], "dv": m["do"], "dq": scale * m["do"] * m["v"] * m["k"],
             "dk": scale * m["do"] * m["v"] * m["q"]}
    for name, g, n32, r in zip(("o", "dq", "dk", "dv"), got, naive32, ref):
        bound = (TOL["float32_rule_factor"] * max_err(n32, r) + TOL["float32_rule_floor_ulps"]
                 * eps * max(terms[name], float(np.abs(r).max(initial=0))))
        assert max_err(g, r) <= bound, (f"{impl} {name}: error {max_err(g, r):.3g} > {bound:.3g}"
                                        f" (naive float32 {max_err(n32, r):.3g})")


# ---------------------------------------------------------------- tiles outside are never read
@pytest.mark.parametrize("impl", TILED)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_in_skipped_tiles_never_contributes(impl, dtype):
    """NaN in every key/value of blocks no query block may see, and in the queries of a block
    that sees nothing: the result equals the run with those entries finite (a dense product
    would spread NaN * 0 = NaN everywhere), with zero gradients there."""
    rng = np.random.default_rng(7)
    bs, n = 8, 6
    q, k, v, do = (rng.standard_normal((1, 4, n * bs, 16)).astype(dtype) for _ in range(4))
    k, v = k[:, :2], v[:, :2]                                       # GQA: 4 query heads, 2 KV
    lay = sparse.sliding_window(n, 1, causal=True)
    lay[:, 2] = False                                               # key block 2: never seen
    lay[4, :] = False                                               # query block 4: sees nothing
    c = dict(q=q, k=k, v=v, do=do, bias=None, is_causal=True, window=None, layout=lay, bs=bs)
    clean = run_tiled(impl, c)
    for a in (k, v):
        a[..., 2 * bs:3 * bs, :] = np.nan
    q[..., 4 * bs:5 * bs, :] = np.nan
    dirty = run_tiled(impl, dict(c, q=q, k=k, v=v))
    for name, a, b in zip(("o", "dq", "dk", "dv"), dirty, clean):
        assert np.isfinite(a).all(), f"{impl} {name}: NaN leaked from a skipped tile"
        assert np.array_equal(a, b), f"{impl} {name}: differs from the clean run"
    assert not dirty[0][..., 4 * bs:5 * bs, :].any()
    assert not dirty[2][..., 2 * bs:3 * bs, :].any() and not dirty[3][..., 2 * bs:3 * bs, :].any()


# ---------------------------------------------------------------- the entry point
@pytest.mark.parametrize("impl", ["naive"] + TILED)
def test_entry_point_with_layout_padding_mask_and_gqa(impl):
    rng = np.random.default_rng(2)
    B, Hq, Hkv, N, d, bs = 2, 4, 2, 45, 8, 8
    arrays = [rng.standard_normal((B, Hq, N, d)), rng.standard_normal((B, Hkv, N, d)),
              rng.standard_normal((B, Hkv, N, d))]
    pad = np.ones((B, 1, 1, N), dtype=bool)
    pad[1, ..., 37:] = False                                        # sequence 1 padded
    lay = sparse.bigbird(sparse.n_blocks(N, bs), 1, 1, 1, seed=3, heads=Hq, causal=True)
    runs = {}
    for run, name, kw in (("sparse", impl, dict(attn_mask=pad, block_layout=lay, block_size=bs)),
                          ("dense", "naive", dict(attn_mask=pad & layout_to_mask(lay, bs, N, N)))):
        ts = [minitx.tensor(a, requires_grad=True) for a in arrays]
        y = sdpa(*ts, is_causal=True, enable_gqa=True, impl=name, **kw)
        (y * y).sum().backward()
        runs[run] = [y.data] + [t.grad for t in ts]
    for name, g, w in zip(("o", "dq", "dk", "dv"), runs["sparse"], runs["dense"]):
        assert max_err(g, w) <= TOL["float64"], f"{impl} {name}: {max_err(g, w):.3g}"


@pytest.mark.parametrize("kw, exc, match", [
    (dict(block_size=4), ValueError, "block_size=4 needs a block_layout"),
    (dict(block_layout=np.ones((3, 3), dtype=bool)), ValueError, "block_size must be an int"),
    (dict(block_layout=np.ones((3, 3), dtype=bool), block_size=0), ValueError, "block_size"),
    (dict(block_layout=np.ones((3, 3)), block_size=4), TypeError, "bool numpy.ndarray"),
    (dict(block_layout=np.ones((2, 3), dtype=bool), block_size=4), ValueError, r"\(3, 3\)"),
    (dict(block_layout=np.ones((3, 3, 3), dtype=bool), block_size=4), ValueError, "1 or 2"),
])
def test_bad_layout_arguments_raise(kw, exc, match):
    q = np.zeros((1, 2, 10, 4))
    with pytest.raises(exc, match=match):
        sdpa(q, q, q, **kw)


@pytest.mark.parametrize("mod", [flash2] + ([C_FLASH] if C_FLASH is not None else []))
def test_kernels_need_square_tiles_with_a_layout(mod):
    q = np.zeros((1, 1, 10, 4))
    with pytest.raises(ValueError, match="Br .* must equal Bc"):
        mod.flash2_forward(q, q, q, Br=4, Bc=8, block_layout=np.ones((3, 2), dtype=bool))
