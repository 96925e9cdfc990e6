"""Differentiable operations on several tensors: cat, split, stack, where, gather.

Each is a `Function` with its forward and backward side by side; `Tensor` methods and the
top-level `minitx` namespace call these.
"""
import numpy as np

from minitx.autograd import Function, Tensor, _as_array


class _Cat(Function):
    @staticmethod
    def forward(ctx, *arrays, dim):
        ctx.dim = dim
        ctx.sizes = [a.shape[dim] for a in arrays]
        return np.concatenate(arrays, axis=dim)

    @staticmethod
    def backward(ctx, g):
        cuts = np.cumsum(ctx.sizes)[:-1]
        return tuple(np.split(g, cuts, axis=ctx.dim))


def cat(tensors, dim=0):
    """Concatenate tensors along `dim` (torch.cat).

    Args:
        tensors: sequence of Tensors with equal shapes except along `dim`.
    Returns:
        Tensor whose `dim` size is the sum of the inputs'.
    """
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat needs at least one tensor")
    shapes = {t.shape[:dim % t.ndim] + t.shape[dim % t.ndim + 1:] for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"cat: shapes {[t.shape for t in tensors]} differ outside dim {dim}")
    return _Cat.apply(*tensors, dim=dim)


def stack(tensors, dim=0):
    """Stack equal-shaped tensors along a new dim (torch.stack)."""
    return cat([t.unsqueeze(dim) for t in tensors], dim=dim)


def split(t, split_size, dim=0):
    """Split a tensor into chunks of `split_size` along `dim` (the last may be smaller), or into
    the sizes listed if `split_size` is a list (torch.split). Returns a tuple of Tensors."""
    n = t.shape[dim]
    sizes = list(split_size) if isinstance(split_size, (list, tuple)) else \
        [min(split_size, n - s) for s in range(0, n, split_size)]
    if sum(sizes) != n:
        raise ValueError(f"split sizes {sizes} do not add up to dim {dim} of size {n}")
    out, start = [], 0
    for size in sizes:
        index = [slice(None)] * t.ndim
        index[dim] = slice(start, start + size)
        out.append(t[tuple(index)])
        start += size
    return tuple(out)


class _Where(Function):
    @staticmethod
    def forward(ctx, a, b, cond):
        ctx.cond, ctx.shapes = cond, (a.shape, b.shape)
        return np.where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        from minitx.autograd import unbroadcast
        sa, sb = ctx.shapes
        zero = np.zeros((), dtype=g.dtype)
        ga = unbroadcast(np.where(ctx.cond, g, zero), sa)
        gb = unbroadcast(np.where(ctx.cond, zero, g), sb)
        return ga, gb, None


def where(condition, a, b):
    """Elementwise `a` where `condition` else `b`, with broadcasting (torch.where)."""
    cond = _as_array(condition).astype(bool)
    a = a if isinstance(a, Tensor) else Tensor(np.asarray(a, dtype=_dtype_of(b)))
    b = b if isinstance(b, Tensor) else Tensor(np.asarray(b, dtype=a.dtype))
    return _Where.apply(a, b, cond)


def _dtype_of(x):
    return x.dtype if isinstance(x, Tensor) else np.float32


class _Gather(Function):
    @staticmethod
    def forward(ctx, a, dim, index):
        ctx.shape, ctx.dim, ctx.index = a.shape, dim, index
        return np.take_along_axis(a, index, axis=dim)

    @staticmethod
    def backward(ctx, g):
        out = np.zeros(ctx.shape, dtype=g.dtype)
        # scatter-add: indices may repeat along dim
        idx = list(np.indices(ctx.index.shape, sparse=True))
        idx[ctx.dim] = ctx.index
        np.add.at(out, tuple(idx), g)
        return out, None, None


def gather(t, dim, index):
    """out[i][j] = t[i][index[i][j]] along `dim` (torch.gather).

    Args:
        t: Tensor (..., n, ...); index: integer array with t's number of dims.
    """
    index = _as_array(index)
    if not np.issubdtype(index.dtype, np.integer):
        raise TypeError(f"gather index must be integer, got {index.dtype}")
    if index.ndim != t.ndim:
        raise ValueError(f"gather index needs {t.ndim} dims like the input, got {index.ndim}")
    n = t.shape[dim]
    if index.size and (index.min() < -n or index.max() >= n):
        raise IndexError(f"gather index out of range [0, {n}) along dim {dim}")
    return _Gather.apply(t, dim, index)
