# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython twins of `minitx/kernels/fused_ops.py`: fused cross-entropy, the AdamW update, RoPE.

Same names, signatures, validation (the reference's own `check_*`, before the GIL is released)
and operation order as the NumPy twins (except cross-entropy's float32 rows with a finite max:
vectorised exp and a float32 lane sum, _ce_row_f32). Rows (cross-entropy, RoPE) or blocks of
elements (AdamW) run in parallel with OpenMP above a size threshold, serially below it (a
parallel region costs microseconds). This extension is compiled with -ffp-contract=off (setup.py): a fused multiply-add
would round `m * b1 + (1 - b1) * g` once instead of twice and break AdamW's bit-identity with
NumPy.
"""
cimport cython
import math
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport exp, expf, isfinite, log, logf, sqrt, sqrtf
from libc.string cimport memcpy
from minitx_c.runtime cimport num_threads
from minitx.kernels.fused_ops import check_adamw, check_cross_entropy, check_rope

cnp.import_array()

cdef extern from "flash_simd.h" nogil:
    float mtx_rowmax_f(const float *x, int n)               # NaN if the row holds one
    float mtx_exp_shift_sum_f(float *x, float shift, int n)  # x = exp(x - shift), returns sum

ctypedef fused real:
    float
    double

cdef Py_ssize_t PARALLEL_MIN = 1 << 16      # elements below which a kernel runs serially
cdef Py_ssize_t ADAMW_BLOCK = 4096          # elements per parallel AdamW task


def _aligned_c(a):
    """a as a C-contiguous array with an aligned data pointer (a itself when it is one)."""
    return np.ascontiguousarray(a) if a.flags.aligned else np.array(a, order="C")


# ---------------------------------------------------------------- cross-entropy + log-softmax
cdef inline real _exp(real v) noexcept nogil:
    if real is float:
        return expf(v)
    else:
        return exp(v)


cdef inline real _log(real v) noexcept nogil:
    if real is float:
        return logf(v)
    else:
        return log(v)


cdef bint _ce_row_f32(const float *xr, float *dr, Py_ssize_t C, Py_ssize_t t,
                      float *nll) noexcept nogil:
    """One float32 row with a finite max, vectorised (flash_simd.h's max and exp, the sum in
    float32 lanes): dr = softmax - onehot, nll = -logp[t]. False (nothing written) for a row
    whose max is -inf, +inf or NaN, which the scalar loop below handles as the twin does."""
    cdef float m = mtx_rowmax_f(xr, <int>C), s, inv
    cdef Py_ssize_t j
    if not isfinite(m):
        return False
    memcpy(dr, xr, C * sizeof(float))
    s = mtx_exp_shift_sum_f(dr, m, <int>C)                  # dr = exp(x - m), s = its sum
    nll[0] = -((xr[t] - m) - logf(s))
    inv = 1 / s
    for j in range(C):
        dr[j] = dr[j] * inv
    dr[t] = dr[t] - 1
    return True


cdef void _ce_row(const real[:, ::1] x, const cnp.int64_t[::1] target, long long ignore_index,
                  bint need_grad, real[::1] nll, real[:, ::1] dx, Py_ssize_t r) noexcept nogil:
    cdef Py_ssize_t C = x.shape[1], j
    cdef cnp.int64_t t = target[r]
    cdef real m, e, lse, inv
    cdef double s
    if t == ignore_index:                         # an ignored row: 0 loss, 0 gradient
        nll[r] = 0
        if need_grad:
            for j in range(C):
                dx[r, j] = 0
        return
    if real is float:
        if need_grad and _ce_row_f32(&x[r, 0], &dx[r, 0], C, t, &nll[r]):
            return
    m = x[r, 0]                                   # row max, for stability
    for j in range(1, C):
        if x[r, j] > m:
            m = x[r, j]
    s = 0
    for j in range(C):                            # s = sum(exp(x - m)); keep e for the grad
        e = _exp(x[r, j] - m)
        if need_grad:
            dx[r, j] = e
        s = s + e
    lse = _log(<real>s)                           # logsumexp(x) - m
    nll[r] = -((x[r, t] - m) - lse)               # -logp[target]
    if need_grad:
        inv = <real>(1.0 / s)
        for j in range(C):                        # softmax
            dx[r, j] = dx[r, j] * inv
        dx[r, t] = dx[r, t] - 1                   # softmax - onehot


cdef void _ce_rows(const real[:, ::1] x, const cnp.int64_t[::1] target, long long ignore_index,
                   bint need_grad, real[::1] nll, real[:, ::1] dx, int nt) noexcept nogil:
    cdef Py_ssize_t R = x.shape[0], r
    if nt > 1 and R * x.shape[1] >= PARALLEL_MIN:
        for r in prange(R, schedule="static", num_threads=nt):
            _ce_row(x, target, ignore_index, need_grad, nll, dx, r)
    else:
        for r in range(R):
            _ce_row(x, target, ignore_index, need_grad, nll, dx, r)


def cross_entropy_fused(logits, target, ignore_index=-100, need_grad=True):
    """Per-row cross-entropy and its gradient from one pass (twin of the NumPy reference).

    Args:
        logits: (N, C) float32/float64; target: (N,) integer ids; ignore_index: int;
        need_grad: also return the gradient.
    Returns:
        nll (N,); dlogits (N, C) = softmax - onehot (0 on ignored rows), or None.
    """
    check_cross_entropy(logits, target, ignore_index)
    N, C = logits.shape
    x = _aligned_c(logits)
    t = np.require(target, dtype=np.int64, requirements=("C", "A"))
    nll = np.empty(N, dtype=logits.dtype)
    dx = np.empty((N, C) if need_grad else (1, 1), dtype=logits.dtype)
    if N > 0:
        if x.dtype == np.float32:
            _ce_rows[float](x, t, ignore_index, need_grad, nll, dx, num_threads())
        else:
            _ce_rows[double](x, t, ignore_index, need_grad, nll, dx, num_threads())
    return nll, (dx if need_grad else None)


# ---------------------------------------------------------------------------- AdamW update
cdef void _adamw_range(real[::1] p, const real[::1] g, real[::1] m, real[::1] v,
                       real decay, real b1, real one_minus_b1, real b2, real one_minus_b2,
                       real step_size, real bc2_sqrt, real eps,
                       Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t i
    cdef real denom
    for i in range(i0, i1):                       # the twin's lines, in its order:
        p[i] = p[i] * decay                       # p *= 1 - lr wd
        m[i] = m[i] * b1                          # m *= b1
        m[i] = m[i] + one_minus_b1 * g[i]         # m += (1 - b1) g
        v[i] = v[i] * b2                          # v *= b2
        v[i] = v[i] + one_minus_b2 * g[i] * g[i]  # v += (1 - b2) g g
        if real is float:
            denom = sqrtf(v[i]) / bc2_sqrt + eps  # sqrt(v) / sqrt(1 - b2^t) + eps
        else:
            denom = sqrt(v[i]) / bc2_sqrt + eps
        p[i] = p[i] - step_size * m[i] / denom    # p -= step_size m / denom


cdef void _adamw(real[::1] p, const real[::1] g, real[::1] m, real[::1] v, real decay, real b1,
                 real one_minus_b1, real b2, real one_minus_b2, real step_size, real bc2_sqrt,
                 real eps, int nt) noexcept nogil:
    cdef Py_ssize_t n = p.shape[0], blk, n_blk = (n + ADAMW_BLOCK - 1) // ADAMW_BLOCK
    if nt > 1 and n >= PARALLEL_MIN:
        for blk in prange(n_blk, schedule="static", num_threads=nt):
            _adamw_range(p, g, m, v, decay, b1, one_minus_b1, b2, one_minus_b2, step_size,
                         bc2_sqrt, eps, blk * ADAMW_BLOCK, min(n, (blk + 1) * ADAMW_BLOCK))
    else:
        _adamw_range(p, g, m, v, decay, b1, one_minus_b1, b2, one_minus_b2, step_size,
                     bc2_sqrt, eps, 0, n)


def _writable_c(a):
    """a, or an aligned C-contiguous copy of it to write back afterwards."""
    return a if a.flags.c_contiguous and a.flags.aligned else np.array(a, order="C")


def adamw_step(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW update in place (twin of the NumPy reference, bit for bit).

    Args:
        param, grad, exp_avg, exp_avg_sq: arrays of one shape and dtype (float32/float64).
        lr, beta1, beta2, eps, weight_decay: floats; step: the update's number t >= 1.
    Returns:
        None.
    """
    check_adamw(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step)
    lr, beta1, beta2, eps, weight_decay = map(float, (lr, beta1, beta2, eps, weight_decay))
    n = param.size
    p, m, v = _writable_c(param), _writable_c(exp_avg), _writable_c(exp_avg_sq)
    g = _aligned_c(grad)
    # the twin's scalars, computed by the same Python expressions
    consts = (1 - lr * weight_decay, beta1, 1 - beta1, beta2, 1 - beta2,
              lr / (1 - beta1 ** step), math.sqrt(1 - beta2 ** step), eps)
    if param.dtype == np.float32:
        _adamw[float](p.reshape(n), g.reshape(n), m.reshape(n), v.reshape(n), *consts,
                      num_threads())
    else:
        _adamw[double](p.reshape(n), g.reshape(n), m.reshape(n), v.reshape(n), *consts,
                       num_threads())
    for a, a_c in ((param, p), (exp_avg, m), (exp_avg_sq, v)):
        if a_c is not a:
            a[...] = a_c


# ---------------------------------------------------------------------------- RoPE
cdef void _rope(const real[:, :, ::1] x, const real[:, ::1] c, const real[:, ::1] s,
                real[:, :, ::1] y, int nt) noexcept nogil:
    """x, y (R, T, d): y = (x1 c - x2 s, x1 s + x2 c) per row t; c, s (T, d/2)."""
    cdef Py_ssize_t R = x.shape[0], T = x.shape[1], h = x.shape[2] // 2, r, t, i
    cdef real x1, x2, p, q
    for r in prange(R, schedule="static", num_threads=nt):
        for t in range(T):
            for i in range(h):
                x1 = x[r, t, i]
                x2 = x[r, t, h + i]
                p = x1 * c[t, i]                  # each product rounded, as NumPy's twin
                q = x2 * s[t, i]
                y[r, t, i] = p - q
                p = x1 * s[t, i]
                q = x2 * c[t, i]
                y[r, t, h + i] = p + q


def rope_rotate(x, cos, sin):
    """Rotate the pairs (x[..., :d/2], x[..., d/2:]) (twin of the NumPy reference, bit for bit).

    Args:
        x: (..., T, d) float32/float64, any strides; cos, sin: (T, d/2) (cast to x's dtype).
    Returns:
        y (..., T, d), a new C-contiguous array of x's dtype.
    """
    check_rope(x, cos, sin)
    T, d = x.shape[x.ndim - 2], x.shape[x.ndim - 1]   # (wraparound is off in this module)
    R = int(np.prod(x.shape[:x.ndim - 2], dtype=np.int64))       # rows of (T, d)
    xc = _aligned_c(x).reshape(R, T, d)
    c = np.require(cos, dtype=x.dtype, requirements=("C", "A"))
    s = np.require(sin, dtype=x.dtype, requirements=("C", "A"))
    y = np.empty(xc.shape, dtype=x.dtype)
    nt = num_threads() if y.size >= PARALLEL_MIN else 1
    if y.size:
        if x.dtype == np.float32:
            _rope[float](xc, c, s, y, nt)
        else:
            _rope[double](xc, c, s, y, nt)
    return y.reshape(x.shape)
