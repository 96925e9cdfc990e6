"""Reverse-mode automatic differentiation over NumPy arrays.

A `Tensor` wraps an ndarray. Every differentiable operation is a `Function` whose `forward` and
`backward` sit side by side (as in micrograd and PyTorch's `torch.autograd.Function`). Calling
`Function.apply` on tensors records a node of the graph; `Tensor.backward()` sorts the graph
topologically with an explicit stack (no recursion, so a 10,000-op chain is fine) and walks it in
reverse, applying each node's `backward` once all gradients flowing into it have been summed.

Gradient rules follow PyTorch:
  - only leaf tensors created with `requires_grad=True` (e.g. parameters) keep `.grad`;
  - `.grad` accumulates (adds up) across `backward()` calls until it is zeroed;
  - a graph is freed by its backward pass; a second `backward()` through it is an error unless
    the first used `retain_graph=True`;
  - broadcasting in the forward pass is undone by summing in the backward pass (`unbroadcast`).

Reference: Baydin et al. 2018, "Automatic differentiation in machine learning: a survey",
arXiv 1502.05767, section 3.2 (reverse mode).
"""
import contextlib

import numpy as np

from minitx import backend

_grad_enabled = True


def is_grad_enabled():
    """True unless inside a `no_grad()` block."""
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Context manager: operations inside record no graph (inference, optimizer updates)."""
    global _grad_enabled
    previous = _grad_enabled
    _grad_enabled = False
    try:
        yield
    finally:
        _grad_enabled = previous


def unbroadcast(grad, shape):
    """Sum `grad` over the axes that broadcasting added or stretched, so it has `shape`.

    Args:
        grad: ndarray of the broadcast result's shape.
        shape: the shape of the operand before broadcasting.
    Returns:
        ndarray of `shape`.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:                                   # leading axes added by broadcasting
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:                                   # size-1 axes stretched by broadcasting
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


class Context:
    """What a Function's forward leaves for its backward: saved arrays and any attributes."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self._saved = ()
        self._freed = False

    def save_for_backward(self, *arrays):
        self._saved = arrays

    @property
    def saved_tensors(self):
        if self._freed:
            raise RuntimeError("Trying to backward through the graph a second time; use "
                               "backward(retain_graph=True) the first time if you need to")
        return self._saved


class Function:
    """Base class of differentiable operations.

    Subclasses define two static methods:
        forward(ctx, *args, **kwargs) -> ndarray: Tensor args arrive as ndarrays.
        backward(ctx, grad_out) -> one gradient (ndarray or None) per positional arg.
    and are called as `MyFunction.apply(*args, **kwargs)`, which returns a Tensor.
    """

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad_out):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        ctx = Context(needs)
        arrays = [a.data if isinstance(a, Tensor) else a for a in args]
        out = cls.forward(ctx, *arrays, **kwargs)
        requires = _grad_enabled and any(needs)
        result = Tensor(out, requires_grad=requires)
        if requires:
            result._node = (cls, ctx, args)
        return result


def _as_array(value, dtype=None):
    if isinstance(value, Tensor):
        return value.data
    if isinstance(value, np.ndarray):
        return value if dtype is None else value.astype(dtype, copy=False)
    arr = np.asarray(value)
    if dtype is not None:
        return arr.astype(dtype)
    if arr.dtype == np.float64 and not isinstance(value, np.floating):
        arr = arr.astype(np.float32)                # Python floats and lists: float32
    return arr


class Tensor:
    """An ndarray with an optional gradient and a link to the Function that produced it.

    Args:
        data: array-like; float ndarrays keep their dtype, Python floats become float32.
        requires_grad: whether gradients should flow to (and accumulate in) this tensor.
    """
    __array_priority__ = 1000        # ndarray (op) Tensor defers to Tensor's reflected op

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = _as_array(data, dtype)
        if requires_grad and not np.issubdtype(self.data.dtype, np.floating):
            raise TypeError(f"only floating point tensors can require gradients, got "
                            f"{self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._node = None            # (Function subclass, Context, args) if not a leaf

    # ---- basic properties -------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    is_leaf = property(lambda self: self._node is None)

    def size(self, dim=None):
        return self.data.shape if dim is None else self.data.shape[dim]

    def numel(self):
        return self.data.size

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({np.array2string(self.data, precision=4, threshold=20)}{grad})"

    def numpy(self):
        """The underlying ndarray (shared, not copied), like torch's `.numpy()` on a CPU tensor."""
        return self.data

    def item(self):
        return self.data.item()

    def detach(self):
        """A new leaf tensor sharing this data, cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, flag=True):
        self.requires_grad = bool(flag)
        return self

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    def to(self, dtype):
        return Cast.apply(self, dtype=np.dtype(dtype))

    def zero_grad(self):
        self.grad = None

    # ---- the backward pass ------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into `.grad` of every leaf that requires grad.

        Args:
            grad: upstream gradient of self's shape; may be omitted for a single-element tensor.
            retain_graph: keep saved arrays so backward can run through this graph again.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"grad can be implicitly created only for scalar outputs, "
                                   f"got shape {self.shape}")
            grad = np.ones_like(self.data)
        grad = _as_array(grad, self.data.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"grad shape {grad.shape} does not match tensor shape {self.shape}")

        order = _topological_order(self)
        grads = {id(self): grad}
        for t in order:                                       # outputs before inputs
            g = grads.pop(id(t), None)
            if g is None:
                continue
            if t._node is None:                               # a leaf: accumulate
                if t.requires_grad:
                    t.grad = g.copy() if t.grad is None else t.grad + g
                continue
            fn, ctx, args = t._node
            in_grads = fn.backward(ctx, g)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            if len(in_grads) != len(args):
                raise RuntimeError(f"{fn.__name__}.backward returned {len(in_grads)} gradients "
                                   f"for {len(args)} inputs")
            for a, ga in zip(args, in_grads):
                if ga is None or not isinstance(a, Tensor) or not a.requires_grad:
                    continue
                if ga.shape != a.shape:
                    raise RuntimeError(f"{fn.__name__}.backward gave a gradient of shape "
                                       f"{ga.shape} for an input of shape {a.shape}")
                key = id(a)
                grads[key] = ga if key not in grads else grads[key] + ga
            if not retain_graph:
                ctx._freed = True
                ctx._saved = ()

    # ---- arithmetic -------------------------------------------------------------------------
    def _lift(self, other):
        if isinstance(other, Tensor):
            return other
        return Tensor(np.asarray(other, dtype=self.data.dtype))

    def __add__(self, other): return Add.apply(self, self._lift(other))
    def __radd__(self, other): return Add.apply(self._lift(other), self)
    def __sub__(self, other): return Sub.apply(self, self._lift(other))
    def __rsub__(self, other): return Sub.apply(self._lift(other), self)
    def __mul__(self, other): return Mul.apply(self, self._lift(other))
    def __rmul__(self, other): return Mul.apply(self._lift(other), self)
    def __truediv__(self, other): return Div.apply(self, self._lift(other))
    def __rtruediv__(self, other): return Div.apply(self._lift(other), self)
    def __neg__(self): return Neg.apply(self)
    def __matmul__(self, other): return MatMul.apply(self, self._lift(other))
    def __rmatmul__(self, other): return MatMul.apply(self._lift(other), self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            return Exp.apply(Mul.apply(exponent, Log.apply(self)))   # a**b = exp(b log a)
        return Pow.apply(self, exponent=float(exponent))

    def __rpow__(self, base):
        return Exp.apply(Mul.apply(self, self._lift(np.log(base))))

    # comparisons give plain boolean arrays (no gradient), like torch's bool tensors
    def __lt__(self, other): return self.data < _as_array(other)
    def __le__(self, other): return self.data <= _as_array(other)
    def __gt__(self, other): return self.data > _as_array(other)
    def __ge__(self, other): return self.data >= _as_array(other)

    def exp(self): return Exp.apply(self)
    def log(self): return Log.apply(self)
    def tanh(self): return Tanh.apply(self)
    def sqrt(self): return Pow.apply(self, exponent=0.5)
    def abs(self): return Abs.apply(self)
    def relu(self): return Relu.apply(self)
    def matmul(self, other): return self @ other

    def sum(self, dim=None, keepdim=False): return Sum.apply(self, dim=dim, keepdim=keepdim)
    def mean(self, dim=None, keepdim=False): return Mean.apply(self, dim=dim, keepdim=keepdim)
    def max(self, dim=None, keepdim=False): return Max.apply(self, dim=dim, keepdim=keepdim)

    def var(self, dim=None, keepdim=False, unbiased=True):
        n = self.data.size if dim is None else np.prod([self.shape[d] for d in _dims(dim)])
        centred = self - self.mean(dim=dim, keepdim=True)
        return (centred * centred).sum(dim=dim, keepdim=keepdim) / (n - 1 if unbiased else n)

    def softmax(self, dim=-1):
        from minitx.nn.functional import softmax
        return softmax(self, dim=dim)

    def log_softmax(self, dim=-1):
        from minitx.nn.functional import log_softmax
        return log_softmax(self, dim=dim)

    # ---- shape ------------------------------------------------------------------------------
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape.apply(self, shape=shape)

    view = reshape

    def transpose(self, dim0, dim1):
        perm = list(range(self.ndim))
        perm[dim0], perm[dim1] = perm[dim1], perm[dim0]
        return Permute.apply(self, dims=tuple(perm))

    def permute(self, *dims):
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        return Permute.apply(self, dims=dims)

    @property
    def T(self):
        return Permute.apply(self, dims=tuple(reversed(range(self.ndim))))

    def unsqueeze(self, dim):
        d = dim if dim >= 0 else self.ndim + 1 + dim
        return self.reshape(self.shape[:d] + (1,) + self.shape[d:])

    def squeeze(self, dim):
        if self.shape[dim] != 1:
            return self
        shape = list(self.shape)
        del shape[dim]
        return self.reshape(tuple(shape))

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data
        return GetItem.apply(self, index=index)

    def gather(self, dim, index):
        from minitx.ops import gather
        return gather(self, dim, index)

    def masked_fill(self, mask, value):
        return MaskedFill.apply(self, mask=_as_array(mask).astype(bool), value=value)

    def split(self, split_size, dim=0):
        from minitx.ops import split
        return split(self, split_size, dim=dim)


def tensor(data, requires_grad=False, dtype=None):
    """Make a leaf Tensor (`minitx.tensor`, like `torch.tensor`).

    Args:
        data: array-like. Float ndarrays keep their dtype; Python floats/lists become float32.
        requires_grad: track gradients for this tensor.
        dtype: optional dtype to cast to (e.g. np.float64 for gradient checks).
    """
    arr = _as_array(data, dtype)
    if isinstance(data, np.ndarray) and arr is data:
        arr = arr.copy()                      # torch.tensor copies its input
    return Tensor(arr, requires_grad=requires_grad)


def _topological_order(root):
    """Tensors reachable from `root` through graph nodes, each after all tensors that use it.

    Iterative depth-first search: a node is emitted after all its inputs (post-order); reversing
    the post-order visits every tensor after every tensor computed from it.
    """
    post, visited = [], set()
    stack = [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            post.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        if t._node is not None:
            for a in t._node[2]:
                if isinstance(a, Tensor) and a.requires_grad and id(a) not in visited:
                    stack.append((a, False))
    post.reverse()
    return post


def _dims(dim):
    return (dim,) if isinstance(dim, int) else tuple(dim)


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
    """a ** p for a constant exponent p: d/da = p * a ** (p - 1)."""
    @staticmethod
    def forward(ctx, a, exponent):
        ctx.save_for_backward(a)
        ctx.p = exponent
        return a ** np.asarray(exponent, dtype=a.dtype)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        p = np.asarray(ctx.p, dtype=a.dtype)
        return g * p * a ** (p - 1)


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
