"""One layer's step of the stateful GPT patterns `xl` and `knn`: a segment attends to its own
tokens and to a memory of the segments before it, then the memory takes the segment in.

Transformer-XL (Dai et al. 2019, arXiv 1901.02860) and Memorizing Transformers (Wu et al. 2022,
arXiv 2203.08913); memory.py has the attention-level modules and their papers' equations. Here
the memory lives in a per-layer *cache* dict of ndarrays (constants: the stop-gradient "SG" of
Transformer-XL), so it can be carried across training steps and saved in a checkpoint:

    cache["mem_k"], cache["mem_v"]   (B, Hkv, n, d) keys (before RoPE) and values of the n tokens
                                     before the current segment, oldest first
    cache["seg_k"], cache["seg_v"]   (B, Hkv, s, d) the current segment's first s tokens (keys
                                     after RoPE), present only while decoding inside a segment
    cache["seg_kraw"]                (B, Hkv, s, d) the same keys before RoPE

Positions (RoPE, Su et al. 2021): a segment's tokens sit at positions 0..T-1 (the GPT's
start_pos counts inside the segment), and the memory's n keys are rotated, each time they are
used, at positions -n..-1: q_i . k_j depends only on i - j under RoPE, so this is exactly the
attention a model would compute over the concatenated text with absolute positions, and no
position grows without bound along a long stream. The memory stores keys before RoPE for this.
Transformer-XL caches hidden states and re-projects them with the current weights; minitx
caches the projected keys and values (equal at inference; in training the cache holds the
projection of the step that wrote it, as memory.py's SegmentRecurrence does).

When a segment is complete (its last token at position block_size - 1) its keys and values join
the memory: xl keeps the newest M = mem_len tokens; knn appends to a KNNMemory of `size` pairs,
evicting the oldest (FIFO). kNN output per head h: g_h * topk_attention + (1 - g_h) * local,
g = sigmoid(gate); with fewer than k tokens in memory (a stream's first segments) it is local.
"""
import numpy as np

from minitx.attention import scaled_dot_product_attention as sdpa
from minitx.attention.memory import KNNMemory, gated_mix, knn_attention
from minitx.autograd import Tensor
from minitx.ops import cat

__all__ = ["stream_attention", "MEMORY_KEYS"]

MEMORY_KEYS = ("mem_k", "mem_v", "seg_k", "seg_v", "seg_kraw")


def stream_attention(pattern, cache, q, k, k_raw, v, block_size, rotate, gate=None,
                     impl="flash2", enable_gqa=False):
    """Attend Nq new tokens of the current segment to [memory, segment so far]; update `cache`.

    Args:
        pattern: a stateful patterns.Pattern ("xl" or "knn").
        cache: the layer's dict (module docstring); an empty dict starts a stream.
        q: (B, H, Nq, d) Tensor, RoPE-rotated at their positions in the segment; k: (B, Hkv, Nq,
            d) the same for keys, k_raw: the keys before RoPE; v: (B, Hkv, Nq, d) values.
        block_size: T, the segment length (a segment is complete at position T - 1).
        rotate: rotate(x ndarray (..., n, d), positions (n,)) -> x RoPE-rotated (the GPT's).
        gate: (H,) Tensor of gate logits (knn only).
    Returns:
        Tensor (B, H, Nq, d).
    """
    Nq = q.shape[-2]
    s = 0 if "seg_k" not in cache else cache["seg_k"].shape[-2]      # tokens already in segment
    if s + Nq > block_size:
        raise ValueError(f"{s} cached + {Nq} new tokens exceed the segment length {block_size}")
    k_loc, v_loc = k, v
    if s:
        k_loc = cat([Tensor(cache["seg_k"]), k], dim=-2)              # (B, Hkv, s + Nq, d)
        v_loc = cat([Tensor(cache["seg_v"]), v], dim=-2)
    n = 0 if "mem_k" not in cache else cache["mem_k"].shape[-2]
    mem_k = None
    if n:
        mem_k = rotate(cache["mem_k"], np.arange(-n, 0)).astype(q.dtype)   # (B, Hkv, n, d)
    if pattern.name == "xl":
        kt, vt = k_loc, v_loc
        if n:                                                          # constants: no gradient
            kt = cat([Tensor(mem_k), k_loc], dim=-2)                   # (B, Hkv, n + s + Nq, d)
            vt = cat([Tensor(cache["mem_v"].astype(q.dtype)), v_loc], dim=-2)
        out = sdpa(q, kt, vt, is_causal=True, impl=impl, enable_gqa=enable_gqa)
    else:
        out = sdpa(q, k_loc, v_loc, is_causal=True, impl=impl, enable_gqa=enable_gqa)
        if n >= pattern.params["k"]:
            view = KNNMemory(pattern.params["size"])                   # rotated, read-only view
            view.keys, view.values = mem_k, cache["mem_v"].astype(q.dtype)
            out = gated_mix(gate, knn_attention(q, view, pattern.params["k"]), out)
    _update(pattern, cache, k_loc.data, k_raw.data, v_loc.data, s, block_size)
    return out


def _update(pattern, cache, k_seg, k_raw_new, v_seg, s, block_size):
    """Extend the segment; a complete segment moves into the memory."""
    k_raw = k_raw_new if not s else np.concatenate([cache["seg_kraw"], k_raw_new], axis=-2)
    if k_seg.shape[-2] < block_size:                                   # decoding mid-segment
        cache["seg_k"], cache["seg_v"], cache["seg_kraw"] = k_seg, v_seg, k_raw
        return
    for key in ("seg_k", "seg_v", "seg_kraw"):
        cache.pop(key, None)
    if pattern.name == "xl":
        if pattern.mem_len == 0:
            return
        if "mem_k" in cache:
            k_raw = np.concatenate([cache["mem_k"], k_raw], axis=-2)
            v_seg = np.concatenate([cache["mem_v"], v_seg], axis=-2)
        cache["mem_k"] = np.ascontiguousarray(k_raw[..., -pattern.mem_len:, :])
        cache["mem_v"] = np.ascontiguousarray(v_seg[..., -pattern.mem_len:, :])
        return
    mem = KNNMemory(pattern.params["size"])                             # FIFO eviction
    mem.keys, mem.values = cache.get("mem_k"), cache.get("mem_v")
    mem.add(k_raw, v_seg)
    cache["mem_k"], cache["mem_v"] = mem.keys, mem.values
