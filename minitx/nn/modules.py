"""Modules: containers of parameters with a `forward`, named and initialised as in torch.nn.

A `Module` registers every `Parameter` and sub-`Module` assigned to it as an attribute, in
assignment order, so `named_parameters()` and `state_dict()` list them with dotted names
("blocks.0.attn.qkv.weight") exactly as PyTorch would.
"""
import math

import numpy as np

from minitx import random as _random
from minitx.autograd import Tensor
from minitx.nn import functional as F


class Parameter(Tensor):
    """A leaf Tensor that a Module registers as trainable (requires_grad=True by default)."""

    def __init__(self, data, requires_grad=True):
        super().__init__(np.asarray(data), requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class: holds parameters and sub-modules; `__call__` runs `forward`."""

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               "before assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- traversal --------------------------------------------------------------------------
    def named_modules(self, prefix=""):
        """(name, module) for this module and all descendants, depth first."""
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            yield name, m
            children = [(f"{name}.{k}" if name else k, c) for k, c in m._modules.items()]
            stack.extend(reversed(children))

    def modules(self):
        return [m for _, m in self.named_modules()]

    def named_parameters(self):
        """(dotted name, Parameter) pairs; a parameter shared by two modules is listed once."""
        seen = set()
        for mname, m in self.named_modules():
            for pname, p in m._parameters.items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self):
        return sum(p.data.size for p in self.parameters())

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self):
        """Dotted name -> ndarray copy of every parameter (shared ones under each name)."""
        out = {}
        for mname, m in self.named_modules():
            for pname, p in m._parameters.items():
                out[f"{mname}.{pname}" if mname else pname] = p.data.copy()
        return out

    def load_state_dict(self, state, strict=True):
        """Copy arrays from `state` into the parameters, checking names, shapes and dtypes.

        Returns:
            (missing_keys, unexpected_keys); with strict=True any of them raises KeyError.
        """
        own = {}
        for mname, m in self.named_modules():
            for pname, p in m._parameters.items():
                own[f"{mname}.{pname}" if mname else pname] = p
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, p in own.items():
            if name not in state:
                continue
            value = np.asarray(state[name])
            if value.shape != p.data.shape:
                raise ValueError(f"load_state_dict: {name} has shape {value.shape}, the model "
                                 f"expects {p.data.shape}")
            p.data[...] = value.astype(p.data.dtype, copy=False)
        return missing, unexpected

    def to(self, dtype):
        """Cast every parameter to `dtype` in place (e.g. np.float64 for gradient checks)."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
        return self


class ModuleList(Module):
    """A list of modules registered as children "0", "1", ..."""

    def __init__(self, modules=()):
        super().__init__()
        self._list = []
        for m in modules:
            self.append(m)

    def append(self, module):
        setattr(self, str(len(self._list)), module)
        self._list.append(module)

    def __iter__(self):
        return iter(self._list)

    def __len__(self):
        return len(self._list)

    def __getitem__(self, i):
        return self._list[i]


def _uniform(shape, bound, dtype):
    return _random.generator().uniform(-bound, bound, size=shape).astype(dtype)


class Linear(Module):
    """y = x W^T + b. W (out_features, in_features) and b start U(-1/sqrt(in), 1/sqrt(in)),
    as torch.nn.Linear."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(_uniform((out_features, in_features), bound, dtype))
        self.bias = Parameter(_uniform((out_features,), bound, dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias is not None})"


class Embedding(Module):
    """A (num_embeddings, embedding_dim) lookup table initialised N(0, 1), as torch."""

    def __init__(self, num_embeddings, embedding_dim, dtype=np.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        w = _random.generator().standard_normal((num_embeddings, embedding_dim))
        self.weight = Parameter(w.astype(dtype))

    def forward(self, idx):
        return F.embedding(idx, self.weight)


def _as_shape(normalized_shape):
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


class LayerNorm(Module):
    """LayerNorm over the trailing dims `normalized_shape` (int or tuple), weight and bias of that
    shape, as torch.nn.LayerNorm."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float32):
        super().__init__()
        self.normalized_shape, self.eps = _as_shape(normalized_shape), eps
        shape = self.normalized_shape
        self.weight = Parameter(np.ones(shape, dtype=dtype)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(shape, dtype=dtype)) if elementwise_affine and bias else None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(Module):
    """RMSNorm over the trailing dims `normalized_shape`, as torch.nn.RMSNorm: eps=None means the
    input dtype's machine epsilon (np.finfo(dtype).eps)."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, dtype=np.float32):
        super().__init__()
        self.normalized_shape, self.eps = _as_shape(normalized_shape), eps
        shape = self.normalized_shape
        self.weight = Parameter(np.ones(shape, dtype=dtype)) if elementwise_affine else None

    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class Dropout(Module):
    def __init__(self, p=0.5):
        super().__init__()
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


class GELU(Module):
    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)
