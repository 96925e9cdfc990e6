"""A LLaMA-architecture model from a GGUF file, for inference on the CPU (SmolLM2, TinyLlama...).

    x = E[ids]                                            token embedding (Q8_0 rows decoded)
    for each of the L blocks:
        h = RMSNorm(x) * g_attn
        q, k, v = h Wq^T, h Wk^T, h Wv^T                  H query heads, Hkv key/value heads
        q, k = RoPE(q), RoPE(k)                           rotate-half pairs, base theta
        x = x + softmax(q k^T / sqrt(d) + causal) v  Wo^T   each query head reads kv head h // G
        h = RMSNorm(x) * g_ffn
        x = x + (silu(h Wgate^T) * (h Wup^T)) Wdown^T     SwiGLU
    logits = RMSNorm(x) * g_out  E^T                      tied head (or a separate `output`)

Two ways to run it:
  * `minitx.gguf.load_model(path, quantized=False)`: every weight decoded to float32 in
    minitx's own GPT (autograd modules; the exact reference).
  * `quantized=True`: `GGUFLlama` below, weights kept in their ggml blocks and multiplied by the
    fused kernels of `minitx.kernels.ggml` / `minitx_c.ggml`. Decoding one token runs ~12
    array operations per block, so the Python cost per token stays a few milliseconds (see
    benchmarks/llama_cpu.py for where the time goes). The KV cache is preallocated and grows
    by doubling, so a decode step appends in place instead of concatenating.

**llama.cpp's Q/K row order.** Hugging Face LLaMA applies RoPE to pairs (i, i + d/2) of each
head ("rotate half"); ggml's LLaMA RoPE rotates adjacent pairs (2i, 2i + 1). So llama.cpp's
converter (convert_hf_to_gguf.py, `LlamaModel.permute`) reorders the rows of Wq and Wk within
every head: rows viewed as (heads, 2, d/2) are transposed to (heads, d/2, 2), i.e. GGUF row
2i + j of a head is HF row i + j d/2. `unpermute_qk` undoes it (for Wk with the Hkv heads);
rows are whole ggml blocks, so quantized weights are reordered without decoding them.
"""
import dataclasses
import os

import numpy as np

from minitx import backend
from minitx.autograd import Tensor
from minitx.models.gpt import rope_tables
from minitx.quant import ggml as blocks


@dataclasses.dataclass
class LlamaHParams:
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int
    head_dim: int
    ffn_hidden: int
    vocab_size: int
    context_length: int
    rope_base: float
    norm_eps: float

    @classmethod
    def from_metadata(cls, meta, path="GGUF"):
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise ValueError(f"{path}: architecture {arch!r} is not supported (only 'llama')")
        try:
            get = lambda key: meta[f"llama.{key}"]                      # noqa: E731
            n_embd, n_head = int(get("embedding_length")), int(get("attention.head_count"))
            hp = cls(n_layer=int(get("block_count")), n_embd=n_embd, n_head=n_head,
                     n_kv_head=int(meta.get("llama.attention.head_count_kv", n_head)),
                     head_dim=int(meta.get("llama.attention.key_length", n_embd // n_head)),
                     ffn_hidden=int(get("feed_forward_length")),
                     vocab_size=len(meta["tokenizer.ggml.tokens"]),
                     context_length=int(get("context_length")),
                     rope_base=float(meta.get("llama.rope.freq_base", 10000.0)),
                     norm_eps=float(get("attention.layer_norm_rms_epsilon")))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: missing or malformed llama metadata ({e})") from None
        if min(dataclasses.astuple(hp)[:8]) < 1 or hp.n_head % hp.n_kv_head or hp.head_dim % 2:
            raise ValueError(f"{path}: inconsistent llama hyper-parameters {hp}")
        return hp


def unpermute_qk(rows, n_heads):
    """GGUF (llama.cpp) row order of Wq / Wk -> Hugging Face's: (heads, d/2, 2) -> (heads, 2, d/2).

    Args:
        rows: (n_heads * d, ...) array: float weights, or raw ggml rows (one block row per
            output feature).
        n_heads: heads of this projection (n_head for Wq, n_kv_head for Wk).
    Returns:
        the rows reordered (a new array).
    """
    n = rows.shape[0]
    if n % (2 * n_heads):
        raise ValueError(f"{n} rows do not split into {n_heads} heads of even size")
    r = rows.reshape(n_heads, n // n_heads // 2, 2, *rows.shape[1:])
    return np.ascontiguousarray(r.swapaxes(1, 2)).reshape(rows.shape)


def permute_qk(rows, n_heads):
    """The inverse of `unpermute_qk`: Hugging Face order -> llama.cpp's (for GGUF export)."""
    n = rows.shape[0]
    r = rows.reshape(n_heads, 2, n // n_heads // 2, *rows.shape[1:])
    return np.ascontiguousarray(r.swapaxes(1, 2)).reshape(rows.shape)


class GGMLMatrix:
    """A weight W (N, K) kept as ggml rows; `matmul(x)` = x @ W^T by a fused kernel.

    Args:
        raw: (N, K / 32 * type_size) uint8 rows. qtype: ggml id 2 (Q4_0), 3 (Q4_1), 8 (Q8_0).
        K: in_features. kernel: "float" (float activations) or "q8" (llama.cpp's int8 way).
    """
    KERNELS = {"float": "ggml_matmul", "q8": "ggml_matmul_q8"}

    def __init__(self, raw, qtype, K, kernel="float"):
        self.raw, self.qtype, self.shape = np.ascontiguousarray(raw), qtype, (raw.shape[0], K)
        self.kernel = kernel

    def matmul(self, x):                                                # (M, K) -> (M, N)
        return backend.kernel(self.KERNELS[self.kernel])(x, self.raw, self.qtype)

    def rows(self, ids):                                                # embedding lookup
        return blocks.dequantize_rows(self.raw[ids], self.qtype, self.shape[1])

    @property
    def nbytes(self):
        return self.raw.nbytes


class DenseMatrix:
    """A float32 weight W (N, K) with the same interface as GGMLMatrix."""

    def __init__(self, w):
        self.w, self.shape = np.ascontiguousarray(w, dtype=np.float32), w.shape

    def matmul(self, x):
        return x @ self.w.T

    def rows(self, ids):
        return self.w[ids]

    @property
    def nbytes(self):
        return self.w.nbytes


class KVCache:
    """Keys and values of one block, (B, Hkv, capacity, d) float32, `n` positions filled."""

    def __init__(self):
        self.k = self.v = None
        self.n = 0

    def append(self, k, v):
        """Add k, v (B, Hkv, T, d); returns the views (B, Hkv, n, d) of everything cached."""
        B, Hkv, T, d = k.shape
        if self.k is not None and self.k.shape[0] != B:
            raise ValueError(f"this cache holds a batch of {self.k.shape[0]}, got {B}")
        if self.k is None or self.n + T > self.k.shape[2]:
            cap = max(256, 2 * (self.n + T))
            new_k, new_v = (np.empty((B, Hkv, cap, d), np.float32) for _ in range(2))
            if self.k is not None:
                new_k[:, :, :self.n], new_v[:, :, :self.n] = self.k[:, :, :self.n], \
                    self.v[:, :, :self.n]
            self.k, self.v = new_k, new_v
        self.k[:, :, self.n:self.n + T], self.v[:, :, self.n:self.n + T] = k, v
        self.n += T
        return self.k[:, :, :self.n], self.v[:, :, :self.n]


def rms_norm(x, g, eps):
    """x (..., C) float32 -> x / sqrt(mean(x^2) + eps) * g."""
    ms = np.square(x).sum(axis=-1, keepdims=True) * np.float32(1.0 / x.shape[-1])
    return x * (np.float32(1.0) / np.sqrt(ms + np.float32(eps))) * g


def _rope(x, cos, sin):
    """Rotate-half RoPE on x (B, n_heads, T, d) with tables (T, d/2) float32."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


class _Config:
    """What `minitx.generate.sample` reads from a model's config."""

    def __init__(self, hp):
        self.vocab_size, self.block_size = hp.vocab_size, hp.context_length


class GGUFLlama:
    """LLaMA inference on ggml-block weights (or float32 ones); the interface of minitx's GPT.

    Args:
        hp: LlamaHParams. tok_emb, head: GGMLMatrix / DenseMatrix (vocab, C) (the same object
        when tied). layers: list of dicts with "attn_norm", "ffn_norm" (C,) float32 and
        "wqkv" (rows: H*d query, Hkv*d key, Hkv*d value; HF row order), "wo", "wgate_up"
        (rows: F gate, then F up), "wdown" matrices. out_norm: (C,) float32.
    """

    def __init__(self, hp, tok_emb, head, layers, out_norm):
        self.hp, self.config = hp, _Config(hp)
        self.tok_emb, self.head, self.layers, self.out_norm = tok_emb, head, layers, out_norm
        self.training = False

    def eval(self):
        return self

    def train(self, mode=True):
        """Inference only: there is no training mode to switch to."""
        if mode:
            raise ValueError("GGUFLlama is inference only (use load_model(quantized=False) "
                             "for a trainable GPT)")
        return self

    def new_caches(self):
        """One empty KV cache per block."""
        return [KVCache() for _ in self.layers]

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, rng=None):
        """Sample continuations with the KV cache, as `GPT.generate` (minitx.generate.sample)."""
        from minitx.generate import sample
        return sample(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, rng=rng)

    def weight_bytes(self):
        """Bytes of weights read per decoded token (every matrix once, the head included)."""
        mats = [m for layer in self.layers for k, m in layer.items() if k.startswith("w")]
        return sum(m.nbytes for m in mats + [self.head])

    def __call__(self, idx, targets=None, caches=None, start_pos=0, last_only=False):
        return self.forward(idx, targets, caches, start_pos, last_only)

    def forward(self, idx, targets=None, caches=None, start_pos=0, last_only=False):
        """Logits for token ids, as `GPT.forward`.

        Args:
            idx: (B, T) int token ids. targets: not supported (inference only; must be None).
            caches: optional list from `new_caches()`, extended in place.
            start_pos: position of idx[:, 0] (tokens already in the caches).
            last_only: compute the logits of the last position only (decoding).
        Returns:
            (logits Tensor (B, T, V) or (B, 1, V) with last_only, None).
        """
        if targets is not None:
            raise ValueError("GGUFLlama is inference only: targets must be None")
        idx = np.asarray(idx)
        hp = self.hp
        if idx.ndim != 2 or idx.size == 0:
            raise ValueError(f"idx must be (B, T) token ids with T >= 1, got shape {idx.shape}")
        if idx.min() < 0 or idx.max() >= hp.vocab_size:
            raise ValueError(f"token ids must be in [0, {hp.vocab_size}), got "
                             f"[{idx.min()}, {idx.max()}]")
        B, T = idx.shape
        if caches is not None and any(c.n != start_pos for c in caches):
            raise ValueError(f"start_pos {start_pos} does not match the caches' length")
        cos, sin = (t.astype(np.float32) for t in
                    rope_tables(hp.head_dim, np.arange(start_pos, start_pos + T), hp.rope_base))
        x = self.tok_emb.rows(idx.reshape(-1))                              # (B*T, C)
        for i, layer in enumerate(self.layers):
            cache = caches[i] if caches is not None else KVCache()
            x = self._block(layer, x, B, T, cos, sin, cache, start_pos)
        if last_only:
            x = x.reshape(B, T, -1)[:, -1]                                  # (B, C)
            T = 1
        x = rms_norm(x, self.out_norm, hp.norm_eps)
        logits = self.head.matmul(np.ascontiguousarray(x))                 # (B*T, V)
        return Tensor(logits.reshape(B, T, -1)), None

    def _block(self, layer, x, B, T, cos, sin, cache, start_pos):
        hp = self.hp
        H, Hkv, d = hp.n_head, hp.n_kv_head, hp.head_dim
        h = rms_norm(x, layer["attn_norm"], hp.norm_eps)                    # (B*T, C)
        qkv = layer["wqkv"].matmul(h).reshape(B, T, H + 2 * Hkv, d)         # (B, T, H+2Hkv, d)
        qkv = qkv.transpose(0, 2, 1, 3)                                     # (B, H+2Hkv, T, d)
        q = _rope(qkv[:, :H], cos, sin)                                     # (B, H, T, d)
        k = _rope(qkv[:, H:H + Hkv], cos, sin)                              # (B, Hkv, T, d)
        K, V = cache.append(k, qkv[:, H + Hkv:])                            # (B, Hkv, S, d)
        y = _attention(q, K, V, start_pos)                                  # (B, T, H*d)
        x = x + layer["wo"].matmul(y.reshape(B * T, H * d))
        h = rms_norm(x, layer["ffn_norm"], hp.norm_eps)
        gu = layer["wgate_up"].matmul(h)                                    # (B*T, 2F)
        g, u = gu[:, :hp.ffn_hidden], gu[:, hp.ffn_hidden:]
        a = g / (1.0 + np.exp(-g)) * u                                      # silu(g) * u
        return x + layer["wdown"].matmul(np.ascontiguousarray(a))           # (B*T, C)


def _attention(q, K, V, start_pos):
    """Causal GQA attention: q (B, H, T, d) at positions start_pos.., K, V (B, Hkv, S, d)."""
    B, H, T, d = q.shape
    Hkv, S = K.shape[1], K.shape[2]
    G = H // Hkv
    qg = q.reshape(B, Hkv, G * T, d)                                        # heads grouped
    s = (qg @ K.transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(d))       # (B, Hkv, G*T, S)
    if T > 1:
        future = np.arange(S)[None, :] > start_pos + np.arange(T)[:, None]  # (T, S)
        s = np.where(np.tile(future, (G, 1)), np.float32(-np.inf), s)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    p = s / s.sum(axis=-1, keepdims=True)
    y = (p @ V).reshape(B, H, T, d)                                         # (B, H, T, d)
    return np.ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(B, T, H * d)


def _matrix(g, names, hp, quantized, kernel, n_heads=None):
    """One weight matrix from the GGUF tensors `names` stacked by rows (Q/K rows unpermuted).

    `n_heads` maps a tensor name to the head count used to unpermute it (Wq, Wk)."""
    from minitx.kernels.ggml import KERNEL_TYPES
    n_heads = n_heads or {}
    infos = [g.info(n) for n in names]
    K = infos[0].ne[0]
    if any(t.ne[0] != K or len(t.ne) != 2 for t in infos):
        raise ValueError(f"{g.path}: {names} are not matrices with the same in_features")
    types = {t.type_id for t in infos}
    if quantized and len(types) == 1 and infos[0].type_id in KERNEL_TYPES:
        parts = [g.raw(n) for n in names]                                 # blocks, not decoded
        stack = lambda ps: np.concatenate(ps) if len(ps) > 1 else np.array(ps[0])  # noqa: E731
    else:
        parts = [g.dequantize(n) for n in names]
        stack = np.concatenate
    parts = [unpermute_qk(p, n_heads[n]) if n in n_heads else p for p, n in zip(parts, names)]
    if quantized and len(types) == 1 and infos[0].type_id in KERNEL_TYPES:
        return GGMLMatrix(stack(parts), infos[0].type_id, K, kernel)
    return DenseMatrix(stack(parts))


def load_gguf_llama(path, quantized=True, kernel="float"):
    """A GGUFLlama from a GGUF file.

    Args:
        path: the .gguf file (architecture "llama").
        quantized: keep Q4_0 / Q4_1 / Q8_0 weights in their blocks (fused kernels); False
            decodes every weight to float32 (NumPy / BLAS products).
        kernel: "float" or "q8" (see `minitx.kernels.ggml`).
    Returns:
        GGUFLlama.
    """
    from minitx.gguf import open_gguf
    if kernel not in GGMLMatrix.KERNELS:
        raise ValueError(f"kernel must be one of {sorted(GGMLMatrix.KERNELS)}, got {kernel!r}")
    g = open_gguf(path)
    hp = LlamaHParams.from_metadata(g.metadata, g.path)
    _check_shapes(g, hp)
    layers = []
    for i in range(hp.n_layer):
        b = f"blk.{i}."
        layers.append({
            "attn_norm": np.array(g.dequantize(b + "attn_norm.weight")),
            "ffn_norm": np.array(g.dequantize(b + "ffn_norm.weight")),
            "wqkv": _matrix(g, [b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight"],
                            hp, quantized, kernel,
                            {b + "attn_q.weight": hp.n_head, b + "attn_k.weight": hp.n_kv_head}),
            "wo": _matrix(g, [b + "attn_output.weight"], hp, quantized, kernel),
            "wgate_up": _matrix(g, [b + "ffn_gate.weight", b + "ffn_up.weight"], hp, quantized,
                                kernel),
            "wdown": _matrix(g, [b + "ffn_down.weight"], hp, quantized, kernel),
        })
    tok_emb = _matrix(g, ["token_embd.weight"], hp, quantized, kernel)
    head = (_matrix(g, ["output.weight"], hp, quantized, kernel) if "output.weight" in g.tensors
            else tok_emb)
    return GGUFLlama(hp, tok_emb, head, layers, np.array(g.dequantize("output_norm.weight")))


def _check_shapes(g, hp):
    """Every tensor the model reads exists with the shape the hyper-parameters imply."""
    C, F, d = hp.n_embd, hp.ffn_hidden, hp.head_dim
    want = {"token_embd.weight": (hp.vocab_size, C), "output_norm.weight": (C,)}
    if "output.weight" in g.tensors:
        want["output.weight"] = (hp.vocab_size, C)
    for i in range(hp.n_layer):
        b = f"blk.{i}."
        want.update({b + "attn_norm.weight": (C,), b + "ffn_norm.weight": (C,),
                     b + "attn_q.weight": (hp.n_head * d, C),
                     b + "attn_k.weight": (hp.n_kv_head * d, C),
                     b + "attn_v.weight": (hp.n_kv_head * d, C),
                     b + "attn_output.weight": (C, hp.n_head * d),
                     b + "ffn_gate.weight": (F, C), b + "ffn_up.weight": (F, C),
                     b + "ffn_down.weight": (C, F)})
    for name, shape in want.items():
        if name not in g.tensors:
            raise ValueError(f"{g.path}: tensor {name!r} is missing")
        if g.tensors[name].shape != shape:
            raise ValueError(f"{g.path}: tensor {name!r} has shape {g.tensors[name].shape}, "
                             f"expected {shape}")


def gpt_config(hp, tied):
    """The GPTConfig of minitx's Llama-flavoured GPT with these hyper-parameters."""
    from minitx.models.gpt import GPTConfig
    return GPTConfig(vocab_size=hp.vocab_size, block_size=hp.context_length,
                     n_layer=hp.n_layer, n_head=hp.n_head, n_embd=hp.n_embd, bias=False,
                     norm="rmsnorm", pos="rope", mlp="swiglu", tie_weights=tied,
                     head_dim=hp.head_dim, n_kv_head=hp.n_kv_head, ffn_hidden=hp.ffn_hidden,
                     rope_base=hp.rope_base, norm_eps=hp.norm_eps, fused_qkv=False)


GPT_NAMES = {"attn_norm": "ln1", "ffn_norm": "ln2", "attn_q": "attn.q_proj",
             "attn_k": "attn.k_proj", "attn_v": "attn.v_proj", "attn_output": "attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def _file_gpt_class():
    from minitx.models.gpt import GPT

    class FileGPT(GPT):
        """A GPT whose weights come from a file: the random initialisation is skipped."""

        def _init_weights(self):
            pass
    return FileGPT


def load_gpt(path):
    """minitx's GPT with every weight of a llama GGUF decoded to float32 (Q/K unpermuted)."""
    from minitx.gguf import open_gguf
    _FileGPT = _file_gpt_class()
    g = open_gguf(path)
    hp = LlamaHParams.from_metadata(g.metadata, g.path)
    _check_shapes(g, hp)
    tied = "output.weight" not in g.tensors
    state = {"wte.weight": g.dequantize("token_embd.weight"),
             "ln_f.weight": g.dequantize("output_norm.weight")}
    if not tied:
        state["lm_head.weight"] = g.dequantize("output.weight")
    heads = {"attn_q": hp.n_head, "attn_k": hp.n_kv_head}
    for i in range(hp.n_layer):
        for short, name in GPT_NAMES.items():
            w = g.dequantize(f"blk.{i}.{short}.weight")
            state[f"blocks.{i}.{name}.weight"] = unpermute_qk(w, heads[short]) \
                if short in heads else w
    model = _FileGPT(gpt_config(hp, tied))
    model.load_state_dict(state)
    model.peft_name_map = "hf-llama"            # adapters saved with HF's module paths (PEFT)
    model.peft_base_model = os.path.abspath(path)
    return model.eval()
