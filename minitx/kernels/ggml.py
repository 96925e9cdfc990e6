"""Products with ggml block-quantized weights: the NumPy twins of `minitx_c/ggml.pyx`.

A weight W (N, K) = (out_features, in_features) is stored as ggml rows: raw uint8 (N, K / 32 *
type_size), each row a run of 32-value blocks (layouts in `minitx.quant.ggml`). Both kernels
compute y = x @ W^T for float32 activations x (M, K), giving (M, N), without a float copy of W:

ggml_matmul  (float activations)          for each tile of NR output rows n0..n0+NR:
                                               Wt = decode(raw[n0:n0+NR])        (NR, K)
                                               y[:, n0:n0+NR] = x @ Wt^T
             The Cython twin runs this loop (tiles decoded in parallel, then its float32 GEMM)
             when x has many rows (a prompt). For a few rows (decoding) it takes NR = 1 row per
             step (OpenMP over rows): each 32-value block is decoded in registers and dotted
             with the activations, so no decoded weight is stored at all.

ggml_matmul_q8 (the llama.cpp way)        activations are quantized per 32-block to int8 first
             (Q8_0: dx = absmax / 127, xq = round(x / dx)), then every block product is an
             integer dot product, scaled once per block:
                 Q8_0:  y += dw * dx * sum_j wq_j xq_j
                 Q4_0:  y += dw * dx * sum_j (nib_j - 8) xq_j
                 Q4_1:  y += dw * dx * sum_j nib_j xq_j  +  mw * dx * sum_j xq_j
             (llama.cpp stores dx, and dx * sum xq for Q4_1, in fp16 blocks "Q8_0" / "Q8_1";
             here they stay float32). The integer sums are exact; the only extra error is the
             rounding of x to 8 bits, about 0.4% of a block's absmax per value.

Weight types (ggml ids): Q4_0 = 2, Q4_1 = 3, Q8_0 = 8. Validation is shared with the Cython side
(`check_ggml_matmul`), which calls it before releasing the GIL.
"""
import numpy as np

from minitx.quant import ggml as blocks
from minitx.quant.ggml_types import GGML_TYPES

QK = 32
KERNEL_TYPES = {2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}
NR = 256                         # output rows decoded per tile (as minitx_c.ggml)


def check_ggml_matmul(x, w, qtype):
    """Validate the arguments of the ggml kernels. Returns (M, K, N, type_size)."""
    if qtype not in KERNEL_TYPES:
        raise ValueError(f"qtype must be one of {KERNEL_TYPES} (ggml type ids), got {qtype!r}")
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2:
        raise TypeError(f"x must be a 2-D float32 ndarray (M, K), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if not isinstance(w, np.ndarray) or w.dtype != np.uint8 or w.ndim != 2:
        raise TypeError(f"w must be 2-D uint8 ggml rows (N, row_bytes), got "
                        f"{getattr(w, 'dtype', type(w).__name__)} {getattr(w, 'shape', '')}")
    if not (x.flags.c_contiguous and w.flags.c_contiguous):
        raise ValueError("x and w must be C-contiguous")
    M, K = x.shape
    ts = GGML_TYPES[qtype].type_size
    if K == 0 or K % QK or w.shape[1] != K // QK * ts:
        raise ValueError(f"x has K={K} columns (a positive multiple of {QK} needed), so "
                         f"{KERNEL_TYPES[qtype]}"
                         f" rows must be {K // QK * ts} bytes, got w of shape {w.shape}")
    return M, K, w.shape[0], ts


def ggml_matmul(x, w, qtype):
    """y = x @ W^T with W in ggml blocks, float activations.

    Args:
        x: (M, K) float32, C-contiguous.
        w: (N, K / 32 * type_size) uint8 ggml rows of type `qtype`.
        qtype: ggml type id: 2 (Q4_0), 3 (Q4_1) or 8 (Q8_0).
    Returns:
        (M, N) float32.
    """
    M, K, N, _ = check_ggml_matmul(x, w, qtype)
    y = np.empty((M, N), np.float32)
    for n0 in range(0, N, NR):                                          # tiles of output rows
        Wt = blocks.dequantize_rows(w[n0:n0 + NR], qtype, K)            # (NR, K)
        y[:, n0:n0 + NR] = x @ Wt.T                                     # (M, NR)
    return y


def quantize_activations_q8(x):
    """x (M, K) float32 -> (xq (M, K / 32, 32) int8, dx (M, K / 32) float32, sx (M, K / 32)
    float32 = dx * sum(xq) per block): Q8_0 with float32 scales, round half away from zero."""
    xb = x.reshape(x.shape[0], x.shape[1] // QK, QK)                    # (M, nb, 32)
    dx = np.abs(xb).max(axis=-1) / np.float32(127)                      # (M, nb)
    inv = np.where(dx > 0, np.float32(1) / np.where(dx > 0, dx, 1), 0).astype(np.float32)
    v = xb * inv[..., None]
    xq = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)
    sx = dx * xq.sum(axis=-1, dtype=np.int32).astype(np.float32)
    return xq, dx, sx


def _weight_codes(w_tile, qtype):
    """Raw rows (NR, nb * ts) -> (integer codes (NR, nb, 32) int32, dw (NR, nb), mw (NR, nb))."""
    ts = GGML_TYPES[qtype].type_size
    b = w_tile.reshape(w_tile.shape[0], w_tile.shape[1] // ts, ts)
    dw = blocks._f16(b, 0)[..., 0]                                      # (NR, nb)
    if qtype == 8:
        return b[..., 2:].view(np.int8).astype(np.int32), dw, np.zeros_like(dw)
    if qtype == 2:
        return blocks._nibbles(b[..., 2:18]).astype(np.int32) - 8, dw, np.zeros_like(dw)
    return blocks._nibbles(b[..., 4:20]).astype(np.int32), dw, blocks._f16(b, 2)[..., 0]


def ggml_matmul_q8(x, w, qtype):
    """y = x @ W^T the llama.cpp way: x quantized to int8 per block, integer block dot products.

    Args, Returns: as `ggml_matmul`.
    """
    M, K, N, _ = check_ggml_matmul(x, w, qtype)
    xq, dx, sx = quantize_activations_q8(x)                             # (M, nb, 32), (M, nb)
    xq = xq.astype(np.int32)
    y = np.empty((M, N), np.float32)
    for n0 in range(0, N, NR):
        q, dw, mw = _weight_codes(w[n0:n0 + NR], qtype)                 # (NR, nb, 32), (NR, nb)
        isum = np.einsum("mbj,nbj->mnb", xq, q)                         # (M, NR, nb) exact int
        acc = (isum.astype(np.float32) * dx[:, None, :] * dw[None]).sum(axis=-1)  # (M, NR)
        acc += (sx[:, None, :] * mw[None]).sum(axis=-1)                 # Q4_1 offsets
        y[:, n0:n0 + NR] = acc
    return y
