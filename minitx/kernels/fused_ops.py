"""Fused training-step kernels: cross-entropy with log-softmax, the AdamW update, and RoPE.

Each function is the readable NumPy twin of the Cython kernel of the same name in
`minitx_c/fused_ops.pyx`: the same validation (the C side calls the `check_*` functions below
before releasing the GIL), the same loop over rows or elements, the same operation order.

cross_entropy_fused: the loss and its gradient from one pass over each row of logits,
    nll[r]        = logsumexp(x[r]) - x[r, t[r]]
    dlogits[r, :] = softmax(x[r]) - onehot(t[r])          (0 for a row whose target is ignored)
The gradient is computed in the forward pass, so the backward only scales it: no log-probability
array is kept, and the only (N, V) array made is the gradient itself. The twin walks the rows in
blocks of ROWS_PER_BLOCK so its temporaries stay small; the C kernel walks them one by one, and
on float32 rows with a finite max computes exp and the row sum in SIMD float32 lanes (equal to
the twin within the tests' tolerance, not bit for bit; AdamW and RoPE are bit-equal).

rope_rotate: rotary position embedding (Su et al. 2021, arXiv 2104.09864), rotate-half pairing:
    (x1, x2) = (x[..., :d/2], x[..., d/2:]),  y = (x1 cos - x2 sin, x1 sin + x2 cos)
per row t of cos, sin (T, d/2); the backward is the same call with -sin (rotation by -theta).
Each product is rounded before the sum in both twins (no fused multiply-add), so they agree bit
for bit.

adamw_step: Loshchilov & Hutter 2019 (arXiv 1711.05101), Algorithm 2, with torch.optim.AdamW's
bias correction, as one pass over each element of a parameter and its two moments; the twin is
minitx.optim.AdamW's original NumPy update, operation for operation, so both give the same bits.
"""
import math
import numbers

import numpy as np

ROWS_PER_BLOCK = 256        # rows of logits the NumPy twin handles per step (bounds temporaries)


def _check_float_array(name, a):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.float32 and a.dtype != np.float64:    # dtype equality: rejects '>f4'
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")


def check_cross_entropy(logits, target, ignore_index):
    """Raise TypeError/ValueError naming the problem unless the arguments are valid.

    Args:
        logits: (N, C) float32/float64 ndarray, C >= 1 when N >= 1.
        target: (N,) integer ndarray of class ids in [0, C) or `ignore_index`.
        ignore_index: int.
    """
    _check_float_array("logits", logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {logits.shape}")
    if not isinstance(target, np.ndarray) or target.dtype.kind not in "iu":
        kind = target.dtype if isinstance(target, np.ndarray) else type(target).__name__
        raise TypeError(f"target must be an integer ndarray, got {kind}")
    if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    N, C = logits.shape
    if target.shape != (N,):
        raise ValueError(f"target shape {target.shape} does not match logits {logits.shape}: "
                         f"expected ({N},)")
    valid = target[target != ignore_index]
    if valid.size and (valid.min() < 0 or valid.max() >= C):
        raise ValueError(f"target out of range: ids span [{valid.min()}, {valid.max()}] but "
                         f"there are {C} classes")


def cross_entropy_fused(logits, target, ignore_index=-100, need_grad=True):
    """Per-row cross-entropy and its gradient from one pass over the logits.

    Args:
        logits: (N, C) float32 or float64.
        target: (N,) integer class ids; rows with `ignore_index` give 0 loss and 0 gradient,
            even when their logits are all -inf.
        ignore_index: the target value to ignore.
        need_grad: also return d(nll[r])/d(logits[r]) (False in inference: no (N, C) array).
    Returns:
        nll (N,) logits' dtype; dlogits (N, C) = softmax - onehot, or None.
    """
    check_cross_entropy(logits, target, ignore_index)
    N, C = logits.shape
    keep = target != ignore_index                                        # (N,)
    safe = np.where(keep, target, 0)                                     # (N,) a valid column
    nll = np.zeros(N, dtype=logits.dtype)                                # (N,)
    dlogits = np.zeros((N, C), dtype=logits.dtype) if need_grad else None
    for r0 in range(0, N, ROWS_PER_BLOCK):
        r1 = min(N, r0 + ROWS_PER_BLOCK)
        x = logits[r0:r1]                                                # (n, C)
        rows = np.arange(r1 - r0)
        m = x.max(axis=1, keepdims=True)                                 # (n, 1) row max
        with np.errstate(invalid="ignore"):       # an all -inf row gives NaN, as in torch
            shifted = x - m                                              # (n, C)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))   # (n, C)
        picked = logp[rows, safe[r0:r1]]                                 # (n,) logp[target]
        nll[r0:r1] = np.where(keep[r0:r1], -picked, 0)   # an ignored row adds 0, even if -inf
        if need_grad:
            grad = np.exp(logp)                                          # (n, C) softmax
            grad[rows, safe[r0:r1]] -= 1                                 # softmax - onehot
            dlogits[r0:r1] = np.where(keep[r0:r1, None], grad, 0)
    return nll, dlogits


def check_adamw(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step):
    """Raise TypeError/ValueError naming the problem unless the arguments are valid.

    param, exp_avg and exp_avg_sq are updated in place: they must be writable, and no two of
    the four arrays may share memory (the fused pass reads each element once).
    """
    arrays = (("param", param), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq))
    for name, a in arrays:
        _check_float_array(name, a)
        if a.dtype != param.dtype:
            raise TypeError(f"{name} dtype {a.dtype} differs from param dtype {param.dtype}")
        if a.shape != param.shape:
            raise ValueError(f"{name} shape {a.shape} differs from param shape {param.shape}")
        if name != "grad" and not a.flags.writeable:
            raise ValueError(f"{name} is read-only; adamw_step updates it in place")
    for i, (name_a, a) in enumerate(arrays):
        for name_b, b in arrays[i + 1:]:
            if np.may_share_memory(a, b):
                raise ValueError(f"{name_a} and {name_b} share memory")
    for name, value in (("lr", lr), ("beta1", beta1), ("beta2", beta2), ("eps", eps),
                        ("weight_decay", weight_decay)):
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if not isinstance(step, numbers.Integral) or isinstance(step, bool) or step < 1:
        raise ValueError(f"step must be an int >= 1, got {step!r}")


def adamw_step(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW update of `param` and its moments, in place.

    Python floats enter the float32 arithmetic rounded to float32 first (NumPy's rule for a
    Python scalar with an array); the C kernel rounds the same constants the same way and does
    the same operations in the same order, without fused multiply-adds.

    Args:
        param, grad, exp_avg, exp_avg_sq: arrays of one shape and dtype (float32/float64).
        lr, beta1, beta2, eps, weight_decay: floats; step: this update's number t >= 1.
    Returns:
        None (param, exp_avg, exp_avg_sq are updated).
    """
    check_adamw(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step)
    # Python floats, so each constant enters float32 arithmetic rounded to float32
    lr, beta1, beta2, eps, weight_decay = map(float, (lr, beta1, beta2, eps, weight_decay))
    param *= 1 - lr * weight_decay                           # decoupled weight decay
    exp_avg *= beta1
    exp_avg += (1 - beta1) * grad                            # m = b1 m + (1 - b1) g
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * grad * grad                  # v = b2 v + (1 - b2) g g
    step_size = lr / (1 - beta1 ** step)                     # bias corrections
    denom = np.sqrt(exp_avg_sq) / math.sqrt(1 - beta2 ** step) + eps
    param -= (step_size * exp_avg / denom).astype(param.dtype, copy=False)


def check_rope(x, cos, sin):
    """Raise TypeError/ValueError naming the problem unless x (..., T, d), d even, and the tables
    cos, sin (T, d/2) are valid float arrays."""
    _check_float_array("x", x)
    for name, t in (("cos", cos), ("sin", sin)):
        _check_float_array(name, t)
    if x.ndim < 2 or x.shape[-1] % 2:
        raise ValueError(f"x must be (..., T, d) with d even, got shape {x.shape}")
    T, h = x.shape[-2], x.shape[-1] // 2
    for name, t in (("cos", cos), ("sin", sin)):
        if t.shape != (T, h):
            raise ValueError(f"{name} must be (T, d/2) = ({T}, {h}) for x {x.shape}, "
                             f"got {t.shape}")


def rope_rotate(x, cos, sin):
    """Rotate the pairs (x1, x2) of x by the angles whose cosines and sines are tabled.

    Args:
        x: (..., T, d) float32/float64; cos, sin: (T, d/2) (cast to x's dtype).
    Returns:
        y (..., T, d), a new array of x's dtype.
    """
    check_rope(x, cos, sin)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]                                # (..., T, d/2)
    c, s = cos.astype(x.dtype), sin.astype(x.dtype)                # (T, d/2)
    return np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
