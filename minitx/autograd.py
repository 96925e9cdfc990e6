"""Reverse-mode automatic differentiation over NumPy arrays.

A `Tensor` wraps an ndarray. Every differentiable operation is a `Function` whose `forward` and
`backward` sit side by side (as in micrograd and PyTorch's `torch.autograd.Function`; the
primitives behind Tensor's methods are in `minitx/functions.py`). Calling
`Function.apply` on tensors records a node of the graph; `Tensor.backward()` sorts the graph
topologically with an explicit stack (no recursion, so a 10,000-op chain is fine) and walks it in
reverse, applying each node's `backward` once all gradients flowing into it have been summed.

Gradient rules follow PyTorch:
  - only leaf tensors created with `requires_grad=True` (e.g. parameters) keep `.grad`;
  - `.grad` accumulates (adds up) across `backward()` calls until it is zeroed;
  - a graph is freed by its backward pass; a second `backward()` through it is an error unless
    the first used `retain_graph=True`;
  - broadcasting in the forward pass is undone by summing in the backward pass (`unbroadcast`);
  - a gradient has its input's dtype (a float32 leaf never gets a float64 `.grad`).
Arithmetic promotes dtypes by PyTorch's rules (`minitx.promotion`): int tensor * 0.5 is float32.

Reference: Baydin et al. 2018, "Automatic differentiation in machine learning: a survey",
arXiv 1502.05767, section 3.2 (reverse mode).
"""
import contextlib

import numpy as np

from minitx import promotion

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
                if ga.dtype != a.dtype:                       # a float32 leaf gets a
                    ga = ga.astype(a.dtype)                   # float32 grad, as in torch
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

    def _operands(self, other, true_divide=False):
        """(self, other) as Tensors of their promoted dtype (minitx.promotion: PyTorch's rules)."""
        dt = self.data.dtype
        same = isinstance(other, Tensor) and other.data.dtype == dt    # fast paths: most calls
        if not (same or (isinstance(other, (float, int)) and dt.kind == "f")):
            dt = promotion.result_type([_kind(self), _kind(other)])
        if true_divide and promotion.category(dt) != promotion.FLOATING:
            dt = promotion.DEFAULT[promotion.FLOATING]          # int / int is float32, as torch
        return _cast(self, dt), _cast(other, dt)

    def __add__(self, other): return Add.apply(*self._operands(other))
    def __radd__(self, other): return Add.apply(*reversed(self._operands(other)))
    def __sub__(self, other): return Sub.apply(*self._operands(other))
    def __rsub__(self, other): return Sub.apply(*reversed(self._operands(other)))
    def __mul__(self, other): return Mul.apply(*self._operands(other))
    def __rmul__(self, other): return Mul.apply(*reversed(self._operands(other)))
    def __truediv__(self, other): return Div.apply(*self._operands(other, true_divide=True))
    def __rtruediv__(self, other):
        return Div.apply(*reversed(self._operands(other, true_divide=True)))
    def __neg__(self): return Neg.apply(self)
    def __matmul__(self, other): return MatMul.apply(self, self._lift(other))
    def __rmatmul__(self, other): return MatMul.apply(self._lift(other), self)

    def __pow__(self, exponent):
        base, exp = self._operands(exponent)
        if isinstance(exponent, Tensor):
            return PowTensor.apply(base, exp)
        return Pow.apply(base, exponent=exp.data)

    def __rpow__(self, base):
        exp, base = self._operands(base)
        return PowTensor.apply(base, exp)

    # comparisons give plain boolean arrays (no gradient), like torch's bool tensors
    def __lt__(self, other): return self.data < _as_array(other)
    def __le__(self, other): return self.data <= _as_array(other)
    def __gt__(self, other): return self.data > _as_array(other)
    def __ge__(self, other): return self.data >= _as_array(other)

    def exp(self): return Exp.apply(self)
    def log(self): return Log.apply(self)
    def tanh(self): return Tanh.apply(self)
    def sqrt(self): return self ** 0.5
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


def _kind(x):
    """(dtype, priority) of an operand for minitx.promotion.result_type."""
    if isinstance(x, Tensor):
        return x.dtype, "dim" if x.ndim else "zero"
    return np.asarray(x).dtype, "wrapped"


def _cast(x, dtype):
    """x as a Tensor of `dtype`: a differentiable Cast for Tensors, a constant otherwise."""
    if not isinstance(x, Tensor):
        return Tensor(np.asarray(x, dtype=dtype))
    return x if x.dtype == dtype else Cast.apply(x, dtype=dtype)


def _dims(dim):
    return (dim,) if isinstance(dim, int) else tuple(dim)


# The primitives subclass Function (defined above), so they are imported last.
from minitx.functions import (Abs, Add, Cast, Div, Exp, GetItem, Log, MaskedFill,  # noqa: E402
                              MatMul, Max, Mean, Mul, Neg, Permute, Pow, PowTensor, Relu, Reshape,
                              Sub, Sum, Tanh)
