"""`QuantizedTensor`: the common shape of every quantized weight in minitx.quant.

A quantized tensor is a handful of stored arrays (packed codes, scales, ...) plus the recipe to turn
them back into floats. Two rules hold for every scheme:

  - `dequantize()` returns the float32 array of the original shape;
  - `bits_per_weight` is COUNTED from the stored arrays (8 * total bytes / number of weights), so
    every scale, zero point, mask, padding byte and double-quantized constant is paid for.

Weights are handled as matrices (rows, cols) in PyTorch's Linear layout (out_features, in_features):
"per-channel" means one scale per output row, "per-group"/"blockwise" means groups of `group_size`
consecutive entries along a row (the reduction dim of the matmul). A row whose length is not a
multiple of the group size is padded with zeros inside the last group (and the pad is stored).
"""
import numpy as np

SCHEMES = {}   # kind -> QuantizedTensor subclass, for loading from a checkpoint


def register(cls):
    """Class decorator: make `cls` loadable by `QuantizedTensor.from_state`."""
    SCHEMES[cls.kind] = cls
    return cls


def as_matrix(w):
    """View `w` as a 2-D float32 matrix (rows, cols): 1-D -> (1, n); N-D -> (shape[0], rest)."""
    w = np.asarray(w)
    if not np.issubdtype(w.dtype, np.floating):
        raise TypeError(f"weights must be a floating-point array, got dtype {w.dtype}")
    if w.ndim == 0 or w.size == 0:
        raise ValueError(f"weights must be a non-empty array with ndim >= 1, got shape {w.shape}")
    _check_float32_range(w)
    w = w.astype(np.float32, copy=False)
    if w.ndim == 1:
        return w.reshape(1, -1)
    return w.reshape(w.shape[0], -1)


def _check_float32_range(w):
    """ValueError unless every value is finite and within float32's range (scales and codes are
    float32: a float64 weight of 1e39 would otherwise become inf, then NaN after quantizing)."""
    bad = ~np.isfinite(w)
    big = np.finfo(np.float32).max
    if not bad.any() and w.dtype.itemsize > 4:
        bad = np.abs(w) > big
    if bad.any():
        i = np.unravel_index(np.flatnonzero(bad)[0], w.shape)
        raise ValueError(f"weights must be finite (no NaN or infinity) and within float32's range "
                         f"(|w| <= {big:.4g}) to be quantized; {int(bad.sum())} value(s) are not, "
                         f"e.g. {w[i]!r} at index {tuple(int(j) for j in i)}")


def to_groups(W, group_size):
    """Split each row of W (R, C) into groups of `group_size` (None: the whole row).

    Returns:
        (R, G, g) array, zero-padded so that G * g >= C.
    """
    R, C = W.shape
    g = C if group_size is None else int(group_size)
    if g < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    pad = (-C) % g
    if pad:
        W = np.pad(W, ((0, 0), (0, pad)))
    return W.reshape(R, -1, g)                              # (R, G, g)


def from_groups(Wg, shape):
    """Inverse of `to_groups` + `as_matrix`: (R, G, g) -> array of `shape` (padding dropped)."""
    R = Wg.shape[0]
    n = int(np.prod(shape)) // R
    return Wg.reshape(R, -1)[:, :n].reshape(shape)


class QuantizedTensor:
    """Base class. Subclasses set `kind` and implement `dequantize()`.

    Attributes:
        shape: shape of the original float tensor.
        arrays: dict name -> ndarray, everything that is stored (and counted in bits_per_weight).
        meta: dict of JSON-serialisable settings (bits, group size, ...), not counted.
    """
    kind = "base"

    def __init__(self, shape, arrays, meta):
        self.shape = tuple(int(s) for s in shape)
        self.arrays = dict(arrays)
        self.meta = dict(meta)

    @property
    def scheme(self):
        """Human-readable scheme name, e.g. "int4-sym-g64" or "nf4-b64-dq"."""
        return self.meta.get("scheme", self.kind)

    @property
    def numel(self):
        return int(np.prod(self.shape))

    @property
    def nbytes(self):
        """Bytes of all stored arrays."""
        return int(sum(a.nbytes for a in self.arrays.values()))

    @property
    def bits_per_weight(self):
        """Stored bits divided by the number of weights (all overheads included)."""
        return 8.0 * self.nbytes / self.numel

    def dequantize(self):
        """The float32 reconstruction, shape `self.shape`."""
        raise NotImplementedError

    def state(self):
        """(arrays, meta) describing this tensor; `from_state` rebuilds it."""
        meta = dict(self.meta, kind=self.kind, shape=list(self.shape))
        return dict(self.arrays), meta

    @staticmethod
    def from_state(arrays, meta):
        """Rebuild a quantized tensor saved with `state()`."""
        kind = meta.get("kind")
        if kind not in SCHEMES:
            raise ValueError(f"unknown quantized tensor kind {kind!r}; known: {sorted(SCHEMES)}")
        meta = dict(meta)
        meta.pop("kind")
        shape = meta.pop("shape")
        return SCHEMES[kind](shape, arrays, meta)

    def __repr__(self):
        return (f"{type(self).__name__}(scheme={self.scheme!r}, shape={self.shape}, "
                f"bits_per_weight={self.bits_per_weight:.3f})")
