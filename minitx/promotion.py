"""Type promotion for Tensor arithmetic, following PyTorch's documented rules.

PyTorch ("Type Promotion", torch.result_type) sorts dtypes into categories, bool < integer <
floating, and operands into three priorities:
    dim     tensors with at least one dimension
    zero    zero-dimensional tensors
    wrapped non-tensors: Python numbers (and, in minitx, NumPy scalars and arrays)
The result starts from the dim tensors' common dtype; a lower-priority operand only changes it when
its category is higher (an int tensor times 0.5 is float32, a float32 tensor plus a float64
zero-dim tensor stays float32). A non-tensor contributes only its category, at that category's
default dtype: bool, int64, float32.

One documented difference: PyTorch turns a NumPy *array* operand into a tensor (so float32 tensor
+ float64 array is float64). minitx treats an ndarray like any other non-tensor, so its category
counts but never its width: a float32 model stays float32 when a constant was built with NumPy's
default float64, and an int tensor plus a float64 array is float32.
"""
import numpy as np

BOOL, INTEGER, FLOATING = 0, 1, 2
DEFAULT = {BOOL: np.dtype(bool), INTEGER: np.dtype(np.int64), FLOATING: np.dtype(np.float32)}


_KINDS = {"b": BOOL, "i": INTEGER, "u": INTEGER, "f": FLOATING}


def category(dtype):
    """0 for bool, 1 for (unsigned) integers, 2 for floating point dtypes."""
    dtype = np.dtype(dtype)
    if dtype.kind not in _KINDS:
        raise TypeError(f"minitx tensors hold bool, integer or floating values, not {dtype}")
    return _KINDS[dtype.kind]


def promote_types(a, b):
    """torch.promote_types: across categories the higher one's dtype wins (int32 with float16 is
    float16, where NumPy would give float32); within one category NumPy's rule (the wider)."""
    if a is None or b is None:
        return b if a is None else a
    ca, cb = category(a), category(b)
    if ca != cb:
        return np.dtype(a if ca > cb else b)
    return np.promote_types(a, b)


def _combine(higher, lower):
    """A higher-priority result keeps its dtype unless `lower` is of a higher category."""
    if higher is None or lower is None:
        return lower if higher is None else higher
    if category(higher) == FLOATING:
        return higher
    if category(higher) == BOOL or category(lower) == FLOATING:
        return promote_types(higher, lower)
    return higher


def result_type(operands):
    """The dtype of an elementwise op on `operands` (torch.result_type).

    Args:
        operands: iterable of (dtype, kind) with kind "dim", "zero" or "wrapped" (a non-tensor).
    Returns:
        np.dtype.
    """
    best = {"dim": None, "zero": None, "wrapped": None}
    for dtype, kind in operands:
        if kind == "wrapped":
            dtype = DEFAULT[category(dtype)]
        best[kind] = promote_types(best[kind], dtype)
    return _combine(best["dim"], _combine(best["zero"], best["wrapped"]))
