"""A decoder-only transformer language model (GPT) on minitx's autograd.

    x = wte[idx] (+ wpe[pos])                                   token (+ learned position) embedding
    for each block:  x = x + Attn(Norm(x));  x = x + MLP(Norm(x))  pre-norm residual blocks
    logits = Norm(x) @ wte^T  (tied)  or  lm_head(Norm(x))

References: Radford et al. 2019 (GPT-2: pre-norm, 0.02 init, scaled residual init); Vaswani et
al. 2017 (arXiv 1706.03762, multi-head attention); Su et al. 2021 (arXiv 2104.09864, RoPE);
Shazeer 2020 (arXiv 2002.05202, SwiGLU); FLOPs per token from Chowdhery et al. 2022 (PaLM,
arXiv 2204.02311, appendix B): 6N + 12 L H Q T for training, a third of that forward only.
"""
import dataclasses
import math

import numpy as np

from minitx import backend
from minitx import random as _random
from minitx.attention.patterns import STATEFUL, Pattern, parse_layers
from minitx.attention.stream import stream_attention
from minitx.autograd import Function, Tensor, no_grad
from minitx.nn import functional as F
from minitx.nn.modules import (Embedding, LayerNorm, Linear, Module, ModuleList, Parameter,
                               RMSNorm)


@dataclasses.dataclass
class GPTConfig:
    vocab_size: int = 256
    block_size: int = 128          # maximum context length T
    n_layer: int = 4
    n_head: int = 4                # query heads H
    n_embd: int = 128              # residual width C
    dropout: float = 0.0
    bias: bool = True              # biases in Linear layers and LayerNorm
    norm: str = "layernorm"        # "layernorm" | "rmsnorm"
    pos: str = "learned"           # "learned" | "rope"
    mlp: str = "gelu"              # "gelu" (tanh GELU) | "swiglu"
    tie_weights: bool = True       # lm_head shares wte's weight
    attention: str = "auto"        # F.scaled_dot_product_attention's impl; "auto": the Cython
                                   # kernel on the c backend, the NumPy reference "naive" otherwise
    # The fields below default to None and are resolved in __post_init__, so a saved config is
    # explicit and a checkpoint written before they existed loads with the values it was built with.
    head_dim: int = None           # d; the attention's inner width is H * d, independent of C
    n_kv_head: int = None          # key/value heads (GQA when < n_head); default n_head
    ffn_hidden: int = None         # MLP hidden width; default 4C (gelu), 4*ceil(8C/3 / 4) (swiglu)
    rope_base: float = 10000.0     # RoPE's theta base
    norm_eps: float = None         # default 1e-5 (LayerNorm) or 1e-6 (RMSNorm)
    fused_qkv: bool = True         # GPT-2 flavour: one qkv Linear; False: q/k/v/o_proj (Llama names)
    attention_pattern: str = "dense"   # which pairs attend, per layer (minitx.attention.patterns)

    def __post_init__(self):
        if self.head_dim is None and self.n_head > 0:
            if self.n_embd % self.n_head:
                raise ValueError(f"invalid GPTConfig (n_embd % n_head != 0: give head_dim "
                                 f"explicitly): {self}")
            self.head_dim = self.n_embd // self.n_head
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.ffn_hidden is None:
            C = self.n_embd
            self.ffn_hidden = 4 * ((8 * C // 3 + 3) // 4) if self.mlp == "swiglu" else 4 * C
        if self.norm_eps is None:
            self.norm_eps = 1e-6 if self.norm == "rmsnorm" else 1e-5
        ints = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "head_dim",
                "n_kv_head", "ffn_hidden")
        not_int = [k for k in ints if isinstance(getattr(self, k), bool)
                   or not isinstance(getattr(self, k), (int, np.integer))]
        if not_int:
            raise TypeError(f"invalid GPTConfig: {', '.join(not_int)} must be integers: {self}")
        checks = {
            "norm": self.norm in ("layernorm", "rmsnorm"),
            "pos": self.pos in ("learned", "rope"),
            "mlp": self.mlp in ("gelu", "swiglu"),
            "positive sizes": min(getattr(self, k) for k in ints) > 0,
            "n_head % n_kv_head": self.n_kv_head > 0 and self.n_head % self.n_kv_head == 0,
            "dropout in [0, 1)": 0.0 <= self.dropout < 1.0,
            "rope needs an even head_dim": self.pos != "rope" or self.head_dim % 2 == 0,
            "rope_base > 1": math.isfinite(self.rope_base) and self.rope_base > 1,
            "norm_eps in (0, 1)": 0.0 < self.norm_eps < 1.0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid GPTConfig ({', '.join(bad)}): {self}")
        layers = parse_layers(self.attention_pattern, self.n_layer)         # names a bad spec
        if self.n_kv_head != self.n_head and any(n in ("linear", "performer", "knn")
                                                 for n, _ in layers):
            raise ValueError(f"attention pattern {self.attention_pattern!r} needs n_kv_head == "
                             f"n_head (linear and kNN attention have no GQA here): {self}")
        if self.pos != "rope" and any(n in STATEFUL for n, _ in layers):
            raise ValueError(f"attention pattern {self.attention_pattern!r} carries a memory "
                             f"across segments and needs pos='rope' (cached keys keep their "
                             f"relative positions; e.g. --config llama): {self}")
        sizes = (self.vocab_size * self.n_embd + self.n_layer * self.n_embd
                 * (self.head_dim * (2 * self.n_head + 2 * self.n_kv_head) + 3 * self.ffn_hidden))
        if sizes > MAX_PARAMS:
            raise ValueError(f"invalid GPTConfig: about {sizes:,} parameters, more than minitx "
                             f"builds ({MAX_PARAMS:,}): {self}")

    @classmethod
    def from_dict(cls, d):
        """A GPTConfig from a saved dict, naming unknown or missing fields clearly."""
        if not isinstance(d, dict):
            raise TypeError(f"a model config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {unknown}")
        return cls(**d)


MAX_PARAMS = 2_000_000_000     # a guard against absurd configs (a corrupted file) before allocating

CONFIGS = {
    # the default run: trains in a few minutes on 2 CPU cores
    "default": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    # for tests and tutorials' quick mode
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32),
    # a llama-flavoured variant: RMSNorm, RoPE, SwiGLU, no biases, untied head
    "llama": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, norm="rmsnorm", pos="rope",
                  mlp="swiglu", bias=False, tie_weights=False, fused_qkv=False),
    "small": dict(n_layer=6, n_head=6, n_embd=192, block_size=256),
}


def get_config(name, **overrides):
    """A named GPTConfig ("default", "tiny", "llama", "small") with optional field overrides."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
    return GPTConfig(**{**CONFIGS[name], **overrides})


# ============================== rotary positions =============================================
def rope_tables(head_dim, positions, base=10000.0):
    """cos and sin tables (T, head_dim/2) for RoPE at integer `positions` (T,)."""
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)   # (d/2,)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # (T, d/2)
    return np.cos(angles), np.sin(angles)


class _Rope(Function):
    """Rotate pairs (x1, x2) = (x[..., :d/2], x[..., d/2:]) by angle theta_{t,i}:
    (x1 cos - x2 sin, x1 sin + x2 cos). The backward is the rotation by -theta."""
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.cos, ctx.sin = cos, sin
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, g):
        return _rotate(g, ctx.cos, -ctx.sin), None, None


def _rotate(x, cos, sin):
    """(x1 cos - x2 sin, x1 sin + x2 cos) for x (B, H, T, d), tables (T, d/2): the kernel
    rope_rotate (minitx/kernels/fused_ops.py holds its NumPy reference)."""
    return backend.kernel("rope_rotate")(x, cos, sin)


# ============================== blocks =======================================================
def _norm(config):
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, eps=config.norm_eps)
    return LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class CausalSelfAttention(Module):
    """Multi-head attention with H query heads and Hkv key/value heads of size d (GQA when
    Hkv < H). GPT-2 flavour: one fused `qkv` Linear and `proj`; Llama flavour (fused_qkv=False):
    `q_proj`, `k_proj`, `v_proj`, `o_proj` as Hugging Face names them."""

    def __init__(self, config, layer=0):
        super().__init__()
        self.config = config
        self.pattern = Pattern(*parse_layers(config.attention_pattern, config.n_layer)[layer],
                               config.head_dim, layer, config.block_size)
        C, H, Hkv, d, b = (config.n_embd, config.n_head, config.n_kv_head, config.head_dim,
                           config.bias)
        if self.pattern.name == "knn":
            self.knn_gate = Parameter(np.zeros(H, dtype=np.float32))   # (H,) g = sigmoid(.)
        if config.fused_qkv:
            self.qkv = Linear(C, (H + 2 * Hkv) * d, bias=b)
            self.proj = Linear(H * d, C, bias=b)
        else:
            self.q_proj = Linear(C, H * d, bias=b)
            self.k_proj = Linear(C, Hkv * d, bias=b)
            self.v_proj = Linear(C, Hkv * d, bias=b)
            self.o_proj = Linear(H * d, C, bias=b)

    def project_qkv(self, x):
        """x (B, T, C) -> q (B, H, T, d), k and v (B, Hkv, T, d)."""
        B, T, _ = x.shape
        H, Hkv, d = self.config.n_head, self.config.n_kv_head, self.config.head_dim
        if self.config.fused_qkv:
            qkv = self.qkv(x)                                                  # (B, T, (H+2Hkv)d)
            if Hkv == H:
                qkv = qkv.reshape(B, T, 3, H, d).permute(2, 0, 3, 1, 4)        # (3, B, H, T, d)
                return qkv[0], qkv[1], qkv[2]
            q, k, v = qkv.split([H * d, Hkv * d, Hkv * d], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.reshape(B, T, H, d).permute(0, 2, 1, 3)                          # (B, H, T, d)
        k = k.reshape(B, T, Hkv, d).permute(0, 2, 1, 3)                        # (B, Hkv, T, d)
        v = v.reshape(B, T, Hkv, d).permute(0, 2, 1, 3)                        # (B, Hkv, T, d)
        return q, k, v

    def forward(self, x, rope=None, cache=None):
        """x (B, T, C) -> (B, T, C). `cache` is a dict holding "k", "v" arrays (B, Hkv, S, d) of
        earlier positions (inference only); it is extended in place. Stateful patterns (xl,
        knn) keep their memory in it instead (attention/stream.py), in training too; without a
        cache they see the segment only."""
        B, T, _ = x.shape
        cfg = self.config
        q, k, v = self.project_qkv(x)
        k_raw = k
        if rope is not None:
            q, k = _Rope.apply(q, *rope), _Rope.apply(k, *rope)
        if self.pattern.stateful:
            y = stream_attention(self.pattern, {} if cache is None else cache, q, k, k_raw, v,
                                 cfg.block_size, self._rotate, getattr(self, "knn_gate", None),
                                 impl=cfg.attention, enable_gqa=cfg.n_kv_head != cfg.n_head)
        else:
            y = self._attend(q, k, v, cache)
        y = y.permute(0, 2, 1, 3).reshape(B, T, cfg.n_head * cfg.head_dim)    # (B, T, H*d)
        out = self.proj(y) if cfg.fused_qkv else self.o_proj(y)                # (B, T, C)
        return F.dropout(out, cfg.dropout, self.training)

    def _rotate(self, x, positions):
        """RoPE of a constant (..., n, d) ndarray at `positions` (n,) (memory keys)."""
        return _rotate(x, *rope_tables(self.config.head_dim, positions, self.config.rope_base))

    def _attend(self, q, k, v, cache):
        cfg = self.config
        if cache is not None:
            if "k" in cache:
                k = Tensor(np.concatenate([cache["k"], k.data], axis=2))       # (B, Hkv, S+T, d)
                v = Tensor(np.concatenate([cache["v"], v.data], axis=2))
            cache["k"], cache["v"] = k.data, v.data
        return self.pattern(q, k, v, impl=cfg.attention,
                            enable_gqa=cfg.n_kv_head != cfg.n_head)             # (B, H, T, d)


class MLP(Module):
    """GELU MLP (`fc`, `proj`) or SwiGLU (`gate_proj`, `up_proj`, `down_proj`, Llama's names):
    down(silu(gate(x)) * up(x))."""

    def __init__(self, config):
        super().__init__()
        self.kind, self.dropout = config.mlp, config.dropout
        C, Hf, b = config.n_embd, config.ffn_hidden, config.bias
        if config.mlp == "swiglu":
            self.gate_proj = Linear(C, Hf, bias=b)
            self.up_proj = Linear(C, Hf, bias=b)
            self.down_proj = Linear(Hf, C, bias=b)
        else:
            self.fc = Linear(C, Hf, bias=b)
            self.proj = Linear(Hf, C, bias=b)

    def forward(self, x):                                      # (B, T, C) -> (B, T, C)
        if self.kind == "swiglu":
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)    # (B, T, ffn_hidden)
            out = self.down_proj(h)
        else:
            out = self.proj(F.gelu(self.fc(x), approximate="tanh"))
        return F.dropout(out, self.dropout, self.training)


# state_dict names written before the Llama names (checkpoints of earlier minitx versions)
LEGACY_NAMES = {".mlp.w1.": ".mlp.gate_proj.", ".mlp.w3.": ".mlp.up_proj.",
                ".mlp.w2.": ".mlp.down_proj."}


def upgrade_state_dict(weights):
    """Rename the keys of an older checkpoint's state_dict to today's module names."""
    out = {}
    for k, v in weights.items():
        for old, new in LEGACY_NAMES.items():
            k = k.replace(old, new)
        out[k] = v
    return out


class Block(Module):
    def __init__(self, config, layer=0):
        super().__init__()
        self.ln1, self.attn = _norm(config), CausalSelfAttention(config, layer)
        self.ln2, self.mlp = _norm(config), MLP(config)

    def forward(self, x, rope=None, cache=None):
        x = x + self.attn(self.ln1(x), rope, cache)
        return x + self.mlp(self.ln2(x))


# ============================== the model ====================================================
def num_params_of(config):
    """The parameter count GPT(config) will have, computed without building it (a loader checks a
    file against its config before allocating anything)."""
    C, V, L, F = config.n_embd, config.vocab_size, config.n_layer, config.ffn_hidden
    b = int(config.bias)
    qkv = (config.n_head + 2 * config.n_kv_head) * config.head_dim
    norm = C * (2 if config.norm == "layernorm" and config.bias else 1)
    attn = C * qkv + b * qkv + config.n_head * config.head_dim * C + b * C
    n_in = 2 if config.mlp == "swiglu" else 1
    mlp = n_in * (C * F + b * F) + F * C + b * C
    total = V * C + L * (2 * norm + attn + mlp) + norm
    total += config.block_size * C if config.pos == "learned" else 0
    total += 0 if config.tie_weights else C * V
    knn = sum(name == "knn" for name, _ in parse_layers(config.attention_pattern, L))
    return total + knn * config.n_head                 # the kNN layers' (H,) gates


RESIDUAL_PROJECTIONS = ("attn.proj.weight", "attn.o_proj.weight", "mlp.proj.weight",
                        "mlp.down_proj.weight")


class GPT(Module):
    """Decoder-only transformer LM. `forward(idx, targets=None)` -> (logits, loss)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = Embedding(config.vocab_size, config.n_embd)
        if config.pos == "learned":
            self.wpe = Embedding(config.block_size, config.n_embd)
        self.blocks = ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = _norm(config)
        if not config.tie_weights:
            self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self):
        """GPT-2: N(0, 0.02) weights, zero biases, residual projections N(0, 0.02/sqrt(2L))."""
        rng = _random.generator()
        resid_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.data[...] = 0
            elif p.data.ndim == 2:
                std = resid_std if name.endswith(RESIDUAL_PROJECTIONS) else 0.02
                p.data[...] = rng.normal(0.0, std, size=p.shape)

    def forward(self, idx, targets=None, caches=None, start_pos=0):
        """Logits for every position, and the mean cross-entropy if targets are given.

        Args:
            idx: (B, T) integer token ids in [0, vocab_size), T + start_pos <= block_size.
            targets: optional (B, T) next-token ids (-100 to ignore).
            caches: optional list of per-layer dicts for KV-cache decoding (see `generate`).
            start_pos: position of idx[:, 0] (the number of tokens already in the caches).
        Returns:
            (logits (B, T, V) Tensor, loss scalar Tensor or None).
        """
        idx = np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {idx.shape}")
        B, T = idx.shape
        cfg = self.config
        if start_pos + T > cfg.block_size:
            raise ValueError(f"sequence of {start_pos + T} positions exceeds block_size "
                             f"{cfg.block_size}")
        x = self.wte(idx)                                                    # (B, T, C)
        rope = None
        positions = np.arange(start_pos, start_pos + T)
        if cfg.pos == "learned":
            x = x + self.wpe(positions)                                      # (T, C) broadcast
        else:
            rope = rope_tables(cfg.head_dim, positions, cfg.rope_base)
        x = F.dropout(x, cfg.dropout, self.training)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, None if caches is None else caches[i])
        x = self.ln_f(x)
        if cfg.tie_weights:
            logits = F.linear(x, self.wte.weight)                            # (B, T, V)
        else:
            logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, cfg.vocab_size),
                                   np.asarray(targets).reshape(B * T))
        return logits, loss

    def num_params(self, non_embedding=False):
        """Parameter count; non_embedding=True leaves out the position table (and the token
        table unless it doubles as the output head), as GPT-2 and Kaplan et al. count."""
        n = self.num_parameters()
        if non_embedding and self.config.pos == "learned":
            n -= self.wpe.weight.data.size
        return n

    def flops_per_token(self, training=True, seq_len=None):
        """6N + 12 L H Q T (PaLM appendix B) with N non-embedding parameters and T the context
        (`seq_len`, default block_size); forward only is a third of it. The attention term is
        each layer's pattern's own (`Pattern.attention_flops`: equal to 12 H Q T for dense)."""
        c = self.config
        n = self.num_params(non_embedding=True)
        T = c.block_size if seq_len is None else seq_len
        attn = sum(b.attn.pattern.attention_flops(T, c.n_head, c.head_dim, training)
                   for b in self.blocks)
        return (6 * n if training else 2 * n) + attn

    @property
    def stateful(self):
        """True when a layer carries a memory across segments (xl, knn patterns)."""
        return any(b.attn.pattern.stateful for b in self.blocks)

    def new_caches(self):
        """One empty KV cache per layer, for `forward(..., caches=...)`."""
        return [dict() for _ in self.blocks]

    @no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, rng=None):
        """Sample continuations with a KV cache. See `minitx.generate.sample`."""
        from minitx.generate import sample
        return sample(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, rng=rng)
