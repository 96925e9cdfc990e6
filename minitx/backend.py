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

# OpenBLAS's worker threads spin for 2^28 cycles (~0.1 s) after each product and take the second
# core from the OpenMP kernels that follow; a timeout of 2^4 cycles lets them sleep at once.
# OpenBLAS reads the variable when NumPy loads it, so it applies only if minitx is imported
# before NumPy (as `python -m minitx` and the benchmarks do) or the user sets it.
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
OPENBLAS_SLEEPS = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "").strip() in \
    {str(i) for i in range(1, 11)}           # OpenBLAS raises values below 4 to 4

import numpy as np  # noqa: E402


def _keep_freed_memory():
    """Let glibc keep freed memory for reuse instead of returning it to the OS.

    By default glibc serves blocks of 128 KiB or more (a threshold it raises as blocks are
    freed) with fresh mmap pages and trims the top of its heap, so the activations and gradients
    a training step allocates come back as new pages every step: one page fault per 4 KiB, and a
    default-GPT step measured 18% slower (355 against 436 ms on one thread). Here blocks of up to
    32 MiB (glibc's ceiling for this setting) come from the heap and the heap is trimmed only
    above 1 GiB, as a caching allocator would: the process keeps its peak memory. MINITX_MALLOC=
    default leaves glibc's settings alone; other C libraries are not touched.
    Returns True when the settings were applied."""
    if os.environ.get("MINITX_MALLOC", "").strip().lower() == "default" \
            or not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt              # glibc (absent from musl: AttributeError)
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # glibc's <malloc.h>
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


MALLOC_TUNED = _keep_freed_memory()

# kernel name -> module of its NumPy reference. The Cython twin is `minitx_c.<name>`.
TWINS = {
    "softmax_lastdim": "minitx.kernels.fused",
    "layer_norm_forward": "minitx.kernels.fused",
    "layer_norm_backward": "minitx.kernels.fused",
    "cross_entropy_fused": "minitx.kernels.fused_ops",
    "adamw_step": "minitx.kernels.fused_ops",
    "rope_rotate": "minitx.kernels.fused_ops",
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


# Which library serves a float32 product on the "c" backend, decided by measurement per shape
# class and thread count (benchmarks/gemm_policy.py: the products alone;
# benchmarks/train_throughput.py: the training step). The classes are the products a Linear
# makes: forward x @ W^T (b a transposed view), input grad dY @ W (b C-ordered), weight grad
# dY^T @ X (a a transposed view); "other" is everything else that reaches backend.matmul.
#   1 thread: OpenBLAS. On the Xeon (AVX-512) measured, OpenBLAS's AVX-512 SGEMM ran every GPT
#     and MiniLM Linear product at 1.3-1.8x the speed of minitx_c.matmul's AVX2 micro-kernel
#     (process CPU time, median of interleaved pairs: minitx/OpenBLAS 0.56-0.77).
#   2 threads: OpenBLAS, when its threads sleep after a product (OPENBLAS_SLEEPS, above). Left
#     spinning (its default), they take the second core from the OpenMP kernels (attention,
#     fused ops) that follow, and minitx_c's OpenMP GEMM (whose threads sleep when idle,
#     OMP_WAIT_POLICY=PASSIVE) served the products better: default-GPT step 313-366 ms against
#     343-350 ms. With OPENBLAS_THREAD_TIMEOUT=4, OpenBLAS took 272-303 ms (1 thread: 399-470;
#     2026-11-29, interleaved processes, median of 8 steps). So 2 threads use OpenBLAS when it
#     sleeps and minitx_c.matmul when it spins (numpy imported before minitx, variable unset).
# minitx_c.matmul stays the readable BLIS kernel of tutorial 03; on a machine that measures
# differently, edit the table.
GEMM_POLICY = {
    (1, "x@W^T"): "openblas", (1, "dY@W"): "openblas", (1, "dY^T@X"): "openblas",
    (1, "other"): "openblas",
    (2, "x@W^T"): "openblas", (2, "dY@W"): "openblas", (2, "dY^T@X"): "openblas",
    (2, "other"): "openblas",
}


def gemm_class(a, b):
    """The shape class of a @ b in GEMM_POLICY: "x@W^T", "dY@W", "dY^T@X" or "other"."""
    if b.ndim == 2 and a.ndim >= 2:
        if a.ndim == 2 and a.flags.f_contiguous and not a.flags.c_contiguous:
            return "dY^T@X"
        return "x@W^T" if b.flags.f_contiguous and not b.flags.c_contiguous else "dY@W"
    return "other"


def gemm_server(a, b):
    """"minitx" or "openblas": who serves the float32 product a @ b now (GEMM_POLICY)."""
    n = min(_C.get_num_threads(), 2) if _C is not None else 1
    if n > 1 and not OPENBLAS_SLEEPS:
        return "minitx"                      # spinning OpenBLAS threads: see GEMM_POLICY's note
    return GEMM_POLICY[(n, gemm_class(a, b))]


def matmul(a, b):
    """The matrix product autograd uses for forward and backward: `np.matmul` semantics.

    On the "c" backend a float32 x float32 product goes to `minitx_c.matmul` (the BLIS-style
    GEMM of `minitx_c/gemm.pyx`) or to `np.matmul` (OpenBLAS) as GEMM_POLICY says for its
    shape class and the thread count; other dtypes, and the "numpy" backend, use `np.matmul`.

    Args:
        a: (..., M, K) or (K,); b: (..., K, N) or (K,).
    Returns:
        (..., M, N) array, like np.matmul(a, b).
    """
    if (_active == "c" and type(a) is np.ndarray and type(b) is np.ndarray
            and a.dtype == np.float32 and b.dtype == np.float32 and a.ndim and b.ndim
            and gemm_server(a, b) == "minitx"):
        return _C.matmul(a, b)
    if (a.ndim > 2 and b.ndim == 2 and type(a) is np.ndarray and a.flags.c_contiguous
            and a.shape[-1] == b.shape[0] and a.shape[-1] > 0):
        # x @ W with x (..., K) C-ordered: one (rows, K) @ (K, N) product instead of NumPy's
        # loop of one GEMM per leading index (MiniLM's fc, (32, 128, 384) @ (384, 1536):
        # 34.5 ms instead of 43.1 ms on one OpenBLAS thread, CPU time).
        return np.matmul(a.reshape(-1, a.shape[-1]), b).reshape(a.shape[:-1] + b.shape[1:])
    return np.matmul(a, b)
