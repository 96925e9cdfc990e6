"""LayerNorm and RMSNorm over the trailing dims `normalized_shape`, forward and backward.

Re-exported as `F.layer_norm` and `F.rms_norm` (torch.nn.functional's names and arguments). The
trailing dims are flattened into one dim D, so both normalise over all of normalized_shape at
once, as PyTorch does, and the row kernels (`layer_norm_forward` / `_backward`, Cython twins when
built) only ever see (..., D).

References: LayerNorm, Ba, Kiros & Hinton 2016 (arXiv 1607.06450); RMSNorm, Zhang & Sennrich
2019 (arXiv 1910.07467).
"""
import numpy as np

from minitx import backend
from minitx.autograd import Function


class _LayerNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = backend.kernel("layer_norm_forward")(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = backend.kernel("layer_norm_backward")(g, x, weight, mean, rstd)
        return dx, dw, (db if ctx.has_bias else None), None


def _flatten_normalized(input, normalized_shape, *params):
    """View the trailing dims named by normalized_shape as one dim D (and params as (D,)).

    Returns:
        (input (..., D), params each (D,) or None, the input's shape to restore, or None when
        normalized_shape is a single dim and nothing was reshaped).
    """
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or input.ndim < k or tuple(input.shape[-k:]) != shape:
        raise ValueError(f"normalized_shape {shape} must be the trailing dims of the input, whose "
                         f"shape is {tuple(input.shape)}")
    for p in params:
        if p is not None and tuple(p.shape) != shape:
            raise ValueError(f"weight/bias of shape {tuple(p.shape)}; normalized_shape is {shape}")
    if k == 1:
        return input, params, None
    D = int(np.prod(shape))
    flat = tuple(None if p is None else p.reshape(D) for p in params)
    return input.reshape(tuple(input.shape[:-k]) + (D,)), flat, tuple(input.shape)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """LayerNorm (Ba et al. 2016) over the trailing dims normalized_shape:
    (x - mean) / sqrt(var + eps) * w + b, mean and var over all those dims together (as torch).

    Args:
        input: (..., *normalized_shape); normalized_shape: int or tuple of the trailing dims;
        weight, bias: normalized_shape or None.
    Returns:
        input's shape.
    """
    x, (w, b), restore = _flatten_normalized(input, normalized_shape, weight, bias)
    y = _LayerNorm.apply(x, w, b, eps)                                     # (..., D)
    return y if restore is None else y.reshape(restore)


class _RMSNorm(Function):
    """y = x / sqrt(mean(x^2) + eps) * w (Zhang & Sennrich 2019, eq. 4); the row kernels
    rms_norm_forward / _backward are in minitx/kernels/fused_act.py (Cython twins when built)."""
    @staticmethod
    def forward(ctx, x, weight, eps):
        y, rrms = backend.kernel("rms_norm_forward")(x, weight, eps)       # (..., C), (...,)
        ctx.save_for_backward(x, weight, rrms)
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, rrms = ctx.saved_tensors
        dx, dw = backend.kernel("rms_norm_backward")(np.asarray(g, dtype=x.dtype), x, weight,
                                                     rrms)
        return dx, (dw if ctx.needs_input_grad[1] else None), None


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """RMSNorm over the trailing dims normalized_shape: x / sqrt(mean(x^2) + eps) * weight.

    Args:
        input: (..., *normalized_shape); weight: normalized_shape or None.
        eps: None means the input dtype's machine epsilon (np.finfo), as torch.
    Returns:
        input's shape.
    """
    eps = float(np.finfo(input.dtype).eps) if eps is None else eps
    x, (w,), restore = _flatten_normalized(input, normalized_shape, weight)
    y = _RMSNorm.apply(x, w, eps)                                          # (..., D)
    return y if restore is None else y.reshape(restore)
