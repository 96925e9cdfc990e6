"""Bias + GELU fused: the NumPy twin of `bias_gelu_forward` / `bias_gelu_backward` in
minitx_c/fused_act.pyx.

A Linear layer's bias add followed by GELU (the MLP's first half, Hendrycks & Gimpel 2016,
arXiv 1606.08415) in one kernel: the C forward adds the bias to a block of rows and runs the GELU
loop on that block while it is in cache; the backward makes dx in one pass and db as its column
sums.
    forward:  h = x + b (b broadcast over the rows),  y = GELU(h)
    backward: dx = dy GELU'(h),  db = sum of dx over every row (in float64, rows in order)
The GELU formulas and their working precision are those of gelu_forward / gelu_backward
(minitx/kernels/fused_act.py).
"""
import math

import numpy as np

from minitx.kernels.fused import check_float, check_vec
from minitx.kernels.fused_act import check_approximate, check_same, gelu_backward, gelu_forward


def check_bias_gelu_forward(x, bias, approximate):
    """Raise unless x is (..., C) float, bias a (C,) vector of x's dtype, approximate valid."""
    check_float("x", x)
    if bias is None:
        raise TypeError("bias must be a numpy.ndarray, got NoneType (use gelu_forward)")
    check_vec("bias", bias, x)
    check_approximate(approximate)


def check_bias_gelu_backward(dy, h, saved, approximate):
    """Raise unless h is (..., C) float and dy, saved match it."""
    check_float("h", h)
    check_same("dy", dy, h)
    check_same("saved", saved, h)
    check_approximate(approximate)


def bias_gelu_forward(x, bias, approximate="none"):
    """GELU(x + bias) and what the backward needs.

    Args:
        x: (..., C) float32/float64; bias: (C,) of x's dtype; approximate: "none" or "tanh".
    Returns:
        y = GELU(h), h = x + bias, and t (Phi(h) or tanh(u), as gelu_forward); all (..., C).
    """
    check_bias_gelu_forward(x, bias, approximate)
    h = np.add(x, bias)                                   # (..., C)
    y, t = gelu_forward(h, approximate)
    return y, h, t


def bias_gelu_backward(dy, h, saved, approximate="none"):
    """Gradients of bias_gelu_forward.

    Args:
        dy: (..., C) dL/dy; h, saved: bias_gelu_forward's h and t; approximate: as there.
    Returns:
        dx (..., C) (= dL/dh), db (C,) = dx summed over the rows in float64, in row order.
    """
    check_bias_gelu_backward(dy, h, saved, approximate)
    dx = gelu_backward(dy, h, saved, approximate)         # (..., C)
    C = h.shape[-1]
    rows = dx.reshape(math.prod(h.shape[:-1]), C)         # (N, C)
    db = np.add.reduce(rows, axis=0, dtype=np.float64)    # row by row (axis 0: not pairwise)
    return dx, db.astype(h.dtype)
