"""Readable NumPy twins of the Cython kernels in `minitx_c`.

Each function here has a Cython counterpart of the same name and signature in `minitx_c`;
`tests/test_kernels_twins.py` proves the pairs equal and `minitx.backend` picks one at run time.
Kernels work on plain ndarrays and know nothing of autograd.
"""
from minitx.kernels.fused import layer_norm_backward, layer_norm_forward, softmax_lastdim

__all__ = ["softmax_lastdim", "layer_norm_forward", "layer_norm_backward"]
