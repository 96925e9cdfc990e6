"""Which kernels run: the Cython extension `minitx_c` or its NumPy twins.

Every kernel has a readable NumPy reference (in `minitx.kernels`, `minitx.attention`, ...) and a
Cython twin of the same name and signature in `minitx_c`. `TWINS` maps each kernel name to the
module holding its reference. Callers ask `kernel(name)` and get the function of the active
backend.

The active backend is chosen once at import:
  - `MINITX_PURE=1` (or `MINITX_BACKEND=numpy`) selects NumPy;
  - otherwise "c" if `minitx_c` imports, else NumPy with a one-line notice on stderr.
`set_backend(name)` and the context manager `using(name)` change it at run time (tests use them to
run one suite over both backends).
"""
import contextlib
import importlib
import os
import sys

import numpy as np

# kernel name -> module of its NumPy reference. The Cython twin is `minitx_c.<name>`.
TWINS = {
    "softmax_lastdim": "minitx.kernels.fused",
    "layer_norm_forward": "minitx.kernels.fused",
    "layer_norm_backward": "minitx.kernels.fused",
    "cross_entropy_fused": "minitx.kernels.fused_ops",
    "adamw_step": "minitx.kernels.fused_ops",
    "erf": "minitx.kernels.fused_act",
    "gelu_forward": "minitx.kernels.fused_act",
    "gelu_backward": "minitx.kernels.fused_act",
    "silu_forward": "minitx.kernels.fused_act",
    "silu_backward": "minitx.kernels.fused_act",
    "rms_norm_forward": "minitx.kernels.fused_act",
    "rms_norm_backward": "minitx.kernels.fused_act",
    "embedding_backward": "minitx.kernels.fused_act",
    "bias_gelu_forward": "minitx.kernels.fused_bias",
    "bias_gelu_backward": "minitx.kernels.fused_bias",
    "add_layer_norm_forward": "minitx.kernels.fused_residual",
    "add_layer_norm_backward": "minitx.kernels.fused_residual",
    "add_rms_norm_forward": "minitx.kernels.fused_residual",
    "add_rms_norm_backward": "minitx.kernels.fused_residual",
    "matmul": "minitx.kernels.gemm",
    "matmul_int8": "minitx.kernels.int8",
    "linear_w8": "minitx.kernels.int8",
    "linear_w4": "minitx.kernels.int8",
    "flash2_forward": "minitx.attention.flash2",
    "flash2_backward": "minitx.attention.flash2",
    "ggml_matmul": "minitx.kernels.ggml",
    "ggml_matmul_q8": "minitx.kernels.ggml",
}

ENV_ERROR = None       # a bad MINITX_BACKEND value (the CLI refuses to run with one)
_C = None              # the imported minitx_c module, or None
_C_ERROR = None        # why minitx_c is unavailable
_active = "numpy"
_cache = {}


def _init():
    global _C, _C_ERROR, _active, ENV_ERROR
    wanted = os.environ.get("MINITX_BACKEND", "").strip().lower()
    if os.environ.get("MINITX_PURE", "") not in ("", "0"):
        wanted = "numpy"
    if wanted not in ("", "c", "numpy"):
        ENV_ERROR = f"MINITX_BACKEND must be 'c' or 'numpy', got {wanted!r}"
        print(f"minitx: {ENV_ERROR}; ignoring it", file=sys.stderr)
        wanted = ""
    # OpenMP threads that spin after a parallel region steal the cores from OpenBLAS's threads
    # (and vice versa): a 2-thread training step measured 1.6x slower than with passive
    # waiting. libgomp reads this when minitx_c first loads it; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        _C = importlib.import_module("minitx_c")
    except ImportError as e:
        _C_ERROR = str(e)
    if wanted == "numpy":
        _active = "numpy"
        print("minitx: MINITX_PURE set, using the NumPy reference kernels", file=sys.stderr)
    elif _C is not None:
        _active = "c"
    else:
        _active = "numpy"
        print(f"minitx: Cython extension unavailable ({_C_ERROR}); using the NumPy reference "
              "kernels", file=sys.stderr)


def c_available():
    """True if the Cython extension `minitx_c` imported."""
    return _C is not None


def available():
    """Backends that can run here: always "numpy", plus "c" when the extension is built."""
    return ["numpy", "c"] if _C is not None else ["numpy"]


def active():
    """Name of the active backend: "c" or "numpy"."""
    return _active


def set_backend(name):
    """Select the backend ("c" or "numpy") for all later kernel calls."""
    global _active
    if name not in ("c", "numpy"):
        raise ValueError(f"backend must be 'c' or 'numpy', got {name!r}")
    if name == "c" and _C is None:
        raise RuntimeError(f"the Cython backend is not available: {_C_ERROR}")
    _active = name
    _cache.clear()


@contextlib.contextmanager
def using(name):
    """Context manager: run the enclosed code on backend `name`, then restore the previous one."""
    previous = _active
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def reference(name):
    """The NumPy reference implementation of kernel `name`."""
    if name not in TWINS:
        raise KeyError(f"unknown kernel {name!r}; known: {sorted(TWINS)}")
    return getattr(importlib.import_module(TWINS[name]), name)


def kernel(name):
    """The implementation of kernel `name` on the active backend."""
    fn = _cache.get(name)
    if fn is None:
        fn = getattr(_C, name) if _active == "c" else reference(name)
        _cache[name] = fn
    return fn


_init()


def matmul(a, b):
    """The matrix product autograd uses for forward and backward: `np.matmul` semantics.

    On the "c" backend with one OpenMP thread (`minitx_c.set_num_threads(1)` or
    OMP_NUM_THREADS=1), float32 x float32 goes to `minitx_c.matmul`, the BLIS-style GEMM of
    `minitx_c/gemm.pyx`: on the products of a GPT training step it is at parity with
    single-threaded OpenBLAS and has less call overhead on small ones (benchmarks/gemm.py;
    a default-GPT training step measured 1.01-1.08x). With more threads a training step was
    measured 8-20% slower on it than on multi-threaded OpenBLAS, so there, as for other dtypes
    and on the "numpy" backend, the product goes to `np.matmul`.

    Args:
        a: (..., M, K) or (K,); b: (..., K, N) or (K,).
    Returns:
        (..., M, N) array, like np.matmul(a, b).
    """
    if (_active == "c" and type(a) is np.ndarray and type(b) is np.ndarray
            and a.dtype == np.float32 and b.dtype == np.float32 and a.ndim and b.ndim
            and _C.get_num_threads() == 1):
        return _C.matmul(a, b)
    return np.matmul(a, b)
