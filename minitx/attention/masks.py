"""Which query may look at which key: causal and sliding-window masks, tile classification,
and turning a user's `attn_mask` into the additive bias every implementation consumes.

Conventions (shared by naive, flash1, flash2 and the Cython kernel):
  - Query row i (0 <= i < Nq) sits at key position i + (Nk - Nq): the causal mask is aligned to
    the bottom-right corner, as in flash-attn >= 2.1, so that a KV-cache decoding step
    (Nq = 1, Nk = past + 1) sees every key. (PyTorch's `is_causal` aligns top-left instead; the two
    agree when Nq == Nk.)
  - A window (left, right) lets row i see keys j with
        i + off - left <= j <= i + off + right,      off = Nk - Nq,
    where -1 means "unbounded" on that side (flash-attn's `window_size` convention).
    `is_causal=True` is the window (-1, 0); combined with a window it caps `right` at 0.
  - `bias` is additive, shape (Bb, Hb, Nq, Nk) with Bb in {1, B} and Hb in {1, Hq}; -inf masks.
  - A row with no allowed key (fully masked) produces zeros and logsumexp L = +inf.
  - A block layout (block-sparse attention, sparse.py) is a bool matrix over (query block, key
    block), blocks of `block_size` indices from 0 (top-left; the last block may be short), one
    for all heads or one per query head. It is one more mask: a pair outside it is masked. The
    tiled kernels use block_size as their tile (Br = Bc) and never read a tile outside it.
  - NaN (issue 14): a pair (i, j) is *masked* if the causal/window rule forbids it or its bias is
    -inf (a False in a bool mask becomes -inf); every other pair is *allowed*. NaN and inf in q,
    k, v (and in the gradient dO) propagate exactly as the dense product over the allowed pairs
    would propagate them (PyTorch's math path); masked pairs and skipped tiles never contribute,
    NaN or not. So a NaN key poisons every row that may see it and no other row, in the forward
    and the backward. `tile_allowed` gives a tile's mask and `matmul_allowed` is the product that
    keeps masked pairs out (a plain A @ B would leak 0 * NaN = NaN).
"""
import numpy as np

from minitx.backend import matmul


def resolve_window(is_causal, window):
    """Fold `is_causal` and `window` into one (left, right) pair, -1 meaning unbounded.

    Args:
        is_causal: bool.
        window: None or a pair (left, right) of ints >= 0, or -1 / None for unbounded.
    Returns:
        (left, right): two Python ints, each -1 or >= 0.
    """
    if window is None:
        left, right = -1, -1
    else:
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise ValueError(f"window must be None or a pair (left, right), got {window!r}")
        left, right = (-1 if w is None else w for w in window)
        for name, w in (("left", left), ("right", right)):
            if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < -1:
                raise ValueError(f"window {name} must be an int >= 0 or -1/None (unbounded), "
                                 f"got {w!r}")
        left, right = int(left), int(right)
    if is_causal:
        right = 0 if right < 0 else min(right, 0)
    return left, right


def allowed(rows, cols, Nq, Nk, left, right):
    """Boolean mask of allowed (query, key) pairs.

    Args:
        rows: (R,) int query indices; cols: (C,) int key indices.
        Nq, Nk: sequence lengths; left, right: window from `resolve_window`.
    Returns:
        (R, C) bool: True where row may attend to col (and both are in range).
    """
    pos = rows[:, None] + (Nk - Nq)                          # (R, 1) key position of each query
    ok = (rows[:, None] < Nq) & (cols[None, :] < Nk)         # (R, C)
    if left >= 0:
        ok = ok & (cols[None, :] >= pos - left)
    if right >= 0:
        ok = ok & (cols[None, :] <= pos + right)
    return ok


def tile_kind(r0, r1, c0, c1, Nq, Nk, left, right):
    """Classify the tile rows [r0, r1) x cols [c0, c1) for block skipping.

    Returns:
        "skip" if no pair in the tile is allowed (the tile is never computed), "full" if every
        pair is allowed (no per-element mask needed), else "partial".
    """
    off = Nk - Nq
    if right >= 0 and c0 > r1 - 1 + off + right:     # every column right of the last row's band
        return "skip"
    if left >= 0 and c1 - 1 < r0 + off - left:       # every column left of the first row's band
        return "skip"
    if r1 > Nq or c1 > Nk:
        return "partial"
    if right >= 0 and c1 - 1 > r0 + off + right:
        return "partial"
    if left >= 0 and c0 < r1 - 1 + off - left:
        return "partial"
    return "full"


def layout_heads(lay, Hkv):
    """A layout (Hl, Tr, Tc) grouped like the heads of grouped q: (1, Hkv or 1, G or 1, Tr, Tc)."""
    Hl, Tr, Tc = lay.shape
    if Hl == 1:
        return lay[None, :, None]                              # (1, 1, 1, Tr, Tc)
    return lay.reshape(1, Hkv, Hl // Hkv, Tr, Tc)


def layout_tile(layg, i, j):
    """Which heads have tile (i, j) live in a grouped layout (`layout_heads`).

    Returns:
        "skip" (no head: the tile is never read), None (every head) or a bool array
        (1, Hkv, G, 1, 1) broadcastable to the grouped score tile.
    """
    live = layg[..., i, j]
    if not live.any():
        return "skip"
    if live.all():
        return None
    return live[..., None, None]


def layout_to_mask(lay, block_size, Nq, Nk):
    """Dense mask of a block layout: (Hl, Tr, Tc) -> (Hl, Nq, Nk) bool (True = may attend)."""
    dense = np.repeat(np.repeat(lay, block_size, axis=1), block_size, axis=2)
    return dense[:, :Nq, :Nk]


def tile_allowed(bg, r0, r1, c0, c1, kind, Nq, Nk, left, right, heads=None):
    """The allowed pairs of one tile: window rule and bias != -inf, or None if all are allowed.

    Args:
        bg: None or a grouped bias (..., Nq, Nk) (checks.group_bias); r0, r1, c0, c1: the tile
            rows [r0, r1) and columns [c0, c1); kind: tile_kind of the tile (not "skip");
        Nq, Nk, left, right: as in `allowed`.
    Returns:
        None, or a bool array broadcastable to the tile (..., r1 - r0, c1 - c0).
    """
    ok = None
    if kind == "partial":
        ok = allowed(np.arange(r0, r1), np.arange(c0, c1), Nq, Nk, left, right)   # (Br, Bc)
    if bg is not None:
        live = bg[..., r0:r1, c0:c1] != -np.inf                # (.., Br, Bc)
        if not live.all():
            ok = live if ok is None else ok & live
    if heads is not None:
        ok = heads if ok is None else ok & heads
    return ok


def matmul_allowed(A, B, ok=None):
    """sum over c of A[..., r, c] * B[..., c, :], taken over the allowed pairs (r, c) only.

    `A @ B` would let a masked pair leak NaN (0 * NaN = NaN) or mix NaN from A's masked entries
    in. Here masked entries of A are zeroed, the non-finite entries of B are split off, and those
    are added back pair by pair where allowed: NaN and inf in B spread exactly from allowed pairs.
    Args:
        A: (..., R, C); B: (..., C, d); ok: None (every pair allowed) or bool broadcastable to A.
    Returns:
        (..., R, d), broadcast like A @ B.
    """
    if ok is None:
        return matmul(A, B)
    A = np.where(ok, A, 0)
    fin = np.isfinite(B)
    if fin.all():
        return matmul(A, B)
    out = matmul(A, np.where(fin, B, 0))                       # (..., R, d) finite part
    axes = tuple(range(B.ndim - 2)) + (B.ndim - 1,)
    bad = np.flatnonzero(~fin.all(axis=axes))                  # columns c with a non-finite B_c
    Bbad = np.where(fin, 0, B)[..., bad, :]                    # (..., nb, d)
    term = A[..., bad, None] * Bbad[..., None, :, :]           # (..., R, nb, d)
    okb = np.broadcast_to(ok, A.shape)[..., bad, None]         # (..., R, nb, 1)
    return out + np.where(okb, term, 0).sum(axis=-2)


def mask_to_bias(attn_mask, batch_shape, Hq, Nq, Nk, dtype):
    """Turn a PyTorch-style `attn_mask` into the additive bias the kernels take.

    Args:
        attn_mask: None; a bool array (True = may attend, PyTorch's meaning) or a float array
            added to the scores, broadcastable to batch_shape + (Hq, Nq, Nk).
        batch_shape: the query's leading dims before (Hq, Nq, d), a tuple.
        Hq, Nq, Nk: heads and sequence lengths; dtype: float dtype of the result.
    Returns:
        None, or an additive bias (Bb, Hb, Nq, Nk) with Bb in {1, prod(batch_shape)}, Hb in {1, Hq}
        (-inf where a bool mask is False); singleton dims are kept small, never broadcast out.
    """
    if attn_mask is None:
        return None
    m = np.asarray(attn_mask)
    if m.dtype != np.bool_ and not np.issubdtype(m.dtype, np.floating):
        raise TypeError(f"attn_mask must be bool or floating point, got {m.dtype}")
    full = tuple(batch_shape) + (Hq, Nq, Nk)
    try:
        np.broadcast_shapes(m.shape, full)
    except ValueError:
        raise ValueError(f"attn_mask of shape {m.shape} does not broadcast to {full}") from None
    if m.ndim > len(full) or np.broadcast_shapes(m.shape, full) != full:
        raise ValueError(f"attn_mask of shape {m.shape} does not broadcast to {full}")
    m = m.reshape((1,) * (len(full) - m.ndim) + m.shape)       # same ndim as `full`
    B = int(np.prod(batch_shape, dtype=np.int64))
    Bb = 1 if all(s == 1 for s in m.shape[:-3]) else B
    Hb = m.shape[-3]
    m = np.broadcast_to(m, (batch_shape if Bb > 1 else (1,) * len(batch_shape)) + (Hb, Nq, Nk))
    m = m.reshape(Bb, Hb, Nq, Nk)                               # (Bb, Hb, Nq, Nk)
    if m.dtype == np.bool_:
        bias = np.zeros(m.shape, dtype=dtype)
        bias[~m] = -np.inf
        return bias
    return np.ascontiguousarray(m, dtype=dtype)
