"""Integer GEMM kernels: an exact int8 x int8 -> int32 product, and weight-only int8 / int4
linear layers (quantized weights times float32 activations).

These are the readable NumPy twins of `minitx_c/qgemm.pyx`. The Cython versions never build a
dequantized copy of the whole weight: they widen int8 to int16 and use the processor's
"multiply pairs and add" instruction (AVX2 `vpmaddwd`: 16 int16 products summed pairwise into 8
int32 per instruction) for `matmul_int8`, and dequantize one tile at a time for the weight-only
kernels. The NumPy versions below compute the same numbers the plain way.

Conventions (shared with `minitx.quant`):
  * Symmetric quantization, no zero point:  w[n, k] ~= q[n, k] * scale[n, k // group_size].
  * int8 weights: q in [-127, 127] (-128 is accepted and multiplied exactly).
  * int4 weights: q in [-8, 7], packed two per byte along K, *offset binary*:
        byte = (q[2j] + 8) | ((q[2j + 1] + 8) << 4)
    i.e. the EVEN k lives in the LOW nibble, the odd k in the high nibble, each stored as q + 8
    (0..15). `pack_int4` / `unpack_int4` convert.
  * Weights are laid out like a Linear weight: (N, K) = (out_features, in_features), and the
    layer computes y = x @ W^T (+ bias), like `torch.nn.functional.linear`.
  * Scales: group_size=None means per-channel, scales (N,); otherwise per-group along K,
    scales (N, K // group_size), with group_size dividing K (and even for int4).
  * Activations x are float32 (..., K); outputs float32 (..., N). Any leading dims; a single
    row (M = 1, generation) takes the matrix-vector path in Cython.

References: Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference" (arXiv 1712.05877); Dettmers et al. 2022, "LLM.int8()"
(arXiv 2208.07339) for weight-only int8 inference; Frantar et al. 2022, GPTQ (arXiv 2210.17323)
for per-group int4 scales.
"""
import numpy as np

K_MAX = 131071                 # largest K for which K * 128 * 128 fits in int32


def _check_qlinear(x, w, scales, group_size, bias, K):
    """Validate the arguments of the weight-only kernels. Returns (N, n_groups, group_size)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise TypeError(f"x must be a float32 ndarray, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim < 1 or x.shape[-1] != K:
        raise ValueError(f"x must have shape (..., {K}) to match the weight, got {x.shape}")
    N = w.shape[0]
    if group_size is None:
        group_size, n_groups, want = K, 1, (N,)
    else:
        group_size = int(group_size)
        if group_size < 1 or K % group_size != 0:
            raise ValueError(f"group_size must be a positive divisor of K={K}, got {group_size}")
        n_groups = K // group_size
        want = (N, n_groups)
    if not isinstance(scales, np.ndarray) or scales.dtype != np.float32:
        raise TypeError(f"scales must be a float32 ndarray, got "
                        f"{getattr(scales, 'dtype', type(scales).__name__)}")
    if scales.shape != want:
        raise ValueError(f"scales must have shape {want} for group_size={group_size if n_groups > 1 else None}, "
                         f"got {scales.shape}")
    if bias is not None:
        if not isinstance(bias, np.ndarray) or bias.dtype != np.float32 or bias.shape != (N,):
            raise ValueError(f"bias must be a float32 array of shape ({N},), got "
                             f"{getattr(bias, 'dtype', None)} {getattr(bias, 'shape', None)}")
    return N, n_groups, group_size


def matmul_int8(a, b):
    """Exact integer matrix product of int8 operands, with np.matmul broadcasting.

    Args:
        a: (..., M, K) int8.
        b: (..., K, N) int8.
    Returns:
        (..., M, N) int32, exactly a @ b computed in integers. K <= 131071 so that no sum can
        overflow int32 (|sum| <= K * 128 * 128); larger K raises ValueError.
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, np.ndarray) or t.dtype != np.int8:
            raise TypeError(f"{name} must be an int8 ndarray, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dims, got shape {t.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul_int8: inner dims differ: a {a.shape} @ b {b.shape}")
    if a.shape[-1] > K_MAX:
        raise ValueError(f"matmul_int8: K={a.shape[-1]} could overflow int32 (max {K_MAX})")
    return np.matmul(a.astype(np.int32), b.astype(np.int32))   # (..., M, N) int32


def linear_w8(x, w_q, scales, group_size=None, bias=None):
    """Weight-only int8 linear layer: y = x @ (w_q * scales)^T + bias.

    Args:
        x: (..., K) float32 activations.
        w_q: (N, K) int8 quantized weight, laid out like nn.Linear.weight.
        scales: float32, (N,) if group_size is None (per output channel), else
            (N, K // group_size) (per group of `group_size` consecutive k).
        group_size: None, or a positive divisor of K.
        bias: (N,) float32 or None.
    Returns:
        (..., N) float32.
    """
    if not isinstance(w_q, np.ndarray) or w_q.dtype != np.int8 or w_q.ndim != 2:
        raise TypeError(f"w_q must be a 2-D int8 ndarray, got "
                        f"{getattr(w_q, 'dtype', type(w_q).__name__)} {getattr(w_q, 'shape', '')}")
    N, n_groups, G = _check_qlinear(x, w_q, scales, group_size, bias, w_q.shape[1])
    w = dequantize(w_q, scales, group_size)                     # (N, K) float32
    y = x @ w.T                                                 # (..., N)
    return y + bias if bias is not None else y


def linear_w4(x, w_packed, scales, group_size=None, bias=None):
    """Weight-only int4 linear layer on two-per-byte packed weights.

    Args:
        x: (..., K) float32 activations, K even.
        w_packed: (N, K // 2) uint8, from `pack_int4` (even k in the low nibble, q + 8).
        scales: float32, (N,) if group_size is None, else (N, K // group_size).
        group_size: None, or a positive even divisor of K (e.g. 32, 64, 128).
        bias: (N,) float32 or None.
    Returns:
        (..., N) float32.
    """
    if not isinstance(w_packed, np.ndarray) or w_packed.dtype != np.uint8 or w_packed.ndim != 2:
        raise TypeError(f"w_packed must be a 2-D uint8 ndarray, got "
                        f"{getattr(w_packed, 'dtype', type(w_packed).__name__)}")
    K = 2 * w_packed.shape[1]
    if group_size is not None and int(group_size) % 2 != 0:
        raise ValueError(f"group_size must be even for packed int4, got {group_size}")
    _check_qlinear(x, w_packed, scales, group_size, bias, K)
    w = dequantize(unpack_int4(w_packed), scales, group_size)   # (N, K) float32
    y = x @ w.T                                                 # (..., N)
    return y + bias if bias is not None else y


def dequantize(w_q, scales, group_size=None):
    """float32 weight from integer codes: w[n, k] = q[n, k] * scales[n, k // group_size].

    Args:
        w_q: (N, K) integer codes (int8, or unpacked int4 as int8).
        scales: (N,) or (N, K // group_size) float32.
    Returns:
        (N, K) float32.
    """
    N, K = w_q.shape
    q = w_q.astype(np.float32)                                  # (N, K)
    if group_size is None:
        return q * scales[:, None]                              # (N, K)
    G = int(group_size)
    q = q.reshape(N, K // G, G) * scales[:, :, None]            # (N, K/G, G)
    return q.reshape(N, K)


def pack_int4(q):
    """Pack int4 codes two per byte along the last dim (even index -> low nibble, stored q + 8).

    Args:
        q: (..., K) integer array with values in [-8, 7], K even.
    Returns:
        (..., K // 2) uint8.
    """
    q = np.asarray(q)
    if q.shape[-1] % 2 != 0:
        raise ValueError(f"pack_int4 needs an even last dim, got shape {q.shape}")
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError(f"int4 codes must lie in [-8, 7], got range [{q.min()}, {q.max()}]")
    u = (q.astype(np.int16) + 8).astype(np.uint8)               # (..., K) offset binary 0..15
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed):
    """Inverse of `pack_int4`.

    Args:
        packed: (..., K // 2) uint8.
    Returns:
        (..., K) int8 with values in [-8, 7].
    """
    lo = (packed & 0x0F).astype(np.int8) - 8                    # even k
    hi = (packed >> 4).astype(np.int8) - 8                      # odd k
    return np.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])
