# cython: boundscheck=False, cdivision=True, initializedcheck=False
# wraparound stays on at module level (the def wrappers index shapes with -1); each nogil kernel
# turns it off with @cython.wraparound(False).
"""Cython twins of `minitx/kernels/fused_act.py`: erf, GELU, SiLU, RMSNorm, embedding backward.

Same names, signatures, checks (the reference's own, before the GIL is released) and formulas.
float32 elementwise kernels run the loops of vmath.h, which compute in double with a vectorised
exp / erf / tanh and round once; float64 uses libm (as NumPy and math.erf do). Work is split
into blocks of BLOCK elements (or rows) that run in parallel above PARALLEL_MIN elements and
serially below it: a parallel region costs a few microseconds, which a small array does not
repay (measured in /work/notes/speed-fused-readme.md).
"""
cimport cython
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport erf as c_erf, exp, sqrt, tanh
from libc.stdint cimport int64_t
from minitx_c.runtime cimport num_threads
from minitx.kernels.fused_act import (check_approximate, check_backward, check_elementwise,
                                      check_embedding_backward, check_rms_norm_backward,
                                      check_rms_norm_forward)
from minitx.kernels.fused_bias import check_bias_gelu_backward, check_bias_gelu_forward
from minitx.kernels.fused_residual import check_add_rms_norm_backward, check_add_rms_norm_forward

cnp.import_array()

cdef extern from "vmath.h" nogil:
    void mtx_erf_f32(const float *x, float *y, int64_t n)
    void mtx_gelu_erf_fwd_f32(const float *x, float *y, float *t, int64_t n)
    void mtx_gelu_erf_bwd_f32(const float *dy, const float *x, const float *t, float *dx,
                              int64_t n)
    void mtx_gelu_tanh_fwd_f32(const float *x, float *y, float *t, int64_t n)
    void mtx_gelu_tanh_bwd_f32(const float *dy, const float *x, const float *t, float *dx,
                               int64_t n)
    void mtx_silu_fwd_f32(const float *x, float *y, float *s, int64_t n)
    void mtx_silu_bwd_f32(const float *dy, const float *x, const float *s, float *dx, int64_t n)

from minitx_c.rowsum cimport (mtx_sumsq_dev_f32, mtx_sumsq_dev_f64, mtx_dot_f32,
                              mtx_dot_f64, mtx_dot_dev_f32, mtx_dot_dev_f64)

ctypedef fused real:
    float
    double

ctypedef void (*fwd_f32)(const float *, float *, float *, int64_t) noexcept nogil
ctypedef void (*bwd_f32)(const float *, const float *, const float *, float *,
                         int64_t) noexcept nogil

cdef Py_ssize_t PARALLEL_MIN = 1 << 16      # elements below which a kernel runs serially
cdef Py_ssize_t BLOCK = 1 << 13             # elements per parallel task

cdef enum:                                  # kinds of elementwise kernel
    ERF, GELU_ERF, GELU_TANH, SILU
cdef double SQRT1_2 = 0.7071067811865476
cdef double INV_SQRT_2PI = 0.3989422804014327
cdef double SQRT_2_OVER_PI = 0.7978845608028654
cdef double GELU_C = 0.044715


def _flat(a):
    """a as an aligned C-contiguous 1-D array (a view when a already is one)."""
    a = np.ascontiguousarray(a) if a.flags.aligned else np.array(a, order="C")
    return a.reshape(-1)


cdef inline int _threads(Py_ssize_t n) noexcept nogil:
    return num_threads() if n >= PARALLEL_MIN else 1


# ------------------------------------------------------------------ float32 block drivers
cdef void _fwd32(fwd_f32 fn, const float *x, float *y, float *t, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t nb = (n + BLOCK - 1) // BLOCK, b, i0
    cdef int nt = _threads(n)
    if nt == 1:
        fn(x, y, t, n)
        return
    for b in prange(nb, schedule="static", num_threads=nt):
        i0 = b * BLOCK
        fn(x + i0, y + i0, t + i0, min(BLOCK, n - i0))


cdef void _bwd32(bwd_f32 fn, const float *dy, const float *x, const float *t, float *dx,
                 Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t nb = (n + BLOCK - 1) // BLOCK, b, i0
    cdef int nt = _threads(n)
    if nt == 1:
        fn(dy, x, t, dx, n)
        return
    for b in prange(nb, schedule="static", num_threads=nt):
        i0 = b * BLOCK
        fn(dy + i0, x + i0, t + i0, dx + i0, min(BLOCK, n - i0))


cdef void _erf_block32(const float *x, float *y, float *unused, int64_t n) noexcept nogil:
    mtx_erf_f32(x, y, n)


# ------------------------------------------------------------------ float64: libm, same formulas
@cython.wraparound(False)
cdef void _fwd64(int kind, const double[::1] x, double[::1] y, double[::1] t) noexcept nogil:
    cdef Py_ssize_t n = x.shape[0], i
    cdef double xi, phi, th, s
    for i in prange(n, schedule="static", num_threads=_threads(n)):
        xi = x[i]
        if kind == ERF:
            y[i] = c_erf(xi)
        elif kind == GELU_ERF:
            phi = 0.5 * (1.0 + c_erf(xi * SQRT1_2))
            y[i] = xi * phi
            t[i] = phi
        elif kind == GELU_TANH:
            th = tanh(SQRT_2_OVER_PI * xi * (1.0 + GELU_C * xi * xi))
            y[i] = 0.5 * xi * (1.0 + th)
            t[i] = th
        else:
            s = 1.0 / (1.0 + exp(-xi))
            y[i] = xi * s
            t[i] = s


@cython.wraparound(False)
cdef void _bwd64(int kind, const double[::1] dy, const double[::1] x, const double[::1] t,
                 double[::1] dx) noexcept nogil:
    cdef Py_ssize_t n = x.shape[0], i
    cdef double xi, th, du
    for i in prange(n, schedule="static", num_threads=_threads(n)):
        xi = x[i]
        if kind == GELU_ERF:
            dx[i] = dy[i] * (t[i] + xi * exp(-0.5 * xi * xi) * INV_SQRT_2PI)
        elif kind == GELU_TANH:
            th = t[i]
            du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * xi * xi)
            dx[i] = dy[i] * 0.5 * ((1.0 + th) + xi * (1.0 - th * th) * du)
        else:
            dx[i] = dy[i] * t[i] * (1.0 + xi * (1.0 - t[i]))


cdef tuple _forward(int kind, fwd_f32 fn, x):
    """(y, t) of an elementwise forward on an already validated x."""
    xf = _flat(x)
    cdef Py_ssize_t n = xf.shape[0]
    y = np.empty_like(xf)
    t = np.empty_like(xf) if kind != ERF else y
    cdef const float[::1] x32
    cdef float[::1] y32, t32
    if n == 0:
        pass
    elif xf.dtype == np.float32:
        x32, y32, t32 = xf, y, t
        with nogil:
            _fwd32(fn, &x32[0], &y32[0], &t32[0], n)
    else:
        _fwd64(kind, xf, y, t)
    return y.reshape(x.shape), t.reshape(x.shape)


cdef object _backward(int kind, bwd_f32 fn, dy, x, saved):
    """dx of an elementwise backward on already validated arguments."""
    xf, dyf, tf = _flat(x), _flat(dy), _flat(saved)
    cdef Py_ssize_t n = xf.shape[0]
    dx = np.empty_like(xf)
    cdef const float[::1] x32, dy32, t32
    cdef float[::1] dx32
    if n == 0:
        pass
    elif xf.dtype == np.float32:
        x32, dy32, t32, dx32 = xf, dyf, tf, dx
        with nogil:
            _bwd32(fn, &dy32[0], &x32[0], &t32[0], &dx32[0], n)
    else:
        _bwd64(kind, dyf, xf, tf, dx)
    return dx.reshape(x.shape)


def erf(x):
    """The error function elementwise (twin of the NumPy reference).

    Args:
        x: float32 or float64 array.
    Returns:
        erf(x), x's shape and dtype.
    """
    check_elementwise("x", x)
    return _forward(ERF, _erf_block32, x)[0]


def gelu_forward(x, approximate="none"):
    """GELU and what its backward needs (twin of the NumPy reference).

    Args:
        x: float32/float64 array; approximate: "none" (erf) or "tanh".
    Returns:
        y, t: GELU(x) and Phi(x) ("none") or tanh(u) ("tanh").
    """
    check_elementwise("x", x)
    check_approximate(approximate)
    if approximate == "tanh":
        return _forward(GELU_TANH, mtx_gelu_tanh_fwd_f32, x)
    return _forward(GELU_ERF, mtx_gelu_erf_fwd_f32, x)


def gelu_backward(dy, x, saved, approximate="none"):
    """dL/dx of GELU (twin of the NumPy reference).

    Args:
        dy, x, saved: arrays of one shape and dtype (saved = gelu_forward's t).
    Returns:
        dx.
    """
    check_backward(dy, x, saved)
    check_approximate(approximate)
    if approximate == "tanh":
        return _backward(GELU_TANH, mtx_gelu_tanh_bwd_f32, dy, x, saved)
    return _backward(GELU_ERF, mtx_gelu_erf_bwd_f32, dy, x, saved)


def silu_forward(x):
    """SiLU and s = sigmoid(x) (twin of the NumPy reference). Returns y, s."""
    check_elementwise("x", x)
    return _forward(SILU, mtx_silu_fwd_f32, x)


def silu_backward(dy, x, saved):
    """dL/dx of SiLU from dy, x and s = sigmoid(x) (twin of the NumPy reference)."""
    check_backward(dy, x, saved)
    return _backward(SILU, mtx_silu_bwd_f32, dy, x, saved)


# ------------------------------------------------------------------ RMSNorm
@cython.wraparound(False)
cdef void _rms_fwd_rows(const real[:, ::1] x, const real[::1] w, bint has_w, double eps,
                        real[:, ::1] y, real[::1] rrms, const real[:, ::1] res=None,
                        real[:, ::1] s=None) noexcept nogil:
    """RMSNorm rows of x; with res (add_rms_norm_forward): of s = x + res, written to s row by
    row just before that row's sum."""
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1], r, j
    cdef double ss, rr
    cdef const real *xr
    cdef bint has_res = res is not None
    for r in prange(R, schedule="static", num_threads=_threads(R * C)):
        xr = &x[r, 0]
        if has_res:
            for j in range(C):
                s[r, j] = x[r, j] + res[r, j]         # the residual stream
            xr = &s[r, 0]
        if real is float:                            # sum of x^2
            ss = mtx_sumsq_dev_f32(xr, 0.0, C)
        else:
            ss = mtx_sumsq_dev_f64(xr, 0.0, C)
        rr = 1 / sqrt(ss / C + eps)                   # 1 / sqrt(mean(x^2) + eps)
        for j in range(C):
            if has_w:
                y[r, j] = <real>(xr[j] * rr * w[j])
            else:
                y[r, j] = <real>(xr[j] * rr)
        rrms[r] = <real>rr


def rms_norm_forward(x, weight, eps):
    """RMSNorm over the last dim (twin of the NumPy reference).

    Args:
        x: (..., C) float32/float64; weight: (C,) or None; eps: float >= 0.
    Returns:
        y (..., C), rrms (...,).
    """
    eps = check_rms_norm_forward(x, weight, eps)
    C = x.shape[-1]
    R = x.size // C if C else int(np.prod(x.shape[:-1]))
    x2 = _flat(x).reshape(R, C)                                   # (R, C)
    y = np.empty_like(x2)
    rrms = np.empty(R, dtype=x.dtype)
    w = _flat(weight) if weight is not None else np.zeros(1, dtype=x.dtype)
    if C == 0:
        rrms[:] = np.nan                                          # the mean of nothing
    elif R > 0:
        if x2.dtype == np.float32:
            _rms_fwd_rows[float](x2, w, weight is not None, eps, y, rrms)
        else:
            _rms_fwd_rows[double](x2, w, weight is not None, eps, y, rrms)
    return y.reshape(x.shape), rrms.reshape(x.shape[:-1])


@cython.wraparound(False)
cdef void _rms_bwd_rows(const real[:, ::1] dy, const real[:, ::1] x, const real[::1] w,
                        bint has_w, const real[::1] rrms, real[:, ::1] dx,
                        const real[:, ::1] ds=None) noexcept nogil:
    """RMSNorm's dx rows; with ds (add_rms_norm_backward): dx += ds in the same row."""
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1], r, j
    cdef double gx, g, rr
    cdef bint has_ds = ds is not None
    for r in prange(R, schedule="static", num_threads=_threads(R * C)):
        rr = rrms[r]
        if real is float:                            # sum of g xhat, g = dy w, xhat = x r
            gx = mtx_dot_dev_f32(&dy[r, 0], &w[0], &x[r, 0], 0.0, C) * rr
        else:
            gx = mtx_dot_dev_f64(&dy[r, 0], &w[0], &x[r, 0], 0.0, C) * rr
        gx = gx / C
        for j in range(C):                           # dx = r (g - xhat mean(g xhat))
            g = dy[r, j] * w[j] if has_w else dy[r, j]
            dx[r, j] = <real>(rr * (g - x[r, j] * rr * gx))
        if has_ds:
            for j in range(C):
                dx[r, j] = dx[r, j] + ds[r, j]


@cython.wraparound(False)
cdef void _rms_bwd_weight(const real[:, ::1] dy, const real[:, ::1] x, const real[::1] rrms,
                          real[::1] dw) noexcept nogil:
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1], r, j
    for r in range(R):                               # serial over rows, vector over C
        for j in range(C):
            dw[j] += dy[r, j] * (x[r, j] * rrms[r])


def rms_norm_backward(dy, x, weight, rrms):
    """Gradients of rms_norm_forward (twin of the NumPy reference).

    Args:
        dy, x: (..., C); weight: (C,) or None; rrms: (...,) from the forward.
    Returns:
        dx (..., C); dweight (C,) or None.
    """
    check_rms_norm_backward(dy, x, weight, rrms)
    C = x.shape[-1]
    R = int(np.prod(x.shape[:-1]))
    x2 = _flat(x).reshape(R, C)
    dy2 = _flat(dy).reshape(R, C)
    rr = _flat(rrms)
    dx = np.empty_like(x2)
    dw = np.zeros(C, dtype=x.dtype)
    w = _flat(weight) if weight is not None else np.ones(C, dtype=x.dtype)    # g = dy * 1
    if R > 0 and C > 0:
        if x2.dtype == np.float32:
            _rms_bwd_rows[float](dy2, x2, w, weight is not None, rr, dx)
            if weight is not None:
                _rms_bwd_weight[float](dy2, x2, rr, dw)
        else:
            _rms_bwd_rows[double](dy2, x2, w, weight is not None, rr, dx)
            if weight is not None:
                _rms_bwd_weight[double](dy2, x2, rr, dw)
    return dx.reshape(x.shape), (dw if weight is not None else None)


# ------------------------------------------------------------------ embedding backward
@cython.wraparound(False)
cdef void _emb_bwd(const int64_t[::1] ids, const real[:, ::1] dy, real[:, ::1] out,
                   unsigned char[::1] seen) noexcept nogil:
    cdef Py_ssize_t N = dy.shape[0], D = dy.shape[1], j, d
    cdef int64_t v
    for j in range(N):                               # token order: reproducible sums
        v = ids[j]
        if seen[v]:
            for d in range(D):
                out[v, d] = out[v, d] + dy[j, d]
        else:                                        # the first term itself (keeps -0.0)
            seen[v] = 1
            for d in range(D):
                out[v, d] = dy[j, d]


def embedding_backward(idx, dy, num_embeddings):
    """dW of an embedding lookup, summed in token order (twin of the NumPy reference).

    Args:
        idx: (...) integer ids in [0, num_embeddings); dy: (..., D) float.
    Returns:
        (num_embeddings, D) array of dy's dtype.
    """
    check_embedding_backward(idx, dy, num_embeddings)
    D = dy.shape[-1]
    ids = np.require(idx.reshape(-1), dtype=np.int64, requirements=("C", "A"))
    rows = _flat(dy).reshape(ids.shape[0], D)                     # (N, D)
    out = np.zeros((num_embeddings, D), dtype=dy.dtype)
    seen = np.zeros(num_embeddings, dtype=np.uint8)
    if ids.shape[0] > 0 and D > 0:
        if rows.dtype == np.float32:
            _emb_bwd[float](ids, rows, out, seen)
        else:
            _emb_bwd[double](ids, rows, out, seen)
    return out


# ------------------------------------------------------------------ bias + GELU
cdef void _bias_block32(fwd_f32 fn, const float *x, const float *b, Py_ssize_t C, float *h,
                        float *y, float *t, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Rows [r0, r1): h = x + b, then the GELU loop on those rows while h is in cache."""
    cdef Py_ssize_t r, j
    for r in range(r0, r1):
        for j in range(C):
            h[r * C + j] = x[r * C + j] + b[j]
    fn(h + r0 * C, y + r0 * C, t + r0 * C, (r1 - r0) * C)


cdef void _bias_fwd32(fwd_f32 fn, const float *x, const float *b, Py_ssize_t C, float *h,
                      float *y, float *t, Py_ssize_t rows) noexcept nogil:
    cdef Py_ssize_t rb = max(1, BLOCK // C), nb = (rows + rb - 1) // rb, k
    cdef int nt = _threads(rows * C)
    if nt == 1:
        for k in range(nb):
            _bias_block32(fn, x, b, C, h, y, t, k * rb, min(rows, k * rb + rb))
        return
    for k in prange(nb, schedule="static", num_threads=nt):
        _bias_block32(fn, x, b, C, h, y, t, k * rb, min(rows, k * rb + rb))


@cython.wraparound(False)
cdef void _colsum(const real[:, ::1] a, double[::1] acc) noexcept nogil:
    """acc[j] += a[r, j] for every row r, in row order (as NumPy's axis-0 reduce)."""
    cdef Py_ssize_t r, j
    for r in range(a.shape[0]):
        for j in range(a.shape[1]):
            acc[j] += a[r, j]


def bias_gelu_forward(x, bias, approximate="none"):
    """GELU(x + bias) (twin of minitx/kernels/fused_bias.py).

    Args:
        x: (..., C) float32/float64; bias: (C,) of x's dtype; approximate: "none" or "tanh".
    Returns:
        y, h = x + bias, t (Phi(h) or tanh u), all (..., C). float32: one blocked pass; float64:
        the add, then the GELU kernel.
    """
    check_bias_gelu_forward(x, bias, approximate)
    xf = _flat(x)
    if x.dtype != np.float32 or xf.shape[0] == 0:
        h = np.add(x, bias)
        y, t = gelu_forward(h, approximate)
        return y, h, t
    bf = _flat(bias)
    cdef Py_ssize_t C = x.shape[x.ndim - 1], rows = xf.shape[0] // C
    h, y, t = np.empty_like(xf), np.empty_like(xf), np.empty_like(xf)
    cdef const float[::1] x32 = xf, b32 = bf
    cdef float[::1] h32 = h, y32 = y, t32 = t
    cdef fwd_f32 fn = mtx_gelu_tanh_fwd_f32 if approximate == "tanh" else mtx_gelu_erf_fwd_f32
    with nogil:
        _bias_fwd32(fn, &x32[0], &b32[0], C, &h32[0], &y32[0], &t32[0], rows)
    return y.reshape(x.shape), h.reshape(x.shape), t.reshape(x.shape)


def bias_gelu_backward(dy, h, saved, approximate="none"):
    """dx and db of bias_gelu_forward (twin of minitx/kernels/fused_bias.py).

    Args:
        dy, h, saved: (..., C), one dtype (h, saved from the forward); approximate: as there.
    Returns:
        dx (..., C); db (C,) = dx's column sums, accumulated in double in row order.
    """
    check_bias_gelu_backward(dy, h, saved, approximate)
    dx = gelu_backward(dy, h, saved, approximate)
    cdef Py_ssize_t C = h.shape[h.ndim - 1]
    acc = np.zeros(C, dtype=np.float64)
    rows = np.ascontiguousarray(dx).reshape(-1, C) if C else None
    if C and rows.shape[0]:
        if dx.dtype == np.float32:
            _colsum[float](rows, acc)
        else:
            _colsum[double](rows, acc)
    return dx, acc.astype(h.dtype)


# ------------------------------------------------------------------ residual add + RMSNorm
def add_rms_norm_forward(x, residual, weight, eps):
    """s = x + residual and RMSNorm(s) in one row pass (twin of minitx/kernels/fused_residual.py).

    Args:
        x, residual: (..., C) one float dtype; weight: (C,) or None; eps: float >= 0.
    Returns:
        s (..., C), y (..., C), rrms (...,).
    """
    eps = check_add_rms_norm_forward(x, residual, weight, eps)
    C = x.shape[-1]
    R = int(np.prod(x.shape[:-1]))
    if C == 0 or R == 0:                       # nothing to fuse: the plain kernel's edge cases
        s = np.add(x, residual)
        return (s,) + rms_norm_forward(s, weight, eps)
    x2, r2 = _flat(x).reshape(R, C), _flat(residual).reshape(R, C)      # (R, C)
    s2, y = np.empty_like(x2), np.empty_like(x2)
    rrms = np.empty(R, dtype=x.dtype)
    w = _flat(weight) if weight is not None else np.zeros(1, dtype=x.dtype)
    if x2.dtype == np.float32:
        _rms_fwd_rows[float](x2, w, weight is not None, eps, y, rrms, r2, s2)
    else:
        _rms_fwd_rows[double](x2, w, weight is not None, eps, y, rrms, r2, s2)
    return s2.reshape(x.shape), y.reshape(x.shape), rrms.reshape(x.shape[:-1])


def add_rms_norm_backward(dy, ds, s, weight, rrms):
    """Gradients of add_rms_norm_forward (twin of minitx/kernels/fused_residual.py).

    Args:
        dy, ds: (..., C) (ds None: no other use of s); s, weight, rrms: from the forward.
    Returns:
        dx (..., C) (= d residual), dweight (C,) or None.
    """
    check_add_rms_norm_backward(dy, ds, s, weight, rrms)
    C = s.shape[-1]
    R = int(np.prod(s.shape[:-1]))
    if ds is None or C == 0 or R == 0:
        dx, dw = rms_norm_backward(dy, s, weight, rrms)
        return (dx if ds is None else np.add(dx, ds)), dw
    x2, dy2, ds2 = (_flat(a).reshape(R, C) for a in (s, dy, ds))
    rr = _flat(rrms)
    dx = np.empty_like(x2)
    dw = np.zeros(C, dtype=s.dtype)
    w = _flat(weight) if weight is not None else np.ones(C, dtype=s.dtype)    # g = dy * 1
    if x2.dtype == np.float32:
        _rms_bwd_rows[float](dy2, x2, w, weight is not None, rr, dx, ds2)
        if weight is not None:
            _rms_bwd_weight[float](dy2, x2, rr, dw)
    else:
        _rms_bwd_rows[double](dy2, x2, w, weight is not None, rr, dx, ds2)
        if weight is not None:
            _rms_bwd_weight[double](dy2, x2, rr, dw)
    return dx.reshape(s.shape), (dw if weight is not None else None)
