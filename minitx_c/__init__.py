"""minitx_c: Cython kernels mirroring minitx's NumPy references, name for name.

Import through `minitx.backend`, which falls back to NumPy when this extension is missing or
MINITX_PURE=1 is set. Each name below has a NumPy twin listed in `minitx.backend.TWINS`.
"""
from minitx_c.runtime import get_num_threads, have_openmp, set_num_threads
from minitx_c.fused import (add_layer_norm_backward, add_layer_norm_forward, layer_norm_backward,
                            layer_norm_forward, softmax_lastdim)
from minitx_c.fused_ops import adamw_step, cross_entropy_fused, rope_rotate
from minitx_c.fused_act import (add_rms_norm_backward, add_rms_norm_forward,
                                bias_gelu_backward, bias_gelu_forward, embedding_backward, erf,
                                gelu_backward, gelu_forward,
                                rms_norm_backward, rms_norm_forward, silu_backward,
                                silu_forward)
from minitx_c.gemm import matmul
from minitx_c.qgemm import linear_w4, linear_w8, matmul_int8
from minitx_c.flash import flash2_backward, flash2_forward
from minitx_c.ggml import ggml_matmul, ggml_matmul_q8
