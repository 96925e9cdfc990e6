"""Fused row-wise kernels: softmax over the last dim, and LayerNorm forward/backward.

"Fused" means one pass over each row computes what a chain of NumPy calls would
(max, subtract, exp, sum, divide), saving the intermediate buffers. The NumPy versions below
loop over nothing explicitly (NumPy vectorises over rows); `minitx_c/fused.pyx` loops over rows
with the same names and steps.

LayerNorm: Ba, Kiros, Hinton 2016, "Layer Normalization", arXiv 1607.06450, eq. (4).

The argument checks below are the rules of both twins: `minitx_c/fused.pyx` calls them before
it releases the GIL, so the NumPy and the Cython kernel raise the same errors.
"""
import math

import numpy as np

_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


def check_float(name, a):
    """Raise unless `a` is a float32/float64 ndarray (native byte order) with >= 1 dims."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in _NATIVE:
        if a.dtype.newbyteorder() in _NATIVE:
            raise TypeError(f"{name} must be float32 or float64 in native byte order, got "
                            f"{a.dtype.str} (convert with .astype)")
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if a.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension, got shape {a.shape}")


def check_vec(name, v, x):
    """Raise unless `v` is None or a (C,) vector of x's dtype, C = x.shape[-1]."""
    if v is None:
        return
    check_float(name, v)
    if v.dtype != x.dtype:
        raise TypeError(f"{name} dtype {v.dtype} differs from x dtype {x.dtype}")
    if v.shape != (x.shape[-1],):
        raise ValueError(f"{name} must have shape ({x.shape[-1]},), got {v.shape}")


def check_layer_norm_forward(x, weight, bias, eps):
    """Validate layer_norm_forward's arguments; returns eps as a float."""
    check_float("x", x)
    check_vec("weight", weight, x)
    check_vec("bias", bias, x)
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return eps


def check_layer_norm_backward(dy, x, weight, mean, rstd):
    """Validate layer_norm_backward's arguments."""
    check_float("x", x)
    check_float("dy", dy)
    if dy.shape != x.shape or dy.dtype != x.dtype:
        raise ValueError(f"dy {dy.shape} {dy.dtype} must match x {x.shape} {x.dtype}")
    check_vec("weight", weight, x)
    for name, a in (("mean", mean), ("rstd", rstd)):
        if not isinstance(a, np.ndarray) or a.shape != x.shape[:-1] or a.dtype != x.dtype:
            raise ValueError(f"{name} must be an ndarray of shape {x.shape[:-1]} and dtype "
                             f"{x.dtype}, got {getattr(a, 'shape', type(a).__name__)} "
                             f"{getattr(a, 'dtype', '')}")


def softmax_lastdim(x):
    """Numerically stable softmax over the last dimension.

    Args:
        x: (..., N) float32 or float64.
    Returns:
        (..., N) same dtype: exp(x - max) / sum(exp(x - max)) per row.
    """
    check_float("x", x)
    if x.shape[-1] == 0:
        raise ValueError(f"softmax over an empty last dimension: shape {x.shape}")
    m = x.max(axis=-1, keepdims=True)          # (..., 1) row max, for stability
    e = np.exp(x - m)                          # (..., N)
    return e / e.sum(axis=-1, keepdims=True)   # (..., N)


def layer_norm_forward(x, weight, bias, eps):
    """LayerNorm over the last dimension: y = (x - mean) * rstd * weight + bias.

    Args:
        x: (..., C) float32 or float64.
        weight, bias: (C,) same dtype, or None for no affine part.
        eps: added to the variance before the square root.
    Returns:
        y (..., C), mean (...,), rstd (...,): mean and 1/sqrt(var + eps) are saved for backward.
        With C = 0, mean and rstd are NaN (the mean of nothing) and y is empty.
    """
    eps = check_layer_norm_forward(x, weight, bias, eps)
    mean = x.mean(axis=-1)                                  # (...,)
    xc = x - mean[..., None]                                # (..., C)
    var = (xc * xc).mean(axis=-1)                           # (...,) biased variance
    rstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype)       # (...,)
    y = xc * rstd[..., None]                                # (..., C) normalised
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype, copy=False), np.asarray(mean, dtype=x.dtype), np.asarray(rstd)


def layer_norm_backward(dy, x, weight, mean, rstd):
    """Gradients of layer_norm_forward.

    With xhat = (x - mean) * rstd and g = dy * weight, per row of C elements:
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    Args:
        dy, x: (..., C); weight: (C,) or None; mean, rstd: (...,) from the forward.
    Returns:
        dx (..., C); dweight (C,) or None; dbias (C,) (always computed, cheap).
    """
    check_layer_norm_backward(dy, x, weight, mean, rstd)
    xhat = (x - mean[..., None]) * rstd[..., None]          # (..., C)
    g = dy * weight if weight is not None else dy           # (..., C)
    g_mean = g.mean(axis=-1, keepdims=True)                 # (..., 1)
    gx_mean = (g * xhat).mean(axis=-1, keepdims=True)       # (..., 1)
    dx = (g - g_mean - xhat * gx_mean) * rstd[..., None]    # (..., C)
    R, C = math.prod(x.shape[:-1]), x.shape[-1]              # rows, channels (either may be 0)
    dweight = (dy * xhat).reshape(R, C).sum(axis=0) if weight is not None else None
    dbias = dy.reshape(R, C).sum(axis=0)
    return dx.astype(x.dtype, copy=False), dweight, dbias
