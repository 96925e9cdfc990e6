"""Export minitx's Llama-flavoured GPTs as GGUF files that llama.cpp's "llama" architecture reads.

What is written (names and keys as llama.cpp's convert_hf_to_gguf.py writes them; spec:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
  general.architecture = "llama", general.name, general.file_type (0 all F32, 2 mostly Q4_0,
  3 mostly Q4_1, 7 mostly Q8_0), general.quantization_version = 2;
  llama.context_length, .embedding_length, .block_count, .feed_forward_length,
  .rope.dimension_count, .rope.freq_base, .attention.head_count, .attention.head_count_kv,
  .attention.layer_norm_rms_epsilon, .attention.key_length / .value_length, .vocab_size;
  the tokenizer as GPT-2 byte-level BPE with no merges: token i is byte i written in GPT-2's
  byte-to-unicode alphabet, so llama.cpp's BPE reproduces minitx's byte tokenizer; token 0
  (the NUL byte, absent from text) stands in as BOS/EOS, and no BOS is added.
Tensors: token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate,
ffn_up, ffn_down}, output_norm, and output when the head is untied. Wq and Wk rows are put in
llama.cpp's RoPE order (`permute_qk`, the inverse of what `minitx.gguf_model` undoes). Matrices
whose rows are not a multiple of 32 values, and all norms, stay F32 (as llama.cpp does).
"""
import numpy as np

from minitx.bpe import bytes_to_unicode
from minitx.gguf_model import permute_qk
from minitx.gguf_write import write_gguf
from minitx.quant.ggml import quantize_rows

FILE_TYPES = {"f32": ("F32", 0), "q8_0": ("Q8_0", 7), "q4_0": ("Q4_0", 2), "q4_1": ("Q4_1", 3)}


def _check_llama(cfg):
    bad = {"norm": (cfg.norm, "rmsnorm"), "pos": (cfg.pos, "rope"), "mlp": (cfg.mlp, "swiglu"),
           "bias": (cfg.bias, False), "vocab_size": (cfg.vocab_size, 256)}
    wrong = [f"{k}={v!r} (needs {w!r})" for k, (v, w) in bad.items() if v != w]
    if wrong:
        raise ValueError("GGUF export needs a Llama-flavoured byte-level GPT: " + ", ".join(wrong))


def _qkv(model, i):
    """(Wq, Wk, Wv) float32 of block i in Hugging Face row order, fused or not."""
    attn, cfg = model.blocks[i].attn, model.config
    if cfg.fused_qkv:
        w = attn.qkv.weight.data
        H, Hkv, d = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        return w[:H * d], w[H * d:(H + Hkv) * d], w[(H + Hkv) * d:]
    return attn.q_proj.weight.data, attn.k_proj.weight.data, attn.v_proj.weight.data


def export_gguf(model, path, type="f32"):
    """Write a minitx GPT (Llama flavour: RMSNorm, RoPE, SwiGLU, no biases) as a GGUF file.

    Args:
        model: minitx.models.gpt.GPT with a 256-token byte vocabulary.
        path: destination .gguf (written atomically).
        type: "f32", "q8_0", "q4_0" or "q4_1" for the matrices.
    Returns:
        {tensor name: ggml type name} of what was written.
    """
    if type not in FILE_TYPES:
        raise ValueError(f"type must be one of {sorted(FILE_TYPES)}, got {type!r}")
    cfg = model.config
    _check_llama(cfg)
    qname, file_type = FILE_TYPES[type]

    def matrix(w):
        w = np.ascontiguousarray(w, dtype=np.float32)
        if qname == "F32" or w.shape[1] % 32:
            return w
        return (qname, w.shape, quantize_rows(w, qname))

    tensors = {"token_embd.weight": matrix(model.wte.weight.data)}
    for i, block in enumerate(model.blocks):
        wq, wk, wv = _qkv(model, i)
        attn_o = block.attn.proj if cfg.fused_qkv else block.attn.o_proj
        b = f"blk.{i}."
        tensors.update({
            b + "attn_norm.weight": block.ln1.weight.data.astype(np.float32),
            b + "attn_q.weight": matrix(permute_qk(wq, cfg.n_head)),
            b + "attn_k.weight": matrix(permute_qk(wk, cfg.n_kv_head)),
            b + "attn_v.weight": matrix(wv),
            b + "attn_output.weight": matrix(attn_o.weight.data),
            b + "ffn_norm.weight": block.ln2.weight.data.astype(np.float32),
            b + "ffn_gate.weight": matrix(block.mlp.gate_proj.weight.data),
            b + "ffn_up.weight": matrix(block.mlp.up_proj.weight.data),
            b + "ffn_down.weight": matrix(block.mlp.down_proj.weight.data),
        })
    tensors["output_norm.weight"] = model.ln_f.weight.data.astype(np.float32)
    if not cfg.tie_weights:
        tensors["output.weight"] = matrix(model.lm_head.weight.data)
    write_gguf(path, _metadata(cfg, file_type, qname), tensors, value_types=_TYPES)
    return {k: (v[0] if isinstance(v, tuple) else "F32") for k, v in tensors.items()}


_TYPES = {"llama.rope.freq_base": "FLOAT32",
          "llama.attention.layer_norm_rms_epsilon": "FLOAT32",
          "tokenizer.ggml.token_type": "ARRAY[INT32]", "tokenizer.ggml.merges": "ARRAY[STRING]"}


def _metadata(cfg, file_type, qname):
    chars = bytes_to_unicode()
    meta = {
        "general.architecture": "llama",
        "general.name": "minitx GPT",
        "general.file_type": file_type,
        "llama.context_length": cfg.block_size,
        "llama.embedding_length": cfg.n_embd,
        "llama.block_count": cfg.n_layer,
        "llama.feed_forward_length": cfg.ffn_hidden,
        "llama.rope.dimension_count": cfg.head_dim,
        "llama.rope.freq_base": float(cfg.rope_base),
        "llama.attention.head_count": cfg.n_head,
        "llama.attention.head_count_kv": cfg.n_kv_head,
        "llama.attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
        "llama.attention.key_length": cfg.head_dim,
        "llama.attention.value_length": cfg.head_dim,
        "llama.vocab_size": cfg.vocab_size,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",                  # llama.cpp's name for GPT-2's pattern
        "tokenizer.ggml.tokens": [chars[b] for b in range(256)],
        "tokenizer.ggml.token_type": [1] * 256,
        "tokenizer.ggml.merges": [],
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,
    }
    if qname != "F32":
        meta["general.quantization_version"] = 2
    return meta
