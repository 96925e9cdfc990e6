"""MSG's growth masks as minitx modules: a masked normalisation and a masked Linear.

Every growth event k owns one scalar mask value m_k that ramps from 0 to 1 (Yao et al. 2023,
arXiv 2305.02869, section 3). A masked module holds, per coordinate, the id of the event that
created it (0 = "was there before any growth", whose value is always 1), so a coordinate's mask
is values[ids] and events compose whatever their order.

Masked normalisation (the n_embd growth). With new residual coordinates present, LayerNorm's
mean and variance and RMSNorm's RMS would change. MSG's code (cofe-ai/MSG, `LayerNormEx`)
computes the statistics as mask-weighted averages and multiplies the output by the mask:

    a_i   = m_i / sum_j m_j                               weights over the C' coordinates
    mu    = sum_i a_i x_i          (LayerNorm only; RMSNorm: mu = 0)
    s2    = sum_i a_i (x_i - mu)^2
    y_i   = m_i * ((x_i - mu) / sqrt(s2 + eps) * g_i + b_i)

With m = 0 on the new coordinates the statistics are those of the old C coordinates, whatever
the residual stream holds there, and every new output coordinate is 0, so the Linears that read
the norm see exactly the old input; with m = 1 it is the plain norm. (sum_j m_j is a constant of
the forward, as in MSG's code: it carries no gradient.)

Masked Linear. y = x (W * M)^T + b * M_out with M = M_out[:, None] * M_in[None, :]. A mask on the
input columns of attn.proj / o_proj silences new heads, on the input columns of mlp.proj /
down_proj new FFN units, and on all outputs of those two Linears a whole new block (its residual
branches add exact zeros). Masking the weight columns is the same product as masking the
activations, (W * M_in) h = W (M_in * h), with the same gradients.
"""
import numpy as np

from minitx.autograd import Function
from minitx.nn import functional as F
from minitx.nn.modules import LayerNorm, Linear, Module, RMSNorm


class MaskValues:
    """The current value of each growth event's mask: values[0] = 1 (old structure)."""

    def __init__(self):
        self.values = np.ones(1, dtype=np.float64)

    def new_event(self, value=0.0):
        """Register a growth event with mask `value`; returns its id."""
        self.values = np.append(self.values, float(value))
        return len(self.values) - 1

    def __getitem__(self, ids):
        return self.values[np.asarray(ids)]


class _MaskedNorm(Function):
    """Mask-weighted LayerNorm (center=True) or RMSNorm (center=False), forward and backward.

    x (..., C), m (C,) in [0, 1], g (C,), b (C,) or None.  Backward (a = m / sum m, r = 1/sqrt(s2+eps),
    xhat = (x - mu) r, gh = dL/dxhat = dL/dy * m * g):
        dx = r * (gh - [center] a sum(gh) - a xhat sum(gh xhat))
    """
    @staticmethod
    def forward(ctx, x, weight, bias, mask, eps, center):
        a = (mask / mask.sum()).astype(x.dtype)                              # (C,)
        mu = (x * a).sum(axis=-1, keepdims=True) if center else 0.0          # (..., 1)
        xc = x - mu                                                          # (..., C)
        r = 1.0 / np.sqrt((xc * xc * a).sum(axis=-1, keepdims=True) + eps)   # (..., 1)
        xhat = xc * r
        m = mask.astype(x.dtype)
        ctx.save_for_backward(xhat, r, a, m, weight)
        ctx.center, ctx.has_bias = center, bias is not None
        y = xhat * weight if weight is not None else xhat
        if bias is not None:
            y = y + bias
        return y * m

    @staticmethod
    def backward(ctx, g):
        xhat, r, a, m, weight = ctx.saved_tensors
        gm = g * m                                                           # dL/d(pre-mask y)
        gh = gm * weight if weight is not None else gm                       # dL/dxhat
        inner = gh - a * xhat * (gh * xhat).sum(axis=-1, keepdims=True)
        if ctx.center:
            inner = inner - a * gh.sum(axis=-1, keepdims=True)
        dx = r * inner
        flat = lambda t: t.reshape(-1, t.shape[-1])                          # noqa: E731
        dw = flat(gm * xhat).sum(axis=0) if weight is not None else None
        db = flat(gm).sum(axis=0) if ctx.has_bias else None
        return dx, dw, db, None, None, None


class MaskedNorm(Module):
    """A LayerNorm or RMSNorm whose statistics and output follow the residual mask.

    Shares the wrapped norm's Parameters (same names), so folding back loses nothing.
    """

    def __init__(self, norm, ids, values):
        super().__init__()
        self.plain_cls = type(norm)
        self.center = isinstance(norm, LayerNorm)
        self.normalized_shape, self.eps = norm.normalized_shape, norm.eps
        self.weight = norm.weight
        if self.center:
            self.bias = norm.bias
        self.ids, self.values = np.asarray(ids, dtype=np.int64), values

    def forward(self, x):                                                     # (..., C)
        bias = self.bias if self.center else None
        return _MaskedNorm.apply(x, self.weight, bias, self.values[self.ids], self.eps,
                                 self.center)

    def fold(self):
        """The plain norm with the same Parameters."""
        C = self.normalized_shape[0]
        if self.center:
            plain = LayerNorm(C, eps=self.eps, bias=self.bias is not None)
            plain.weight, plain.bias = self.weight, self.bias
        else:
            plain = RMSNorm(C, eps=self.eps)
            plain.weight = self.weight
        return plain


class MaskedLinear(Module):
    """y = x (W * M)^T + b * M_out, M = M_out[:, None] * M_in[None, :].

    Args:
        linear: the Linear whose Parameters are shared.
        in_ids, out_ids: (in_features,), (out_features,) event ids, or None for "all old".
        values: the model's MaskValues.
    """

    def __init__(self, linear, in_ids, out_ids, values):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.in_ids = None if in_ids is None else np.asarray(in_ids, dtype=np.int64)
        self.out_ids = None if out_ids is None else np.asarray(out_ids, dtype=np.int64)
        self.values = values

    def _masks(self):
        dt = self.weight.dtype
        m_in = np.ones(self.in_features, dt) if self.in_ids is None else self.values[self.in_ids]
        m_out = (np.ones(self.out_features, dt) if self.out_ids is None
                 else self.values[self.out_ids])
        return m_in.astype(dt), m_out.astype(dt)

    def forward(self, x):
        m_in, m_out = self._masks()
        w = self.weight * (m_out[:, None] * m_in[None, :])                    # (out, in)
        b = None if self.bias is None else self.bias * m_out
        return F.linear(x, w, b)

    def fold(self):
        plain = Linear.__new__(Linear)            # no fresh init: it would draw from the RNG
        Module.__init__(plain)
        plain.in_features, plain.out_features = self.in_features, self.out_features
        plain.weight, plain.bias = self.weight, self.bias
        return plain


def replace_child(parent, name, child):
    """Swap parent.<name> for `child`, keeping its place in the parameter order (which the
    optimizer and checkpoints index by)."""
    parent._modules[name] = child                 # an existing key keeps its position
    object.__setattr__(parent, name, child)


def fold_masks(model):
    """Replace every masked module by its plain twin (call when all masks are 1).

    Returns:
        the model, now a plain GPT of its config (no mask state left).
    """
    for _, module in list(model.named_modules()):
        for name, child in list(module._modules.items()):
            if isinstance(child, (MaskedNorm, MaskedLinear)):
                replace_child(module, name, child.fold())
    if "growth_masks" in model.__dict__:
        object.__delattr__(model, "growth_masks")
    return model


def has_masks(model):
    return any(isinstance(m, (MaskedNorm, MaskedLinear)) for m in model.modules())
