"""Input validation shared by the attention kernels (NumPy and, mirrored, Cython).

Every kernel takes the canonical 4-D layout: q (B, Hq, Nq, d), k and v (B, Hkv, Nk, d) with
Hq a multiple of Hkv (MQA/GQA), and an optional additive bias (Bb, Hb, Nq, Nk), Bb in {1, B},
Hb in {1, Hq}. Errors name the offending argument and value before any work starts.
"""
import numpy as np


def check_array(name, a, ndim, dtype=None):
    """Raise TypeError/ValueError unless `a` is a float32/float64 ndarray with `ndim` dims."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.float32 and a.dtype != np.float64:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but q has dtype {dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {a.shape}")


def check_qkv(q, k, v, bias, scale, Br=None, Bc=None):
    """Validate kernel inputs; return (B, Hq, Hkv, Nq, Nk, d, scale) with scale resolved.

    Args:
        q: (B, Hq, Nq, d); k, v: (B, Hkv, Nk, d); bias: None or (Bb, Hb, Nq, Nk);
        scale: None (1/sqrt(d)) or a positive float; Br, Bc: block sizes (ints >= 1) or None.
    """
    check_array("q", q, 4)
    check_array("k", k, 4, q.dtype)
    check_array("v", v, 4, q.dtype)
    B, Hq, Nq, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
    if k.shape[0] != B or k.shape[3] != d:
        raise ValueError(f"k must be (B={B}, Hkv, Nk, d={d}), got {k.shape}")
    Hkv, Nk = k.shape[1], k.shape[2]
    if min(B, Hq, Nq, d, Hkv, Nk) < 1:
        raise ValueError(f"empty attention input: q {q.shape}, k {k.shape}")
    if Hq % Hkv != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if bias is not None:
        check_array("bias", bias, 4, q.dtype)
        Bb, Hb = bias.shape[:2]
        if Bb not in (1, B) or Hb not in (1, Hq) or bias.shape[2:] != (Nq, Nk):
            raise ValueError(f"bias must be (1 or {B}, 1 or {Hq}, {Nq}, {Nk}), got {bias.shape}")
    if scale is None:
        scale = 1.0 / np.sqrt(d)
    scale = float(scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite float, got {scale}")
    for name, b in (("Br", Br), ("Bc", Bc)):
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, np.integer))
                              or b < 1):
            raise ValueError(f"block size {name} must be an int >= 1, got {b!r}")
    return B, Hq, Hkv, Nq, Nk, d, scale


# Default tiles of the FlashAttention-2 twins (flash2.py, minitx_c/flash.pyx), forward and
# backward, measured with the Cython kernel on one thread (d = 32 and 64, N = 100 ... 4096;
# 2026-11-29): equal tiles near 128, or near 64 when a causal or window mask lets tiles be
# skipped (finer tiles skip more of the masked triangle).
TILE, TILE_SKIPPING = 128, 64


def tile_for(n, target):
    """Default tile size for a sequence of n: the fewest tiles of at most `target` rows, made
    equal and rounded up to a multiple of 16 (the Cython kernel pads a tile to 16 rows), at
    most n. n = 128, target 96 gives 64 (two full tiles, not 96 + 32 padded to 96)."""
    count = -(-n // target)                  # ceil(n / target) tiles
    size = -(-n // count)                    # as equal as they can be
    return min(n, -(-size // 16) * 16)       # rounded up to a multiple of 16


def default_tiles(Br, Bc, Nq, Nk, skipping):
    """(Br, Bc) with each None replaced by tile_for(Nq or Nk, TILE_SKIPPING if `skipping` (a
    causal or window mask) else TILE)."""
    target = TILE_SKIPPING if skipping else TILE
    return (tile_for(Nq, target) if Br is None else Br,
            tile_for(Nk, target) if Bc is None else Bc)


def check_block_size(block_size):
    """The tile of a block layout: an int >= 1 (ValueError naming the value otherwise)."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
            or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1 with a block_layout, got "
                         f"{block_size!r}")


def check_layout(block_layout, Hq, Nq, Nk, Br, Bc):
    """Validate a block-sparse layout; return it as a bool array (Hl, Tr, Tc), Hl in {1, Hq}.

    Args:
        block_layout: None, or a bool ndarray (Tr, Tc) or (Hl, Tr, Tc): True where query block i
            may attend to key block j (blocks of Br = Bc rows/keys from index 0; the last ones
            may be short); Hl = 1 (all heads) or Hq (one layout per query head).
        Hq, Nq, Nk: query heads and sequence lengths; Br, Bc: the tile size, which must be equal.
    Returns:
        None or the layout as (Hl, Tr, Tc) bool.
    """
    if block_layout is None:
        return None
    if not isinstance(block_layout, np.ndarray) or block_layout.dtype != np.bool_:
        raise TypeError("block_layout must be a bool numpy.ndarray, got "
                        f"{getattr(block_layout, 'dtype', type(block_layout).__name__)}")
    if Br != Bc:
        raise ValueError(f"with a block_layout the tiles are square: Br ({Br}) must equal Bc ({Bc})")
    Tr, Tc = -(-Nq // Br), -(-Nk // Bc)
    lay = block_layout[None] if block_layout.ndim == 2 else block_layout
    if lay.ndim != 3 or lay.shape[0] not in (1, Hq) or lay.shape[1:] != (Tr, Tc):
        raise ValueError(f"block_layout must be ({Tr}, {Tc}) or (1 or {Hq}, {Tr}, {Tc}) for "
                         f"Nq={Nq}, Nk={Nk} and block size {Br}, got {block_layout.shape}")
    return lay


def check_forward_outputs(q, o, L, do):
    """Validate the backward's o, L (from the forward) and do against q (B, Hq, Nq, d)."""
    check_array("o", o, 4, q.dtype)
    check_array("do", do, 4, q.dtype)
    check_array("L", L, 3, q.dtype)
    if o.shape != q.shape or do.shape != q.shape or L.shape != q.shape[:3]:
        raise ValueError(f"o {o.shape} and do {do.shape} must be {q.shape}, L {L.shape} must be "
                         f"{q.shape[:3]}")


def group_heads(q, Hkv):
    """View (B, Hq, N, d) as (B, Hkv, G, N, d), G = Hq // Hkv: query head h uses kv head h // G
    (PyTorch's `enable_gqa`, i.e. k.repeat_interleave(G, dim=-3))."""
    B, Hq = q.shape[:2]
    return q.reshape(B, Hkv, Hq // Hkv, *q.shape[2:])


def group_bias(bias, Hkv):
    """View a bias (Bb, Hb, Nq, Nk) as (Bb, Hkv or 1, G or 1, Nq, Nk) to broadcast with grouped q."""
    if bias is None:
        return None
    Bb, Hb = bias.shape[:2]
    if Hb == 1:
        return bias[:, :, None]                                  # (Bb, 1, 1, Nq, Nk)
    return bias.reshape(Bb, Hkv, Hb // Hkv, *bias.shape[2:])     # (Bb, Hkv, G, Nq, Nk)
