"""4-bit codebook quantization: NF4 and FP4 with blockwise absmax, plus double quantization.

Dettmers et al. 2023, "QLoRA" (arXiv 2305.14314), section 3:
  - blockwise absmax: each block of B = 64 weights is divided by its absmax c, so it lies in [-1, 1],
    and each value is replaced by the index of the nearest of 16 code values q_i;
  - NF4 ("4-bit NormalFloat"): q_i are quantiles of N(0, 1), normalised to [-1, 1], with 8 on the
    positive side and 7 on the negative side so that 0 is exact. Information-theoretically good
    for normally distributed weights: every code is used about equally often.
  - double quantization: the absmax constants (32 bits per block = 0.5 bits/weight at B = 64) are
    themselves quantized to 8 bits in blocks of 256, after subtracting their mean (they are all
    positive): 8/64 + 32/(64*256) = 0.127 bits/weight, so NF4 costs 4.127 bits instead of 4.5.

FP4 here is the E2M1 floating-point format (1 sign, 2 exponent, 1 mantissa bit; OCP
Microscaling spec): magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}, normalised by 6. It has +0 and -0,
so only 15 distinct values; we store the 15 (sorted) and still spend 4 bits per index.
"""
import numpy as np

from minitx.quant.integer import quantize_codes, scale_zero
from minitx.quant.packing import pack_int4, unpack_int4
from minitx.quant.qtensor import QuantizedTensor, as_matrix, from_groups, register, to_groups

# The 16 NF4 values exactly as QLoRA / bitsandbytes publish them (index = stored 4-bit code).
NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)

_E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]) / 6.0
FP4 = np.concatenate([-_E2M1[:0:-1], _E2M1]).astype(np.float32)   # 15 sorted values in [-1, 1]

CODEBOOKS = {"nf4": NF4, "fp4": FP4}
_BYTES = np.arange(256)
# byte b -> the two float32 values it encodes (low nibble first), packed in one uint64 so that
# dequantization is a single 1-D lookup per byte: (256,) uint64 == (256, 2) float32.
PAIR_TABLES = {name: np.ascontiguousarray(np.stack([np.pad(cb, (0, 16 - cb.size))[_BYTES & 15],
                                                    np.pad(cb, (0, 16 - cb.size))[_BYTES >> 4]],
                                                   axis=1).astype(np.float32))
               .view(np.uint64).reshape(256) for name, cb in CODEBOOKS.items()}
DQ_BITS = 8            # double quantization: bits of each absmax constant
DQ_BLOCK = 256         # ... and constants per second-level block


def nearest_code(x, codebook):
    """Index of the nearest codebook value for each entry of x (ties go to the larger value).

    Args:
        x: float array, any shape, values in [-1, 1].
        codebook: sorted 1-D float array.
    Returns:
        uint8 array, shape of x.
    """
    mid = (codebook[1:] + codebook[:-1]) / 2                         # decision boundaries
    return np.searchsorted(mid, x, side="right").astype(np.uint8)


def double_quantize(c, block=DQ_BLOCK, bits=DQ_BITS):
    """Quantize positive absmax constants c (n,) with `bits`-bit symmetric absmax in blocks of
    `block`, after subtracting their mean. Returns dict of stored arrays."""
    mean = np.float32(c.mean(dtype=np.float64))          # float64 sum: no overflow to inf
    cg = to_groups((c - np.float64(mean)).reshape(1, -1).astype(np.float32), block)  # (1, G2, block)
    a = np.abs(cg).max(axis=-1, keepdims=True)
    s, z = scale_zero(-a, a, bits, symmetric=True)                           # (1, G2, 1)
    q = quantize_codes(cg, s, z, bits, symmetric=True)
    return {"absmax_codes": q.reshape(-1)[: c.size].astype(np.int8),
            "absmax_scale": s.reshape(-1), "absmax_mean": np.array([mean], np.float32)}


def double_dequantize(arrays, block=DQ_BLOCK):
    """Inverse of `double_quantize`: the reconstructed absmax constants, float32 (n,)."""
    q = arrays["absmax_codes"].astype(np.float32)
    s = np.repeat(arrays["absmax_scale"], block)[: q.size]
    return (q * s + arrays["absmax_mean"][0]).astype(np.float32)


@register
class CodebookQuantized(QuantizedTensor):
    """Blockwise-absmax codebook quantized tensor (NF4 / FP4).

    Stored arrays:
        codes: uint8 (R, ceil(G*B/2)), two 4-bit indices per byte (low nibble first).
        absmax: float32 (R, G), or with double quantization absmax_codes int8 (R*G,),
            absmax_scale float32 (ceil(R*G/256),), absmax_mean float32 (1,).
    """
    kind = "codebook"

    def absmax(self):
        """Per-block scale c, float32 (R, G)."""
        m = self.meta
        if m["double_quant"]:
            return double_dequantize(self.arrays).reshape(m["rows"], m["groups"])
        return self.arrays["absmax"]

    def indices(self):
        """Codebook indices, uint8 (R, G, B)."""
        m = self.meta
        idx = unpack_int4(self.arrays["codes"], m["groups"] * m["group"])
        return idx.reshape(m["rows"], m["groups"], m["group"])

    def dequantize(self):
        m = self.meta
        # One lookup per byte gives both of its values (q[b & 15], q[b >> 4]) as one 8-byte word.
        vals = PAIR_TABLES[m["codebook"]][self.arrays["codes"]].view(np.float32)   # (R, 2*bytes)
        vals = vals[:, : m["groups"] * m["group"]]
        Wg = vals.reshape(m["rows"], m["groups"], m["group"]) * self.absmax()[..., None]
        return from_groups(Wg.astype(np.float32, copy=False), self.shape)   # (R, G, B) -> shape


def quantize_codebook(w, codebook="nf4", block_size=64, double_quant=False):
    """Blockwise absmax quantization onto a 4-bit codebook.

    Args:
        w: float array, any shape (blocks run along rows of its (shape[0], rest) view).
        codebook: "nf4" or "fp4".
        block_size: weights per absmax block B (QLoRA: 64).
        double_quant: quantize the absmax constants too (8 bits, blocks of 256).
    Returns:
        CodebookQuantized.
    """
    if codebook not in CODEBOOKS:
        raise ValueError(f"codebook must be one of {sorted(CODEBOOKS)}, got {codebook!r}")
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    shape = np.shape(w)
    Wg = to_groups(as_matrix(w), block_size)                            # (R, G, B)
    c = np.abs(Wg).max(axis=-1)                                         # (R, G)
    c = np.where(c > 0, c, 1.0).astype(np.float32)
    R, G, B = Wg.shape
    arrays = {}
    if double_quant:
        arrays.update(double_quantize(c.reshape(-1)))
        c = double_dequantize(arrays).reshape(R, G)                    # quantize against c_hat
        c = np.where(c != 0, c, 1.0)     # a block whose c_hat is 0 dequantizes to 0 anyway
    else:
        arrays["absmax"] = c
    # Dividing by the reconstructed c keeps w / c within [-1, 1] up to the dq error; clip the rest.
    idx = nearest_code(np.clip(Wg / c[..., None], -1.0, 1.0), CODEBOOKS[codebook])
    arrays["codes"] = pack_int4(idx.reshape(R, G * B))
    meta = {"scheme": f"{codebook}-b{block_size}{'-dq' if double_quant else ''}",
            "codebook": codebook, "block_size": int(block_size), "double_quant": bool(double_quant),
            "rows": R, "groups": G, "group": B}
    return CodebookQuantized(shape, arrays, meta)
