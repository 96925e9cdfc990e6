"""Naive ("standard") attention: materialise the N x N scores, softmax them, multiply by V.

    S = scale * Q K^T + bias,   P = softmax(S) row-wise,   O = P V
Backward (the chain rule through softmax):
    dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dP * P)),   dQ = scale dS K,
    dK = scale dS^T Q.
This is Algorithm 0 of Dao et al. 2022 (FlashAttention, arXiv 2205.14135): O(N^2) extra memory
for S and P. It is the reference the tiled versions are tested against.
"""
import numpy as np

from minitx.attention.checks import check_qkv, group_bias, group_heads
from minitx.attention.masks import allowed, resolve_window


def naive_forward(q, k, v, bias=None, scale=None, is_causal=False, window=None,
                  dropout_mask=None):
    """Attention with the full score matrix.

    Args:
        q: (B, Hq, Nq, d); k, v: (B, Hkv, Nk, d), Hq a multiple of Hkv.
        bias: None or additive (Bb, Hb, Nq, Nk); scale: None means 1/sqrt(d).
        is_causal: bottom-right aligned causal mask; window: (left, right) or None.
        dropout_mask: None or (B, Hq, Nq, Nk) holding 0 (dropped) or 1/(1-p) (kept); then
            o = (P * dropout_mask) V (inverted dropout on the probabilities, as PyTorch).
    Returns:
        o (B, Hq, Nq, d) and P (B, Hq, Nq, Nk), the attention probabilities (zero rows where a
        query may attend to nothing).
    """
    B, Hq, Hkv, Nq, Nk, d, scale = check_qkv(q, k, v, bias, scale)
    left, right = resolve_window(is_causal, window)
    qg = group_heads(q, Hkv)                                   # (B, Hkv, G, Nq, d)
    kg, vg = k[:, :, None], v[:, :, None]                      # (B, Hkv, 1, Nk, d)
    S = scale * (qg @ kg.swapaxes(-1, -2))                     # (B, Hkv, G, Nq, Nk)
    if bias is not None:
        S = S + group_bias(bias, Hkv)
    ok = allowed(np.arange(Nq), np.arange(Nk), Nq, Nk, left, right)   # (Nq, Nk)
    S = np.where(ok, S, -np.inf)
    m = S.max(axis=-1, keepdims=True)                          # (B, Hkv, G, Nq, 1) row max
    m = np.where(np.isfinite(m), m, 0.0)                       # fully masked row: exp(-inf) = 0
    E = np.exp(S - m)                                          # (B, Hkv, G, Nq, Nk)
    l = E.sum(axis=-1, keepdims=True)                          # (B, Hkv, G, Nq, 1)
    P = E / np.where(l > 0, l, 1.0)                            # zero rows stay zero
    Pd = P if dropout_mask is None else P * group_heads(dropout_mask, Hkv)
    o = Pd @ vg                                                # (B, Hkv, G, Nq, d)
    return (o.reshape(q.shape).astype(q.dtype, copy=False),
            P.reshape(B, Hq, Nq, Nk).astype(q.dtype, copy=False))


def naive_backward(q, k, v, P, do, scale=None, dropout_mask=None):
    """Gradients of naive_forward given its saved probabilities P.

    Args:
        q: (B, Hq, Nq, d); k, v: (B, Hkv, Nk, d); P: (B, Hq, Nq, Nk) from naive_forward;
        do: (B, Hq, Nq, d) gradient of the output; scale, dropout_mask: as in the forward.
    Returns:
        dq (B, Hq, Nq, d), dk (B, Hkv, Nk, d), dv (B, Hkv, Nk, d).
    """
    B, Hq, Hkv, Nq, Nk, d, scale = check_qkv(q, k, v, None, scale)
    qg, dog = group_heads(q, Hkv), group_heads(do, Hkv)        # (B, Hkv, G, Nq, d)
    Pg = group_heads(P, Hkv)                                   # (B, Hkv, G, Nq, Nk)
    kg, vg = k[:, :, None], v[:, :, None]                      # (B, Hkv, 1, Nk, d)
    Zg = 1 if dropout_mask is None else group_heads(dropout_mask, Hkv)
    dv = ((Pg * Zg).swapaxes(-1, -2) @ dog).sum(axis=2)        # (B, Hkv, Nk, d) summed over G
    dP = (dog @ vg.swapaxes(-1, -2)) * Zg                      # (B, Hkv, G, Nq, Nk)
    dS = Pg * (dP - (dP * Pg).sum(axis=-1, keepdims=True))     # softmax backward
    dq = scale * (dS @ kg)                                     # (B, Hkv, G, Nq, d)
    dk = scale * (dS.swapaxes(-1, -2) @ qg).sum(axis=2)        # (B, Hkv, Nk, d)
    dt = q.dtype
    return (dq.reshape(q.shape).astype(dt, copy=False), dk.astype(dt, copy=False),
            dv.astype(dt, copy=False))
