"""Fused activations, RMSNorm and the embedding backward: the NumPy twins of minitx_c/fused_act.pyx.

Each kernel is one pass over its elements (or rows) that a chain of NumPy calls would otherwise
make in many: the forward returns what the backward needs, and the backward makes the input
gradient in one pass. The C kernels (same names, same checks, called before the GIL is released)
compute float32 in double and round once; these twins follow the same formulas.

GELU: Hendrycks & Gimpel 2016 (arXiv 1606.08415):
    exact ("none"):  y = x Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2
                     dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    "tanh":          y = x (1 + tanh u) / 2,  u = sqrt(2/pi) (x + 0.044715 x^3)
                     dy/dx = ((1 + tanh u) + x (1 - tanh^2 u) du/dx) / 2
erf: float64 uses math.erf; float32 uses the two-piece polynomial below (computed in float64,
    rounded once), the formula the C kernel vectorises (coefficients fitted by
    benchmarks/make_erf_coefficients.py; the C kernel measured a max error of 0.500 ulp against
    float64 erf over every float32, benchmarks/erf_accuracy.py). The exact-GELU twin runs the
    same formula (both pieces, then the select, as the C loop) in float32 working precision, in
    cache-sized blocks, so the numpy backend is no slower than its old float32 erfc; the C
    kernel runs it in double (as the tanh twin / C kernel pair already did).
SiLU: Ramachandran et al. 2017 (arXiv 1710.05941): y = x s, s = sigmoid(x),
    dy/dx = s (1 + x (1 - s)).
RMSNorm: Zhang & Sennrich 2019 (arXiv 1910.07467), eq. 4: y = x r w, r = 1 / sqrt(mean(x^2) + eps);
    dx = r (g - xhat mean(g xhat)) with xhat = x r, g = dy w.
Embedding backward: dW[v] = sum of dY rows whose token id is v, summed in token order (the C
    kernel walks the tokens in order too), so the result is bit-reproducible.
"""
import math
import numbers

import numpy as np

from minitx.kernels.fused import check_float, check_vec

# erf(x) / x = P(x^2) for |x| < 1; erfc(x) exp(x^2) = Q(1 / (1 + |x|/2) - 1/2) for 1 <= |x| < 4
ERF_SMALL = (1.1283791670946917, -0.3761263888986904, 0.112837913135022, -0.026866133625192,
             0.005223785006074322, -0.0008542670553352821, 0.0001195694667367337,
             -1.3911700071046196e-05, 1.0595272639123914e-06)
ERF_LARGE = (0.2553956763112823, 0.8543716948377637, 0.9666327755626261, 0.6318286410341851,
             0.059726687791272916, -0.22391734417993012, -0.05425911165781439,
             0.1255750260234434, 0.01293291930867431, -0.0850066740705399)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_TANH_C = 0.044715
BLOCK = 32768  # elements per block of the float32 erf-GELU twin
_math_erf = np.frompyfunc(math.erf, 1, 1)


# ------------------------------------------------------------------------------- checks
def check_elementwise(name, a):
    """Raise unless `a` is a float32/float64 ndarray in native byte order (0-d allowed)."""
    check_float(name, a.reshape(1) if isinstance(a, np.ndarray) and a.ndim == 0 else a)


def check_same(name, a, x):
    """Raise unless `a` is an ndarray of x's shape and dtype."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.shape != x.shape or a.dtype != x.dtype:
        raise ValueError(f"{name} {a.shape} {a.dtype} must match x {x.shape} {x.dtype}")


def check_approximate(approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")


def check_backward(dy, x, saved):
    """Validate an elementwise backward's arguments: x float, dy and saved like x."""
    check_elementwise("x", x)
    check_same("dy", dy, x)
    check_same("saved", saved, x)


def check_rms_norm_forward(x, weight, eps):
    """Validate rms_norm_forward's arguments; returns eps as a float."""
    check_float("x", x)
    check_vec("weight", weight, x)
    if not isinstance(eps, numbers.Real) or not eps >= 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite real number >= 0, got {eps!r}")
    return float(eps)


def check_rms_norm_backward(dy, x, weight, rrms):
    check_float("x", x)
    check_same("dy", dy, x)
    check_vec("weight", weight, x)
    if not isinstance(rrms, np.ndarray) or rrms.shape != x.shape[:-1] or rrms.dtype != x.dtype:
        raise ValueError(f"rrms must be an ndarray of shape {x.shape[:-1]} and dtype {x.dtype}, "
                         f"got {getattr(rrms, 'shape', type(rrms).__name__)} "
                         f"{getattr(rrms, 'dtype', '')}")


def check_embedding_backward(idx, dy, num_embeddings):
    """Raise unless idx (...) holds integer ids in [0, num_embeddings) and dy is (..., D)."""
    if not isinstance(idx, np.ndarray) or idx.dtype.kind not in "iu":
        kind = idx.dtype if isinstance(idx, np.ndarray) else type(idx).__name__
        raise TypeError(f"idx must be an integer ndarray, got {kind}")
    check_float("dy", dy)
    if not isinstance(num_embeddings, numbers.Integral) or isinstance(num_embeddings, bool) \
            or num_embeddings < 0:
        raise ValueError(f"num_embeddings must be an int >= 0, got {num_embeddings!r}")
    if dy.shape[:-1] != idx.shape:
        raise ValueError(f"dy shape {dy.shape} must be idx shape {idx.shape} + (D,)")
    if idx.size and (idx.min() < 0 or idx.max() >= num_embeddings):
        raise ValueError(f"idx out of range: ids span [{idx.min()}, {idx.max()}] but the table "
                         f"has {num_embeddings} rows")


def _array(a, dtype):
    """a as an ndarray of `dtype` (NumPy turns 0-d results into scalars)."""
    return np.asarray(a, dtype=dtype)


# ------------------------------------------------------------------------------- erf
def _horner(coefs, v):
    """sum(coefs[k] v^k) by Horner's rule, in place on one buffer."""
    p = np.full_like(v, coefs[-1])
    for c in reversed(coefs[:-1]):
        p *= v
        p += c
    return p


def _erf_poly(x):
    """erf of a float64 array by the two-piece formula (minitx_c/vmath.h, mtx_erf). The C loop
    evaluates both pieces and selects; here each piece runs on its own elements only."""
    far = np.abs(x) >= 4.0                                # erfc < 1.6e-8: erf = +-1 exactly
    z = np.minimum(np.abs(x), 4.0)
    small = z < 1.0                                       # (NaN goes to the large piece)
    e = np.empty_like(z)
    zs = z[small]
    e[small] = zs * _horner(ERF_SMALL, zs * zs)           # |x| < 1: x P(x^2)
    zl = z[~small]
    with np.errstate(under="ignore"):                     # 1 - exp(-x^2) Q(1/(1 + x/2) - 1/2)
        e[~small] = 1.0 - np.exp(-zl * zl) * _horner(ERF_LARGE, 1.0 / (1.0 + 0.5 * zl) - 0.5)
    e[far] = 1.0
    return np.copysign(e, x)


def _phi_f32(x):
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2 of a float32 array by mtx_erf's formula, both pieces
    on every element then a select (as the C loop does), in float32 with in-place steps.

    The C kernel runs the same steps in double; this twin keeps float32 so that the numpy
    backend costs no more than the float32 erfc it had before (float32 steps: a few ulp, inside
    the tests' float32 tolerances, as for the tanh twin)."""
    f = np.float32
    z = np.abs(x)
    z *= f(1 / math.sqrt(2))
    far = z >= f(4.0)                                     # erfc < 1.6e-8: taken as 0, so
    np.minimum(z, f(4.0), out=z)                          # Phi = 0 below -4 sqrt 2, 1 above
    s = z * z                                             # (NaN stays NaN: the large piece)
    small = np.full_like(z, f(ERF_SMALL[-1]))             # P(s): erf(z) / z
    for c in reversed(ERF_SMALL[:-1]):
        small *= s
        small += f(c)
    small *= z
    v = z * f(0.5)
    v += f(1.0)
    np.divide(f(1.0), v, out=v)
    v -= f(0.5)                                           # v = 1 / (1 + z/2) - 1/2
    q = np.full_like(z, f(ERF_LARGE[-1]))                 # Q(v): erfc(z) exp(z^2)
    for c in reversed(ERF_LARGE[:-1]):
        q *= v
        q += f(c)
    np.negative(s, out=s)
    with np.errstate(under="ignore"):
        np.exp(s, out=s)
    q *= s
    q *= f(0.5)                                           # erfc(z) / 2 = exp(-z^2) Q(v) / 2
    np.copyto(q, f(0.0), where=far)
    large = _select(x < 0, q, np.subtract(f(1.0), q, out=s))  # x < 0: (1 - (1 - erfc)) / 2
    small_bits = small.view(np.int32)                     # (without float32's cancellation);
    small_bits |= x.view(np.int32) & np.int32(-2**31)     # x >= 0: (1 + (1 - erfc)) / 2
    small += f(1.0)                                       # copysign(z P(s), x) (z P(s) >= 0)
    small *= f(0.5)                                       # |x| < sqrt 2: (1 + erf) / 2
    return _select(z < f(1.0), small, large)


def _select(cond, a, b):
    """a where cond else b, for float32 arrays, bit for bit: b ^ ((a ^ b) & mask). np.where
    branches on every element and costs 5x more on random signs (measured)."""
    mask = cond.view(np.int8).astype(np.int32)
    np.negative(mask, out=mask)                           # 0 or all bits set
    b_bits = b.view(np.int32)
    r = np.bitwise_xor(a.view(np.int32), b_bits)
    r &= mask
    r ^= b_bits
    return r.view(np.float32)


def erf(x):
    """The error function elementwise.

    Args:
        x: float32 or float64 array.
    Returns:
        erf(x), x's shape and dtype: math.erf in float64; in float32 the two-piece polynomial
        formula evaluated in float64 and rounded once.
    """
    check_elementwise("x", x)
    if x.dtype == np.float64:
        return np.asarray(_math_erf(x), dtype=np.float64).reshape(x.shape)
    return _array(_erf_poly(x.astype(np.float64)), np.float32)


# ------------------------------------------------------------------------------- GELU
def gelu_forward(x, approximate="none"):
    """GELU and what its backward needs.

    Args:
        x: float32/float64 array; approximate: "none" (erf) or "tanh".
    Returns:
        y = GELU(x), and t = Phi(x) ("none") or tanh(u) ("tanh"), both x's shape and dtype.
    """
    check_elementwise("x", x)
    check_approximate(approximate)
    if approximate == "tanh":
        c = x.dtype.type(SQRT_2_OVER_PI)
        u = np.multiply(x, x, out=np.empty_like(x))       # in-place steps: one buffer, not six
        u *= GELU_TANH_C * c
        u += c
        u *= x                                            # u = sqrt(2/pi) (x + 0.044715 x^3)
        th = np.tanh(u, out=u)
        y = th + 1
        y *= x
        y *= 0.5
        return _array(y, x.dtype), _array(th, x.dtype)
    if x.dtype == np.float64:
        phi = 0.5 * (1.0 + np.asarray(_math_erf(x * (1 / math.sqrt(2))), dtype=np.float64))
        return _array(x * phi, x.dtype), _array(phi, x.dtype)
    xf = x.reshape(-1)                  # float32 working precision (the C kernel: double)
    y, phi = np.empty_like(xf), np.empty_like(xf)
    for i in range(0, xf.size, BLOCK):  # blocks that stay in cache between the ~40 steps
        phi[i:i + BLOCK] = _phi_f32(xf[i:i + BLOCK])
        np.multiply(xf[i:i + BLOCK], phi[i:i + BLOCK], out=y[i:i + BLOCK])
    return y.reshape(x.shape), phi.reshape(x.shape)


def gelu_backward(dy, x, saved, approximate="none"):
    """dL/dx of GELU from dL/dy, x and the forward's `t`.

    Args:
        dy, x, saved: arrays of one shape and dtype; approximate: as in gelu_forward.
    Returns:
        dx, x's shape and dtype.
    """
    check_backward(dy, x, saved)
    check_approximate(approximate)
    if approximate == "tanh":                     # d/dx = ((1 + th) + x (1 - th^2) du/dx) / 2
        th, c = saved, x.dtype.type(SQRT_2_OVER_PI)
        with np.errstate(over="ignore"):          # x^2 capped: where it would overflow,
            du = np.minimum(x * x, x.dtype.type(1e30))    # 1 - th^2 is 0 (as in the C kernel)
        du *= 3 * GELU_TANH_C * c
        du += c                                   # du/dx = sqrt(2/pi) (1 + 3 0.044715 x^2)
        d = th * th
        d -= 1
        d *= du
        d *= x                                    # -x (1 - th^2) du/dx
        d -= th
        d -= 1
        d *= -0.5 * dy                            # ((1 + th) + x (1 - th^2) du/dx) / 2 * dy
        return _array(d, x.dtype)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):   # as the C kernel:
        # in x's dtype (float32 stays float32; C: double); x^2 -> inf, inf * 0 -> NaN silently
        pdf = np.multiply(x, x, out=np.empty_like(x))
        pdf *= x.dtype.type(-0.5)
        pdf = np.exp(pdf, out=pdf)
        pdf *= x.dtype.type(1 / math.sqrt(2 * math.pi))   # phi(x)
        pdf *= x
    pdf += saved
    pdf *= dy
    return _array(pdf, x.dtype)                           # dy (Phi(x) + x phi(x))


# ------------------------------------------------------------------------------- SiLU
def silu_forward(x):
    """SiLU y = x sigmoid(x). Returns y and s = sigmoid(x), x's shape and dtype."""
    check_elementwise("x", x)
    with np.errstate(over="ignore"):
        s = 1.0 / (1.0 + np.exp(-x))
    return _array(x * s, x.dtype), _array(s, x.dtype)


def silu_backward(dy, x, saved):
    """dL/dx of SiLU from dL/dy, x and s = sigmoid(x): dy s (1 + x (1 - s))."""
    check_backward(dy, x, saved)
    s = saved
    return _array(dy * s * (1 + x * (1 - s)), x.dtype)


# ------------------------------------------------------------------------------- RMSNorm
def rms_norm_forward(x, weight, eps):
    """RMSNorm over the last dim.

    Args:
        x: (..., C) float32/float64; weight: (C,) or None; eps: added to mean(x^2).
    Returns:
        y (..., C) and rrms (...,) = 1 / sqrt(mean(x^2) + eps).
    """
    eps = check_rms_norm_forward(x, weight, eps)
    rrms = 1.0 / np.sqrt((x * x).mean(axis=-1) + eps)     # (...,)
    y = x * rrms[..., None]                               # (..., C) xhat
    if weight is not None:
        y *= weight
    return y.astype(x.dtype, copy=False), np.asarray(rrms, dtype=x.dtype)


def rms_norm_backward(dy, x, weight, rrms):
    """Gradients of rms_norm_forward.

    Args:
        dy, x: (..., C); weight: (C,) or None; rrms: (...,) from the forward.
    Returns:
        dx (..., C); dweight (C,) or None.
    """
    check_rms_norm_backward(dy, x, weight, rrms)
    r = rrms[..., None]                                   # (..., 1)
    xhat = x * r                                          # (..., C)
    g = dy * weight if weight is not None else dy         # dL/dxhat
    dx = r * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dw = None
    if weight is not None:
        dw = (dy * xhat).reshape(rrms.size, x.shape[-1]).sum(axis=0)
    return dx.astype(x.dtype, copy=False), dw


# ------------------------------------------------------------------------------- embedding
def embedding_backward(idx, dy, num_embeddings):
    """dW of an embedding lookup: dW[v] = sum of dy[j] over the positions j with idx[j] = v.

    Each row's terms are added in token order, as the C kernel adds them, so both give the same
    bits: the twin adds every id's first row, then every id's second row, and so on (within one
    step no id repeats, so a fancy-indexed += is exact).
    Args:
        idx: (...) integer ids in [0, num_embeddings); dy: (..., D) float.
    Returns:
        (num_embeddings, D) array of dy's dtype.
    """
    check_embedding_backward(idx, dy, num_embeddings)
    D = dy.shape[-1]
    ids = idx.reshape(-1)                                 # (N,)
    rows = dy.reshape(ids.size, D)                        # (N, D)
    out = np.zeros((num_embeddings, D), dtype=dy.dtype)   # (V, D)
    if ids.size == 0 or D == 0:
        return out
    order = np.argsort(ids, kind="stable")                # positions grouped by id, in order
    uniq, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
    rank = np.arange(ids.size) - np.repeat(starts, counts)   # k: the k-th occurrence of its id
    by_rank = order[np.argsort(rank, kind="stable")]      # all first occurrences, then seconds...
    ends = np.cumsum(np.bincount(rank))                   # where each rank's run ends
    out[ids[by_rank[:ends[0]]]] = rows[by_rank[:ends[0]]]         # dW[v] = first row (keeps -0.0)
    for k in range(1, len(ends)):                         # dW[v] += k-th row: ids unique per rank
        pos = by_rank[ends[k - 1]:ends[k]]
        out[ids[pos]] += rows[pos]
    return out
