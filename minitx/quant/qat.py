"""Quantization-aware training (QAT): fine-tune with the quantizer inside the forward pass.

Nagel et al. 2021 (arXiv 2106.08295), section 4: the forward pass uses the fake-quantized weight
W_hat = s * clamp(round(W / s), q_min, q_max); round has zero gradient almost everywhere, so the
backward pass uses the straight-through estimator (STE, Bengio et al. 2013):
    dL/dW = dL/dW_hat * 1[q_min <= W / s <= q_max]       (eq. 36: identity inside the range)
  - "ste": s is recomputed from the current weights (per-channel absmax / MSE-free), not learned;
  - "lsq": Learned Step Size Quantization (Esser et al. 2019, arXiv 1902.08153): s is a parameter
    with gradient (eq. 3)
        dW_hat/ds = -v + round(v)   if q_min < v < q_max,  q_min or q_max when clipped  (v = W/s),
    scaled by g = 1 / sqrt(N_w * q_max) (section 2.2), N_w = weights per step (a row here).
Weights are quantized symmetric, per output channel. `convert` turns the trained layers into
QuantLinear with exactly the codes the forward pass used.
"""
import numpy as np

from minitx.autograd import Function
from minitx.nn import functional as F
from minitx.nn.modules import Module, Parameter
from minitx.quant.integer import IntQuantized, qrange, scale_zero
from minitx.quant.linear import QuantLinear, linear_layers, replace_module
from minitx.quant.packing import pack
from minitx.quant.ranges import mse_range

METHODS = ("ste", "lsq")


class FakeQuantSTE(Function):
    """W_hat = s * clamp(round(W / s)); straight-through gradient inside the range."""

    @staticmethod
    def forward(ctx, W, s, bits):                                   # W (N, K), s (N, 1)
        q_min, q_max = qrange(bits, True)
        v = W / s
        ctx.inside = (v >= q_min) & (v <= q_max)
        return (s * np.clip(np.round(v), q_min, q_max)).astype(W.dtype)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.inside, None, None


class LSQQuant(Function):
    """W_hat = s * clamp(round(W / s)) with a learned step s (N, 1) (Esser et al. 2019)."""

    @staticmethod
    def forward(ctx, W, s, bits):                                   # W (N, K), s (N, 1)
        q_min, q_max = qrange(bits, True)
        v = W / s
        r = np.clip(np.round(v), q_min, q_max)
        ctx.save_for_backward(v, r)
        ctx.q = (q_min, q_max)
        return (s * r).astype(W.dtype)

    @staticmethod
    def backward(ctx, g):
        v, r = ctx.saved_tensors
        q_min, q_max = ctx.q
        inside = (v >= q_min) & (v <= q_max)
        gW = g * inside
        dWhat_ds = np.where(inside, r - v, r)                        # -v + round(v), or q_min/q_max
        grad_scale = 1.0 / np.sqrt(v.shape[1] * q_max)
        gs = (g * dWhat_ds).sum(axis=1, keepdims=True) * grad_scale  # (N, 1)
        return gW, gs.astype(g.dtype), None


class QATLinear(Module):
    """A Linear whose forward uses a fake-quantized weight.

    Args:
        linear: the float nn.Linear to start from (its weight and bias are copied, trainable).
        bits: weight bits (2..8), symmetric per output channel.
        method: "ste" (absmax step recomputed each step) or "lsq" (learned step, initialised at
            the MSE-optimal per-channel step).
    """

    def __init__(self, linear, bits=4, method="lsq"):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.method = bits, method
        self.weight = Parameter(linear.weight.data.copy())
        self.bias = None if linear.bias is None else Parameter(linear.bias.data.copy())
        if method == "lsq":
            lo, hi = mse_range(self.weight.data, bits, symmetric=True)       # (N, 1)
            s, _ = scale_zero(lo, hi, bits, True)
            self.step = Parameter(s.astype(np.float32))

    def current_step(self):
        """Step s per output channel, (N, 1) float32."""
        if self.method == "lsq":
            return np.abs(self.step.data) + 1e-12
        a = np.abs(self.weight.data).max(axis=1, keepdims=True)
        return scale_zero(-a, a, self.bits, True)[0]

    def forward(self, x):
        if self.method == "lsq":
            W_hat = LSQQuant.apply(self.weight, self.step, self.bits)
        else:
            W_hat = FakeQuantSTE.apply(self.weight, self.current_step(), self.bits)
        return F.linear(x, W_hat, self.bias)

    def to_quant_linear(self):
        """The QuantLinear holding exactly the codes the fake-quant forward used."""
        s = self.current_step().astype(np.float32)                   # (N, 1)
        q_min, q_max = qrange(self.bits, True)
        q = np.clip(np.round(self.weight.data / s), q_min, q_max).astype(np.int32)   # (N, K)
        N, K = q.shape
        codes = q.astype(np.int8) if self.bits == 8 else pack(q + 2 ** (self.bits - 1), self.bits)
        meta = {"scheme": f"int{self.bits}-sym-pc-{self.method}", "bits": self.bits,
                "symmetric": True, "granularity": "channel", "rows": N, "groups": 1, "group": K,
                "group_size": None, "range_method": self.method}
        qw = IntQuantized((N, K), {"codes": codes, "scale": s}, meta)
        return QuantLinear(qw, None if self.bias is None else self.bias.data)


def prepare_qat(model, bits=4, method="lsq", skip=()):
    """Replace every Linear of `model` (in place) by a QATLinear. Returns the list of names."""
    names = linear_layers(model, skip)
    for name in names:
        replace_module(model, name, QATLinear(dict(model.named_modules())[name], bits, method))
    return names


def convert(model):
    """Replace every QATLinear of `model` (in place) by its QuantLinear. Returns the model."""
    for name, m in list(model.named_modules()):
        if isinstance(m, QATLinear):
            replace_module(model, name, m.to_quant_linear())
    return model
