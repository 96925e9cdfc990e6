"""1-bit weights: binarization and PB-LLM partial binarization.

Binarization (Rastegari et al. 2016, XNOR-Net; the L2-optimal scale): each row r becomes
    w_hat = alpha_r * sign(w - mu_r) + mu_r,     alpha_r = mean_j |w_rj - mu_r|,
with mu_r = 0 (plain) or the row mean (mean-centred). sign(0) is taken as +1.

PB-LLM (Shang et al. 2023, arXiv 2310.00034): binarizing everything destroys an LLM, so a small
fraction p of SALIENT weights is kept in higher precision (8-bit, per-row absmax) and the rest is
binarized (its alpha computed over the non-salient weights of the row only). Saliency is either
  - magnitude: |w_rj|, or
  - Hessian: the diagonal-Hessian OBS criterion w_rj^2 * H_jj, with H = 2 X^T X from calibration
    activations X (N, C) of the layer's input (H_jj = 2 * sum_n x_nj^2): a weight matters when the
    inputs it multiplies are large.
Storage is counted honestly: a 1-bit salient mask per weight, 1 sign bit per non-salient weight,
8 bits per salient weight and two float32 scales per row.
"""
import numpy as np

from minitx.quant.packing import pack_bits, unpack_bits
from minitx.quant.qtensor import QuantizedTensor, as_matrix, register

SALIENCY = ("magnitude", "hessian")


@register
class BinaryQuantized(QuantizedTensor):
    """Stored: signs uint8 (R, ceil(C/8)) bit-packed (1 = non-negative); alpha float32 (R,);
    mean float32 (R,) when centred."""
    kind = "binary"

    def dequantize(self):
        C = self.meta["cols"]
        sign = unpack_bits(self.arrays["signs"], C, 1).astype(np.float32) * 2 - 1   # (R, C)
        mu = self.arrays["mean"][:, None] if "mean" in self.arrays else 0.0
        W = self.arrays["alpha"][:, None] * sign + mu
        return W.astype(np.float32).reshape(self.shape)


def binarize(w, centered=False):
    """Binarize each row: alpha_r * sign(w - mu_r) + mu_r.

    Args:
        w: float array, any shape (rows of its (shape[0], rest) view).
        centered: subtract the row mean mu_r first (stored as one more float32 per row).
    Returns:
        BinaryQuantized.
    """
    shape = np.shape(w)
    W = as_matrix(w)                                                 # (R, C)
    # statistics in float64: a float32 sum of large weights would overflow to inf
    mu = W.mean(axis=1, keepdims=True, dtype=np.float64) if centered else np.zeros((W.shape[0], 1))
    D = W - mu                                                       # float64 (R, C)
    alpha = np.abs(D).mean(axis=1)                                   # (R,)
    arrays = {"signs": pack_bits((D >= 0).astype(np.uint8), 1), "alpha": alpha.astype(np.float32)}
    if centered:
        arrays["mean"] = mu[:, 0].astype(np.float32)
    meta = {"scheme": "binary-centered" if centered else "binary", "rows": W.shape[0],
            "cols": W.shape[1], "centered": bool(centered)}
    return BinaryQuantized(shape, arrays, meta)


def saliency_scores(W, saliency="magnitude", hessian_diag=None):
    """Per-weight saliency, float64 (R, C).

    Args:
        W: (R, C) weights.
        saliency: "magnitude" (|w|) or "hessian" (w^2 * H_jj).
        hessian_diag: (C,) diagonal of H = 2 X^T X over calibration inputs; needed for "hessian".
    """
    if saliency == "magnitude":
        return np.abs(W).astype(np.float64)
    if saliency == "hessian":
        if hessian_diag is None:
            raise ValueError("saliency 'hessian' needs hessian_diag (C,) from calibration inputs")
        h = np.asarray(hessian_diag, np.float64).reshape(-1)
        if h.shape[0] != W.shape[1]:
            raise ValueError(f"hessian_diag has {h.shape[0]} entries, weights have {W.shape[1]} "
                             "input columns")
        return W.astype(np.float64) ** 2 * h[None, :]
    raise ValueError(f"saliency must be one of {SALIENCY}, got {saliency!r}")


@register
class PBLLMQuantized(QuantizedTensor):
    """Stored: mask uint8 (R, ceil(C/8)) bit-packed salient mask; signs uint8 (ceil(n_bin/8),)
    signs of the binarized weights in row-major order; salient int8 (n_sal,) row-major;
    salient_scale float32 (R,); alpha float32 (R,)."""
    kind = "pbllm"

    def salient_mask(self):
        """bool (R, C): True where the weight is kept in 8 bits."""
        return unpack_bits(self.arrays["mask"], self.meta["cols"], 1).astype(bool)

    def dequantize(self):
        mask = self.salient_mask()                                   # (R, C)
        R, C = mask.shape
        n_bin = int((~mask).sum())
        sign = unpack_bits(self.arrays["signs"], n_bin, 1).astype(np.float32) * 2 - 1
        W = np.zeros((R, C), np.float32)
        rows = np.nonzero(~mask)[0]
        W[~mask] = self.arrays["alpha"][rows] * sign
        rows_s = np.nonzero(mask)[0]
        W[mask] = self.arrays["salient"].astype(np.float32) * self.arrays["salient_scale"][rows_s]
        return W.reshape(self.shape)


def quantize_pbllm(w, salient_fraction=0.1, saliency="magnitude", hessian_diag=None):
    """PB-LLM partial binarization.

    Args:
        w: float array, any shape ((shape[0], rest) view: rows = output channels).
        salient_fraction: fraction p of weights (chosen over the whole tensor) kept in int8.
        saliency: "magnitude" or "hessian" (see `saliency_scores`).
        hessian_diag: (C,) calibration statistic for "hessian".
    Returns:
        PBLLMQuantized.
    """
    if not 0.0 <= salient_fraction <= 1.0:
        raise ValueError(f"salient_fraction must be in [0, 1], got {salient_fraction!r}")
    shape = np.shape(w)
    W = as_matrix(w)                                                 # (R, C)
    R, C = W.shape
    score = saliency_scores(W, saliency, hessian_diag).reshape(-1)
    k = int(round(salient_fraction * W.size))
    mask = np.zeros(W.size, bool)
    if k > 0:
        mask[np.argpartition(-score, k - 1)[:k]] = True
    mask = mask.reshape(R, C)
    # salient part: int8 symmetric absmax per row, over the salient weights of that row
    a = np.where(mask, np.abs(W), 0).max(axis=1)                     # (R,)
    s_sal = np.where(a > 0, a / 127.0, 1.0).astype(np.float32)
    rows_s = np.nonzero(mask)[0]
    salient = np.clip(np.round(W[mask] / s_sal[rows_s]), -127, 127).astype(np.int8)
    # binarized part: sign times the mean |w| of the row's non-salient weights
    n_bin_row = (~mask).sum(axis=1)
    alpha = np.where(~mask, np.abs(W), 0).sum(axis=1, dtype=np.float64) / np.maximum(n_bin_row, 1)
    signs = pack_bits((W[~mask] >= 0).astype(np.uint8)[None, :], 1)[0]
    arrays = {"mask": pack_bits(mask.astype(np.uint8), 1), "signs": signs, "salient": salient,
              "salient_scale": s_sal, "alpha": alpha.astype(np.float32)}
    meta = {"scheme": f"pbllm-{saliency}-p{salient_fraction:g}", "rows": R, "cols": C,
            "salient_fraction": float(salient_fraction), "saliency": saliency}
    return PBLLMQuantized(shape, arrays, meta)
