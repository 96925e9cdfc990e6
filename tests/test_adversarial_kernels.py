"""Every C kernel entry point against its NumPy twin on adversarial layouts (tests/adversarial.py):
odd, negative and zero byte strides, misaligned data, zero-size dims, byte-swapped and
unsupported dtypes, read-only inputs, and an `out` that is any of these or overlaps an input.
Each case runs in a child process, so a crash is one failing case, not a dead test run."""
import inspect
import os
import pkgutil
import warnings

import numpy as np
import pytest

from adversarial import KERNELS, Kernel, assert_survives, check_kernels, register
from minitx import backend

needs_c = pytest.mark.skipif(not backend.c_available(), reason="minitx_c is not built")

# result dtype -> (rtol, atol), per kind of kernel (float32 sums in a different order)
TOL_GEMM = {np.float32: (2e-5, 2e-5)}
TOL_ROWS = {np.float32: (2e-5, 2e-6), np.float64: (1e-12, 1e-13)}
TOL_ATTN = {np.float32: (2e-4, 2e-5), np.float64: (1e-10, 1e-12)}


def _randn(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------- GEMM
def make_matmul(rng, a, b, accumulate=False):
    return dict(a=_randn(rng, a), b=_randn(rng, b), accumulate=accumulate)


def out_matmul(kw):
    shape = np.matmul(np.zeros(kw["a"].shape, np.float32), np.zeros(kw["b"].shape, np.float32)).shape
    return np.random.default_rng(1).standard_normal(shape).astype(np.float32)


register(Kernel(
    "matmul", make=make_matmul,
    out=out_matmul, tol=TOL_GEMM,
    dims=[dict(a=(5, 7), b=(7, 9)), dict(a=(13, 20), b=(20, 17)),
          dict(a=(7, 7), b=(7, 7), accumulate=True), dict(a=(2, 5, 7), b=(7, 9)),
          dict(a=(2, 1, 4, 3), b=(3, 3, 5)), dict(a=(7,), b=(7, 9)), dict(a=(5, 7), b=(7,)),
          dict(a=(0, 7), b=(7, 9)), dict(a=(5, 0), b=(0, 9)), dict(a=(5, 7), b=(7, 0)),
          dict(a=(4, 0), b=(0, 4), accumulate=True)]))


def make_matmul_loops(rng, a, b, order="ikj", block=0):
    return dict(a=_randn(rng, a), b=_randn(rng, b), order=order, block=block)


register(Kernel(
    "matmul_loops", c="minitx_c.gemm_loops:matmul_loops", twin="minitx.kernels.gemm:matmul_loops",
    make=make_matmul_loops, tol=TOL_GEMM,
    dims=[dict(a=(5, 7), b=(7, 9)), dict(a=(5, 7), b=(7, 9), order="ijk"),
          dict(a=(9, 8), b=(8, 7), block=3), dict(a=(0, 3), b=(3, 4)), dict(a=(3, 0), b=(0, 4))]))


def make_matmul_int8(rng, a, b):
    return dict(a=rng.integers(-128, 128, a).astype(np.int8),
                b=rng.integers(-128, 128, b).astype(np.int8))


register(Kernel(
    "matmul_int8", make=make_matmul_int8,
    dims=[dict(a=(5, 7), b=(7, 9)), dict(a=(13, 33), b=(33, 17)), dict(a=(2, 5, 7), b=(7, 9)),
          dict(a=(0, 7), b=(7, 9)), dict(a=(5, 0), b=(0, 9)), dict(a=(5, 7), b=(7, 0))]))


def make_linear_w8(rng, M, K, N, group_size=None, bias=True):
    n_groups = 1 if group_size is None else K // group_size
    return dict(x=_randn(rng, M + (K,)), w_q=rng.integers(-127, 128, (N, K)).astype(np.int8),
                scales=(rng.random((N,) if group_size is None else (N, n_groups)) + 0.1)
                .astype(np.float32),
                group_size=group_size, bias=_randn(rng, (N,)) if bias else None)


def make_linear_w4(rng, M, K, N, group_size=None, bias=True):
    kw = make_linear_w8(rng, M, K, N, group_size, bias)
    kw["w_packed"] = rng.integers(0, 256, (N, K // 2)).astype(np.uint8)
    del kw["w_q"]
    return {k: kw[k] for k in ("x", "w_packed", "scales", "group_size", "bias")}


QLINEAR_DIMS = [dict(M=(3,), K=16, N=8), dict(M=(13,), K=16, N=9, group_size=4),
                dict(M=(2, 3), K=8, N=5, bias=False), dict(M=(3,), K=0, N=4),
                dict(M=(0,), K=16, N=4), dict(M=(3,), K=16, N=0), dict(M=(), K=16, N=4)]
register(Kernel("linear_w8", make=make_linear_w8, dims=QLINEAR_DIMS, tol=TOL_GEMM))
register(Kernel("linear_w4", make=make_linear_w4, dims=QLINEAR_DIMS, tol=TOL_GEMM))


# ------------------------------------------------------------------------- row kernels
def make_softmax(rng, shape, dtype=np.float32):
    return dict(x=_randn(rng, shape, dtype) * 3)


ROW_DIMS = [dict(shape=(4, 7)), dict(shape=(2, 3, 5), dtype=np.float64), dict(shape=(0, 7)),
            dict(shape=(7,)), dict(shape=(4, 0))]
register(Kernel("softmax_lastdim", make=make_softmax, dims=ROW_DIMS, tol=TOL_ROWS))


def make_ln_forward(rng, shape, dtype=np.float32, affine=True):
    C = shape[-1]
    return dict(x=_randn(rng, shape, dtype), weight=_randn(rng, (C,), dtype) if affine else None,
                bias=_randn(rng, (C,), dtype) if affine else None, eps=1e-5)


def make_ln_backward(rng, shape, dtype=np.float32, affine=True):
    from minitx.kernels.fused import layer_norm_forward
    kw = make_ln_forward(rng, shape, dtype, affine)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")                       # C = 0: the mean of nothing
        _, mean, rstd = layer_norm_forward(kw["x"], kw["weight"], kw["bias"], kw["eps"])
    return dict(dy=_randn(rng, shape, dtype), x=kw["x"], weight=kw["weight"], mean=mean,
                rstd=rstd)


LN_DIMS = ROW_DIMS + [dict(shape=(3, 6), affine=False)]
register(Kernel("layer_norm_forward", make=make_ln_forward, dims=LN_DIMS, tol=TOL_ROWS))
register(Kernel("layer_norm_backward", make=make_ln_backward, dims=LN_DIMS, tol=TOL_ROWS))


# --------------------------------------------------------------------------- attention
def make_flash_forward(rng, Nq=5, Nk=6, Hkv=1, bias=False, is_causal=False, dtype=np.float32):
    q = _randn(rng, (1, 2, Nq, 8), dtype)
    k, v = _randn(rng, (1, Hkv, Nk, 8), dtype), _randn(rng, (1, Hkv, Nk, 8), dtype)
    return dict(q=q, k=k, v=v, bias=_randn(rng, (1, 1, Nq, Nk), dtype) if bias else None,
                is_causal=is_causal, Br=4, Bc=4)


def make_flash_backward(rng, **dims):
    from minitx.attention.flash2 import flash2_forward
    kw = make_flash_forward(rng, **dims)
    o, L = flash2_forward(**kw)
    kw.update(o=o, L=L, do=_randn(rng, o.shape, o.dtype))
    return {k: kw[k] for k in ("q", "k", "v", "bias", "o", "L", "do", "is_causal", "Br", "Bc")}


FLASH_DIMS = [dict(), dict(Hkv=2, bias=True), dict(is_causal=True, dtype=np.float64),
              dict(Nq=0), dict(Nk=0)]
register(Kernel("flash2_forward", make=make_flash_forward, dims=FLASH_DIMS, tol=TOL_ATTN))
register(Kernel("flash2_backward", make=make_flash_backward, dims=FLASH_DIMS[:3], tol=TOL_ATTN))


# ------------------------------------------- the harness must catch broken kernels (self-test)
def _twin_double(x, out=None):
    """A tiny reference: 2 * x, into `out` if given."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise TypeError(f"x must be a float32 ndarray, got {getattr(x, 'dtype', type(x))}")
    if out is None:
        return 2 * x
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != x.shape:
        raise TypeError("out must be a float32 ndarray of x's shape")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    out[...] = 2 * x
    return out


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _broken_values(x, out=None):              # off by 1e-3
    r = _twin_double(x, out)
    return r + np.float32(1e-3) if out is None else r


def _broken_error(x, out=None):               # a foreign exception type for bad input
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise RuntimeError("unexpected input")
    return _twin_double(x, out)


def _broken_oob(x, out=None):                 # writes the byte after out's last element
    r = _twin_double(x, out)
    if out is not None and out.size:
        base = _root(out)
        end = (out.__array_interface__["data"][0] - base.__array_interface__["data"][0]
               + sum(s * (n - 1) for s, n in zip(out.strides, out.shape) if s > 0)
               + out.itemsize)
        base.view(np.uint8).reshape(-1)[end] ^= 0xFF
    return r


def _broken_input(x, out=None):               # scribbles on its (writable) input
    r = _twin_double(x, out)
    if isinstance(x, np.ndarray) and x.flags.writeable and x.size and out is None:
        x[...] = 0
    return r


def _broken_crash(x, out=None):               # aborts the process on an out one byte off
    if isinstance(out, np.ndarray) and out.__array_interface__["data"][0] % 4 == 1:
        os.abort()
    return _twin_double(x, out)


def _make_double(rng, shape):
    return dict(x=_randn(rng, shape))


BROKEN = {"_broken_values": (_broken_values, "differs at"),
          "_broken_error": (_broken_error, "vs kernel: RuntimeError"),
          "_broken_oob": (_broken_oob, "wrote outside its output"),
          "_broken_input": (_broken_input, "wrote outside its output: x"),
          "_broken_crash": (_broken_crash, "child died")}
for _name, (_fn, _) in BROKEN.items():
    register(Kernel(_name, c=_fn, twin=_twin_double, make=_make_double,
                    out=lambda kw: np.zeros(kw["x"].shape, np.float32), dims=[dict(shape=(3, 4))],
                    tol=TOL_ROWS))


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_harness_catches_a_broken_kernel(name):
    failures, n = check_kernels([name])
    assert failures, f"{name}: the harness found nothing wrong in {n} cases"
    assert all(BROKEN[name][1] in f for f in failures), "\n".join(failures[:5])
    assert len(failures) < n                  # the other cases ran (after a crash too)


# Entry points that only set or report configuration (no arrays): nothing to lay out.
CONFIG_ENTRY_POINTS = {"minitx_c.runtime": {"get_num_threads", "set_num_threads", "have_openmp"},
                       "minitx_c.gemm": {"gemm_config", "set_parallel_split"},
                       "minitx_c.flash": {"simd_enabled"}}


@needs_c
def test_every_c_entry_point_is_registered():
    """A new `def` in any minitx_c module must be registered above (or be configuration)."""
    import importlib
    import minitx_c
    from adversarial import _resolve
    for other in ("test_attention_sparse_adversarial", "test_fused_ops", "test_fused_act",
                  "test_fused_bias", "test_fused_residual", "test_gguf_kernels"):
        importlib.import_module(other)          # they register their kernels when imported
    registered = [_resolve(k.c) for k in KERNELS.values()]
    missing = []
    for info in pkgutil.iter_modules(minitx_c.__path__):
        mod = __import__(f"minitx_c.{info.name}", fromlist=["_"])
        for name, obj in vars(mod).items():
            if (name.startswith("_") or not callable(obj) or inspect.isclass(obj)
                    or getattr(obj, "__module__", None) != mod.__name__
                    or name in CONFIG_ENTRY_POINTS.get(mod.__name__, ())):
                continue
            if not any(obj is c for c in registered):
                missing.append(f"{mod.__name__}.{name}")
    assert not missing, f"C entry points without adversarial cases: {missing}"


@needs_c
@pytest.mark.parametrize("name", [n for n in KERNELS if not n.startswith("_")])
def test_kernel_survives_adversarial_layouts(name):
    assert_survives([name])
