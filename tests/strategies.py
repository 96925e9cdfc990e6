"""Shared hypothesis strategies (append only; each section names its user)."""
import numpy as np
from hypothesis import strategies as st


# ---------------------------------------------------------------- attention (tests/test_attention*.py)
@st.composite
def attention_cases(draw, max_n=20, max_d=9, dtype=np.float64):
    """A random attention problem in the kernels' 4-D layout.

    Returns a dict: q (B, Hq, Nq, d), k, v (B, Hkv, Nk, d), do (like q), bias None or
    (Bb, Hb, Nq, Nk) additive (sometimes with -inf entries, sometimes whole rows), is_causal,
    window None or (left, right) with -1 for unbounded, and block sizes Br, Bc that need not
    divide Nq, Nk.
    """
    B, Hkv, G = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    Nq, Nk, d = draw(st.integers(1, max_n)), draw(st.integers(1, max_n)), draw(st.integers(1, max_d))
    Hq = Hkv * G
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    q = rng.standard_normal((B, Hq, Nq, d)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Nk, d)).astype(dtype)
    v = rng.standard_normal((B, Hkv, Nk, d)).astype(dtype)
    do = rng.standard_normal((B, Hq, Nq, d)).astype(dtype)
    bias_kind = draw(st.sampled_from(["none", "float", "bool", "bool_rows"]))
    bias = None
    if bias_kind != "none":
        Bb, Hb = draw(st.sampled_from([1, B])), draw(st.sampled_from([1, Hq]))
        if bias_kind == "float":
            bias = rng.standard_normal((Bb, Hb, Nq, Nk)).astype(dtype)
        else:
            keep = rng.random((Bb, Hb, Nq, Nk)) < 0.7
            if bias_kind == "bool_rows":
                keep[..., rng.integers(Nq), :] = False      # a fully masked query row
            bias = np.where(keep, 0.0, -np.inf).astype(dtype)
    window = draw(st.one_of(st.none(), st.tuples(st.integers(-1, 8), st.integers(-1, 8))))
    return dict(q=q, k=k, v=v, do=do, bias=bias, is_causal=draw(st.booleans()), window=window,
                Br=draw(st.integers(1, 24)), Bc=draw(st.integers(1, 24)))


# ---------------------------------------------------------------- autograd (tests/test_autograd.py, test_functional.py)
def shapes(min_dims=0, max_dims=3, max_side=4):
    """Tensor shapes with small sides (gradchecks cost two forward passes per element)."""
    return st.lists(st.integers(1, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


@st.composite
def arrays(draw, min_dims=0, max_dims=3, max_side=4):
    """A float64 array of a drawn shape with standard-normal entries."""
    shape = draw(shapes(min_dims, max_dims, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return rng.standard_normal(shape)


@st.composite
def broadcastable_pair(draw):
    """Two float64 arrays whose shapes broadcast together (dims dropped or set to 1 on b)."""
    shape = draw(shapes(min_dims=1))
    b_shape = [1 if draw(st.booleans()) else n for n in shape][draw(st.integers(0, len(shape))):]
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    a, b = rng.standard_normal(shape), rng.standard_normal(tuple(b_shape))
    return (b, a) if draw(st.booleans()) else (a, b)
