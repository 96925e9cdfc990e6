"""Residual add + LayerNorm / RMSNorm fused: the NumPy twins of `add_layer_norm_forward` /
`add_layer_norm_backward` (minitx_c/fused.pyx) and `add_rms_norm_forward` /
`add_rms_norm_backward` (minitx_c/fused_act.pyx).

A pre-norm block does `s = x + r` (the residual stream) and then `y = LayerNorm(s)`; the fused
kernel makes both in one pass over each row (the C row loop writes s and sums it while the row is
in cache), and the backward adds the gradient that reaches s from the residual path to
LayerNorm's dx in the same row loop:
    forward:  s = x + r,  y = LayerNorm(s) (minitx/kernels/fused.py, layer_norm_forward)
    backward: dx = dr = LayerNorm's ds(dy) + ds_residual,  dweight, dbias as LayerNorm's
and the same with RMSNorm (minitx/kernels/fused_act.py, rms_norm_forward / _backward).
"""
import numpy as np

from minitx.kernels.fused import (check_float, check_layer_norm_backward,
                                  check_layer_norm_forward, layer_norm_backward,
                                  layer_norm_forward)
from minitx.kernels.fused_act import (check_rms_norm_backward, check_rms_norm_forward,
                                      rms_norm_backward, rms_norm_forward)


def _check_like(name, a, x):
    check_float(name, a)
    if a.shape != x.shape or a.dtype != x.dtype:
        raise ValueError(f"{name} {a.shape} {a.dtype} must match x {x.shape} {x.dtype}")


def check_add_layer_norm_forward(x, residual, weight, bias, eps):
    """Validate add_layer_norm_forward's arguments; returns eps as a float."""
    eps = check_layer_norm_forward(x, weight, bias, eps)
    _check_like("residual", residual, x)
    return eps


def check_add_layer_norm_backward(dy, ds, s, weight, mean, rstd):
    """Validate add_layer_norm_backward's arguments (ds may be None: no gradient reaches s)."""
    check_layer_norm_backward(dy, s, weight, mean, rstd)
    if ds is not None:
        _check_like("ds", ds, s)


def add_layer_norm_forward(x, residual, weight, bias, eps):
    """s = x + residual and LayerNorm(s) over the last dim.

    Args:
        x, residual: (..., C) float32/float64 of one dtype; weight, bias: (C,) or None; eps.
    Returns:
        s (..., C), y (..., C), mean (...,), rstd (...,) (layer_norm_forward's of s).
    """
    eps = check_add_layer_norm_forward(x, residual, weight, bias, eps)
    s = np.add(x, residual)                               # (..., C) the residual stream
    y, mean, rstd = layer_norm_forward(s, weight, bias, eps)
    return s, y, mean, rstd


def add_layer_norm_backward(dy, ds, s, weight, mean, rstd):
    """Gradients of add_layer_norm_forward.

    Args:
        dy: (..., C) dL/dy; ds: (..., C) dL/ds from s's other uses, or None; s, weight, mean,
        rstd: as the forward returned / took.
    Returns:
        dx (..., C) (= dL/dresidual), dweight (C,) or None, dbias (C,).
    """
    check_add_layer_norm_backward(dy, ds, s, weight, mean, rstd)
    dx, dweight, dbias = layer_norm_backward(dy, s, weight, mean, rstd)
    if ds is not None:
        dx = np.add(dx, ds)                               # one rounding, as the C row loop
    return dx, dweight, dbias


def check_add_rms_norm_forward(x, residual, weight, eps):
    """Validate add_rms_norm_forward's arguments; returns eps as a float."""
    eps = check_rms_norm_forward(x, weight, eps)
    _check_like("residual", residual, x)
    return eps


def check_add_rms_norm_backward(dy, ds, s, weight, rrms):
    """Validate add_rms_norm_backward's arguments (ds may be None)."""
    check_rms_norm_backward(dy, s, weight, rrms)
    if ds is not None:
        _check_like("ds", ds, s)


def add_rms_norm_forward(x, residual, weight, eps):
    """s = x + residual and RMSNorm(s) over the last dim.

    Args:
        x, residual: (..., C) float32/float64 of one dtype; weight: (C,) or None; eps: >= 0.
    Returns:
        s (..., C), y (..., C), rrms (...,) (rms_norm_forward's of s).
    """
    eps = check_add_rms_norm_forward(x, residual, weight, eps)
    s = np.add(x, residual)                               # (..., C) the residual stream
    y, rrms = rms_norm_forward(s, weight, eps)
    return s, y, rrms


def add_rms_norm_backward(dy, ds, s, weight, rrms):
    """Gradients of add_rms_norm_forward.

    Args:
        dy: (..., C); ds: (..., C) or None; s, weight, rrms: as the forward returned / took.
    Returns:
        dx (..., C) (= dL/dresidual), dweight (C,) or None.
    """
    check_add_rms_norm_backward(dy, ds, s, weight, rrms)
    dx, dweight = rms_norm_backward(dy, s, weight, rrms)
    if ds is not None:
        dx = np.add(dx, ds)                               # one rounding, as the C row loop
    return dx, dweight
