"""minitx: a small autograd transformer in NumPy, with a Cython hot path, for learning how
foundation models are made cheaper (FlashAttention, quantization, LoRA, growth, curricula).

The top-level names mirror PyTorch's: `minitx.tensor`, `minitx.no_grad`, `minitx.manual_seed`,
`minitx.cat`, `minitx.nn`, `minitx.optim`.
"""
from minitx import backend
from minitx.autograd import Function, Tensor, is_grad_enabled, no_grad, tensor
from minitx.ops import cat, gather, split, stack, where
from minitx.random import manual_seed
from minitx import nn, optim, profiler

__version__ = "0.1.0"
__all__ = ["Tensor", "Function", "tensor", "no_grad", "is_grad_enabled", "manual_seed", "cat",
           "stack", "split", "where", "gather", "nn", "optim", "backend"]
