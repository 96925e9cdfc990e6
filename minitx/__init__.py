"""minitx: a small autograd transformer in NumPy, with a Cython hot path, for learning how
foundation models are made cheaper (FlashAttention, quantization, LoRA, growth, curricula).
"""
from minitx import backend
from minitx.autograd import Tensor, no_grad, tensor, is_grad_enabled
from minitx import nn, optim

__version__ = "0.1.0"
__all__ = ["Tensor", "tensor", "no_grad", "is_grad_enabled", "nn", "optim", "backend"]
