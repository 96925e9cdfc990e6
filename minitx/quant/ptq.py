"""Post-training quantization (PTQ): calibrate, set ranges, quantize weights (and activations).

Nagel et al. 2021 (arXiv 2106.08295), sections 3-4; Gholami et al. 2021 (arXiv 2103.13630):
  1. calibration: run a few batches through the float model and record, at every Linear's input,
     the statistics the quantizers need: min / max, a sample of values (for percentile and MSE
     ranges) and sum_n x_nj^2, the diagonal of H = 2 X^T X (PB-LLM's Hessian saliency);
  2. weight-only PTQ: every Linear becomes a QuantLinear (int8, int4, nf4, binary, pbllm, ...);
  3. weight + activation PTQ (W8A8): the input of every Linear is quantized per tensor to 8 bits
     with a range from calibration (min-max, percentile or MSE), the weight per channel, and the
     product is accumulated in integers on the int8 kernel `matmul_int8`:
     y = s_x s_w[n] sum_k (x_int - z_x) w_int[n, k] + b;
  4. per-layer sensitivity: quantize ONE layer at a time and measure the loss increase; mixed
     precision keeps the most sensitive layers in higher precision.
"""
import copy

import numpy as np

import minitx
from minitx import backend
from minitx.autograd import Function
from minitx.nn.modules import Linear, Module
from minitx.quant.integer import quantize_codes, scale_zero
from minitx.quant.linear import QuantLinear, linear_layers, quantize_model, replace_module
from minitx.quant.ranges import find_range

MAX_SAMPLES = 20000       # values kept per layer for percentile / MSE range search


class Observer:
    """Statistics of one layer's input over the calibration batches."""

    def __init__(self, in_features, rng):
        self.min, self.max = np.inf, -np.inf
        self.sq_sum = np.zeros(in_features, np.float64)     # sum_n x_nj^2   (C,)
        self.count = 0
        self.samples = []
        self._rng = rng

    def update(self, x):
        X = x.reshape(-1, x.shape[-1])                       # (N, C)
        self.min = min(self.min, float(X.min()))
        self.max = max(self.max, float(X.max()))
        self.sq_sum += (X.astype(np.float64) ** 2).sum(axis=0)
        self.count += X.shape[0]
        flat = X.reshape(-1)
        k = min(flat.size, MAX_SAMPLES)
        self.samples.append(self._rng.choice(flat, k, replace=False))

    @property
    def hessian_diag(self):
        """diag(2 X^T X) over all calibration rows, (C,)."""
        return 2.0 * self.sq_sum

    def range(self, method="minmax", bits=8, symmetric=False, percentile=99.99):
        """Clipping range (lo, hi) for this input, as floats."""
        if method == "minmax":
            return (-max(-self.min, self.max), max(-self.min, self.max)) if symmetric else \
                (self.min, self.max)
        S = np.concatenate(self.samples)[None, :]
        lo, hi = find_range(S, method, bits=bits, symmetric=symmetric, percentile=percentile)
        return float(lo[0, 0]), float(hi[0, 0])


def calibrate(model, batches, seed=0):
    """Run `batches` (iterable of (B, T) token arrays, or (inputs, targets) pairs) through `model` and observe every Linear
    and QuantLinear input.

    Returns:
        dict layer name -> Observer.
    """
    rng = np.random.default_rng(seed)
    observers = {}
    for name, m in model.named_modules():
        if isinstance(m, (Linear, QuantLinear)):
            obs = observers[name] = Observer(m.in_features, rng)
            original = type(m).forward

            def hooked(x, _m=m, _obs=obs, _f=original):
                _obs.update(x.data if hasattr(x, "data") else np.asarray(x))
                return _f(_m, x)
            object.__setattr__(m, "forward", hooked)
    try:
        with minitx.no_grad():
            for idx in batches:
                model(idx[0] if isinstance(idx, tuple) else idx)
    finally:
        for name in observers:
            m = dict(model.named_modules())[name]
            del m.__dict__["forward"]
    return observers


def quantize_weights(model, scheme, observers=None, skip=(), **kwargs):
    """Weight-only PTQ of a COPY of `model`. For scheme "pbllm" with saliency="hessian" the
    per-layer H diagonal comes from `observers` (see `calibrate`).

    Returns:
        (quantized model, dict layer -> scheme used).
    """
    qmodel = copy.deepcopy(model)
    if scheme == "pbllm" and kwargs.get("saliency") == "hessian":
        if observers is None:
            raise ValueError("pbllm with saliency='hessian' needs observers from calibrate()")
        used = {}
        for name in linear_layers(qmodel, skip):
            lin = dict(qmodel.named_modules())[name]
            ql = QuantLinear.from_linear(lin, scheme, hessian_diag=observers[name].hessian_diag,
                                         **kwargs)
            replace_module(qmodel, name, ql)
            used[name] = ql.qweight.scheme
        return qmodel, used
    used = quantize_model(qmodel, scheme, skip=skip, **kwargs)
    return qmodel, used


class _W8A8Fn(Function):
    """Integer-arithmetic linear; gradient for x by the straight-through estimator (inference
    layer: used without grad in practice)."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return layer.compute(x)

    @staticmethod
    def backward(ctx, g):
        return (g @ ctx.layer.weight_float()).astype(g.dtype), None


class W8A8Linear(Module):
    """Linear layer with 8-bit per-channel symmetric weights and 8-bit per-tensor activations.

    Args:
        linear: the float nn.Linear.
        act_range: (lo, hi) clipping range of the input, from calibration.
        act_symmetric: symmetric (z = 0) or asymmetric activation grid.
    """

    def __init__(self, linear, act_range, act_symmetric=False, bits=8):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        W = linear.weight.data.astype(np.float32)                       # (N, K)
        a = np.abs(W).max(axis=1)
        self.w_scale, _ = scale_zero(-a, a, bits, True)                 # (N,)
        self.w_int = quantize_codes(W, self.w_scale[:, None], 0, bits, True).astype(np.int8)
        self.w_int_t = np.ascontiguousarray(self.w_int.T)                   # (K, N) for the kernel
        self.w_row_sum = self.w_int.astype(np.int64).sum(axis=1)            # (N,)
        self.x_scale, self.x_zero = scale_zero(np.float32(act_range[0]), np.float32(act_range[1]),
                                               bits, act_symmetric)
        self.bits, self.act_symmetric = bits, act_symmetric
        self.bias_data = None if linear.bias is None else linear.bias.data.astype(np.float32)

    def weight_float(self):
        return self.w_int.astype(np.float32) * self.w_scale[:, None]

    def compute(self, x):
        """x (..., K) float -> (..., N): quantize x, integer matmul, rescale.

        The activation codes x_int are unsigned [0, 255] (asymmetric) or signed; to multiply
        them on the int8 x int8 -> int32 kernel, shift them into int8 by c (128 or 0):
            sum_k (x_int - z) w = sum_k (x_int - c) w + (c - z) sum_k w,
        where sum_k w[n, k] is precomputed per output channel (the zero-point term of
        Nagel et al. 2021, eq. 6, folded into a per-channel constant).
        """
        lead = x.shape[:-1]
        x_int = quantize_codes(x.reshape(-1, x.shape[-1]), self.x_scale, self.x_zero, self.bits,
                               self.act_symmetric)                            # (M, K) int32
        c = 0 if self.act_symmetric else 128
        acc = backend.kernel("matmul_int8")((x_int - c).astype(np.int8), self.w_int_t)  # (M, N)
        acc = acc.astype(np.int64) + (c - int(self.x_zero)) * self.w_row_sum           # exact
        y = (acc * (np.float64(self.x_scale) * self.w_scale)).astype(np.float32)
        y = y.reshape(lead + (self.out_features,))
        return y if self.bias_data is None else y + self.bias_data

    def forward(self, x):
        return _W8A8Fn.apply(x, self)


def quantize_w8a8(model, observers, method="minmax", act_symmetric=False, skip=(),
                  percentile=99.99):
    """W8A8 PTQ of a copy of `model` with activation ranges from `observers`.

    Returns:
        quantized model.
    """
    qmodel = copy.deepcopy(model)
    for name in linear_layers(qmodel, skip):
        lin = dict(qmodel.named_modules())[name]
        rng = observers[name].range(method, 8, act_symmetric, percentile)
        replace_module(qmodel, name, W8A8Linear(lin, rng, act_symmetric))
    return qmodel


def layer_sensitivity(model, evaluate, scheme, **kwargs):
    """Loss increase when only ONE Linear is quantized with `scheme`, for each Linear.

    Args:
        model: float model.
        evaluate: callable model -> validation loss (float).
        scheme, kwargs: passed to `minitx.quant.quantize`.
    Returns:
        dict layer name -> loss(quantized layer) - loss(float), sorted most sensitive first.
    """
    base = evaluate(model)
    out = {}
    for name in linear_layers(model):
        qmodel = copy.deepcopy(model)
        quantize_model(qmodel, scheme, per_layer={n: (scheme if n == name else None)
                                                  for n in linear_layers(model)}, **kwargs)
        out[name] = evaluate(qmodel) - base
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def mixed_precision_plan(sensitivity, low, high, n_high):
    """Per-layer schemes: the `n_high` most sensitive layers get `high` (None = float32), the
    rest `low`. Returns dict name -> scheme for `quantize_model(per_layer=...)`."""
    names = list(sensitivity)                      # already most sensitive first
    return {n: (high if i < n_high else low) for i, n in enumerate(names)}
