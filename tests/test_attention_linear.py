"""Linear attention (Katharopoulos et al. 2020) and Performer FAVOR+ (Choromanski et al. 2020):
chunked prefix sums equal the quadratic form, the recurrent form equals the parallel one, the
gradient checker passes, and Performer converges to softmax attention as features grow."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitx.attention import linear
from minitx.gradcheck import gradcheck

# Tolerances, in one place, keyed by dtype / purpose.
TOL = {
    "float64": 1e-10,       # chunked prefix sums vs the quadratic form, recurrent vs parallel
    "float32": 2e-5,        # float32 run vs the float64 quadratic form (outputs of size ~1)
    "gradcheck_atol": 1e-6,
}


def quadratic_reference(fq, fk, v, causal, eps=1e-6):
    """out = (A V) / (A 1 + eps), A = phi(Q) phi(K)^T, lower-triangular if causal: O(N^2)."""
    A = fq @ np.swapaxes(fk, -1, -2)
    if causal:
        A = np.tril(A)
    return (A @ v) / (A.sum(axis=-1, keepdims=True) + eps)


def elu1(x):
    return np.where(x > 0, x + 1, np.exp(x))


def softmax_attention(q, k, v):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v


@st.composite
def problems(draw, dtype=np.float64):
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    N, d, dv = draw(st.integers(1, 40)), draw(st.integers(1, 8)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    q, k = (rng.standard_normal(lead + (N, d)).astype(dtype) for _ in range(2))
    v = rng.standard_normal(lead + (N, dv)).astype(dtype)
    return q, k, v, draw(st.integers(1, 17)), draw(st.booleans())


@given(problems())
def test_chunked_prefix_sums_equal_quadratic_form(p):
    q, k, v, chunk, causal = p
    got = linear.linear_attention(q, k, v, is_causal=causal, chunk_size=chunk).data
    want = quadratic_reference(elu1(q), elu1(k), v, causal)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOL["float64"], f"q {q.shape} chunk {chunk}"


@given(problems(dtype=np.float32))
def test_float32_close_to_float64(p):
    q, k, v, chunk, causal = p
    got = linear.linear_attention(q, k, v, is_causal=causal, chunk_size=chunk).data
    assert got.dtype == np.float32
    want = quadratic_reference(*(elu1(x.astype(np.float64)) for x in (q, k)),
                               v.astype(np.float64), causal)
    assert np.abs(got - want).max() <= TOL["float32"]


@pytest.mark.parametrize("features", ["elu", "performer"])
def test_recurrent_form_equals_parallel_form(features):
    rng = np.random.default_rng(1)
    q, k = (rng.standard_normal((2, 3, 29, 8)) for _ in range(2))
    v = rng.standard_normal((2, 3, 29, 5))
    fmap = None if features == "elu" else linear.PerformerFeatures(8, 32, seed=3)
    parallel = linear.linear_attention(q, k, v, feature_map=fmap, chunk_size=6).data
    state = linear.LinearAttentionState(fmap)
    steps = [state.step(q[..., t, :], k[..., t, :], v[..., t, :]) for t in range(29)]
    assert state.S.shape == (2, 3, 8 if fmap is None else 32, 5) and state.n_tokens == 29
    assert np.abs(np.stack(steps, axis=-2) - parallel).max() <= TOL["float64"]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("features", ["elu", "performer"])
def test_gradcheck(causal, features):
    rng = np.random.default_rng(2)
    q, k = (rng.standard_normal((2, 7, 3)) for _ in range(2))
    v = rng.standard_normal((2, 7, 2))
    fmap = None if features == "elu" else linear.PerformerFeatures(3, 8, seed=0)
    gradcheck(lambda a, b, c: linear.linear_attention(a, b, c, is_causal=causal,
                                                      feature_map=fmap, chunk_size=3),
              [q, k, v], atol=TOL["gradcheck_atol"])


def test_gradcheck_catches_a_wrong_backward(monkeypatch):
    """The check above can fail: a backward that forgets the denominator's term is caught."""
    from minitx.gradcheck import GradcheckError
    orig = linear._LinearAttention.backward

    def wrong(ctx, g):
        dfq, dfk, dv = orig(ctx, g)
        return dfq * 1.01, dfk, dv
    monkeypatch.setattr(linear._LinearAttention, "backward", staticmethod(wrong))
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((5, 3)) for _ in range(3))
    with pytest.raises(GradcheckError):
        gradcheck(lambda a, b, c: linear.linear_attention(a, b, c), [q, k, v])


def test_performer_converges_to_softmax_attention():
    """Mean |error| against exact softmax attention, averaged over 5 fixed seeds, falls as the
    feature count m grows: strictly at each step, and with a fitted exponent between -0.75 and
    -0.25 (Monte Carlo's m^(-1/2); a biased estimator would flatten out near 0)."""
    rng = np.random.default_rng(4)
    q, k, v = (0.5 * rng.standard_normal((1, 2, 32, 16)) for _ in range(3))
    exact = softmax_attention(q, k, v)
    ms = [16, 64, 256, 1024]
    err = [np.mean([np.abs(linear.performer_attention(q, k, v, n_features=m, seed=s).data
                           - exact).mean() for s in range(5)]) for m in ms]
    assert all(a > b for a, b in zip(err, err[1:])), f"errors {err}"
    slope = np.polyfit(np.log(ms), np.log(err), 1)[0]
    assert -0.75 <= slope <= -0.25, f"fitted exponent {slope:.3f}, errors {err}"


def test_performer_features_estimate_the_softmax_kernel():
    """E[phi(q).phi(k)] = exp(q.k / sqrt(d)) (unbiased): the mean over many features is within
    4 standard errors of the exact kernel for each pair (fixed seed)."""
    rng = np.random.default_rng(5)
    d, m = 8, 20000
    q, k = 0.5 * rng.standard_normal((6, d)), 0.5 * rng.standard_normal((6, d))
    feats = linear.PerformerFeatures(d, m, seed=6, orthogonal=False)
    fk = feats(k, is_query=False).data * np.sqrt(m)                  # (6, m) unnormalised
    qs = q * d ** -0.25
    fq = np.exp(qs @ feats.W.T - (qs * qs).sum(-1, keepdims=True) / 2)  # no stabiliser
    prods = fq[:, None, :] * fk[None, :, :]                          # (6, 6, m) samples
    est, se = prods.mean(-1), prods.std(-1) / np.sqrt(m)
    exact = np.exp(q @ k.T / np.sqrt(d))
    assert np.all(np.abs(est - exact) <= 4 * se), np.abs(est - exact) / se


def test_orthogonal_features_have_orthogonal_blocks():
    W = linear.orthogonal_gaussian(20, 8, np.random.default_rng(0))
    U = W[:8] / np.linalg.norm(W[:8], axis=1, keepdims=True)
    assert W.shape == (20, 8) and np.allclose(U @ U.T, np.eye(8), atol=1e-12)


@pytest.mark.parametrize("kw, match", [
    (dict(chunk_size=0), "chunk_size"),
    (dict(eps=-1.0), "eps"),
    (dict(key=np.zeros((5, 4))), "same last dim"),
    (dict(value=np.zeros((4, 2))), "must share"),
])
def test_bad_arguments_raise(kw, match):
    args = dict(query=np.zeros((5, 3)), key=np.zeros((5, 3)), value=np.zeros((5, 2)))
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        linear.linear_attention(**args)
    with pytest.raises(ValueError, match="n_features"):
        linear.PerformerFeatures(4, 0)
