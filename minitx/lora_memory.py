"""The memory arithmetic of fine-tuning: full vs LoRA vs QLoRA (Dettmers et al. 2023, section 2).

`memory_estimate(model, method)` counts bytes item by item:
    weights      the frozen (or trained) base: 2 bytes/param at 16 bits, 4 at 32; QLoRA's Linear
                 weights at NF4 + double quantization = 4 + 8/64 + 32/(64*256) = 4.127 bits
                 (the paper's 0.127 bits of constants per weight), embeddings/head/norms in 16 bit
    adapters     r (in + out) per adapted Linear, at the training precision
    gradients    one per trainable parameter, at the training precision
    optimizer    Adam's two moments in float32 (8 bytes per trainable parameter)
    activations  what the graph keeps per token and layer (see `activation_values`) times
                 batch * seq_len * n_layer, plus one layer's worth of backward temporaries and the
                 logits; with checkpointing: one stored block input per layer plus one block
                 being recomputed (and its backward temporaries)
"full16" is the paper's ">780 GB" setting: 2-byte weights and gradients plus two 4-byte Adam
moments = 12 bytes per parameter (65.2 B parameters -> 782 GB; with no activations counted).
"qlora" on LLaMA-65B (r = 64 on every linear layer, batch 1, 512 tokens, checkpointing) stays
under 48 GB. The "32" methods ("full32", "lora32", "qlora32") are minitx's own float32 runs, which
benchmarks/lora_memory.py measures.
"""
import numpy as np

# published shapes: LLaMA (Touvron et al. 2023, arXiv 2302.13971, table 2)
SHAPES = {
    "llama-7b": dict(n_layer=32, n_embd=4096, n_head=32, ffn_hidden=11008, vocab_size=32000),
    "llama-13b": dict(n_layer=40, n_embd=5120, n_head=40, ffn_hidden=13824, vocab_size=32000),
    "llama-33b": dict(n_layer=60, n_embd=6656, n_head=52, ffn_hidden=17920, vocab_size=32000),
    "llama-65b": dict(n_layer=80, n_embd=8192, n_head=64, ffn_hidden=22016, vocab_size=32000),
}
NF4_DQ_BITS = 4 + 8 / 64 + 32 / (64 * 256)        # QLoRA section 3: 4.127 bits per weight
METHODS = ("full16", "lora16", "qlora", "full32", "lora32", "qlora32")


def _shape(model):
    """A dict describing the model: n_layer, n_embd, n_head, n_kv_head, head_dim, ffn_hidden,
    vocab_size, mlp, fused, tied, learned_pos, block_size."""
    if isinstance(model, str):
        if model not in SHAPES:
            raise ValueError(f"unknown model shape {model!r}; known: {sorted(SHAPES)}")
        s = dict(SHAPES[model])
        s.update(mlp="swiglu", fused=False, tied=False, learned_pos=False, block_size=2048)
    else:
        c = getattr(model, "config", model)
        if not hasattr(c, "n_layer"):
            raise TypeError(f"model must be a GPTConfig, a GPT or one of {sorted(SHAPES)}, got "
                            f"{type(model).__name__}")
        C = c.n_embd
        hidden = getattr(c, "ffn_hidden", None) or (4 * ((8 * C // 3 + 3) // 4)
                                                    if c.mlp == "swiglu" else 4 * C)
        s = dict(n_layer=c.n_layer, n_embd=C, n_head=c.n_head, ffn_hidden=hidden,
                 vocab_size=c.vocab_size, mlp=c.mlp, fused=getattr(c, "fused_qkv", True),
                 tied=c.tie_weights, learned_pos=c.pos == "learned", block_size=c.block_size,
                 n_kv_head=getattr(c, "n_kv_head", None), head_dim=getattr(c, "head_dim", None))
    s["n_kv_head"] = s.get("n_kv_head") or s["n_head"]
    s["head_dim"] = s.get("head_dim") or s["n_embd"] // s["n_head"]
    return s


def layer_linears(s):
    """[(leaf name, in, out)] of one block's Linear layers."""
    C, H, Hkv, d, f = s["n_embd"], s["n_head"], s["n_kv_head"], s["head_dim"], s["ffn_hidden"]
    if s["fused"]:
        attn = [("attn.qkv", C, (H + 2 * Hkv) * d), ("attn.proj", H * d, C)]
    else:
        attn = [("attn.q_proj", C, H * d), ("attn.k_proj", C, Hkv * d),
                ("attn.v_proj", C, Hkv * d), ("attn.o_proj", H * d, C)]
    if s["mlp"] == "swiglu":
        mlp = [("mlp.gate_proj", C, f), ("mlp.up_proj", C, f), ("mlp.down_proj", f, C)]
    else:
        mlp = [("mlp.fc", C, f), ("mlp.proj", f, C)]
    return attn + mlp


def count_params(s):
    """(linear-layer params, other params: embeddings, head, norms, biases ignored)."""
    C, V = s["n_embd"], s["vocab_size"]
    linear = s["n_layer"] * sum(i * o for _, i, o in layer_linears(s))
    other = V * C * (1 if s["tied"] else 2) + (2 * s["n_layer"] + 1) * C
    if s["learned_pos"]:
        other += s["block_size"] * C
    return linear, other


def adapter_params(s, r, target_modules):
    """LoRA parameters r (in + out) summed over the targeted Linear layers of all blocks."""
    from minitx.lora import target_matches
    total = 0
    for name, i, o in layer_linears(s):
        leaf = name.rpartition(".")[2]
        if target_modules == "all-linear" or target_matches(target_modules, "blocks.0." + name) \
                or target_matches(target_modules, leaf):
            total += r * (i + o)
    return s["n_layer"] * total


def activation_values(s, seq_len, attention=True, r=0):
    """Values minitx's autograd keeps alive per token and layer until the backward.

    The graph holds every op's output until the backward has used it, plus what each op saves:
    each Linear's output (sum of out_features; with a fused LoRA node also u, r per adapted
    layer), the two norms' normalized inputs (2C), the two residual sums (2C), the attention
    output's (B, T, H d) copy, and the MLP non-linearity: tanh-GELU keeps two f-sized arrays,
    SwiGLU keeps SiLU's input and output and the gated product (3f). With attention=True the
    naive attention's scores and probabilities add 2 H seq_len. (Measured on minitx's GPT with
    tracemalloc: within a few % of this count; the QLoRA paper's figure 6 leaves attention out.)
    """
    C, H, d, f = s["n_embd"], s["n_head"], s["head_dim"], s["ffn_hidden"]
    linears = layer_linears(s)
    values = sum(o for _, _, o in linears) + r * len(linears)         # Linear outputs
    values += 2 * C + 2 * C + H * d                                    # norms, residuals, copy
    values += 3 * f if s["mlp"] == "swiglu" else 2 * f                 # the non-linearity
    if attention:
        values += 2 * H * seq_len                                      # scores, probabilities
    return values


def memory_estimate(model, method="qlora", batch_size=1, seq_len=512, r=64,
                    target_modules="all-linear", lora_fraction=None, checkpointing=True,
                    attention=True):
    """Bytes needed to fine-tune `model` with `method`, item by item.

    Args:
        model: a GPTConfig, a GPT (float or quantized: only its shape is used), or a name in
            SHAPES ("llama-7b", "llama-65b", ...).
        method: one of METHODS: "full16" | "lora16" | "qlora" (16-bit training, as the paper) or
            "full32" | "lora32" | "qlora32" (float32 training, as minitx runs).
        batch_size, seq_len: the batch the activations are counted for.
        r, target_modules: the adapters (LoRA methods). lora_fraction: instead, adapters with
            this fraction of the model's parameters (the paper's "0.2%" example).
        checkpointing: whether "activations" (and "total") assume activation checkpointing.
        attention: count attention's activations (the paper's figure 6 does not).
    Returns:
        dict of ints (bytes): weights, adapters, gradients, optimizer, activations,
        activations_no_checkpointing, activations_checkpointing, total; and the counts params,
        trainable.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    s = _shape(model)
    linear, other = count_params(s)
    params = linear + other
    b = 2 if method.endswith("16") or method == "qlora" else 4       # training precision
    kind = method.rstrip("0123456789")
    if kind == "full":
        weights, adapters, trainable = params * b, 0, params
    else:
        n_ad = int(round(lora_fraction * params)) if lora_fraction is not None else \
            adapter_params(s, r, target_modules)
        if kind == "qlora":
            weights = int(np.ceil(linear * NF4_DQ_BITS / 8)) + other * b
        else:
            weights = params * b
        adapters, trainable = n_ad * b, n_ad
    tokens = batch_size * seq_len
    r_act = 0 if kind == "full" else (r if lora_fraction is None else 0)
    per_layer = activation_values(s, seq_len, attention, r_act) * tokens * b
    # outside the blocks: the embedding sum, the final norm, the logits and their softmax
    model_level = (2 * s["n_embd"] + 2 * s["vocab_size"]) * tokens * b
    # the backward of one layer holds about one layer's worth of gradient temporaries
    plain = (s["n_layer"] + 1) * per_layer + model_level
    # checkpointing keeps each block's input (one C-vector per token and layer) and recomputes
    # one block at a time
    ckpt = s["n_layer"] * tokens * s["n_embd"] * b + 2 * per_layer + model_level
    out = {"weights": int(weights), "adapters": int(adapters), "gradients": int(trainable * b),
           "optimizer": int(trainable * 8), "activations_no_checkpointing": int(plain),
           "activations_checkpointing": int(ckpt),
           "activations": int(ckpt if checkpointing else plain)}
    out["total"] = sum(out[k] for k in ("weights", "adapters", "gradients", "optimizer",
                                        "activations"))
    out.update(params=int(params), trainable=int(trainable))
    return out
