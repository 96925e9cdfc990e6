"""FlashAttention(-1) in NumPy: tiled exact attention, forward and backward.

Dao, Fu, Ermon, Rudra, Re 2022, "FlashAttention: Fast and Memory-Efficient Exact Attention with
IO-Awareness", arXiv 2205.14135. Forward = Algorithm 1 (without dropout), backward = Algorithm 4;
"# Alg1 l.N" cites the line. Symbols: Br, Bc, Tr, Tc (block sizes and counts), S, P (tiles),
m, l (running row max and row sum, kept for every row in slow memory).

FA-1's loop order: K/V blocks outside, Q blocks inside. Each inner step reads O_i, l_i, m_i back,
merges the new tile's statistics (m~, l~) into them, and writes O_i normalised by the new l. Compare
`flash2.py`, which swaps the loops and normalises once. Masks, bias, GQA and ragged blocks behave
exactly as in flash2 (see masks.py), NaN included.
"""
import numpy as np

from minitx.attention.checks import check_layout, check_qkv, group_bias, group_heads
from minitx.attention.flash2 import _score_tile, _shift, _tile
from minitx.attention.masks import layout_heads, matmul_allowed, resolve_window


def flash1_forward(q, k, v, bias=None, scale=None, is_causal=False, window=None, Br=64, Bc=64,
                   block_layout=None):
    """FlashAttention-1 forward (Algorithm 1).

    Args:
        q: (B, Hq, Nq, d); k, v: (B, Hkv, Nk, d); bias: None or (Bb, Hb, Nq, Nk);
        scale, is_causal, window, Br, Bc, block_layout: as in flash2.flash2_forward.
    Returns:
        o (B, Hq, Nq, d), m (B, Hq, Nq) row max (-inf if fully masked), l (B, Hq, Nq) row sum of
        exp(S - m) (0 if fully masked).
    """
    B, Hq, Hkv, Nq, Nk, d, scale = check_qkv(q, k, v, bias, scale, Br, Bc)
    left, right = resolve_window(is_causal, window)
    lay = check_layout(block_layout, Hq, Nq, Nk, Br, Bc)      # None or (Hl, Tr, Tc)
    layg = None if lay is None else layout_heads(lay, Hkv)    # (1, Hkv|1, G|1, Tr, Tc)
    qg = group_heads(q, Hkv)                                   # (B, Hkv, G, Nq, d)
    kg, vg = k[:, :, None], v[:, :, None]                      # (B, Hkv, 1, Nk, d)
    bg = group_bias(bias, Hkv)
    o = np.zeros(qg.shape, dtype=q.dtype)                      # Alg1 l.2: O = 0, l = 0, m = -inf
    l = np.zeros(qg.shape[:-1] + (1,), dtype=q.dtype)          # (B, Hkv, G, Nq, 1)
    m = np.full(qg.shape[:-1] + (1,), -np.inf, dtype=q.dtype)
    Tr, Tc = -(-Nq // Br), -(-Nk // Bc)
    for j in range(Tc):                                        # Alg1 l.5: for 1 <= j <= Tc
        c0, c1 = j * Bc, min((j + 1) * Bc, Nk)
        Kj, Vj = kg[..., c0:c1, :], vg[..., c0:c1, :]          # Alg1 l.6: load K_j, V_j
        for i in range(Tr):                                    # Alg1 l.7: for 1 <= i <= Tr
            r0, r1 = i * Br, min((i + 1) * Br, Nq)
            kind, heads = _tile(layg, i, j, r0, r1, c0, c1, Nq, Nk, left, right)
            if kind == "skip":                                 # causal/window/layout skipping
                continue
            Qi = qg[..., r0:r1, :]                             # Alg1 l.8: load Q_i, O_i, l_i, m_i
            Oi, li, mi = o[..., r0:r1, :], l[..., r0:r1, :], m[..., r0:r1, :]
            S, ok = _score_tile(Qi, Kj, bg, r0, r1, c0, c1,    # Alg1 l.9: S = Q_i K_j^T
                                kind, scale, Nq, Nk, left, right, heads)
            m_t = S.max(axis=-1, keepdims=True)                # Alg1 l.10: m~ = rowmax(S)
            P_t = np.exp(S - _shift(m_t))                      # Alg1 l.10: P~ = exp(S - m~)
            l_t = P_t.sum(axis=-1, keepdims=True)              # Alg1 l.10: l~ = rowsum(P~)
            m_new = np.maximum(mi, m_t)                        # Alg1 l.11: m_new = max(m_i, m~)
            a = np.exp(mi - _shift(m_new))                     # e^(m_i - m_new)
            b = np.exp(m_t - _shift(m_new))                    # e^(m~ - m_new)
            l_new = a * li + b * l_t                           # Alg1 l.11: l_new
            dead = m_new == -np.inf                            # nothing allowed yet in the row
            O_new = (li * a) * Oi + b * matmul_allowed(P_t, Vj, ok)   # Alg1 l.12: diag(l_i) ..
            o[..., r0:r1, :] = np.where(dead, 0, O_new / np.where(dead, 1, l_new))  # .. / l_new
            l[..., r0:r1, :] = l_new                           # Alg1 l.13: write l_i, m_i
            m[..., r0:r1, :] = m_new
    return o.reshape(q.shape), m.reshape(B, Hq, Nq), l.reshape(B, Hq, Nq)


def flash1_backward(q, k, v, bias, o, m, l, do, scale=None, is_causal=False, window=None,
                    Br=64, Bc=64, block_layout=None):
    """FlashAttention-1 backward (Algorithm 4, without dropout): recompute P from m and l.

    Args:
        q, k, v, bias, scale, is_causal, window, Br, Bc, block_layout: as given to
            flash1_forward.
        o, m, l: returned by flash1_forward; do: (B, Hq, Nq, d) gradient with respect to o.
    Returns:
        dq (B, Hq, Nq, d), dk (B, Hkv, Nk, d), dv (B, Hkv, Nk, d).
    """
    B, Hq, Hkv, Nq, Nk, d, scale = check_qkv(q, k, v, bias, scale, Br, Bc)
    left, right = resolve_window(is_causal, window)
    lay = check_layout(block_layout, Hq, Nq, Nk, Br, Bc)      # None or (Hl, Tr, Tc)
    layg = None if lay is None else layout_heads(lay, Hkv)    # (1, Hkv|1, G|1, Tr, Tc)
    qg, og, dog = group_heads(q, Hkv), group_heads(o, Hkv), group_heads(do, Hkv)
    mg = group_heads(m, Hkv)[..., None]                        # (B, Hkv, G, Nq, 1)
    lg = np.where(mg == -np.inf, 1, group_heads(l, Hkv)[..., None])   # fully masked: P = 0 / 1
    mg = _shift(mg)
    kg, vg = k[:, :, None], v[:, :, None]                      # (B, Hkv, 1, Nk, d)
    bg = group_bias(bias, Hkv)
    dq = np.zeros(qg.shape, dtype=q.dtype)                     # Alg4 l.5: dQ = 0 (and dK, dV)
    dk, dv = np.zeros(k.shape, dtype=q.dtype), np.zeros(v.shape, dtype=q.dtype)
    Tr, Tc = -(-Nq // Br), -(-Nk // Bc)
    for j in range(Tc):                                        # Alg4 l.6: for 1 <= j <= Tc
        c0, c1 = j * Bc, min((j + 1) * Bc, Nk)
        Kj, Vj = kg[..., c0:c1, :], vg[..., c0:c1, :]          # Alg4 l.7: load K_j, V_j
        dKj = np.zeros(Kj.shape, dtype=q.dtype)                # Alg4 l.8: dK_j = 0, dV_j = 0
        dVj = np.zeros(Vj.shape, dtype=q.dtype)
        for i in range(Tr):                                    # Alg4 l.9: for 1 <= i <= Tr
            r0, r1 = i * Br, min((i + 1) * Br, Nq)
            kind, heads = _tile(layg, i, j, r0, r1, c0, c1, Nq, Nk, left, right)
            if kind == "skip":                                 # causal/window/layout skipping
                continue
            Qi, Oi, dOi = qg[..., r0:r1, :], og[..., r0:r1, :], dog[..., r0:r1, :]  # Alg4 l.10
            S, ok = _score_tile(Qi, Kj, bg, r0, r1, c0, c1,    # Alg4 l.11: S = Q_i K_j^T
                                kind, scale, Nq, Nk, left, right, heads)
            P = np.exp(S - mg[..., r0:r1, :]) / lg[..., r0:r1, :]   # Alg4 l.13: P = diag(l)^-1 e^(S-m)
            dP = dOi @ Vj.swapaxes(-1, -2)                     # Alg4 l.17: dP = dO_i V_j^T
            Di = (dOi * Oi).sum(axis=-1, keepdims=True)        # Alg4 l.19: D_i = rowsum(dO_i * O_i)
            dS = P * (dP - Di)                                 # Alg4 l.20: dS = P * (dP - D_i)
            okT = None
            if ok is not None:                                 # masked pairs: exactly 0
                P, dS = np.where(ok, P, 0), np.where(ok, dS, 0)
                okT = ok.swapaxes(-1, -2)
            dVj += matmul_allowed(P.swapaxes(-1, -2), dOi,     # Alg4 l.16: dV_j += P^T dO_i
                                  okT).sum(axis=2, keepdims=True)
            dq[..., r0:r1, :] += scale * matmul_allowed(dS, Kj, ok)   # Alg4 l.21: dQ_i += tau dS K_j
            dKj += scale * matmul_allowed(dS.swapaxes(-1, -2), Qi,   # l.22: dK_j += tau dS^T Q_i
                                          okT).sum(axis=2, keepdims=True)
        dk[:, :, c0:c1] = dKj[:, :, 0]                         # Alg4 l.24: write dK_j, dV_j
        dv[:, :, c0:c1] = dVj[:, :, 0]
    return dq.reshape(q.shape), dk, dv
