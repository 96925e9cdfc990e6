"""ggml's block formats Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 in readable NumPy: dequantize and quantize.

Each row (ggml's ne[0], contiguous) is cut into blocks of 32 values; every block is stored on its
own, scale first (ggml-common.h, `block_q4_0` etc.; quantize as ggml-quants.c's `*_ref`):

    Q8_0  34 bytes   | d fp16 | q[0] q[1] ... q[31]  int8 |          x_j = d * q_j
    Q4_0  18 bytes   | d fp16 | qs[0] ... qs[15] |                    x_j = d * (nib_j - 8)
    Q4_1  20 bytes   | d fp16 | m fp16 | qs[0] ... qs[15] |           x_j = d * nib_j + m
    Q5_0  22 bytes   | d fp16 | qh u32 | qs[0] ... qs[15] |           x_j = d * (q5_j - 16)
    Q5_1  24 bytes   | d fp16 | m fp16 | qh u32 | qs[0] ... qs[15] |  x_j = d * q5_j + m

    nibbles:  qs[i] = nib_i | nib_{i+16} << 4      byte i holds elements i (low) and i+16 (high)
              so the low nibbles are elements 0..15 and the high nibbles elements 16..31
    5 bits:   q5_j = nib_j | (bit j of qh) << 4    (qh little-endian, bit j for element j)

How they relate to minitx.quant's own schemes (`minitx.quant.integer`):
  - Q8_0 is symmetric int8 with group size 32 (d = absmax / 127), the scale stored in fp16.
  - Q4_1 is asymmetric int4 with group 32: d = (max - min) / 15, but the offset m = min is a
    float (fp16), not an integer zero point, so the grid spans exactly [min, max] and 0 need not
    be representable (minitx's asymmetric grid is widened to contain 0).
  - Q4_0 is "symmetric" int4 on the full grid [-8, 7]: the value of largest magnitude maps to -8
    (d = that value / -8, so d may be negative), one more level than minitx's [-7, 7].
  - Q5_0 / Q5_1 are Q4_0 / Q4_1 with a fifth bit (grids [-16, 15] and [0, 31]).
Bits per weight counted from the bytes: Q8_0 8.5, Q4_0 4.5, Q4_1 5.0, Q5_0 5.5, Q5_1 6.0.

Arrays: a row-major matrix of R rows of n values is stored as raw uint8 (R, n / 32 * type_size);
`dequantize_rows` / `quantize_rows` convert between that and float32 (R, n).
"""
import numpy as np

from minitx.quant.ggml_types import ggml_type

QK = 32                          # values per block in every format here


def _blocks(raw, type_size):
    """(R, nb * type_size) uint8 -> (R, nb, type_size) view."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if raw.ndim != 2 or raw.shape[1] % type_size:
        raise ValueError(f"raw blocks must be (rows, k * {type_size}) uint8, got {raw.shape}")
    return raw.reshape(raw.shape[0], raw.shape[1] // type_size, type_size)


def _f16(b, start):
    """The fp16 at bytes [start, start + 2) of every block, as float32 (R, nb, 1)."""
    return b[..., start:start + 2].copy().view("<f2").astype(np.float32)


def _nibbles(qs):
    """(R, nb, 16) packed bytes -> (R, nb, 32) values 0..15: low nibbles first, then high."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _pack_nibbles(q):
    """(R, nb, 32) values 0..15 -> (R, nb, 16) bytes: element i low, element i + 16 high."""
    q = q.astype(np.uint8)
    return q[..., :16] | (q[..., 16:] << 4)


def _high_bits(qh_bytes):
    """(R, nb, 4) bytes of qh -> (R, nb, 32) fifth bits (0 or 16)."""
    qh = qh_bytes.copy().view("<u4")                                     # (R, nb, 1)
    return (((qh >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.uint8)


def _pack_high_bits(q):
    """(R, nb, 32) 5-bit values -> (R, nb, 4) bytes of qh."""
    bits = ((q.astype(np.uint32) >> 4) & 1) << np.arange(32, dtype=np.uint32)
    return bits.sum(axis=-1, dtype=np.uint32)[..., None].astype("<u4").view(np.uint8)


def _flat(x):
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2])


# ============================== dequantize ===================================================
def dequantize_q8_0(raw):
    """Q8_0 blocks (R, nb * 34) uint8 -> float32 (R, nb * 32)."""
    b = _blocks(raw, 34)
    q = b[..., 2:].view(np.int8).astype(np.float32)                      # (R, nb, 32)
    return _flat(_f16(b, 0) * q)


def dequantize_q4_0(raw):
    """Q4_0 blocks (R, nb * 18) uint8 -> float32 (R, nb * 32)."""
    b = _blocks(raw, 18)
    q = _nibbles(b[..., 2:18]).astype(np.float32) - 8.0                  # (R, nb, 32)
    return _flat(_f16(b, 0) * q)


def dequantize_q4_1(raw):
    """Q4_1 blocks (R, nb * 20) uint8 -> float32 (R, nb * 32)."""
    b = _blocks(raw, 20)
    q = _nibbles(b[..., 4:20]).astype(np.float32)                        # (R, nb, 32)
    return _flat(_f16(b, 0) * q + _f16(b, 2))


def dequantize_q5_0(raw):
    """Q5_0 blocks (R, nb * 22) uint8 -> float32 (R, nb * 32)."""
    b = _blocks(raw, 22)
    q = (_nibbles(b[..., 6:22]) | _high_bits(b[..., 2:6])).astype(np.float32) - 16.0
    return _flat(_f16(b, 0) * q)


def dequantize_q5_1(raw):
    """Q5_1 blocks (R, nb * 24) uint8 -> float32 (R, nb * 32)."""
    b = _blocks(raw, 24)
    q = (_nibbles(b[..., 8:24]) | _high_bits(b[..., 4:8])).astype(np.float32)
    return _flat(_f16(b, 0) * q + _f16(b, 2))


# ============================== quantize =====================================================
def _as_blocks(x):
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % QK:
        raise ValueError(f"x must be (rows, n) with n a multiple of {QK}, got {x.shape}")
    return x.reshape(x.shape[0], x.shape[1] // QK, QK)                  # (R, nb, 32)


def _inverse(d):
    """1 / d where d != 0, else 0 (an all-zero block gets codes for 0)."""
    safe = np.where(d != 0, d, np.float32(1))
    return np.where(d != 0, np.float32(1) / safe, np.float32(0)).astype(np.float32)


def _signed_extreme(x):
    """Per block, the value of largest magnitude with its sign (the first one on ties)."""
    idx = np.abs(x).argmax(axis=-1)[..., None]
    return np.take_along_axis(x, idx, axis=-1)                           # (R, nb, 1)


def _store(*parts):
    return _flat(np.concatenate(parts, axis=-1))


def _half_bytes(v):
    return v.astype("<f2").view(np.uint8)                                # (R, nb, 2)


def quantize_q8_0(x):
    """float (R, n) -> Q8_0 blocks (R, n / 32 * 34) uint8. d = absmax / 127, q = round(x / d)
    (round half away from zero, as C's roundf)."""
    xb = _as_blocks(x)
    d = np.abs(xb).max(axis=-1, keepdims=True) / np.float32(127)         # (R, nb, 1)
    v = xb * _inverse(d)
    q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)
    return _store(_half_bytes(d), q.view(np.uint8))


def quantize_q4_0(x):
    """float (R, n) -> Q4_0 blocks (R, n / 32 * 18). d = extreme / -8, nib = min(15,
    trunc(x / d + 8.5))."""
    xb = _as_blocks(x)
    d = _signed_extreme(xb) / np.float32(-8)
    q = np.minimum(15, np.trunc(xb * _inverse(d) + np.float32(8.5))).astype(np.uint8)
    return _store(_half_bytes(d), _pack_nibbles(q))


def quantize_q4_1(x):
    """float (R, n) -> Q4_1 blocks (R, n / 32 * 20). d = (max - min) / 15, m = min,
    nib = min(15, trunc((x - min) / d + 0.5))."""
    xb = _as_blocks(x)
    lo, hi = xb.min(axis=-1, keepdims=True), xb.max(axis=-1, keepdims=True)
    d = (hi - lo) / np.float32(15)
    q = np.minimum(15, np.trunc((xb - lo) * _inverse(d) + np.float32(0.5))).astype(np.uint8)
    return _store(_half_bytes(d), _half_bytes(lo), _pack_nibbles(q))


def quantize_q5_0(x):
    """float (R, n) -> Q5_0 blocks (R, n / 32 * 22). d = extreme / -16, q = min(31,
    trunc(x / d + 16.5))."""
    xb = _as_blocks(x)
    d = _signed_extreme(xb) / np.float32(-16)
    q = np.minimum(31, np.trunc(xb * _inverse(d) + np.float32(16.5))).astype(np.uint8)
    return _store(_half_bytes(d), _pack_high_bits(q), _pack_nibbles(q & 0x0F))


def quantize_q5_1(x):
    """float (R, n) -> Q5_1 blocks (R, n / 32 * 24). d = (max - min) / 31, m = min,
    q = min(31, trunc((x - min) / d + 0.5))."""
    xb = _as_blocks(x)
    lo, hi = xb.min(axis=-1, keepdims=True), xb.max(axis=-1, keepdims=True)
    d = (hi - lo) / np.float32(31)
    q = np.minimum(31, np.trunc((xb - lo) * _inverse(d) + np.float32(0.5))).astype(np.uint8)
    return _store(_half_bytes(d), _half_bytes(lo), _pack_high_bits(q), _pack_nibbles(q & 0x0F))


def _plain(dtype):
    def dequantize(raw):
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        return raw.view(dtype).astype(np.float32)

    def quantize(x):
        return np.ascontiguousarray(np.asarray(x, dtype=np.float32).astype(dtype)).view(np.uint8)
    return dequantize, quantize


def _dequantize_bf16(raw):
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)


DEQUANTIZERS = {"F32": _plain("<f4")[0], "F16": _plain("<f2")[0], "BF16": _dequantize_bf16,
                "Q8_0": dequantize_q8_0, "Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1,
                "Q5_0": dequantize_q5_0, "Q5_1": dequantize_q5_1}
QUANTIZERS = {"F32": _plain("<f4")[1], "F16": _plain("<f2")[1],
              "Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_1": quantize_q4_1,
              "Q5_0": quantize_q5_0, "Q5_1": quantize_q5_1}


def dequantize_rows(raw, type_id, n):
    """Raw rows (R, row_bytes) uint8 of ggml type `type_id` (id or name) -> float32 (R, n)."""
    t = ggml_type(type_id)
    if t.name not in DEQUANTIZERS:
        raise ValueError(f"minitx cannot decode ggml type {t.name} (decodable: "
                         f"{sorted(DEQUANTIZERS)})")
    raw = np.asarray(raw)
    if raw.ndim != 2 or raw.shape[1] * t.block_size != n * t.type_size:
        raise ValueError(f"{t.name} rows of {n} values take {n // t.block_size * t.type_size} "
                         f"bytes, got raw of shape {raw.shape}")
    return DEQUANTIZERS[t.name](raw).reshape(raw.shape[0], n)


def quantize_rows(x, type_id):
    """float (R, n) -> raw rows (R, n / block * type_size) uint8 of ggml type `type_id`."""
    t = ggml_type(type_id)
    if t.name not in QUANTIZERS:
        raise ValueError(f"minitx cannot encode ggml type {t.name} (encodable: "
                         f"{sorted(QUANTIZERS)})")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be (rows, n), got shape {x.shape}")
    return QUANTIZERS[t.name](x).reshape(x.shape[0], x.shape[1] // t.block_size * t.type_size)
