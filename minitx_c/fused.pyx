# cython: boundscheck=False, cdivision=True, initializedcheck=False
# wraparound stays on at module level: the def wrappers index Python tuples with -1.
# Each nogil kernel turns it off with @cython.wraparound(False).
"""Cython twins of `minitx/kernels/fused.py`: row-wise softmax and LayerNorm.

Same names, signatures and steps as the NumPy reference; rows run in parallel (OpenMP prange)
when the build has OpenMP. Inputs are validated and made contiguous before the GIL is released.
"""
cimport cython
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport exp, sqrt

cnp.import_array()

ctypedef fused real:
    float
    double


def _check_float(name, a):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.float32 and a.dtype != np.float64:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if a.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension, got shape {a.shape}")


def _check_vec(name, v, x):
    if v is None:
        return None
    _check_float(name, v)
    if v.dtype != x.dtype:
        raise TypeError(f"{name} dtype {v.dtype} differs from x dtype {x.dtype}")
    if v.shape != (x.shape[-1],):
        raise ValueError(f"{name} must have shape ({x.shape[-1]},), got {v.shape}")
    return np.ascontiguousarray(v)


@cython.wraparound(False)
cdef void _softmax_rows(real[:, ::1] x, real[:, ::1] y) noexcept nogil:
    cdef Py_ssize_t R = x.shape[0], N = x.shape[1], r, j
    cdef real m, s
    for r in prange(R, schedule="static"):
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
    _check_float("x", x)
    if x.shape[-1] == 0:
        raise ValueError(f"softmax over an empty last dimension: shape {x.shape}")
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])    # (R, N)
    y2 = np.empty_like(x2)
    if x2.dtype == np.float32:
        _softmax_rows[float](x2, y2)
    else:
        _softmax_rows[double](x2, y2)
    return y2.reshape(x.shape)


@cython.wraparound(False)
cdef void _ln_fwd_rows(real[:, ::1] x, real[::1] w, real[::1] b, bint has_w, bint has_b,
                       double eps, real[:, ::1] y, real[::1] mean,
                       real[::1] rstd) noexcept nogil:
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1], r, j
    cdef double mu, var, d, rs
    cdef real v
    for r in prange(R, schedule="static"):
        mu = 0
        for j in range(C):
            mu = mu + x[r, j]
        mu = mu / C                                # mean
        var = 0
        for j in range(C):
            d = x[r, j] - mu
            var = var + d * d
        var = var / C                              # biased variance
        rs = 1 / sqrt(var + eps)                   # rstd
        for j in range(C):
            v = <real>((x[r, j] - mu) * rs)        # xhat
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
    _check_float("x", x)
    weight = _check_vec("weight", weight, x)
    bias = _check_vec("bias", bias, x)
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)               # (R, C)
    R = x2.shape[0]
    y2 = np.empty_like(x2)
    mean = np.empty(R, dtype=x.dtype)
    rstd = np.empty(R, dtype=x.dtype)
    dummy = np.zeros(1, dtype=x.dtype)
    w = weight if weight is not None else dummy
    b = bias if bias is not None else dummy
    if R > 0 and C > 0:
        if x2.dtype == np.float32:
            _ln_fwd_rows[float](x2, w, b, weight is not None, bias is not None, eps, y2, mean, rstd)
        else:
            _ln_fwd_rows[double](x2, w, b, weight is not None, bias is not None, eps, y2, mean, rstd)
    return y2.reshape(x.shape), mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


@cython.wraparound(False)
cdef void _ln_bwd_rows(real[:, ::1] dy, real[:, ::1] x, real[::1] w, bint has_w,
                       real[::1] mean, real[::1] rstd, real[:, ::1] dx) noexcept nogil:
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1], r, j
    cdef double g_mean, gx_mean, g, xhat
    for r in prange(R, schedule="static"):
        g_mean = 0
        gx_mean = 0
        for j in range(C):
            g = dy[r, j] * w[j] if has_w else dy[r, j]
            xhat = (x[r, j] - mean[r]) * rstd[r]
            g_mean = g_mean + g
            gx_mean = gx_mean + g * xhat
        g_mean = g_mean / C
        gx_mean = gx_mean / C
        for j in range(C):                        # dx = rstd * (g - mean(g) - xhat*mean(g*xhat))
            g = dy[r, j] * w[j] if has_w else dy[r, j]
            xhat = (x[r, j] - mean[r]) * rstd[r]
            dx[r, j] = <real>((g - g_mean - xhat * gx_mean) * rstd[r])


@cython.wraparound(False)
cdef void _ln_bwd_params(real[:, ::1] dy, real[:, ::1] x, real[::1] mean, real[::1] rstd,
                         real[::1] dw, real[::1] db) noexcept nogil:
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1], r, j
    for r in range(R):                            # serial over rows, vector over C
        for j in range(C):
            dw[j] += dy[r, j] * (x[r, j] - mean[r]) * rstd[r]
            db[j] += dy[r, j]


def layer_norm_backward(dy, x, weight, mean, rstd):
    """Gradients of layer_norm_forward (twin of the NumPy reference).

    Args:
        dy, x: (..., C); weight: (C,) or None; mean, rstd: (...,) from the forward.
    Returns:
        dx (..., C); dweight (C,) or None; dbias (C,).
    """
    _check_float("x", x)
    _check_float("dy", dy)
    if dy.shape != x.shape or dy.dtype != x.dtype:
        raise ValueError(f"dy {dy.shape} {dy.dtype} must match x {x.shape} {x.dtype}")
    weight = _check_vec("weight", weight, x)
    for name, a in (("mean", mean), ("rstd", rstd)):
        if not isinstance(a, np.ndarray) or a.shape != x.shape[:-1] or a.dtype != x.dtype:
            raise ValueError(f"{name} must be an ndarray of shape {x.shape[:-1]} and dtype "
                             f"{x.dtype}, got {getattr(a, 'shape', type(a))}")
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)
    dy2 = np.ascontiguousarray(dy).reshape(-1, C)
    m = np.ascontiguousarray(mean).reshape(-1)
    rs = np.ascontiguousarray(rstd).reshape(-1)
    dx = np.empty_like(x2)
    dw = np.zeros(C, dtype=x.dtype)
    db = np.zeros(C, dtype=x.dtype)
    w = weight if weight is not None else np.zeros(1, dtype=x.dtype)
    if x2.shape[0] > 0 and C > 0:
        if x2.dtype == np.float32:
            _ln_bwd_rows[float](dy2, x2, w, weight is not None, m, rs, dx)
            _ln_bwd_params[float](dy2, x2, m, rs, dw, db)
        else:
            _ln_bwd_rows[double](dy2, x2, w, weight is not None, m, rs, dx)
            _ln_bwd_params[double](dy2, x2, m, rs, dw, db)
    return dx.reshape(x.shape), (dw if weight is not None else None), db
