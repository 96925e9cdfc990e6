"""Attention patterns for the GPT: *which* pairs attend (or how attention is approximated),
separate from *how* exact attention is computed (`--attention naive|flash1|flash2|c`).

Syntax of `GPTConfig.attention_pattern` / `--attention-pattern` (saved in config.json):
    dense                                      every causal pair (the default)
    window:W                                   each token sees the W tokens before it
    longformer:block=B,window=w,global=g       block-sparse, sparse.longformer (causal)
    bigbird:block=B,window=w,global=g,random=r,seed=s    block-sparse, sparse.bigbird (causal)
    strided:block=B,stride=l                   block-sparse, Sparse Transformer strided (causal)
    fixed:block=B,stride=l,c=c                 block-sparse, Sparse Transformer fixed (causal)
    linear                                     linear attention, elu + 1 (linear.py)
    performer:features=m,seed=s                Performer FAVOR+ (linear.py)
    xl:mem=M   or   xl:segments=s              Transformer-XL recurrence (stream.py): each
                                               segment also sees the M = s x block_size cached
                                               keys/values before it (default: one segment)
    knn:k=K,size=S                             Memorizing Transformers (stream.py): causal
                                               attention in the segment, gated per head with
                                               attention over the top-K of a FIFO memory of the
                                               last S tokens' keys/values (defaults 32, 65536)
One spec applies to every layer; "SPEC;SPEC;..." gives one per layer (n_layer of them). Unknown
names, keys and bad values raise ValueError naming the offending part. Block-sparse patterns use
block_size = B as the tile of the flash kernels; while decoding with a KV cache (Nq < Nk) they
pass the layout's dense rows as a mask. Linear patterns decode by recomputing the prefix sums
from the cache (O(N) per token; `linear.LinearAttentionState` is the O(1) RNN form).
The `xl` and `knn` patterns are *stateful*: a segment of block_size tokens is one forward; the
per-layer cache carries the memory across segments (minitx/long_context.py trains them over
long documents segment by segment; `minitx/attention/stream.py` is the per-layer step). They
need RoPE (pos="rope"); `knn` also needs n_kv_head == n_head and adds a learned (H,) gate.

Cost (`Pattern.attention_flops`): the attention FLOPs per token of one layer, forward. Dense
keeps PaLM's convention (4 H d T: the whole T x T score matrix, as GPT.flops_per_token always
counted); every other pattern is that times its share of dense causal attention's pairs (tiles
for block-sparse, since the tiled kernels compute whole live tiles), so ratios between patterns
are exact pair counts; linear/Performer count their chunked prefix sums and feature maps; kNN
adds the exact search over a full memory and the k retrieved pairs. Training is 3x forward.
"""
import numpy as np

from minitx.attention import linear, sparse
from minitx.attention import scaled_dot_product_attention as sdpa
from minitx.attention.masks import layout_to_mask
from minitx.autograd import Tensor

# name -> {key: (default, minimum)}; every value is an int
SPECS = {
    "dense": {},
    "window": None,                     # window:W, one positional int
    "longformer": {"block": (16, 1), "window": (1, 0), "global": (1, 0)},
    "bigbird": {"block": (16, 1), "window": (1, 0), "global": (1, 0), "random": (1, 0),
                "seed": (0, 0)},
    "strided": {"block": (16, 1), "stride": (4, 1)},
    "fixed": {"block": (16, 1), "stride": (4, 1), "c": (1, 1)},
    "linear": {},
    "performer": {"features": (64, 1), "seed": (0, 0)},
    "xl": {"mem": (None, 0), "segments": (None, 0)},
    "knn": {"k": (32, 1), "size": (65536, 1)},
}
STATEFUL = ("xl", "knn")
BLOCK_SPARSE = ("longformer", "bigbird", "strided", "fixed")


def parse(spec):
    """One layer's spec -> (name, params dict). Raises ValueError naming the bad part."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"attention pattern must be a non-empty string, got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    if name not in SPECS:
        raise ValueError(f"unknown attention pattern {name!r} in {spec!r}; choose from "
                         f"{', '.join(SPECS)}")
    if name == "window":
        return name, {"window": _int(rest, f"window size in {spec!r}", 0)}
    params = {key: default for key, (default, _) in SPECS[name].items()}
    for part in filter(None, rest.split(",")):
        key, eq, val = part.partition("=")
        if key not in SPECS[name] or not eq:
            raise ValueError(f"bad setting {part!r} in attention pattern {spec!r}; {name} takes "
                             f"{', '.join(k + '=INT' for k in SPECS[name]) or 'no settings'}")
        params[key] = _int(val, f"{key} in {spec!r}", SPECS[name][key][1])
    if name == "xl":
        if params["mem"] is not None and params["segments"] is not None:
            raise ValueError(f"give mem=M or segments=s in attention pattern {spec!r}, not both")
        if params["mem"] is None and params["segments"] is None:
            params["segments"] = 1
    if name == "knn" and params["k"] > params["size"]:
        raise ValueError(f"k must be <= size in attention pattern {spec!r}")
    if name == "fixed" and params["c"] > params["stride"]:
        raise ValueError(f"c must be <= stride in attention pattern {spec!r}")
    return name, params


def parse_layers(spec, n_layer):
    """The whole setting -> one (name, params) per layer."""
    if not isinstance(spec, str):
        raise ValueError(f"attention pattern must be a string, got {spec!r}")
    parts = spec.split(";")
    if len(parts) not in (1, n_layer):
        raise ValueError(f"attention pattern {spec!r} has {len(parts)} ';'-separated specs; give "
                         f"one, or one per layer ({n_layer})")
    layers = [parse(p) for p in parts]
    return layers * n_layer if len(layers) == 1 else layers


def _int(text, what, lo):
    try:
        val = int(text)
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {text!r}") from None
    if val < lo:
        raise ValueError(f"{what} must be >= {lo}, got {val}")
    return val


class Pattern:
    """A parsed pattern, callable like causal F.scaled_dot_product_attention.

    Args:
        name, params: from `parse`; head_dim: d (Performer's features are drawn for it);
        layer: the layer index (Performer's features differ per layer: seed + layer).
    """

    def __init__(self, name, params, head_dim, layer=0, block_size=None):
        self.name, self.params = name, params
        self.stateful = name in STATEFUL
        self.mem_len = None                            # xl: cached tokens M
        if name == "xl":
            seg = params["segments"]
            if seg is not None and block_size is None:
                raise ValueError("xl:segments=s needs the block size (give mem=M)")
            self.mem_len = params["mem"] if seg is None else seg * block_size
        self.features = None
        if name == "performer":
            self.features = linear.PerformerFeatures(head_dim, params["features"],
                                                     seed=params["seed"] + 1000 * layer)

    def layout(self, n):
        """The causal block layout over n blocks (block-sparse patterns)."""
        p = self.params
        if self.name == "longformer":
            return sparse.longformer(n, p["window"], np.arange(min(p["global"], n)), causal=True)
        if self.name == "bigbird":
            return sparse.bigbird(n, p["window"], min(p["global"], n), p["random"],
                                  seed=p["seed"], causal=True)
        if self.name == "strided":
            return sparse.strided(n, p["stride"], causal=True)
        return sparse.fixed(n, p["stride"], p["c"], causal=True)

    def __call__(self, q, k, v, impl, enable_gqa):
        """q (B, H, Nq, d), k, v (B, Hkv, Nk, d) Tensors, Nq <= Nk (a KV cache) -> (B, H, Nq, d)."""
        if self.stateful:
            raise ValueError(f"the {self.name!r} pattern carries a memory: call "
                             "minitx.attention.stream.stream_attention with a cache")
        Nq, Nk = q.shape[-2], k.shape[-2]
        kw = dict(is_causal=True, impl=impl, enable_gqa=enable_gqa)
        if self.name == "dense":
            return sdpa(q, k, v, **kw)
        if self.name == "window":
            return sdpa(q, k, v, window=(self.params["window"], 0), **kw)
        if self.name in BLOCK_SPARSE:
            bs = self.params["block"]
            lay = self.layout(sparse.n_blocks(Nk, bs))
            if Nq == Nk:
                return sdpa(q, k, v, block_layout=lay, block_size=bs, **kw)
            mask = layout_to_mask(lay[None], bs, Nk, Nk)[0, Nk - Nq:]       # (Nq, Nk) rows
            return sdpa(q, k, v, attn_mask=mask, **kw)
        if Nq < Nk:                                    # decoding: rows of the full prefix sums
            pad = Tensor(np.zeros(q.shape[:-2] + (Nk - Nq, q.shape[-1]), dtype=q.dtype))
            from minitx.ops import cat
            return linear.linear_attention(cat([pad, q], dim=-2), k, v, is_causal=True,
                                           feature_map=self.features)[..., Nk - Nq:, :]
        return linear.linear_attention(q, k, v, is_causal=True, feature_map=self.features)

    # ------------------------------------------------------------ cost
    def attention_flops(self, T, n_head, head_dim, training=True):
        """Attention FLOPs per token of one layer for segments of T tokens (module docstring:
        dense = 4 H d T forward, the others scaled by their share of causal pairs); training is
        3x forward, except kNN's search (no gradient flows through it: forward only)."""
        H, d = n_head, head_dim
        mult = 3 if training else 1
        if self.name == "knn":
            k, size = self.params["k"], self.params["size"]     # local + top-k, + exact search
            return mult * (4 * H * d * T + 4 * H * d * k) + 2 * H * d * size
        return mult * self._forward_flops(T, H, d)

    def _forward_flops(self, T, H, d):
        dense = 4 * H * d * T
        causal = T * (T + 1) // 2                               # causal pairs of one segment
        if self.name == "dense":
            return dense
        if self.name == "window":
            w = self.params["window"]
            pairs = sum(min(i, w) + 1 for i in range(T))
            return dense * pairs / causal
        if self.name in BLOCK_SPARSE:
            n = sparse.n_blocks(T, self.params["block"])
            live = int(np.count_nonzero(self.layout(n)))
            return dense * live / (n * (n + 1) // 2)            # of the causal tiles
        if self.name in ("linear", "performer"):
            m = d if self.name == "linear" else self.params["features"]
            C = min(64, T)                                      # linear_attention's chunk
            # per query: intra-chunk scores (C x m) and their product with [V, 1] (C x (d+1)),
            # the state read phi(q).S and the state update phi(k) [v, 1]^T (m x (d+1)) each
            flops = 2 * m * C + 2 * C * (d + 1) + 4 * m * (d + 1)
            if self.name == "performer":
                flops += 2 * 2 * d * m                          # q and k through w (d x m)
            return H * flops
        M = self.mem_len                                        # xl: + M cached keys per query
        return dense * (T * M + causal) / causal
