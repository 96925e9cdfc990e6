"""`QuantLinear`: a Linear layer whose weight lives in packed low-bit form (llama2.c's idea).

    y = x W_hat^T + b,     W_hat = dequantize(packed codes, scales)

The float weight is never kept: resident weight memory is the packed bytes. Two ways to compute:
  - symmetric int8 / int4 (per channel, or groups that divide in_features) run on the weight-only
    kernels `linear_w8` / `linear_w4` of `minitx.kernels.int8` through `minitx.backend.kernel`,
    which pick the Cython twin when it is built (matrix-vector path for generation);
  - every other scheme (asymmetric, int3/int2, NF4, FP4, binary, PB-LLM) dequantizes on the fly
    with NumPy and calls the float matmul: correct everywhere, memory-light, not fast.
The weight is frozen (no gradient); gradients still flow to the input and to the bias, so a
quantized model can be fine-tuned around (see `minitx.quant.compensate`).
"""
import numpy as np

from minitx import backend
from minitx.autograd import Function
from minitx.nn.modules import Linear, Module, ModuleList, Parameter
from minitx.quant import quantize
from minitx.quant.integer import IntQuantized
from minitx.quant.qtensor import QuantizedTensor


def kernel_plan(qw):
    """("linear_w8" | "linear_w4", codes, scales, group_size) if `qw` fits a weight-only kernel
    that is registered in the backend, else None."""
    if not isinstance(qw, IntQuantized) or not qw.meta["symmetric"] or len(qw.shape) != 2:
        return None
    m = qw.meta
    N, K = qw.shape
    if m["granularity"] == "tensor" or m["bits"] not in (4, 8):
        return None
    group = None if m["granularity"] == "channel" else m["group_size"]
    if group is not None and K % group:
        return None
    name = "linear_w8" if m["bits"] == 8 else "linear_w4"
    if name not in backend.TWINS or (m["bits"] == 4 and (K % 2 or (group or 2) % 2)):
        return None
    scales = qw.arrays["scale"]
    return name, qw.arrays["codes"], scales[:, 0] if group is None else scales, group


class _QuantLinearFn(Function):
    """y = x W_hat^T + b with a frozen quantized W; gradients for x and b only."""

    @staticmethod
    def forward(ctx, x, layer, bias):
        ctx.layer, ctx.has_bias = layer, bias is not None
        return layer.compute(x)

    @staticmethod
    def backward(ctx, g):                                     # g (..., N)
        W = ctx.layer.weight_float()                          # (N, K), dequantized transiently
        gx = (g @ W).astype(g.dtype)                          # (..., K)
        gb = g.reshape(-1, g.shape[-1]).sum(axis=0) if ctx.has_bias else None
        return gx, None, gb


class QuantLinear(Module):
    """Linear layer with a packed quantized weight.

    Args:
        qweight: QuantizedTensor of shape (out_features, in_features).
        bias: optional float array (out_features,), kept in float32 (trainable flag off).
    """

    def __init__(self, qweight, bias=None):
        super().__init__()
        if not isinstance(qweight, QuantizedTensor) or len(qweight.shape) != 2:
            raise TypeError(f"qweight must be a 2-D QuantizedTensor, got {qweight!r}")
        self.out_features, self.in_features = qweight.shape
        self.qweight = qweight
        self.bias = None if bias is None else Parameter(np.asarray(bias, np.float32),
                                                        requires_grad=False)
        self._plan = kernel_plan(qweight)

    @classmethod
    def from_linear(cls, linear, scheme="int8", **kwargs):
        """Quantize an `nn.Linear` with `minitx.quant.quantize(weight, scheme, **kwargs)`."""
        qw = quantize(linear.weight.data, scheme, **kwargs)
        return cls(qw, None if linear.bias is None else linear.bias.data)

    @property
    def weight_nbytes(self):
        """Resident bytes of the quantized weight (codes and scales; bias not included)."""
        return self.qweight.nbytes

    def weight_float(self):
        """The dequantized weight W_hat, float32 (out_features, in_features)."""
        return self.qweight.dequantize()

    def compute(self, x):
        """y = x W_hat^T + b on ndarrays: x (..., K) float32 -> (..., N) float32."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantLinear expects {self.in_features} input features, got input "
                             f"shape {x.shape}")
        b = None if self.bias is None else self.bias.data
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._plan is not None:
            name, codes, scales, group = self._plan
            return backend.kernel(name)(x, codes, scales, group, b)
        y = x @ self.weight_float().T                                  # (..., N)
        return y if b is None else y + b

    def forward(self, x):
        return _QuantLinearFn.apply(x, self, self.bias)

    def __repr__(self):
        return (f"QuantLinear({self.in_features}, {self.out_features}, "
                f"scheme={self.qweight.scheme!r}, bits_per_weight="
                f"{self.qweight.bits_per_weight:.3f})")


def linear_layers(model, skip=()):
    """Names of the model's `nn.Linear` modules, except those whose name contains any of `skip`."""
    return [name for name, m in model.named_modules()
            if isinstance(m, Linear) and not any(s in name for s in skip)]


def replace_module(model, name, new):
    """Swap the sub-module at dotted `name` for `new` (ModuleList entries included)."""
    parent_name, _, child = name.rpartition(".")
    parent = dict(model.named_modules())[parent_name]
    setattr(parent, child, new)
    if isinstance(parent, ModuleList):
        parent._list[int(child)] = new


def quantize_model(model, scheme="int8", skip=(), per_layer=None, **kwargs):
    """Replace Linear layers of `model` (in place) by QuantLinear.

    Args:
        model: a Module (e.g. GPT).
        scheme: default scheme for every Linear; kwargs go to `quantize`.
        skip: substrings of layer names to leave in float32.
        per_layer: optional dict name -> scheme (or None to keep float) overriding the default,
            for mixed precision.
    Returns:
        dict name -> scheme name actually used, for every Linear.
    """
    used = {}
    for name in linear_layers(model):
        lin = dict(model.named_modules())[name]
        sch = None if any(s in name for s in skip) else scheme
        if per_layer is not None and name in per_layer:
            sch = per_layer[name]
        if sch is None:
            used[name] = "float32"
            continue
        try:
            q = QuantLinear.from_linear(lin, sch, **kwargs)
        except ValueError as e:                  # name the layer: "blocks.3.mlp.fc: weights ..."
            raise ValueError(f"{name}: {e}") from None
        replace_module(model, name, q)
        used[name] = q.qweight.scheme
    return used


def weight_bytes(model):
    """Resident bytes of all weights: packed QuantLinear weights + every float parameter."""
    total = sum(p.data.nbytes for p in model.parameters())
    total += sum(m.weight_nbytes for m in model.modules() if isinstance(m, QuantLinear))
    return total
