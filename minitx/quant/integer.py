"""Uniform integer quantization, b in {2, 3, 4, 8} bits, symmetric or asymmetric.

Nagel et al. 2021, "A White Paper on Neural Network Quantization" (arXiv 2106.08295), section 2.2:

    x_int = clamp(round(x / s) + z, q_min, q_max)          (eq. 3)
    x_hat = s * (x_int - z)                                 (eq. 4)

  - asymmetric: grid [0, 2^b - 1], scale s = (hi - lo) / (2^b - 1), zero point z = round(-lo / s);
    the range [lo, hi] is widened to contain 0 so that zero (padding, ReLU output) is exact.
  - symmetric: z = 0 and the restricted signed grid [-(2^(b-1) - 1), 2^(b-1) - 1] (as llama2.c's
    int8 format: s = absmax / 127), so the grid is symmetric around 0. At b = 2 this is ternary.

The range [lo, hi] comes from `minitx.quant.ranges` (min-max, percentile or MSE-optimal), one per
tensor, per output channel, or per group of `group_size` entries along a row. Every value inside
the range is reproduced within half a step: |x - x_hat| <= s / 2.
"""
import numpy as np

from minitx.quant.packing import pack, unpack
from minitx.quant.qtensor import QuantizedTensor, as_matrix, from_groups, register, to_groups

GRANULARITIES = ("tensor", "channel", "group")


def qrange(bits, symmetric):
    """(q_min, q_max) of the integer grid."""
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def code_offset(bits, symmetric):
    """Offset added to x_int before packing: offset binary 2^(b-1) when symmetric (the int4
    kernel layout: nibble = q + 8), 0 when asymmetric (codes already unsigned)."""
    return 2 ** (bits - 1) if symmetric else 0


def scale_zero(lo, hi, bits, symmetric):
    """Scale s and zero point z for the range [lo, hi] (arrays of any matching shape).

    Returns:
        s: float32 array, strictly positive (1.0 where the range is empty);
        z: int32 array (all zeros when symmetric).
    """
    lo = np.asarray(lo, np.float64)
    hi = np.asarray(hi, np.float64)
    q_min, q_max = qrange(bits, symmetric)
    if symmetric:
        s = np.maximum(np.abs(lo), np.abs(hi)) / q_max
        z = np.zeros(s.shape, np.int32)
    else:
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        s = (hi - lo) / (q_max - q_min)
    s = np.where(s > 0, s, 1.0).astype(np.float32)
    if not symmetric:
        z = np.clip(np.round(-lo / s), q_min, q_max).astype(np.int32)
    return s, z


def quantize_codes(x, s, z, bits, symmetric):
    """Integer codes x_int = clamp(round(x / s) + z, q_min, q_max) (eq. 3), as int32."""
    q_min, q_max = qrange(bits, symmetric)
    return np.clip(np.round(x / s) + z, q_min, q_max).astype(np.int32)


def dequantize_codes(q, s, z):
    """x_hat = s * (x_int - z) (eq. 4), float32."""
    return (s * (q - z)).astype(np.float32)


def fake_quant(x, s, z, bits, symmetric):
    """Quantize then dequantize (the simulated quantization used by PTQ search and QAT)."""
    return dequantize_codes(quantize_codes(x, s, z, bits, symmetric), s, z)


@register
class IntQuantized(QuantizedTensor):
    """Uniform integer quantized tensor.

    Stored arrays:
        codes: uint8 (R, ceil(G*g*bits/8)) packed unsigned codes x_int + code_offset; for symmetric
            int8 the plain int8 codes (R, G*g) instead, the format the int8 kernels read.
        scale: float32 (R, G).
        zero_point: uint8 (R, G), asymmetric only.
    """
    kind = "int"

    def codes(self):
        """Signed/unsigned integer codes x_int, int32 (R, G, g)."""
        m = self.meta
        R, G, g = m["rows"], m["groups"], m["group"]
        if m["bits"] == 8 and m["symmetric"]:
            return self.arrays["codes"].astype(np.int32).reshape(R, G, g)
        u = unpack(self.arrays["codes"], G * g, m["bits"]).astype(np.int32)
        return (u - code_offset(m["bits"], m["symmetric"])).reshape(R, G, g)

    def dequantize(self):
        s = self.arrays["scale"][..., None]                              # (R, G, 1)
        z = self.arrays["zero_point"].astype(np.int32)[..., None] if "zero_point" in self.arrays else 0
        return from_groups(dequantize_codes(self.codes(), s, z), self.shape)

    @property
    def step(self):
        """Quantization step s broadcast to the groups, float32 (R, G)."""
        return self.arrays["scale"]


def quantize_int(w, bits=8, symmetric=True, granularity="channel", group_size=None,
                 range_method="minmax", percentile=99.9):
    """Quantize `w` to `bits`-bit integers.

    Args:
        w: float array, any shape (treated as (shape[0], rest), rows = output channels).
        bits: 2, 3, 4 or 8 (any int in [2, 8] works).
        symmetric: symmetric absmax grid (z = 0) or asymmetric min-max grid with a zero point.
        granularity: "tensor" (one scale), "channel" (one per row) or "group" (one per
            `group_size` entries of a row).
        group_size: group length, required for granularity "group".
        range_method: "minmax", "percentile" or "mse" (see `minitx.quant.ranges`).
        percentile: used by range_method "percentile".
    Returns:
        IntQuantized.
    """
    from minitx.quant import ranges   # ranges uses this module's fake_quant

    if not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "group" and group_size is None:
        raise ValueError("granularity 'group' needs a group_size")
    shape = np.shape(w)
    W = as_matrix(w)                                                     # (R, C)
    if granularity == "tensor":
        W = W.reshape(1, -1)                                             # (1, numel)
    Wg = to_groups(W, group_size if granularity == "group" else None)   # (R, G, g)
    lo, hi = ranges.find_range(Wg, range_method, bits=bits, symmetric=symmetric,
                               percentile=percentile)                    # (R, G, 1) each
    s, z = scale_zero(lo, hi, bits, symmetric)
    q = quantize_codes(Wg, s, z, bits, symmetric)                        # (R, G, g)
    R, G, g = Wg.shape
    if bits == 8 and symmetric:
        codes = q.reshape(R, G * g).astype(np.int8)
    else:
        codes = pack((q + code_offset(bits, symmetric)).reshape(R, G * g), bits)
    arrays = {"codes": codes, "scale": s[..., 0]}
    if not symmetric:
        arrays["zero_point"] = z[..., 0].astype(np.uint8)
    gname = {"tensor": "", "channel": "-pc", "group": f"-g{group_size}"}[granularity]
    meta = {"scheme": f"int{bits}-{'sym' if symmetric else 'asym'}{gname}", "bits": int(bits),
            "symmetric": bool(symmetric), "granularity": granularity, "rows": R, "groups": G,
            "group": g, "group_size": None if group_size is None else int(group_size),
            "range_method": range_method}
    return IntQuantized(shape, arrays, meta)
