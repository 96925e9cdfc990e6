"""Fused row-wise kernels: softmax over the last dim, and LayerNorm forward/backward.

"Fused" means one pass over each row computes what a chain of NumPy calls would
(max, subtract, exp, sum, divide), saving the intermediate buffers. The NumPy versions below
loop over nothing explicitly (NumPy vectorises over rows); `minitx_c/fused.pyx` loops over rows
with the same names and steps.

LayerNorm: Ba, Kiros, Hinton 2016, "Layer Normalization", arXiv 1607.06450, eq. (4).
"""
import numpy as np


def softmax_lastdim(x):
    """Numerically stable softmax over the last dimension.

    Args:
        x: (..., N) float32 or float64.
    Returns:
        (..., N) same dtype: exp(x - max) / sum(exp(x - max)) per row.
    """
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
    """
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
    xhat = (x - mean[..., None]) * rstd[..., None]          # (..., C)
    g = dy * weight if weight is not None else dy           # (..., C)
    g_mean = g.mean(axis=-1, keepdims=True)                 # (..., 1)
    gx_mean = (g * xhat).mean(axis=-1, keepdims=True)       # (..., 1)
    dx = (g - g_mean - xhat * gx_mean) * rstd[..., None]    # (..., C)
    C = x.shape[-1]
    dweight = (dy * xhat).reshape(-1, C).sum(axis=0) if weight is not None else None
    dbias = dy.reshape(-1, C).sum(axis=0)
    return dx.astype(x.dtype, copy=False), dweight, dbias
