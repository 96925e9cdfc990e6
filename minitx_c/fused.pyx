# cython: boundscheck=False, cdivision=True, initializedcheck=False
# wraparound stays on at module level: the def wrappers index Python tuples with -1.
# Each nogil kernel turns it off with @cython.wraparound(False).
"""Cython twins of `minitx/kernels/fused.py`: row-wise softmax and LayerNorm (row sums and the
LayerNorm row loops in rowsum.h, written so gcc vectorises them).

Same names, signatures and steps as the NumPy reference; rows run in parallel (OpenMP prange)
when the build has OpenMP. Inputs are validated by the reference's own checks, and made
contiguous and aligned, before the GIL is released; inputs are read through `const` views, so
read-only arrays are accepted as by the reference.
"""
cimport cython
import math
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport NAN, exp, sqrt
from minitx_c.runtime cimport num_threads
from minitx.kernels.fused import (check_float, check_layer_norm_backward,
                                  check_layer_norm_forward)
from minitx.kernels.fused_residual import (check_add_layer_norm_backward,
                                           check_add_layer_norm_forward)

from minitx_c.rowsum cimport (mtx_sum_f32, mtx_sum_f64, mtx_sumsq_dev_f32,
                              mtx_sumsq_dev_f64, mtx_dot_f32, mtx_dot_f64,
                              mtx_dot_dev_f32, mtx_dot_dev_f64, mtx_ln_dx_f32,
                              mtx_ln_dx_f64, mtx_ln_params_f32, mtx_ln_params_f64)

cnp.import_array()

ctypedef fused real:
    float
    double


def _aligned_c(a):
    """a as a C-contiguous array with an aligned data pointer (a itself when it is one);
    np.ascontiguousarray alone keeps a contiguous view whose pointer is misaligned."""
    return np.ascontiguousarray(a) if a.flags.aligned else np.array(a, order="C")


def _rows(a, Py_ssize_t R, Py_ssize_t C):
    """a as an aligned C-contiguous (R, C) array (a view when it already is one)."""
    return _aligned_c(a).reshape(R, C)


def _vec(v):
    return None if v is None else _aligned_c(v)


@cython.wraparound(False)
cdef void _softmax_rows(const real[:, ::1] x, real[:, ::1] y, int nt) noexcept nogil:
    cdef Py_ssize_t R = x.shape[0], N = x.shape[1], r, j
    cdef real m, s
    for r in prange(R, schedule="static", num_threads=nt):
        m = x[r, 0]                               # row max, for stability
        for j in range(1, N):
            if x[r, j] > m:
                m = x[r, j]
        s = 0
        for j in range(N):                        # e = exp(x - m); s = sum(e)
            y[r, j] = exp(x[r, j] - m)
            s = s + y[r, j]
        s = 1 / s
        for j in range(N):                        # y = e / s
            y[r, j] = y[r, j] * s


def softmax_lastdim(x):
    """Numerically stable softmax over the last dimension (twin of the NumPy reference).

    Args:
        x: (..., N) float32 or float64, N >= 1.
    Returns:
        (..., N) same dtype.
    """
    check_float("x", x)
    if x.shape[-1] == 0:
        raise ValueError(f"softmax over an empty last dimension: shape {x.shape}")
    N = x.shape[-1]
    x2 = _rows(x, x.size // N, N)                               # (R, N)
    y2 = np.empty_like(x2)
    if x2.dtype == np.float32:
        _softmax_rows[float](x2, y2, num_threads())
    else:
        _softmax_rows[double](x2, y2, num_threads())
    return y2.reshape(x.shape)


@cython.wraparound(False)
cdef void _ln_fwd_rows(const real[:, ::1] x, const real[::1] w, const real[::1] b, bint has_w,
                       bint has_b, double eps, real[:, ::1] y, real[::1] mean,
                       real[::1] rstd, int nt, const real[:, ::1] res=None,
                       real[:, ::1] s=None) noexcept nogil:
    """LayerNorm rows of x; with res (add_layer_norm_forward): of s = x + res, written to s
    row by row just before that row's sums."""
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1], r, j
    cdef double mu, var, rs
    cdef real v
    cdef const real *xr
    cdef bint has_res = res is not None
    for r in prange(R, schedule="static", num_threads=nt):
        xr = &x[r, 0]
        if has_res:
            for j in range(C):
                s[r, j] = x[r, j] + res[r, j]      # the residual stream
            xr = &s[r, 0]
        if real is float:
            mu = mtx_sum_f32(xr, C) / C                             # mean
            var = mtx_sumsq_dev_f32(xr, mu, C) / C                  # biased variance
        else:
            mu = mtx_sum_f64(xr, C) / C
            var = mtx_sumsq_dev_f64(xr, mu, C) / C
        rs = 1 / sqrt(var + eps)                   # rstd
        for j in range(C):
            v = <real>((xr[j] - mu) * rs)          # xhat
            if has_w:
                v = v * w[j]
            if has_b:
                v = v + b[j]
            y[r, j] = v
        mean[r] = <real>mu
        rstd[r] = <real>rs


def layer_norm_forward(x, weight, bias, eps):
    """LayerNorm over the last dimension (twin of the NumPy reference).

    Args:
        x: (..., C) float32/float64; weight, bias: (C,) or None; eps: float.
    Returns:
        y (..., C), mean (...,), rstd (...,).
    """
    eps = check_layer_norm_forward(x, weight, bias, eps)
    C = x.shape[-1]
    R = math.prod(x.shape[:-1])
    x2 = _rows(x, R, C)                                         # (R, C)
    y2 = np.empty_like(x2)
    mean = np.empty(R, dtype=x.dtype)
    rstd = np.empty(R, dtype=x.dtype)
    dummy = np.zeros(1, dtype=x.dtype)
    w = _vec(weight) if weight is not None else dummy
    b = _vec(bias) if bias is not None else dummy
    if C == 0:                                   # the mean of nothing, as in the reference
        mean[:] = NAN
        rstd[:] = NAN
    elif R > 0:
        if x2.dtype == np.float32:
            _ln_fwd_rows[float](x2, w, b, weight is not None, bias is not None, eps, y2, mean,
                                rstd, num_threads())
        else:
            _ln_fwd_rows[double](x2, w, b, weight is not None, bias is not None, eps, y2, mean,
                                 rstd, num_threads())
    return y2.reshape(x.shape), mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


@cython.wraparound(False)
cdef void _ln_bwd_rows(const real[:, ::1] dy, const real[:, ::1] x, const real[::1] w,
                       const real[::1] mean, const real[::1] rstd, real[:, ::1] dx,
                       int nt, const real[:, ::1] ds=None) noexcept nogil:
    """LayerNorm's dx rows; with ds (add_layer_norm_backward): dx += ds in the same row."""
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1], r, j
    cdef bint has_ds = ds is not None
    cdef double g_mean, gx_mean
    for r in prange(R, schedule="static", num_threads=nt):
        if real is float:                         # sums of g = dy w and of g xhat
            g_mean = mtx_dot_f32(&dy[r, 0], &w[0], C)
            gx_mean = mtx_dot_dev_f32(&dy[r, 0], &w[0], &x[r, 0], mean[r], C) * rstd[r]
        else:
            g_mean = mtx_dot_f64(&dy[r, 0], &w[0], C)
            gx_mean = mtx_dot_dev_f64(&dy[r, 0], &w[0], &x[r, 0], mean[r], C) * rstd[r]
        g_mean = g_mean / C
        gx_mean = gx_mean / C
        if real is float:                         # dx = rstd * (g - mean(g) - xhat*mean(g*xhat))
            mtx_ln_dx_f32(&dy[r, 0], &x[r, 0], &w[0], mean[r], rstd[r], g_mean, gx_mean,
                          &dx[r, 0], C)
        else:
            mtx_ln_dx_f64(&dy[r, 0], &x[r, 0], &w[0], mean[r], rstd[r], g_mean, gx_mean,
                          &dx[r, 0], C)
        if has_ds:
            for j in range(C):
                dx[r, j] = dx[r, j] + ds[r, j]


@cython.wraparound(False)
cdef void _ln_bwd_params(const real[:, ::1] dy, const real[:, ::1] x, const real[::1] mean,
                         const real[::1] rstd, real[::1] dw, real[::1] db) noexcept nogil:
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1], r
    for r in range(R):                            # serial over rows, vector over C
        if real is float:                         # dw += dy xhat, db += dy
            mtx_ln_params_f32(&dy[r, 0], &x[r, 0], mean[r], rstd[r], &dw[0], &db[0], C)
        else:
            mtx_ln_params_f64(&dy[r, 0], &x[r, 0], mean[r], rstd[r], &dw[0], &db[0], C)


def layer_norm_backward(dy, x, weight, mean, rstd):
    """Gradients of layer_norm_forward (twin of the NumPy reference).

    Args:
        dy, x: (..., C); weight: (C,) or None; mean, rstd: (...,) from the forward.
    Returns:
        dx (..., C); dweight (C,) or None; dbias (C,).
    """
    check_layer_norm_backward(dy, x, weight, mean, rstd)
    C = x.shape[-1]
    R = math.prod(x.shape[:-1])
    x2 = _rows(x, R, C)                                         # (R, C)
    dy2 = _rows(dy, R, C)
    m = _rows(mean, 1, R).reshape(R)
    rs = _rows(rstd, 1, R).reshape(R)
    dx = np.empty_like(x2)
    dw = np.zeros(C, dtype=x.dtype)
    db = np.zeros(C, dtype=x.dtype)
    w = _vec(weight) if weight is not None else np.ones(C, dtype=x.dtype)   # g = dy * 1
    if R > 0 and C > 0:
        if x2.dtype == np.float32:
            _ln_bwd_rows[float](dy2, x2, w, m, rs, dx, num_threads())
            _ln_bwd_params[float](dy2, x2, m, rs, dw, db)
        else:
            _ln_bwd_rows[double](dy2, x2, w, m, rs, dx, num_threads())
            _ln_bwd_params[double](dy2, x2, m, rs, dw, db)
    return dx.reshape(x.shape), (dw if weight is not None else None), db


def add_layer_norm_forward(x, residual, weight, bias, eps):
    """s = x + residual and LayerNorm(s) in one row pass (twin of minitx/kernels/fused_residual.py).

    Args:
        x, residual: (..., C) one float dtype; weight, bias: (C,) or None; eps: float.
    Returns:
        s (..., C), y (..., C), mean (...,), rstd (...,).
    """
    eps = check_add_layer_norm_forward(x, residual, weight, bias, eps)
    C = x.shape[-1]
    R = math.prod(x.shape[:-1])
    if C == 0 or R == 0:                       # nothing to fuse: the reference's edge cases
        s = np.add(x, residual)
        return (s,) + layer_norm_forward(s, weight, bias, eps)
    x2, r2 = _rows(x, R, C), _rows(residual, R, C)              # (R, C)
    s2, y2 = np.empty_like(x2), np.empty_like(x2)
    mean = np.empty(R, dtype=x.dtype)
    rstd = np.empty(R, dtype=x.dtype)
    dummy = np.zeros(1, dtype=x.dtype)
    w = _vec(weight) if weight is not None else dummy
    b = _vec(bias) if bias is not None else dummy
    if x2.dtype == np.float32:
        _ln_fwd_rows[float](x2, w, b, weight is not None, bias is not None, eps, y2, mean, rstd,
                            num_threads(), r2, s2)
    else:
        _ln_fwd_rows[double](x2, w, b, weight is not None, bias is not None, eps, y2, mean, rstd,
                             num_threads(), r2, s2)
    return (s2.reshape(x.shape), y2.reshape(x.shape), mean.reshape(x.shape[:-1]),
            rstd.reshape(x.shape[:-1]))


def add_layer_norm_backward(dy, ds, s, weight, mean, rstd):
    """Gradients of add_layer_norm_forward (twin of minitx/kernels/fused_residual.py).

    Args:
        dy, ds: (..., C) (ds None: no other use of s); s, weight, mean, rstd: from the forward.
    Returns:
        dx (..., C) (= d residual), dweight (C,) or None, dbias (C,).
    """
    check_add_layer_norm_backward(dy, ds, s, weight, mean, rstd)
    C = s.shape[-1]
    R = math.prod(s.shape[:-1])
    if ds is None or C == 0 or R == 0:
        dx, dw, db = layer_norm_backward(dy, s, weight, mean, rstd)
        return (dx if ds is None else np.add(dx, ds)), dw, db
    x2, dy2, ds2 = _rows(s, R, C), _rows(dy, R, C), _rows(ds, R, C)
    m = _rows(mean, 1, R).reshape(R)
    rs = _rows(rstd, 1, R).reshape(R)
    dx = np.empty_like(x2)
    dw = np.zeros(C, dtype=s.dtype)
    db = np.zeros(C, dtype=s.dtype)
    w = _vec(weight) if weight is not None else np.ones(C, dtype=s.dtype)
    if x2.dtype == np.float32:
        _ln_bwd_rows[float](dy2, x2, w, m, rs, dx, num_threads(), ds2)
        _ln_bwd_params[float](dy2, x2, m, rs, dw, db)
    else:
        _ln_bwd_rows[double](dy2, x2, w, m, rs, dx, num_threads(), ds2)
        _ln_bwd_params[double](dy2, x2, m, rs, dw, db)
    return dx.reshape(s.shape), (dw if weight is not None else None), db
