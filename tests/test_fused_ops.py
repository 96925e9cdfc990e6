"""Fused kernels (minitx/kernels/fused_ops.py, minitx_c/fused_ops.pyx): each twin against the
unfused formula it replaces, the C kernel against its twin (property-tested, float32 and
float64), AdamW bit for bit, and the C kernels on adversarial layouts (tests/adversarial.py)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from adversarial import Kernel, assert_survives, register
from minitx import backend
from minitx.kernels import fused_ops

needs_c = pytest.mark.skipif(not backend.c_available(), reason="minitx_c is not built")
DTYPES = (np.float32, np.float64)
# result dtype -> (rtol, atol): the C kernel sums exp in float64 and divides once per row
TOL = {np.float32: (2e-5, 2e-6), np.float64: (1e-12, 1e-13)}


def _close(actual, expected, dtype, what):
    rtol, atol = TOL[np.dtype(dtype).type]
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol,
                               err_msg=f"{what} ({np.dtype(dtype).name}, shape {expected.shape})")


def _unfused_cross_entropy(x, t, ignore_index):
    """The formula, step by step in float64: -log_softmax[t] and softmax - onehot."""
    x = x.astype(np.float64)
    logp = x - x.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    keep = t != ignore_index
    safe = np.where(keep, t, 0)
    nll = np.where(keep, -logp[np.arange(len(t)), safe], 0.0)
    grad = np.exp(logp)
    grad[np.arange(len(t)), safe] -= 1
    return nll, np.where(keep[:, None], grad, 0.0)


@st.composite
def _ce_case(draw):
    N, C = draw(st.integers(0, 40)), draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, C)) * draw(st.sampled_from([0.1, 3.0, 30.0]))).astype(dtype)
    t = rng.integers(0, C, N)
    t[rng.random(N) < 0.2] = -100
    return x, t


@given(_ce_case())
@settings(deadline=None)
def test_cross_entropy_twin_is_the_unfused_formula(case):
    x, t = case
    nll, grad = fused_ops.cross_entropy_fused(x, t, -100)
    ref_nll, ref_grad = _unfused_cross_entropy(x, t, -100)
    assert nll.dtype == grad.dtype == x.dtype and grad.shape == x.shape
    _close(nll, ref_nll, x.dtype, "nll")
    _close(grad, ref_grad, x.dtype, "dlogits")
    nll_only, none = fused_ops.cross_entropy_fused(x, t, -100, need_grad=False)
    assert none is None
    np.testing.assert_array_equal(nll_only, nll)


@needs_c
@given(_ce_case())
@settings(deadline=None)
def test_cross_entropy_kernel_equals_twin(case):
    import minitx_c
    x, t = case
    for need_grad in (True, False):
        nll, grad = minitx_c.cross_entropy_fused(x, t, -100, need_grad=need_grad)
        ref_nll, ref_grad = fused_ops.cross_entropy_fused(x, t, -100, need_grad=need_grad)
        _close(nll, ref_nll, x.dtype, "nll")
        if need_grad:
            _close(grad, ref_grad, x.dtype, "dlogits")
        else:
            assert grad is None


def test_cross_entropy_ignored_rows_of_minus_inf_give_zero(on_backend):
    fn = backend.kernel("cross_entropy_fused")
    x = np.zeros((3, 4), np.float32)
    x[1] = -np.inf                                    # an ignored row may be all -inf
    t = np.array([2, 7, 0])
    nll, grad = fn(x, t, ignore_index=7)
    assert np.isfinite(nll).all() and nll[1] == 0 and (grad[1] == 0).all()
    assert nll[0] == pytest.approx(math.log(4), rel=1e-6)


def test_cross_entropy_many_rows_cross_the_twins_blocks(on_backend):
    rng = np.random.default_rng(3)
    N = 2 * fused_ops.ROWS_PER_BLOCK + 5                # parallel in C, several blocks in NumPy
    x, t = rng.standard_normal((N, 300)), rng.integers(0, 300, N)
    nll, grad = backend.kernel("cross_entropy_fused")(x, t)
    ref_nll, ref_grad = _unfused_cross_entropy(x, t, -100)
    _close(nll, ref_nll, np.float64, "nll")
    _close(grad, ref_grad, np.float64, "dlogits")


@pytest.mark.parametrize("bad, match", [
    (dict(logits=np.zeros((2, 3), np.float16)), "float32 or float64"),
    (dict(logits=np.zeros(3, np.float32)), r"\(N, C\)"),
    (dict(target=np.zeros(2, np.float32)), "integer"),
    (dict(target=np.zeros(3, np.int64)), "does not match"),
    (dict(target=np.array([0, 3])), "out of range"),
    (dict(target=np.array([0, -1])), "out of range"),
    (dict(ignore_index=1.5), "ignore_index"),
])
def test_cross_entropy_rejects_bad_input(on_backend, bad, match):
    kw = dict(logits=np.zeros((2, 3), np.float32), target=np.array([0, 2]), ignore_index=-100)
    kw.update(bad)
    with pytest.raises((TypeError, ValueError), match=match):
        backend.kernel("cross_entropy_fused")(**kw)


# --------------------------------------------------------------------------------- AdamW
def _adamw_args(rng, shape, dtype):
    p, g, m = (np.array(rng.standard_normal(shape), dtype=dtype) for _ in range(3))
    return [p, g, m, np.array(np.abs(rng.standard_normal(shape)), dtype=dtype)]


def _old_optim_step(p, grad, m, v, lr, b1, b2, eps, wd, t):
    """minitx.optim.AdamW's update before fusing (its exact lines), for the bit-identity test."""
    p *= 1 - lr * wd
    m *= b1
    m += (1 - b1) * grad
    v *= b2
    v += (1 - b2) * grad * grad
    step_size = lr / (1 - b1 ** t)
    denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps
    p -= (step_size * m / denom).astype(p.dtype, copy=False)


@given(st.lists(st.integers(0, 70), min_size=0, max_size=3), st.integers(0, 2**32 - 1),
       st.sampled_from(DTYPES), st.floats(1e-5, 1.0), st.floats(0.0, 0.3))
@settings(deadline=None)
def test_adamw_kernels_are_bit_identical_to_the_old_update(shape, seed, dtype, lr, wd):
    rng = np.random.default_rng(seed)
    ref = _adamw_args(rng, tuple(shape), dtype)
    runs = {name: [a.copy() for a in ref] for name in backend.available()}
    for t in (1, 2, 3):
        _old_optim_step(*ref, lr, 0.9, 0.999, 1e-8, wd, t)
        for name, arrays in runs.items():
            with backend.using(name):
                backend.kernel("adamw_step")(*arrays, lr, 0.9, 0.999, 1e-8, wd, t)
    for name, arrays in runs.items():
        for label, a, r in zip(("param", "grad", "exp_avg", "exp_avg_sq"), arrays, ref):
            np.testing.assert_array_equal(a, r, err_msg=f"{name} {label} {np.dtype(dtype)}")


def test_adamw_large_parameter_is_bit_identical_on_every_thread_count(on_backend):
    rng = np.random.default_rng(0)
    ref = _adamw_args(rng, (300, 257), np.float32)          # above the parallel threshold
    mine = [a.copy() for a in ref]
    _old_optim_step(*ref, 3e-4, 0.9, 0.95, 1e-8, 0.1, 5)
    backend.kernel("adamw_step")(*mine, 3e-4, 0.9, 0.95, 1e-8, 0.1, 5)
    for a, r in zip(mine, ref):
        np.testing.assert_array_equal(a, r)


def test_adamw_non_contiguous_state_is_updated_in_place(on_backend):
    rng = np.random.default_rng(1)
    base = [np.asfortranarray(a) for a in _adamw_args(rng, (9, 6), np.float64)]
    strided = [a[:, ::2] for a in _adamw_args(rng, (9, 12), np.float64)]
    for arrays in (base, strided):
        ref = [a.copy() for a in arrays]
        _old_optim_step(*ref, 1e-2, 0.9, 0.999, 1e-8, 0.01, 1)
        backend.kernel("adamw_step")(*arrays, 1e-2, 0.9, 0.999, 1e-8, 0.01, 1)
        for a, r in zip(arrays, ref):
            np.testing.assert_array_equal(a, r)


@pytest.mark.parametrize("bad, match", [
    (dict(grad=np.zeros((2, 3), np.float64)), "grad dtype"),
    (dict(exp_avg=np.zeros((3, 2), np.float32)), "exp_avg shape"),
    (dict(param=np.zeros((2, 3), np.float16)), "float32 or float64"),
    (dict(exp_avg_sq=np.broadcast_to(np.zeros(3, np.float32), (2, 3))), "read-only"),
    (dict(step=0), "step"),
    (dict(lr=float("nan")), "lr"),
    (dict(beta2="0.9"), "beta2"),
])
def test_adamw_rejects_bad_input(on_backend, bad, match):
    kw = dict(param=np.zeros((2, 3), np.float32), grad=np.zeros((2, 3), np.float32),
              exp_avg=np.zeros((2, 3), np.float32), exp_avg_sq=np.zeros((2, 3), np.float32),
              lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    kw.update(bad)
    with pytest.raises((TypeError, ValueError), match=match):
        backend.kernel("adamw_step")(**kw)


def test_adamw_refuses_aliased_state(on_backend):
    p = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="share memory"):
        backend.kernel("adamw_step")(p, np.zeros_like(p), p, np.zeros_like(p),
                                     1e-3, 0.9, 0.999, 1e-8, 0.0, 1)


# ------------------------------------------------------------------- adversarial layouts
def make_cross_entropy(rng, N, C, dtype=np.float32):
    t = rng.integers(0, max(C, 1), N)
    t[::3] = -100
    return dict(logits=(rng.standard_normal((N, C)) * 3).astype(dtype), target=t,
                ignore_index=-100)


register(Kernel("cross_entropy_fused", make=make_cross_entropy,
                dims=[dict(N=5, C=7), dict(N=4, C=9, dtype=np.float64), dict(N=0, C=7),
                      dict(N=3, C=1)],
                tol={np.float32: TOL[np.float32], np.float64: TOL[np.float64]}))


@needs_c
def test_cross_entropy_adversarial():
    assert_survives(["cross_entropy_fused"])



def make_adamw(rng, shape, dtype=np.float32):
    return dict(zip(INPLACE_ARGS, _adamw_args(rng, shape, dtype)),
                lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, step=3)


INPLACE_ARGS = ("param", "grad", "exp_avg", "exp_avg_sq")
# Registered so the entry-point census counts it. check_kernels has no notion of arguments
# updated in place (it reports any write to an input), so the leading underscore keeps it out of
# test_kernel_survives_adversarial_layouts, and the layouts are run below with the harness's own
# buffers, allowing writes to exactly the elements of param and the moments.
register(Kernel("_in_place:adamw_step", c="minitx_c:adamw_step", twin="minitx.kernels.fused_ops:adamw_step",
                make=make_adamw, dims=[dict(shape=(5, 7)), dict(shape=(9,), dtype=np.float64),
                                       dict(shape=(0, 3))]))


@needs_c
@pytest.mark.parametrize("shape, dtype", [((5, 7), np.float32), ((9,), np.float64),
                                          ((0, 3), np.float32)])
def test_adamw_adversarial_layouts_in_place(shape, dtype):
    import minitx_c
    from adversarial import LAYOUTS, _Buffers, _build_array
    base = make_adamw(np.random.default_rng(7), shape, dtype)
    failures = []
    for arg in ("param", "grad", "exp_avg", "exp_avg_sq"):
        for layout in LAYOUTS + ("dtype:float16", "dtype:int8", "list"):
            results = []
            for fn in (fused_ops.adamw_step, minitx_c.adamw_step):
                bufs = _Buffers()
                kw = dict(base)
                for name in INPLACE_ARGS:
                    buf, kw[name] = _build_array(base[name], layout if name == arg else
                                                 "contiguous", bufs, name)
                    if name != "grad" and isinstance(kw[name], np.ndarray) \
                            and kw[name].flags.writeable:
                        bufs.allow_writes(buf, kw[name])
                bufs.snapshot()
                try:
                    fn(**kw)
                    results.append([np.array(kw[n]) for n in INPLACE_ARGS])
                except (TypeError, ValueError) as e:
                    results.append(type(e))
                bad = bufs.violations()
                if bad:
                    failures.append(f"{arg}={layout} {fn.__module__}: wrote outside: {bad}")
            twin, c = results
            if isinstance(twin, type) or isinstance(c, type):
                if twin != c:
                    failures.append(f"{arg}={layout}: twin {twin}, kernel {c}")
                continue
            for n, a, b in zip(INPLACE_ARGS, twin, c):
                if not np.array_equal(a, b, equal_nan=True):
                    failures.append(f"{arg}={layout}: {n} differs")
    assert not failures, "\n".join(failures[:25])


# ---------------------------------------------------------------------------------- RoPE
def _rope_case(rng, lead, T, d, dtype, transposed):
    """x (lead..., T, d) (a permuted view when transposed, as the GPT's q and k are), tables."""
    if transposed:
        x = rng.standard_normal((lead[0], T, *lead[1:], d)).astype(dtype)
        x = np.moveaxis(x, 1, -2)
    else:
        x = rng.standard_normal((*lead, T, d)).astype(dtype)
    angles = rng.uniform(-50, 50, (T, d // 2))
    return x, np.cos(angles), np.sin(angles)


@given(st.lists(st.integers(0, 4), min_size=1, max_size=2), st.integers(0, 9),
       st.integers(1, 8), st.sampled_from(DTYPES), st.booleans(), st.integers(0, 2**32 - 1))
@settings(deadline=None)
def test_rope_twin_is_the_complex_rotation_and_kernel_equals_twin(lead, T, h, dtype, transposed,
                                                                  seed):
    """Each pair (x_i, x_{i+d/2}) turns by theta as the complex number x_i + i x_{i+d/2} times
    e^{i theta}; the C kernel gives the twin's bits (no fused multiply-add in either)."""
    x, c, s = _rope_case(np.random.default_rng(seed), lead, T, 2 * h, dtype, transposed)
    y = fused_ops.rope_rotate(x, c, s)
    z = (x[..., :h].astype(np.float64) + 1j * x[..., h:]) * (c + 1j * s)
    _close(y, np.concatenate([z.real, z.imag], axis=-1), dtype, "rope vs complex rotation")
    back = fused_ops.rope_rotate(y, c, -s)                 # the backward: rotation by -theta
    _close(back, x, dtype, "rope by -theta undoes rope")
    if backend.c_available():
        import minitx_c
        got = minitx_c.rope_rotate(x, c, s)
        assert got.shape == y.shape and got.dtype == y.dtype
        np.testing.assert_array_equal(got, y)


@pytest.mark.parametrize("bad, match", [
    (dict(x=np.ones((2, 3, 5), np.float32)), "d even"),
    (dict(x=np.ones(4, np.float32)), "d even"),
    (dict(x=np.ones((2, 3, 4), np.int32)), "float32 or float64"),
    (dict(cos=np.ones((3, 3))), "cos must be"),
    (dict(sin=np.ones((2, 2))), "sin must be"),
    (dict(sin=[[1.0, 2.0]] * 3), "numpy.ndarray"),
])
def test_rope_rejects_bad_input(on_backend, bad, match):
    args = dict(x=np.ones((2, 3, 4), np.float32), cos=np.ones((3, 2)), sin=np.zeros((3, 2)))
    args.update(bad)
    with pytest.raises((TypeError, ValueError), match=match):
        backend.kernel("rope_rotate")(**args)


def make_rope(rng, B, T, h, dtype=np.float32):
    x, c, s = _rope_case(rng, (B,), T, 2 * h, dtype, False)
    return dict(x=x, cos=c, sin=s)


register(Kernel("rope_rotate", make=make_rope,
                dims=[dict(B=3, T=5, h=4), dict(B=2, T=3, h=2, dtype=np.float64),
                      dict(B=0, T=3, h=2), dict(B=2, T=0, h=1)]))


@needs_c
def test_rope_adversarial():
    assert_survives(["rope_rotate"])
