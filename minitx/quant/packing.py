"""Packing b-bit codes into bytes, the storage format behind every quantized tensor.

A b-bit code takes b bits on disk and in RAM only if several codes share a byte. Two layouts:

  - `pack_int4` / `pack_int2`: 2 (resp. 4) codes per byte along the LAST dim, the first code in the
    lowest bits (little-endian nibbles, as llama.cpp's Q4 and bitsandbytes store them). The int4
    layout is what the int4 GEMV kernel reads: byte j of a row holds columns 2j (low) and 2j+1 (high).
  - `pack_bits(codes, bits)`: any width 1..8, codes laid out as a little-endian bit stream; used for
    3-bit codes and 1-bit signs, where no whole number of codes fits a byte.

Odd lengths are padded with zero codes; every unpack takes the true length `n` and drops the pad.
"""
import numpy as np


def _check_codes(codes, bits):
    codes = np.asarray(codes)
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"codes must be an integer array, got dtype {codes.dtype}")
    if codes.ndim == 0:
        raise ValueError("codes must have at least one dimension, got a scalar")
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << bits)):
        raise ValueError(f"{bits}-bit codes must lie in [0, {(1 << bits) - 1}], "
                         f"got range [{codes.min()}, {codes.max()}]")
    return codes.astype(np.uint8)


def _pack_fixed(codes, bits):
    per_byte = 8 // bits
    codes = _check_codes(codes, bits)
    n = codes.shape[-1]
    pad = (-n) % per_byte
    if pad:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (pad,), np.uint8)], axis=-1)
    groups = codes.reshape(codes.shape[:-1] + (-1, per_byte))       # (..., ceil(n/k), k)
    packed = np.zeros(groups.shape[:-1], np.uint8)                   # (..., ceil(n/k))
    for i in range(per_byte):
        packed |= groups[..., i] << np.uint8(i * bits)
    return packed


def _unpack_fixed(packed, n, bits):
    per_byte = 8 // bits
    packed = np.asarray(packed, dtype=np.uint8)
    if n < 0 or n > packed.shape[-1] * per_byte:
        raise ValueError(f"n={n} does not fit {packed.shape[-1]} bytes of {bits}-bit codes")
    mask = np.uint8((1 << bits) - 1)
    parts = [(packed >> np.uint8(i * bits)) & mask for i in range(per_byte)]
    codes = np.stack(parts, axis=-1).reshape(packed.shape[:-1] + (-1,))  # (..., bytes*k)
    return codes[..., :n]


def pack_int4(codes):
    """Pack 4-bit codes two per byte along the last dim (low nibble first).

    Args:
        codes: integer array (..., n) with values in [0, 15].
    Returns:
        uint8 array (..., ceil(n / 2)).
    """
    return _pack_fixed(codes, 4)


def unpack_int4(packed, n):
    """Inverse of `pack_int4`: (..., ceil(n/2)) uint8 -> (..., n) uint8 codes in [0, 15]."""
    return _unpack_fixed(packed, n, 4)


def pack_int2(codes):
    """Pack 2-bit codes four per byte along the last dim (lowest bits first).

    Args:
        codes: integer array (..., n) with values in [0, 3].
    Returns:
        uint8 array (..., ceil(n / 4)).
    """
    return _pack_fixed(codes, 2)


def unpack_int2(packed, n):
    """Inverse of `pack_int2`: (..., ceil(n/4)) uint8 -> (..., n) uint8 codes in [0, 3]."""
    return _unpack_fixed(packed, n, 2)


def pack_bits(codes, bits):
    """Pack `bits`-wide codes (1 <= bits <= 8) as a little-endian bit stream over the last dim.

    Args:
        codes: integer array (..., n) with values in [0, 2**bits - 1].
        bits: code width.
    Returns:
        uint8 array (..., ceil(n * bits / 8)).
    """
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int in [1, 8], got {bits!r}")
    codes = _check_codes(codes, bits)
    planes = (codes[..., None] >> np.arange(bits, dtype=np.uint8)) & 1     # (..., n, bits)
    stream = planes.reshape(codes.shape[:-1] + (-1,))                      # (..., n*bits)
    return np.packbits(stream, axis=-1, bitorder="little")


def unpack_bits(packed, n, bits):
    """Inverse of `pack_bits`: (..., ceil(n*bits/8)) uint8 -> (..., n) uint8 codes."""
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int in [1, 8], got {bits!r}")
    packed = np.asarray(packed, dtype=np.uint8)
    if n < 0 or n * bits > packed.shape[-1] * 8:
        raise ValueError(f"n={n} codes of {bits} bits do not fit {packed.shape[-1]} bytes")
    stream = np.unpackbits(packed, axis=-1, count=n * bits, bitorder="little")  # (..., n*bits)
    planes = stream.reshape(packed.shape[:-1] + (n, bits))
    weights = (1 << np.arange(bits)).astype(np.uint8)
    return (planes * weights).sum(axis=-1).astype(np.uint8)


def pack(codes, bits):
    """Pack codes of width `bits` with the densest layout: fixed layouts for 2/4/8, a bit stream
    otherwise. Returns uint8 (..., ceil(n * bits / 8))."""
    if bits == 8:
        return _check_codes(codes, 8)
    if bits in (4, 2):
        return _pack_fixed(codes, bits)
    return pack_bits(codes, bits)


def unpack(packed, n, bits):
    """Inverse of `pack`."""
    if bits == 8:
        return np.asarray(packed, dtype=np.uint8)[..., :n]
    if bits in (4, 2):
        return _unpack_fixed(packed, n, bits)
    return unpack_bits(packed, n, bits)
