"""Range setting: choosing the clipping range [lo, hi] that a uniform quantizer covers.

Nagel et al. 2021 (arXiv 2106.08295), section 3.4:
  - min-max: [min x, max x]: no clipping error, but one outlier stretches the step for everyone;
  - percentile: [P_(100-p)(x), P_p(x)]: clips the rarest values to shrink the step;
  - MSE: argmin over [lo, hi] of || x - q(x; lo, hi) ||^2, found here by a grid search over
    shrink factors alpha of the min-max range ([alpha * min, alpha * max]), the common recipe.
Symmetric quantizers use [-a, a] with a from |x|.

All functions reduce over the LAST axis and keep it: X (..., n) -> lo, hi (..., 1).
"""
import numpy as np

from minitx.quant.integer import fake_quant, scale_zero

METHODS = ("minmax", "percentile", "mse")
MSE_GRID = np.linspace(0.2, 1.0, 41)      # shrink factors tried by the MSE search


def minmax_range(X, symmetric=False):
    """[min, max] over the last axis (symmetric: [-absmax, absmax])."""
    if symmetric:
        a = np.abs(X).max(axis=-1, keepdims=True)
        return -a, a
    return X.min(axis=-1, keepdims=True), X.max(axis=-1, keepdims=True)


def percentile_range(X, percentile=99.9, symmetric=False):
    """[P_(100-p), P_p] over the last axis (symmetric: [-P_p(|x|), P_p(|x|)])."""
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
    if symmetric:
        a = np.percentile(np.abs(X), percentile, axis=-1, keepdims=True)
        return -a, a
    lo = np.percentile(X, 100.0 - percentile, axis=-1, keepdims=True)
    hi = np.percentile(X, percentile, axis=-1, keepdims=True)
    return lo, hi


def mse_range(X, bits, symmetric=False, grid=MSE_GRID):
    """The shrunk min-max range alpha * [lo, hi] minimising the quantization MSE, per row.

    Args:
        X: float array (..., n).
        bits: bit width of the quantizer the range is for.
        symmetric: symmetric or asymmetric quantizer.
        grid: shrink factors alpha to try (1.0 = min-max).
    Returns:
        lo, hi: (..., 1).
    """
    lo0, hi0 = minmax_range(X, symmetric)
    best_err = np.full(lo0.shape, np.inf)
    best_lo, best_hi = lo0.copy(), hi0.copy()
    for alpha in grid:
        lo, hi = alpha * lo0, alpha * hi0
        s, z = scale_zero(lo, hi, bits, symmetric)
        err = ((X - fake_quant(X, s, z, bits, symmetric)) ** 2).sum(axis=-1, keepdims=True)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_lo = np.where(better, lo, best_lo)
        best_hi = np.where(better, hi, best_hi)
    return best_lo, best_hi


def find_range(X, method="minmax", bits=8, symmetric=False, percentile=99.9):
    """Dispatch to one of METHODS. X (..., n) -> lo, hi (..., 1)."""
    if method == "minmax":
        return minmax_range(X, symmetric)
    if method == "percentile":
        return percentile_range(X, percentile, symmetric)
    if method == "mse":
        return mse_range(X, bits, symmetric)
    raise ValueError(f"range_method must be one of {METHODS}, got {method!r}")
