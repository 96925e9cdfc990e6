"""Memory-augmented attention: Transformer-XL segment recurrence and a kNN memory.

Transformer-XL (Dai, Yang, Yang, Carbonell, Le, Salakhutdinov 2019, "Transformer-XL: Attentive
Language Models Beyond a Fixed-Length Context", arXiv 1901.02860): a long document is processed
in segments of S tokens; each layer caches the keys and values of the last `mem_len` tokens,
*without gradient* (their "SG" stop-gradient), and the next segment attends to [memory, own
tokens]. One layer then sees mem_len tokens back; L layers reach about L x mem_len (the paper's
O(N L)), at the cost of one segment's attention. Positions must stay consistent across segments:
the paper introduced relative position encodings for this. With RoPE it is natural: rotate q and
k by their *absolute* positions (segment start + index) before caching k; q_i . k_j then depends
only on i - j, so a cached key means the same to every later query. `SegmentRecurrence` holds
the memory of one layer; the causal mask's bottom-right alignment (masks.py) puts the Nq queries
after the cached keys automatically.

Memorizing Transformers (Wu, Rabe, Hutchins, Szegedy 2022, arXiv 2203.08913): past (key, value)
pairs go into an external memory of bounded size (oldest evicted first, FIFO); each query
retrieves its top-k keys by exact inner-product search, attends over them (softmax over the k
retrieved scores), and a learned per-head gate g = sigmoid(b) mixes the result with ordinary
local attention: out = g * retrieved + (1 - g) * local. No gradient flows into the memory.
`KNNMemory` is the memory, `knn_attention` the retrieval-attention, `MemorizingAttention` the
gated layer. Memory: size x (d + dv) floats per head and batch row; search: O(Nq x size x d).
"""
import numpy as np

from minitx.attention import scaled_dot_product_attention as sdpa
from minitx.autograd import Tensor
from minitx.ops import cat

__all__ = ["SegmentRecurrence", "segment_attention", "KNNMemory", "knn_attention", "gated_mix",
           "MemorizingAttention"]


def _data(x):
    return x.data if isinstance(x, Tensor) else np.asarray(x)


def _check_int(name, x, lo):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {x!r}")


# ---------------------------------------------------------------- Transformer-XL
class SegmentRecurrence:
    """One layer's Transformer-XL memory: the last `mem_len` keys and values, stop-gradient.

    Args:
        mem_len: tokens kept (>= 0; 0 is plain segment-local attention).
        window: None (each query sees the whole memory and the causal part of its segment), or
            an int w: each query sees exactly the w tokens before it (a sliding window that
            crosses segment borders; needs w <= mem_len to be exact).
        impl: attention implementation for F.scaled_dot_product_attention.
    """

    def __init__(self, mem_len, window=None, impl="flash2"):
        _check_int("mem_len", mem_len, 0)
        if window is not None:
            _check_int("window", window, 0)
            if window > mem_len:
                raise ValueError(f"window ({window}) must be <= mem_len ({mem_len}): the memory "
                                 "must hold every key the window reaches")
        self.mem_len, self.window, self.impl = mem_len, window, impl
        self.k = self.v = None                                 # (..., M, d) ndarrays, M <= mem_len

    def reset(self):
        self.k = self.v = None

    def __call__(self, q, k, v, enable_gqa=False):
        """Attend one segment to [memory, segment]; then update the memory.

        Args:
            q: (..., H, S, d) queries; k, v: (..., Hkv, S, d) keys and values of the segment,
                RoPE-rotated at absolute positions if RoPE is used (see the module docstring).
        Returns:
            Tensor (..., H, S, d).
        """
        kt, vt = k, v
        if self.k is not None:                                 # constants: no gradient (SG)
            kt = _cat(Tensor(self.k), k)                       # (..., Hkv, M + S, d)
            vt = _cat(Tensor(self.v), v)
        window = None if self.window is None else (self.window, 0)
        out = sdpa(q, kt, vt, is_causal=True, window=window, impl=self.impl,
                   enable_gqa=enable_gqa)
        if self.mem_len > 0:
            self.k = _data(kt)[..., -self.mem_len:, :].copy()  # the newest mem_len tokens
            self.v = _data(vt)[..., -self.mem_len:, :].copy()
        return out


def segment_attention(q, k, v, segment_len, mem_len, window=None, impl="flash2"):
    """Causal attention over a long sequence, segment by segment, with Transformer-XL memory.

    Args:
        q: (..., H, N, d); k, v: (..., Hkv, N, d); segment_len: S tokens per segment (the last
            one may be short); mem_len, window, impl: as in SegmentRecurrence.
    Returns:
        Tensor (..., H, N, d): segment s's rows are computed from segment s and the memory.
    """
    _check_int("segment_len", segment_len, 1)
    mem = SegmentRecurrence(mem_len, window, impl)
    q, k, v = (x if isinstance(x, Tensor) else Tensor(np.asarray(x)) for x in (q, k, v))
    N = q.shape[-2]
    outs = [mem(q[..., s:s + segment_len, :], k[..., s:s + segment_len, :],
                v[..., s:s + segment_len, :], enable_gqa=True)
            for s in range(0, N, segment_len)]
    return _cat(*outs)


def _cat(*ts):
    return cat(list(ts), dim=-2)                               # along the sequence


# ---------------------------------------------------------------- kNN memory
class KNNMemory:
    """A bounded FIFO store of (key, value) pairs with exact top-k inner-product search.

    Args:
        size: capacity in pairs per (batch, head) row; adding beyond it evicts the oldest.
    Attributes:
        keys (..., n, d), values (..., n, dv): ndarrays, oldest first, n <= size.
    """

    def __init__(self, size):
        _check_int("size", size, 1)
        self.size = size
        self.keys = self.values = None

    def __len__(self):
        return 0 if self.keys is None else self.keys.shape[-2]

    def add(self, keys, values):
        """Append keys (..., n, d) and values (..., n, dv) (constants: no gradient)."""
        keys, values = _data(keys), _data(values)
        if keys.shape[:-1] != values.shape[:-1]:
            raise ValueError(f"keys {keys.shape} and values {values.shape} must share (..., n)")
        if self.keys is not None and (keys.shape[:-2] != self.keys.shape[:-2]
                                      or keys.shape[-1] != self.keys.shape[-1]):
            raise ValueError(f"keys {keys.shape} do not match the memory's {self.keys.shape}")
        if self.keys is not None:
            keys = np.concatenate([self.keys, keys], axis=-2)
            values = np.concatenate([self.values, values], axis=-2)
        self.keys = keys[..., -self.size:, :].copy()           # FIFO: keep the newest `size`
        self.values = values[..., -self.size:, :].copy()

    def search(self, q, k):
        """Exact top-k by inner product. q: (..., Nq, d) ndarray -> indices (..., Nq, k)."""
        if self.keys is None:
            raise ValueError("the memory is empty")
        _check_int("k", k, 1)
        if k > len(self):
            raise ValueError(f"k ({k}) exceeds the {len(self)} pairs in memory")
        scores = q @ np.swapaxes(self.keys, -1, -2)             # (..., Nq, n)
        idx = np.argpartition(-scores, k - 1, axis=-1)[..., :k]  # top-k, unordered
        return np.take_along_axis(idx, np.argsort(-np.take_along_axis(scores, idx, -1), -1), -1)


def knn_attention(query, memory, k, scale=None):
    """Attention over each query's top-k memory entries (Memorizing Transformers).

    Args:
        query: Tensor or ndarray (..., Nq, d), leading dims those of the memory's keys;
        memory: a KNNMemory; k: entries retrieved per query; scale: None means 1/sqrt(d).
    Returns:
        Tensor (..., Nq, dv), differentiable with respect to the query (the memory is constant).
    """
    q = query if isinstance(query, Tensor) else Tensor(np.asarray(query))
    idx = memory.search(q.data, k)                             # (..., Nq, k)
    lead = idx.shape[:-2]
    Kr = np.take_along_axis(memory.keys[..., None, :, :],      # (..., Nq, k, d) retrieved
                            idx[..., None].reshape(*lead, idx.shape[-2], k, 1), axis=-2)
    Vr = np.take_along_axis(memory.values[..., None, :, :],
                            idx[..., None].reshape(*lead, idx.shape[-2], k, 1), axis=-2)
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = (q.unsqueeze(-2) * Tensor(Kr.astype(q.dtype))).sum(dim=-1) * scale   # (..., Nq, k)
    p = s.softmax(dim=-1)
    return (p.unsqueeze(-1) * Tensor(Vr.astype(q.dtype))).sum(dim=-2)        # (..., Nq, dv)


def gated_mix(gate, retrieved, local):
    """g * retrieved + (1 - g) * local per head, g = sigmoid(gate) = 1 / (1 + e^-gate).

    Args:
        gate: (H,) Tensor of gate logits; retrieved, local: (..., H, S, d) Tensors.
    Returns:
        Tensor (..., H, S, d), differentiable in all three.
    """
    g = ((-gate).exp() + 1.0) ** -1.0                                    # (H,)
    g = g.to(_data(local).dtype).reshape(-1, 1, 1)                       # (H, 1, 1)
    return g * retrieved + (1.0 - g) * local


class MemorizingAttention:
    """Local causal attention gated with kNN-memory attention, per head (Wu et al. 2022, eq. 2).

        out = g * knn_attention(q, memory, k) + (1 - g) * sdpa(q, k_local, v_local, causal),
        g = sigmoid(gate) per head, `gate` a learned (H,) Tensor (initialised to 0: g = 1/2).
    After each call the segment's keys and values are added to the memory (FIFO eviction).
    Args:
        n_head: H; size: memory capacity; k: entries retrieved per query; impl: local attention.
    """

    def __init__(self, n_head, size, k=32, impl="flash2"):
        _check_int("n_head", n_head, 1)
        _check_int("k", k, 1)
        self.memory, self.k, self.impl = KNNMemory(size), k, impl
        self.gate = Tensor(np.zeros(n_head), requires_grad=True)   # (H,) gate logits

    def __call__(self, q, k, v):
        """q, k, v: (..., H, S, d) Tensors of one segment -> Tensor (..., H, S, d)."""
        local = sdpa(q, k, v, is_causal=True, impl=self.impl)
        if len(self.memory) >= self.k:
            out = gated_mix(self.gate, knn_attention(q, self.memory, self.k), local)
        else:
            out = local                                        # nothing to retrieve yet
        self.memory.add(k, v)
        return out
