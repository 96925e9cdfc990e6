"""minitx.quant: weight quantization from 8 bits down to 1.

One entry point, `quantize(w, scheme=...)`, returns a `QuantizedTensor` with `.dequantize()` and an
honest `.bits_per_weight` (counted from the stored bytes). Schemes:

  "int8", "int4", "int3", "int2"  uniform integer (symmetric absmax unless symmetric=False),
                                  per output channel, or per group when block_size is given
  "nf4", "fp4"                    4-bit codebooks, blockwise absmax (block 64), double_quant option
  "binary"                        sign times a per-row scale (centered=True subtracts the row mean)
  "pbllm"                         PB-LLM: salient fraction in int8, the rest binarized

Modules: packing (bytes), integer, ranges (min-max / percentile / MSE), codebooks (NF4, FP4),
binary (binarization, PB-LLM), linear (QuantLinear), ptq, qat, compensate, serialize, cli.

References: Nagel et al. 2021 (arXiv 2106.08295); Gholami et al. 2021 (arXiv 2103.13630);
QLoRA (arXiv 2305.14314); PB-LLM (arXiv 2310.00034); Esser et al. 2019, LSQ (arXiv 1902.08153).
"""
import re

import numpy as np

from minitx.quant.binary import BinaryQuantized, PBLLMQuantized, binarize, quantize_pbllm
from minitx.quant.codebooks import FP4, NF4, CodebookQuantized, quantize_codebook
from minitx.quant.integer import IntQuantized, quantize_int
from minitx.quant.qtensor import QuantizedTensor

SCHEME_NAMES = ("int8", "int4", "int3", "int2", "nf4", "fp4", "binary", "pbllm")

__all__ = ["quantize", "QuantizedTensor", "IntQuantized", "CodebookQuantized", "BinaryQuantized",
           "PBLLMQuantized", "NF4", "FP4", "SCHEME_NAMES", "quantize_int", "quantize_codebook",
           "binarize", "quantize_pbllm"]


def quantize(w, scheme="int8", block_size=None, double_quant=False, *, symmetric=True,
             granularity=None, range_method="minmax", percentile=99.9, centered=False,
             salient_fraction=0.1, saliency="magnitude", hessian_diag=None):
    """Quantize a weight array with a named scheme.

    Args:
        w: float array (out_features, in_features) or any shape (rows = its first dim).
        scheme: one of SCHEME_NAMES.
        block_size: integer schemes: group size along a row (None: one scale per row);
            nf4/fp4: absmax block size (None: 64).
        double_quant: nf4/fp4 only: 8-bit double quantization of the absmax constants.
        symmetric: integer schemes: symmetric absmax grid (True) or asymmetric with zero point.
        granularity: integer schemes: "tensor", "channel" or "group" (default: "group" if
            block_size is given, else "channel").
        range_method, percentile: integer schemes: how the clipping range is set.
        centered: binary: subtract the row mean before taking signs.
        salient_fraction, saliency, hessian_diag: pbllm settings.
    Returns:
        QuantizedTensor (IntQuantized, CodebookQuantized, BinaryQuantized or PBLLMQuantized).
    """
    if not isinstance(scheme, str):
        raise TypeError(f"scheme must be a string, got {type(scheme).__name__}")
    if double_quant and scheme not in ("nf4", "fp4"):
        raise ValueError(f"double_quant applies to nf4/fp4 only, got scheme {scheme!r}")
    if block_size is not None and scheme in ("binary", "pbllm"):
        raise ValueError(f"block_size applies to the integer and nf4/fp4 schemes, not to "
                         f"{scheme!r} (got block_size={block_size!r})")
    m = re.fullmatch(r"int([2-8])", scheme)
    if m:
        if granularity is None:
            granularity = "group" if block_size is not None else "channel"
        q = quantize_int(w, bits=int(m.group(1)), symmetric=symmetric, granularity=granularity,
                         group_size=block_size, range_method=range_method, percentile=percentile)
    elif scheme in ("nf4", "fp4"):
        q = quantize_codebook(w, scheme, 64 if block_size is None else block_size, double_quant)
    elif scheme == "binary":
        q = binarize(w, centered=centered)
    elif scheme == "pbllm":
        q = quantize_pbllm(w, salient_fraction, saliency, hessian_diag)
    else:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEME_NAMES}")
    return _check_finite_result(q, w)


def _check_finite_result(q, w):
    """ValueError if quantizing produced NaN/inf (weights near float32's limit make scale x code
    overflow); the input itself was checked finite and within float32's range by `as_matrix`."""
    with np.errstate(over="ignore", invalid="ignore"):
        stored = all(np.isfinite(a).all() for a in q.arrays.values()
                     if np.issubdtype(a.dtype, np.floating))
        ok = stored and np.isfinite(q.dequantize()).all()
    if not ok:
        raise ValueError(f"{q.scheme}: weights up to |w| = {float(np.max(np.abs(w))):.4g} overflow "
                         f"float32 once quantized (scale x code); rescale them before quantizing")
    return q
