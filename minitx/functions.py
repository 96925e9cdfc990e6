"""The differentiable primitives behind `Tensor`'s methods, forward and backward side by side.

Elementwise arithmetic and functions, matmul (through `minitx.backend.matmul`, so the Cython GEMM
runs it when active), reductions with `dim` / `keepdim`, and shape and indexing ops. Ops on several
tensors (cat, where, gather) are in `minitx.ops`; neural-network functions in
`minitx.nn.functional`.
"""
import numpy as np

from minitx import backend
from minitx.autograd import Function, _dims, unbroadcast

# ============================== elementwise ==================================================
class Cast(Function):
    @staticmethod
    def forward(ctx, a, dtype):
        ctx.src = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.src)


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        return a + b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return unbroadcast(g, sa), unbroadcast(g, sb)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        return a - b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return unbroadcast(g, sa), unbroadcast(-g, sb)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g * b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(g * a, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g / b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


class Pow(Function):
    """a ** p for a constant exponent p: d/da = p * a ** (p - 1), and 0 where p = 0 (so the
    gradient of x ** 0 at x = 0 is 0, not 0 * inf, as in torch)."""
    @staticmethod
    def forward(ctx, a, exponent):
        ctx.save_for_backward(a)
        ctx.p = np.asarray(exponent, dtype=a.dtype)
        with np.errstate(divide="ignore", invalid="ignore"):
            return a ** ctx.p

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        p = ctx.p
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(p == 0, 0, p * a ** (p - 1))
        return unbroadcast((g * d).astype(g.dtype, copy=False), a.shape)


class PowTensor(Function):
    """a ** b elementwise for two tensors, real-valued like torch.pow: defined for a negative base
    with an integral exponent ((-2) ** 3 = -8), NaN for a negative base with a fractional one,
    0 ** 0 = 1. Gradients (torch's pow_backward_self / pow_backward_exponent):
        d/da = b * a ** (b - 1), but 0 where b = 0;
        d/db = a ** b * log(a),  but 0 where a = 0 and b >= 0.
    """
    @staticmethod
    def forward(ctx, a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.power(a, b)
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved_tensors
        ga = gb = None
        with np.errstate(divide="ignore", invalid="ignore"):
            if ctx.needs_input_grad[0]:
                d = np.where(b == 0, 0, b * np.power(a, b - 1))
                ga = unbroadcast(g * d, a.shape)
            if ctx.needs_input_grad[1]:
                d = np.where((a == 0) & (b >= 0), 0, out * np.log(a))
                gb = unbroadcast(g * d, b.shape)
        return ga, gb


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * out


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g / a


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * (1 - out * out)


class Abs(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.abs(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * np.sign(a)


class Relu(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.maximum(a, 0)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * (a > 0)


# ============================== matmul =======================================================
class MatMul(Function):
    """a @ b with NumPy's rules (batched, broadcast, 1-D promoted).

    dL/da = dL/dc @ b^T and dL/db = a^T @ dL/dc, each summed over broadcast batch dims.
    All three products go through `backend.matmul` (the Cython GEMM when it is active).
    """
    @staticmethod
    def forward(ctx, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul needs operands with at least 1 dim, got {a.shape} @ {b.shape}")
        if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul shape mismatch: {a.shape} @ {b.shape}")
        ctx.save_for_backward(a, b)
        return backend.matmul(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        a2 = a[None, :] if a.ndim == 1 else a                    # (..., M, K)
        b2 = b[:, None] if b.ndim == 1 else b                    # (..., K, N)
        g2 = g.reshape(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
                       + (a2.shape[-2], b2.shape[-1]))           # (..., M, N)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(backend.matmul(g2, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            gb = unbroadcast(backend.matmul(np.swapaxes(a2, -1, -2), g2), b2.shape).reshape(b.shape)
        return ga, gb


# ============================== reductions ===================================================
class Sum(Function):
    @staticmethod
    def forward(ctx, a, dim, keepdim):
        ctx.shape, ctx.dim, ctx.keepdim = a.shape, dim, keepdim
        return np.asarray(a.sum(axis=None if dim is None else _dims(dim), keepdims=keepdim))

    @staticmethod
    def backward(ctx, g):
        if ctx.dim is not None and not ctx.keepdim:
            g = np.expand_dims(g, tuple(d % len(ctx.shape) for d in _dims(ctx.dim)))
        return np.broadcast_to(g, ctx.shape).copy()


class Mean(Function):
    @staticmethod
    def forward(ctx, a, dim, keepdim):
        ctx.shape, ctx.dim, ctx.keepdim = a.shape, dim, keepdim
        out = a.mean(axis=None if dim is None else _dims(dim), keepdims=keepdim)
        ctx.count = a.size // max(np.asarray(out).size, 1) if a.size else 1
        return np.asarray(out, dtype=a.dtype)

    @staticmethod
    def backward(ctx, g):
        if ctx.dim is not None and not ctx.keepdim:
            g = np.expand_dims(g, tuple(d % len(ctx.shape) for d in _dims(ctx.dim)))
        return np.broadcast_to(g / ctx.count, ctx.shape).astype(g.dtype)


class Max(Function):
    """max over all elements (ties share the gradient equally, as torch.max() does) or over one
    dim (the gradient goes to the first maximal index, as torch.max(dim) does)."""
    @staticmethod
    def forward(ctx, a, dim, keepdim):
        ctx.shape, ctx.dim, ctx.keepdim = a.shape, dim, keepdim
        if dim is None:
            out = np.asarray(a.max())
            ctx.mask = a == out
            return out
        ctx.idx = np.expand_dims(a.argmax(axis=dim), dim)                # first max index
        out = np.take_along_axis(a, ctx.idx, axis=dim)
        return out if keepdim else np.squeeze(out, axis=dim)

    @staticmethod
    def backward(ctx, g):
        if ctx.dim is None:
            return ctx.mask * (g / ctx.mask.sum())
        if not ctx.keepdim:
            g = np.expand_dims(g, ctx.dim)
        out = np.zeros(ctx.shape, dtype=g.dtype)
        np.put_along_axis(out, ctx.idx, g, axis=ctx.dim)
        return out


# ============================== shape and indexing ===========================================
class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape)


class Permute(Function):
    @staticmethod
    def forward(ctx, a, dims):
        if sorted(d % a.ndim for d in dims) != list(range(a.ndim)):
            raise ValueError(f"permute dims {dims} are not a permutation of {a.ndim} dims")
        ctx.dims = dims
        return np.transpose(a, dims)

    @staticmethod
    def backward(ctx, g):
        return np.transpose(g, np.argsort([d % g.ndim for d in ctx.dims]))


class GetItem(Function):
    """a[index] for basic and advanced indices; the backward scatters with np.add.at so that
    repeated indices accumulate."""
    @staticmethod
    def forward(ctx, a, index):
        ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        return np.asarray(a[index])

    @staticmethod
    def backward(ctx, g):
        out = np.zeros(ctx.shape, dtype=ctx.dtype)
        if _is_basic_index(ctx.index):
            out[ctx.index] += g          # slices and ints never select an element twice
        else:
            np.add.at(out, ctx.index, g)
        return out


def _is_basic_index(index):
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, np.integer, slice))
               for i in items)


class MaskedFill(Function):
    @staticmethod
    def forward(ctx, a, mask, value):
        ctx.mask, ctx.shape = mask, a.shape
        return np.where(mask, np.asarray(value, dtype=a.dtype), a)

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(np.where(ctx.mask, 0, g), ctx.shape).astype(g.dtype, copy=False)
