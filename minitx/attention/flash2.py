"""FlashAttention-2 in NumPy: tiled exact attention, forward and backward.

Dao 2023, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning",
arXiv 2307.08691. Forward = Algorithm 1, backward = Algorithm 2; the comments "# Alg1 l.N" cite
the line of the algorithm each step implements. Symbols follow the paper:
    Br, Bc   rows of a Q block, columns (keys) of a K/V block;  Tr, Tc their counts
    S, P     the score and probability tiles (Br x Bc) -- never the full N x N matrix
    m, l     running row max and running row sum of exp(S - m) (the online softmax)
    L        logsumexp per row, L = m + log(l): the only softmax statistic saved for backward
    D        rowsum(dO * O), used by the backward instead of rowsum(dP * P)
What FA-2 changes from FA-1: the Q loop is outermost (each Q block is independent, so it can run
in parallel), O is rescaled by exp(m_old - m_new) but divided by l only once at the end, and only L
is saved. The batch and head dims ride along as leading dims of every tile (NumPy vectorises
over them); the Cython twin `minitx_c.flash` loops over them explicitly with the same names.

Extras that the real kernel has: block-sparse layouts (tiles outside never read), a scale,
bottom-right causal masks and sliding windows with whole tiles skipped (`masks.tile_kind`),
additive bias, GQA, blocks that need not divide N, rows with nothing to attend to giving O = 0,
L = +inf, and issue 14's NaN rule: NaN spreads from allowed pairs only, never from masked pairs
or skipped tiles (masks.py, `matmul_allowed`).
"""
import numpy as np

from minitx.attention.checks import (check_forward_outputs, check_layout, check_qkv,
                                     default_tiles, group_bias, group_heads)
from minitx.attention.masks import (layout_heads, layout_tile, matmul_allowed, resolve_window,
                                    tile_allowed, tile_kind)


def _tile(layg, i, j, r0, r1, c0, c1, Nq, Nk, left, right):
    """tile_kind of tile (i, j), with the block layout: returns (kind, heads), heads None (all
    live) or the live heads (masks.layout_tile); a tile no head has is "skip", never read."""
    kind = tile_kind(r0, r1, c0, c1, Nq, Nk, left, right)
    if kind == "skip" or layg is None:
        return kind, None
    heads = layout_tile(layg, i, j)
    if isinstance(heads, str):
        return "skip", None
    return kind, heads


def _score_tile(Qi, Kj, bg, r0, r1, c0, c1, kind, scale, Nq, Nk, left, right, heads=None):
    """S = scale * Q_i K_j^T + bias tile, -inf where the mask forbids (even where the product is
    NaN), and the tile's allowed pairs (None if all are allowed; see masks.tile_allowed).

    Returns:
        S (..., Br, Bc) and ok (None or bool broadcastable to S).
    """
    S = scale * (Qi @ Kj.swapaxes(-1, -2))                     # (B, Hkv, G, Br, Bc)
    if bg is not None:
        S = S + bg[..., r0:r1, c0:c1]
    ok = tile_allowed(bg, r0, r1, c0, c1, kind, Nq, Nk, left, right, heads)
    if ok is not None:
        S = np.where(ok, S, -np.inf)
    return S, ok


def _shift(m):
    """The max to subtract in exp(S - m): 0 for a row with nothing allowed yet (m = -inf), so
    that exp(-inf - 0) = 0; NaN stays NaN and poisons the row (issue 14's rule)."""
    return np.where(m == -np.inf, 0, m)


def flash2_forward(q, k, v, bias=None, scale=None, is_causal=False, window=None, Br=None,
                   Bc=None, block_layout=None):
    """FlashAttention-2 forward (Algorithm 1).

    Args:
        q: (B, Hq, Nq, d); k, v: (B, Hkv, Nk, d), Hq a multiple of Hkv.
        bias: None or additive (Bb, Hb, Nq, Nk); scale: None means 1/sqrt(d).
        is_causal: bottom-right causal mask; window: (left, right) or None (see masks.py).
        Br, Bc: block sizes (any ints >= 1; need not divide Nq, Nk). None: equal tiles near
            64 rows with a causal or window mask, else near 128 (checks.default_tiles: the
            fastest measured for the Cython twin).
        block_layout: None or bool (Tr, Tc) / (1 or Hq, Tr, Tc): block-sparse attention with
            tiles Br = Bc (checks.check_layout); tiles outside it are skipped, never read.
    Returns:
        o (B, Hq, Nq, d) and L (B, Hq, Nq), the row logsumexp (+inf for fully masked rows).
    """
    B, Hq, Hkv, Nq, Nk, d, scale = check_qkv(q, k, v, bias, scale, Br, Bc)
    left, right = resolve_window(is_causal, window)
    Br, Bc = default_tiles(Br, Bc, Nq, Nk, skipping=left >= 0 or right >= 0)
    lay = check_layout(block_layout, Hq, Nq, Nk, Br, Bc)      # None or (Hl, Tr, Tc)
    layg = None if lay is None else layout_heads(lay, Hkv)    # (1, Hkv|1, G|1, Tr, Tc)
    qg = group_heads(q, Hkv)                                   # (B, Hkv, G, Nq, d)
    kg, vg = k[:, :, None], v[:, :, None]                      # (B, Hkv, 1, Nk, d)
    bg = group_bias(bias, Hkv)
    o = np.zeros(qg.shape, dtype=q.dtype)                      # (B, Hkv, G, Nq, d)
    L = np.empty(qg.shape[:-1], dtype=q.dtype)                 # (B, Hkv, G, Nq)
    Tr, Tc = -(-Nq // Br), -(-Nk // Bc)
    for i in range(Tr):                                        # Alg1 l.3: for 1 <= i <= Tr
        r0, r1 = i * Br, min((i + 1) * Br, Nq)
        Qi = qg[..., r0:r1, :]                                 # Alg1 l.4: load Q_i (.., Br, d)
        Oi = np.zeros(Qi.shape, dtype=q.dtype)                 # Alg1 l.5: O = 0, l = 0, m = -inf
        li = np.zeros(Qi.shape[:-1] + (1,), dtype=q.dtype)     # (B, Hkv, G, Br, 1)
        mi = np.full(Qi.shape[:-1] + (1,), -np.inf, dtype=q.dtype)
        for j in range(Tc):                                    # Alg1 l.6: for 1 <= j <= Tc
            c0, c1 = j * Bc, min((j + 1) * Bc, Nk)
            kind, heads = _tile(layg, i, j, r0, r1, c0, c1, Nq, Nk, left, right)
            if kind == "skip":                                 # causal/window/layout skipping
                continue
            Kj, Vj = kg[..., c0:c1, :], vg[..., c0:c1, :]      # Alg1 l.7: load K_j, V_j
            S, ok = _score_tile(Qi, Kj, bg, r0, r1, c0, c1,    # Alg1 l.8: S = Q_i K_j^T
                                kind, scale, Nq, Nk, left, right, heads)
            m_new = np.maximum(mi, S.max(axis=-1, keepdims=True))   # Alg1 l.9: m = max(m, rowmax S)
            m_use = _shift(m_new)                              # all masked so far: exp(-inf) = 0
            P = np.exp(S - m_use)                              # Alg1 l.9: P = exp(S - m)
            alpha = np.exp(mi - m_use)                         # exp(m_old - m_new)
            li = alpha * li + P.sum(axis=-1, keepdims=True)    # Alg1 l.9: l = e^(..) l + rowsum P
            Oi = alpha * Oi + matmul_allowed(P, Vj, ok)        # Alg1 l.10: O = diag(e^(..)) O + P V_j
            mi = m_new
        dead = mi == -np.inf                                   # rows that saw no allowed key
        o[..., r0:r1, :] = np.where(dead, 0, Oi / np.where(dead, 1, li))  # Alg1 l.12: diag(l)^-1 O
        Li = np.where(dead, np.inf, mi + np.log(np.where(dead, 1, li)))  # Alg1 l.13: L = m + log l
        L[..., r0:r1] = Li[..., 0]
    return o.reshape(q.shape), L.reshape(B, Hq, Nq)


def flash2_backward(q, k, v, bias, o, L, do, scale=None, is_causal=False, window=None,
                    Br=None, Bc=None, block_layout=None):
    """FlashAttention-2 backward (Algorithm 2): recompute P = exp(S - L) tile by tile.

    Args:
        q, k, v, bias, scale, is_causal, window, block_layout: as given to flash2_forward (with
            a layout, Br = Bc = its block size).
        Br, Bc: block sizes; they need not be the forward's (only o and L pass between the
            two). None: as in flash2_forward (checks.default_tiles).
        o: (B, Hq, Nq, d) and L: (B, Hq, Nq) returned by flash2_forward.
        do: (B, Hq, Nq, d) gradient of the loss with respect to o.
    Returns:
        dq (B, Hq, Nq, d), dk (B, Hkv, Nk, d), dv (B, Hkv, Nk, d).
    """
    B, Hq, Hkv, Nq, Nk, d, scale = check_qkv(q, k, v, bias, scale, Br, Bc)
    check_forward_outputs(q, o, L, do)
    left, right = resolve_window(is_causal, window)
    Br, Bc = default_tiles(Br, Bc, Nq, Nk, skipping=left >= 0 or right >= 0)
    lay = check_layout(block_layout, Hq, Nq, Nk, Br, Bc)      # None or (Hl, Tr, Tc)
    layg = None if lay is None else layout_heads(lay, Hkv)    # (1, Hkv|1, G|1, Tr, Tc)
    qg, og, dog = group_heads(q, Hkv), group_heads(o, Hkv), group_heads(do, Hkv)
    Lg = group_heads(L, Hkv)[..., None]                        # (B, Hkv, G, Nq, 1)
    kg, vg = k[:, :, None], v[:, :, None]                      # (B, Hkv, 1, Nk, d)
    bg = group_bias(bias, Hkv)
    D = (dog * og).sum(axis=-1, keepdims=True)                 # Alg2 l.4: D = rowsum(dO * O)
    dq = np.zeros(qg.shape, dtype=q.dtype)                     # (B, Hkv, G, Nq, d)
    dk = np.zeros(k.shape, dtype=q.dtype)                      # (B, Hkv, Nk, d)
    dv = np.zeros(v.shape, dtype=q.dtype)
    Tr, Tc = -(-Nq // Br), -(-Nk // Bc)
    for j in range(Tc):                                        # Alg2 l.5: for 1 <= j <= Tc
        c0, c1 = j * Bc, min((j + 1) * Bc, Nk)
        Kj, Vj = kg[..., c0:c1, :], vg[..., c0:c1, :]          # Alg2 l.6: load K_j, V_j
        dKj = np.zeros(Kj.shape, dtype=q.dtype)                # Alg2 l.7: dK_j = 0, dV_j = 0
        dVj = np.zeros(Vj.shape, dtype=q.dtype)                # (B, Hkv, 1, Bc, d)
        for i in range(Tr):                                    # Alg2 l.8: for 1 <= i <= Tr
            r0, r1 = i * Br, min((i + 1) * Br, Nq)
            kind, heads = _tile(layg, i, j, r0, r1, c0, c1, Nq, Nk, left, right)
            if kind == "skip":
                continue
            Qi, dOi = qg[..., r0:r1, :], dog[..., r0:r1, :]    # Alg2 l.9: load Q_i, dO_i, L_i, D_i
            S, ok = _score_tile(Qi, Kj, bg, r0, r1, c0, c1,    # Alg2 l.10: S = Q_i K_j^T
                                kind, scale, Nq, Nk, left, right, heads)
            P = np.exp(S - Lg[..., r0:r1, :])                  # Alg2 l.11: P = exp(S - L_i)
            dP = dOi @ Vj.swapaxes(-1, -2)                     # Alg2 l.13: dP = dO_i V_j^T
            dS = P * (dP - D[..., r0:r1, :])                   # Alg2 l.14: dS = P * (dP - D_i)
            okT = None
            if ok is not None:                                 # masked pairs: exactly 0, even
                P, dS = np.where(ok, P, 0), np.where(ok, dS, 0)  # where L_i or D_i is NaN
                okT = ok.swapaxes(-1, -2)
            dVj += matmul_allowed(P.swapaxes(-1, -2), dOi,     # Alg2 l.12: dV_j += P^T dO_i
                                  okT).sum(axis=2, keepdims=True)
            dq[..., r0:r1, :] += scale * matmul_allowed(dS, Kj, ok)   # Alg2 l.15: dQ_i += dS K_j
            dKj += scale * matmul_allowed(dS.swapaxes(-1, -2), Qi,   # Alg2 l.16: dK_j += dS^T Q_i
                                          okT).sum(axis=2, keepdims=True)
        dk[:, :, c0:c1] = dKj[:, :, 0]                         # Alg2 l.18: write dK_j, dV_j
        dv[:, :, c0:c1] = dVj[:, :, 0]
    return dq.reshape(q.shape), dk, dv
