"""Naive ("standard") attention: materialise the N x N scores, softmax them, multiply by V.

    S = scale * Q K^T + bias,   P = softmax(S) row-wise,   O = P V
Backward (the chain rule through softmax):
    dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dP * P)),   dQ = scale dS K,
    dK = scale dS^T Q.
This is Algorithm 0 of Dao et al. 2022 (FlashAttention, arXiv 2205.14135): O(N^2) extra memory
for S and P. It is the reference the tiled versions are tested against. Masked pairs are kept
out of every product (masks.matmul_allowed), so NaN spreads only from allowed pairs (issue 14).
"""
import numpy as np

from minitx.attention.checks import (check_block_size, check_layout, check_qkv, group_bias,
                                     group_heads)
from minitx.attention.masks import (layout_heads, layout_to_mask, matmul_allowed, resolve_window,
                                    tile_allowed, tile_kind)
from minitx.backend import matmul


def naive_forward(q, k, v, bias=None, scale=None, is_causal=False, window=None,
                  dropout_mask=None, block_layout=None, block_size=None):
    """Attention with the full score matrix.

    Args:
        q: (B, Hq, Nq, d); k, v: (B, Hkv, Nk, d), Hq a multiple of Hkv.
        bias: None or additive (Bb, Hb, Nq, Nk); scale: None means 1/sqrt(d).
        is_causal: bottom-right aligned causal mask; window: (left, right) or None.
        dropout_mask: None or (B, Hq, Nq, Nk) holding 0 (dropped) or 1/(1-p) (kept); then
            o = (P * dropout_mask) V (inverted dropout on the probabilities, as PyTorch).
        block_layout, block_size: None, or a block-sparse layout (Tr, Tc) / (1 or Hq, Tr, Tc)
            over blocks of block_size, applied as a dense mask (masks.layout_to_mask).
    Returns:
        o (B, Hq, Nq, d) and P (B, Hq, Nq, Nk), the attention probabilities (zero rows where a
        query may attend to nothing).
    """
    B, Hq, Hkv, Nq, Nk, d, scale = check_qkv(q, k, v, bias, scale)
    qg = group_heads(q, Hkv)                                   # (B, Hkv, G, Nq, d)
    kg, vg = k[:, :, None], v[:, :, None]                      # (B, Hkv, 1, Nk, d)
    ok = _allowed_pairs(bias, Hq, Hkv, Nq, Nk, is_causal, window, block_layout, block_size)
    S = scale * matmul(qg, kg.swapaxes(-1, -2))                # (B, Hkv, G, Nq, Nk)
    if bias is not None:
        S = S + group_bias(bias, Hkv)
    if ok is not None:
        S = np.where(ok, S, -np.inf)                           # masked: -inf even if NaN
    m = S.max(axis=-1, keepdims=True)                          # (B, Hkv, G, Nq, 1) row max
    dead = m == -np.inf                                        # fully masked rows
    E = np.exp(S - np.where(dead, 0.0, m))                     # (B, Hkv, G, Nq, Nk)
    l = E.sum(axis=-1, keepdims=True)                          # (B, Hkv, G, Nq, 1)
    P = E / np.where(dead, 1.0, l)                             # zero rows stay zero
    if ok is not None:
        P = np.where(ok, P, 0.0)                               # exactly 0 where masked
    Pd = P if dropout_mask is None else P * group_heads(dropout_mask, Hkv)
    o = matmul_allowed(Pd, vg, ok)                             # (B, Hkv, G, Nq, d)
    return (o.reshape(q.shape).astype(q.dtype, copy=False),
            P.reshape(B, Hq, Nq, Nk).astype(q.dtype, copy=False))


def naive_backward(q, k, v, P, do, scale=None, dropout_mask=None, bias=None, is_causal=False,
                   window=None, block_layout=None, block_size=None):
    """Gradients of naive_forward given its saved probabilities P.

    Args:
        q: (B, Hq, Nq, d); k, v: (B, Hkv, Nk, d); P: (B, Hq, Nq, Nk) from naive_forward;
        do: (B, Hq, Nq, d) gradient of the output; scale, dropout_mask, bias, is_causal, window,
            block_layout, block_size: as in the forward (the mask keeps masked pairs out of
            every product, see masks.py).
    Returns:
        dq (B, Hq, Nq, d), dk (B, Hkv, Nk, d), dv (B, Hkv, Nk, d).
    """
    B, Hq, Hkv, Nq, Nk, d, scale = check_qkv(q, k, v, bias, scale)
    ok = _allowed_pairs(bias, Hq, Hkv, Nq, Nk, is_causal, window, block_layout, block_size)
    okT = None if ok is None else ok.swapaxes(-1, -2)
    qg, dog = group_heads(q, Hkv), group_heads(do, Hkv)        # (B, Hkv, G, Nq, d)
    Pg = group_heads(P, Hkv)                                   # (B, Hkv, G, Nq, Nk)
    kg, vg = k[:, :, None], v[:, :, None]                      # (B, Hkv, 1, Nk, d)
    Zg = 1 if dropout_mask is None else group_heads(dropout_mask, Hkv)
    dv = matmul_allowed((Pg * Zg).swapaxes(-1, -2), dog, okT).sum(axis=2)  # (B, Hkv, Nk, d)
    dP = matmul(dog, vg.swapaxes(-1, -2)) * Zg                 # (B, Hkv, G, Nq, Nk)
    dPP = dP * Pg if ok is None else np.where(ok, dP * Pg, 0.0)
    dS = Pg * (dP - dPP.sum(axis=-1, keepdims=True))           # softmax backward
    if ok is not None:
        dS = np.where(ok, dS, 0.0)
    dq = scale * matmul_allowed(dS, kg, ok)                    # (B, Hkv, G, Nq, d)
    dk = scale * matmul_allowed(dS.swapaxes(-1, -2), qg, okT).sum(axis=2)   # (B, Hkv, Nk, d)
    dt = q.dtype
    return (dq.reshape(q.shape).astype(dt, copy=False), dk.astype(dt, copy=False),
            dv.astype(dt, copy=False))


def _allowed_pairs(bias, Hq, Hkv, Nq, Nk, is_causal, window, block_layout, block_size):
    """None if every (query, key) pair is allowed, else a bool mask broadcastable to the grouped
    scores (B, Hkv, G, Nq, Nk): the window rule, bias != -inf and the block layout (masks.py)."""
    left, right = resolve_window(is_causal, window)
    kind = tile_kind(0, Nq, 0, Nk, Nq, Nk, left, right)
    kind = "partial" if kind == "skip" else kind               # all masked: still a mask
    heads = None
    if block_layout is not None:
        check_block_size(block_size)
        lay = check_layout(block_layout, Hq, Nq, Nk, block_size, block_size)
        mask = layout_to_mask(lay, block_size, Nq, Nk)
        heads = layout_heads(mask, Hkv)                        # (1, Hkv|1, G|1, Nq, Nk)
    return tile_allowed(group_bias(bias, Hkv), 0, Nq, 0, Nk, kind, Nq, Nk, left, right, heads)
