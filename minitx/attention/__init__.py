"""Exact attention, four ways, behind one PyTorch-style entry point.

    impl="naive"   naive.py   materialised S and P (Vaswani et al. 2017; Algorithm 0 of FA-1)
    impl="flash1"  flash1.py  FlashAttention (Dao et al. 2022, arXiv 2205.14135), K/V loop outside
    impl="flash2"  flash2.py  FlashAttention-2 (Dao 2023, arXiv 2307.08691), Q loop outside
    impl="c"       minitx_c/flash.pyx, the Cython twin of flash2 (AVX2 tiles, OpenMP)
    impl="auto"    "c" on the c backend when the extension is built, else "naive" (resolve_impl)
All four compute the same function; each backward is its implementation's own (naive: through
the saved P; flash: recomputation of P from the saved softmax statistics, never an N x N buffer).
Mask conventions (bottom-right causal alignment, sliding windows, fully masked rows -> 0) are in
masks.py; the IO model of FA-1's Theorem 2 is io.py. Long context (issue 12): block-sparse
layouts (sparse.py; `block_layout=` here), linear and Performer attention (linear.py),
Transformer-XL and kNN memories (memory.py), and the GPT's per-layer choice among them
(patterns.py).
"""
import importlib

import numpy as np

from minitx import backend as _backend
from minitx import random as _random
from minitx.autograd import Function, Tensor
from minitx.attention.checks import check_block_size, check_layout
from minitx.attention.flash1 import flash1_backward, flash1_forward
from minitx.attention.flash2 import flash2_backward, flash2_forward
from minitx.attention.masks import mask_to_bias, resolve_window
from minitx.attention.naive import naive_backward, naive_forward

IMPLS = ("naive", "flash1", "flash2", "c", "auto")

__all__ = ["scaled_dot_product_attention", "IMPLS", "resolve_impl", "naive_forward",
           "naive_backward", "flash1_forward", "flash1_backward", "flash2_forward",
           "flash2_backward"]


def _c_kernels():
    """(flash2_forward, flash2_backward) from the Cython extension, or a clear error."""
    try:
        mod = importlib.import_module("minitx_c.flash")
    except ImportError as e:
        raise RuntimeError("impl='c' needs the Cython extension minitx_c.flash, which is not "
                           f"importable ({e}); build it with `python setup.py build_ext "
                           "--inplace` or use impl='flash2' (same algorithm in NumPy)") from None
    return mod.flash2_forward, mod.flash2_backward


def resolve_impl(impl, dropout_p=0.0):
    """The implementation `impl` names: "auto" is the Cython kernel "c" when the "c" backend is
    active and minitx_c.flash is built (and there is no dropout, which only "naive" has), else
    the NumPy reference "naive" -- PyTorch's SDPA likewise picks a fused kernel when one applies.
    Any other name is returned as given."""
    if impl != "auto":
        return impl
    if dropout_p > 0 or _backend.active() != "c":
        return "naive"
    try:
        _c_kernels()
    except RuntimeError:
        return "naive"
    return "c"


def _to4d(a):
    """(..., H, N, d) or (N, d) -> (B, H, N, d) view/copy."""
    if a.ndim == 2:
        return a[None, None]
    return a.reshape(-1, *a.shape[-3:])


class _Attention(Function):
    """Differentiable attention; forward and backward are the chosen implementation's own."""

    @staticmethod
    def forward(ctx, query, key, value, *, bias, scale, is_causal, window, impl, dropout_mask,
                block_layout, block_size):
        q, k, v = _to4d(query), _to4d(key), _to4d(value)      # (B, Hq, Nq, d), (B, Hkv, Nk, d)
        ctx.shapes = (query.shape, key.shape)
        ctx.impl, ctx.dropout_mask = impl, dropout_mask
        ctx.opts = dict(scale=scale, is_causal=is_causal, window=window)
        if block_layout is not None:                           # block-sparse: tiles = blocks
            ctx.opts["block_layout"] = block_layout
            ctx.opts.update(dict(block_size=block_size) if impl == "naive"
                            else dict(Br=block_size, Bc=block_size))
        if impl == "naive":
            o, P = naive_forward(q, k, v, bias, dropout_mask=dropout_mask, **ctx.opts)
            ctx.save_for_backward(q, k, v, bias, P)
        elif impl == "flash1":
            o, m, l = flash1_forward(q, k, v, bias, **ctx.opts)
            ctx.save_for_backward(q, k, v, bias, o, m, l)
        else:
            fwd = flash2_forward if impl == "flash2" else _c_kernels()[0]
            if impl == "c":              # the kernel reads C-ordered rows: copy a permuted view
                q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))   # once, for both passes
            o, L = fwd(q, k, v, bias, **ctx.opts)
            ctx.save_for_backward(q, k, v, bias, o, L)
        return o.reshape(query.shape)

    @staticmethod
    def backward(ctx, grad_out):
        qshape, kshape = ctx.shapes
        do = np.ascontiguousarray(_to4d(grad_out), dtype=ctx.saved_tensors[0].dtype)
        if ctx.impl == "naive":
            q, k, v, bias, P = ctx.saved_tensors
            dq, dk, dv = naive_backward(q, k, v, P, do, dropout_mask=ctx.dropout_mask, bias=bias,
                                        **ctx.opts)
        elif ctx.impl == "flash1":
            q, k, v, bias, o, m, l = ctx.saved_tensors
            dq, dk, dv = flash1_backward(q, k, v, bias, o, m, l, do, **ctx.opts)
        else:
            q, k, v, bias, o, L = ctx.saved_tensors
            bwd = flash2_backward if ctx.impl == "flash2" else _c_kernels()[1]
            dq, dk, dv = bwd(q, k, v, bias, o, L, do, **ctx.opts)
        needs = ctx.needs_input_grad
        return (dq.reshape(qshape) if needs[0] else None,
                dk.reshape(kshape) if needs[1] else None,
                dv.reshape(kshape) if needs[2] else None)


def _check_inputs(q, k, v, enable_gqa):
    """Validate shapes/dtypes of the (array) inputs; return (batch_shape, Hq, Nq, Nk)."""
    for name, a in (("query", q), ("key", k), ("value", v)):
        if not np.issubdtype(a.dtype, np.floating) or a.dtype.itemsize < 4:
            raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
        if a.ndim < 2:
            raise ValueError(f"{name} must have shape (..., N, d), got {a.shape}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"query, key, value dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if v.shape != k.shape:
        raise ValueError(f"value shape {v.shape} must equal key shape {k.shape}")
    if k.ndim != q.ndim or k.shape[-1] != q.shape[-1] or k.shape[:-3] != q.shape[:-3]:
        raise ValueError(f"key {k.shape} must match query {q.shape} in every dim but the "
                         "sequence length (dim -2) and, with enable_gqa, the heads (dim -3)")
    Hq, Hkv = (q.shape[-3], k.shape[-3]) if q.ndim >= 3 else (1, 1)
    if Hq != Hkv and not (enable_gqa and Hq % Hkv == 0):
        raise ValueError(f"query has {Hq} heads and key {Hkv}: they must be equal, or "
                         "enable_gqa=True with query heads a multiple of key heads")
    if min(q.shape[-2], k.shape[-2], q.shape[-1]) < 1:
        raise ValueError(f"empty attention input: query {q.shape}, key {k.shape}")
    return q.shape[:-3], Hq, q.shape[-2], k.shape[-2]


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False, impl="naive",
                                 window=None, block_layout=None, block_size=None):
    """softmax(query key^T * scale + mask) value, differentiable, with a choice of algorithm.

    PyTorch's `torch.nn.functional.scaled_dot_product_attention` semantics, plus:
      - `impl`: "naive", "flash1", "flash2" (NumPy), "c" (Cython flash2 kernel) or "auto" ("c"
        on the c backend when built and dropout_p == 0, else "naive": resolve_impl);
      - `window=(left, right)`: sliding window, -1/None for unbounded (flash-attn's window_size);
      - `block_layout`, `block_size`: block-sparse attention (sparse.py builds layouts): query
        block i may see key block j where block_layout[..., i, j]; blocks of block_size indices
        from 0. naive applies it as a dense mask; the tiled impls use block_size as their tile
        (Br = Bc) and never read a tile outside the layout. Composes with every other mask;
      - `is_causal` is aligned bottom-right when Nq != Nk (flash-attn >= 2.1; PyTorch aligns
        top-left), so a decoding step with Nq = 1 sees all Nk cached keys;
      - a query row with no allowed key gives zeros (not NaN);
      - NaN in query, key or value spreads from every pair the mask allows and from no other
        (masked pairs and skipped tiles never contribute), forward and backward (masks.py).
    Args:
        query: Tensor or ndarray (..., Hq, Nq, d); key, value: (..., Hkv, Nk, d), same leading
            dims; Hq == Hkv unless enable_gqa (then Hq a multiple of Hkv, PyTorch's grouping).
        attn_mask: None, bool (True = may attend) or float (added to the scores), broadcastable
            to (..., Hq, Nq, Nk). It is treated as a constant (no gradient).
        dropout_p: dropout on the attention probabilities (impl="naive" only; the flash kernels
            here have no in-kernel random number generator).
        is_causal: causal mask; scale: None means 1/sqrt(d).
        block_layout: None or bool (ceil(Nq/bs), ceil(Nk/bs)), or (1 or Hq, ..) per query head;
            block_size: int bs >= 1, required with (and only with) a layout.
    Returns:
        Tensor (..., Hq, Nq, d).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    impl = resolve_impl(impl, dropout_p)
    arrays = [x.data if isinstance(x, Tensor) else np.asarray(x) for x in (query, key, value)]
    batch_shape, Hq, Nq, Nk = _check_inputs(*arrays, enable_gqa)
    resolve_window(is_causal, window)                          # validates the window
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number or None, got {scale!r}")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    if dropout_p > 0 and impl != "naive":
        raise ValueError(f"dropout_p={dropout_p} is only supported with impl='naive', got "
                         f"impl={impl!r}")
    if block_layout is None and block_size is not None:
        raise ValueError(f"block_size={block_size!r} needs a block_layout (it is the layout's "
                         "block, not a tuning knob)")
    if block_layout is not None:
        check_block_size(block_size)
        block_layout = check_layout(block_layout, Hq, Nq, Nk, block_size, block_size)
    if impl == "c":
        _c_kernels()                                           # fail early if not built
    dtype = arrays[0].dtype
    bias = mask_to_bias(attn_mask, batch_shape, Hq, Nq, Nk, dtype)
    dropout_mask = None
    if dropout_p > 0:
        B = int(np.prod(batch_shape, dtype=np.int64))
        keep = _random.generator().random((B, Hq, Nq, Nk)) >= dropout_p
        dropout_mask = (keep / (1.0 - dropout_p) if dropout_p < 1 else keep * 0.0).astype(dtype)
    args = [x if isinstance(x, Tensor) else a for x, a in zip((query, key, value), arrays)]
    return _Attention.apply(*args, bias=bias, scale=scale, is_causal=is_causal, window=window,
                            impl=impl, dropout_mask=dropout_mask, block_layout=block_layout,
                            block_size=block_size)
