"""Neural-network functions with hand-written backward passes (`import minitx.nn.functional as F`).

Each fused op is a `Function` whose forward and backward stand together; names and arguments
follow `torch.nn.functional`. Row-wise and elementwise kernels (softmax, GELU, SiLU, the embedding
backward; LayerNorm and RMSNorm in normalization.py) dispatch through
`minitx.backend` to the Cython twins when they are built.

References: GELU, Hendrycks & Gimpel 2016 (arXiv 1606.08415); RMSNorm, Zhang & Sennrich 2019
(arXiv 1910.07467); SiLU/Swish, Ramachandran et al. 2017 (arXiv 1710.05941); dropout,
Srivastava et al. 2014 (JMLR 15).
"""

import numpy as np

from minitx import backend
from minitx.autograd import Function, _as_array, is_grad_enabled
from minitx import random as _random


# ============================== linear and embedding =========================================
class _Linear(Function):
    """y = x W^T + b, with x (..., in), W (out, in), b (out,)."""
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = backend.matmul(x, weight.T)                           # (..., out)
        if bias is not None:
            y += bias
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])                           # (N, out)
        gx = backend.matmul(g, weight) if ctx.needs_input_grad[0] else None     # (..., in)
        gw = backend.matmul(g2.T, x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        gb = g2.sum(axis=0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def linear(input, weight, bias=None):
    """Affine map y = input @ weight.T + bias.

    Args:
        input: (..., in_features); weight: (out_features, in_features); bias: (out_features,).
    Returns:
        (..., out_features).
    """
    if input.shape[-1] != weight.shape[-1]:
        raise ValueError(f"linear: input has {input.shape[-1]} features, weight expects "
                         f"{weight.shape[-1]} (weight shape {weight.shape})")
    return _Linear.apply(input, weight, bias)


class _Embedding(Function):
    @staticmethod
    def forward(ctx, idx, weight):
        ctx.idx, ctx.shape = idx, weight.shape
        return weight[idx]                                        # (..., D)

    @staticmethod
    def backward(ctx, g):                         # dW[v] = sum of g rows with id v, in order
        return None, backend.kernel("embedding_backward")(ctx.idx, g, ctx.shape[0])


def embedding(input, weight):
    """Look up rows of `weight` (V, D) at integer ids `input` (...). Returns (..., D)."""
    idx = _as_array(input)
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"embedding ids must be integers, got dtype {idx.dtype}")
    V = weight.shape[0]
    if idx.size and (idx.min() < 0 or idx.max() >= V):
        raise ValueError(f"embedding id out of range: ids span [{idx.min()}, {idx.max()}] but "
                         f"the table has {V} rows")
    return _Embedding.apply(idx, weight)


# ============================== softmax family ===============================================
def _softmax_array(x, dim):
    if dim in (-1, x.ndim - 1):
        return backend.kernel("softmax_lastdim")(x)
    return np.moveaxis(backend.kernel("softmax_lastdim")(np.moveaxis(x, dim, -1)), -1, dim)


class _Softmax(Function):
    @staticmethod
    def forward(ctx, x, dim):
        y = _softmax_array(x, dim)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors                  # dx = y * (g - sum(g * y))
        return y * (g - (g * y).sum(axis=ctx.dim, keepdims=True))


def softmax(input, dim=-1):
    """exp(x - max) / sum(exp(x - max)) along `dim`; same shape as input."""
    return _Softmax.apply(input, dim=dim)


def _log_softmax_array(x, dim):
    m = x.max(axis=dim, keepdims=True)
    with np.errstate(invalid="ignore"):          # an all -inf row gives NaN, as in torch
        shifted = x - m
    return shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))


class _LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, dim):
        y = _log_softmax_array(x, dim)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors                  # dx = g - softmax * sum(g)
        return g - np.exp(y) * g.sum(axis=ctx.dim, keepdims=True)


def log_softmax(input, dim=-1):
    """x - logsumexp(x) along `dim`, computed stably."""
    return _LogSoftmax.apply(input, dim=dim)


class _CrossEntropy(Function):
    """Fused log_softmax + negative log likelihood over class dim 1 of (N, C) logits.

    The kernel `cross_entropy_fused` (minitx/kernels/fused_ops.py) returns each row's loss and,
    from the same pass, its gradient softmax - onehot; backward only scales that gradient."""
    @staticmethod
    def forward(ctx, logits, target, ignore_index, reduction):
        need_grad = ctx.needs_input_grad[0] and is_grad_enabled()
        nll, dlogits = backend.kernel("cross_entropy_fused")(logits, target, ignore_index,
                                                             need_grad=need_grad)  # (N,), (N, C)
        n_kept = int((target != ignore_index).sum())
        count = max(n_kept, 1)
        ctx.save_for_backward(dlogits)
        ctx.reduction, ctx.count = reduction, count
        if reduction == "none":
            return nll
        total = nll.sum(dtype=np.float64)
        out = total / count if reduction == "mean" else total
        if n_kept == 0 and reduction == "mean":
            out = np.nan                                                     # as PyTorch
        return np.asarray(out, dtype=logits.dtype)

    @staticmethod
    def backward(ctx, g):
        (dlogits,) = ctx.saved_tensors                        # softmax - onehot, (N, C)
        if ctx.reduction == "none":
            return dlogits * g[:, None], None, None, None
        return dlogits * (g / ctx.count if ctx.reduction == "mean" else g), None, None, None


def cross_entropy(input, target, ignore_index=-100, reduction="mean"):
    """Cross-entropy between logits and integer class targets (torch.nn.functional.cross_entropy).

    Args:
        input: (N, C) or (C,) logits, or (N, C, d1, ...) with classes on dim 1.
        target: (N,) / () / (N, d1, ...) integer class ids in [0, C), or `ignore_index`.
        reduction: "mean" (over non-ignored targets), "sum" or "none".
    Returns:
        scalar Tensor, or (N, ...) for reduction="none" (() for 1-D input, as torch).
    """
    t = _as_array(target)
    if not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"cross_entropy target must be integer class ids, got {t.dtype}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if input.ndim == 1:
        out = cross_entropy(input.reshape(1, -1), t.reshape(1), ignore_index, reduction)
        return out.reshape(()) if reduction == "none" else out
    if input.ndim > 2:                                      # classes on dim 1 -> last
        want = (input.shape[0],) + tuple(input.shape[2:])
        if t.shape != want:
            raise ValueError(f"cross_entropy target shape {t.shape} does not match input "
                             f"{input.shape}: expected {want}")
        perm = (0,) + tuple(range(2, input.ndim)) + (1,)
        rest = t.shape
        input, t = input.permute(perm).reshape(-1, input.shape[1]), t.reshape(-1)
        out = cross_entropy(input, t, ignore_index, reduction)
        return out.reshape(rest) if reduction == "none" else out
    if t.shape != (input.shape[0],):
        raise ValueError(f"cross_entropy target shape {t.shape} does not match input "
                         f"{input.shape}: expected ({input.shape[0]},)")
    C = input.shape[1]
    valid = t[t != ignore_index]
    if valid.size and (valid.min() < 0 or valid.max() >= C):
        raise ValueError(f"cross_entropy target out of range: ids span [{valid.min()}, "
                         f"{valid.max()}] but there are {C} classes")
    return _CrossEntropy.apply(input, t, ignore_index, reduction)


# ============================== normalisation ================================================
from minitx.nn import normalization as _normalization  # noqa: E402
layer_norm, rms_norm = _normalization.layer_norm, _normalization.rms_norm      # F.layer_norm, ...


# ============================== activations ==================================================
class _Gelu(Function):
    """GELU; the kernels gelu_forward / gelu_backward (minitx/kernels/fused_act.py) hold the
    formulas: the forward returns Phi(x) (or tanh u) for the backward, which is one pass."""
    @staticmethod
    def forward(ctx, x, approximate):
        ctx.approximate = approximate
        y, saved = backend.kernel("gelu_forward")(x, approximate)          # GELU(x), Phi or tanh
        ctx.save_for_backward(x, saved)
        return y

    @staticmethod
    def backward(ctx, g):
        x, saved = ctx.saved_tensors
        return backend.kernel("gelu_backward")(np.asarray(g, dtype=x.dtype), x, saved,
                                               ctx.approximate)


def gelu(input, approximate="none"):
    """GELU(x) = x * Phi(x); approximate="tanh" uses GPT-2's tanh formula."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return _Gelu.apply(input, approximate=approximate)


class _BiasGelu(Function):
    """GELU(x + b) in one kernel pass (minitx/kernels/fused_bias.py): the same result as
    gelu(x + b), one array fewer; the backward returns dx and db = dx summed over the rows."""
    @staticmethod
    def forward(ctx, x, bias, approximate):
        ctx.approximate = approximate
        y, h, t = backend.kernel("bias_gelu_forward")(x, bias, approximate)   # h = x + b
        ctx.save_for_backward(h, t)
        return y

    @staticmethod
    def backward(ctx, g):
        h, t = ctx.saved_tensors
        return backend.kernel("bias_gelu_backward")(np.asarray(g, dtype=h.dtype), h, t,
                                                    ctx.approximate)


def bias_gelu(input, bias, approximate="none"):
    """GELU(input + bias), bias (C,) broadcast over input (..., C); fused gelu(input + bias)."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return _BiasGelu.apply(input, bias, approximate=approximate)


class _Silu(Function):
    """x sigmoid(x); the kernels silu_forward / silu_backward (minitx/kernels/fused_act.py)."""
    @staticmethod
    def forward(ctx, x):
        y, s = backend.kernel("silu_forward")(x)                            # x s, s = sigmoid(x)
        ctx.save_for_backward(x, s)
        return y

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors                                            # g s (1 + x (1 - s))
        return backend.kernel("silu_backward")(np.asarray(g, dtype=x.dtype), x, s)


def silu(input):
    """SiLU(x) = x * sigmoid(x)."""
    return _Silu.apply(input)


def relu(input):
    return input.relu()


class _Dropout(Function):
    @staticmethod
    def forward(ctx, x, mask, scale):
        ctx.mask, ctx.scale = mask, scale
        return x * mask * scale

    @staticmethod
    def backward(ctx, g):
        return g * ctx.mask * ctx.scale, None, None


def dropout(input, p=0.5, training=True, generator=None):
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout).

    Args:
        generator: numpy Generator; defaults to minitx's global one (`minitx.manual_seed`).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    rng = generator if generator is not None else _random.generator()
    mask = (rng.random(input.shape) >= p).astype(input.dtype)
    return _Dropout.apply(input, mask, np.asarray(1.0 / (1.0 - p), dtype=input.dtype))


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False, impl="naive",
                                 window=None):
    """softmax(q k^T * scale + mask) v, PyTorch's signature plus `impl` and `window`.

    See `minitx.attention.scaled_dot_product_attention` for the implementations.
    """
    from minitx.attention import scaled_dot_product_attention as sdpa
    return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                is_causal=is_causal, scale=scale, enable_gqa=enable_gqa, impl=impl,
                window=window)
