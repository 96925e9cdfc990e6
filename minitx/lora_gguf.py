"""QLoRA on a GGUF model: llama.cpp's quantized blocks as the frozen base, used as they are.

QLoRA (Dettmers et al. 2023, arXiv 2305.14314) trains float adapters on a frozen 4-bit base.
A GGUF file (llama.cpp) already holds the base quantized: rows of 32-value blocks, Q4_1 for the
SmolLM2 that `minitx.gguf.find_smollm2` finds (d, m and 32 nibbles: w = d q + m), Q8_0, Q4_0,
Q5_0 or Q5_1 elsewhere (layouts in `minitx.quant.ggml`). `GGMLLinear` keeps those bytes as
the only copy of W (out, in) and never writes them, so the base is never re-quantized:

    forward     y = x W^T          the fused block kernel `ggml_matmul` (minitx.kernels.ggml /
                                   minitx_c.ggml: W decoded tile by tile or in registers);
                                   Q5_x rows, which have no kernel, are decoded NR rows at a time
    backward    dx = g W           W is frozen, so only the input gradient: NR rows of W are
                                   decoded at a time, dx += g[:, n0:n1] W[n0:n1]  (NR, K)
                (no dW: the base gets no gradient and has no optimizer state)

so at most NR x K decoded values of a layer exist at any moment, never a float copy of W.
`LoRALinear` (minitx.lora) wraps a GGMLLinear exactly as it wraps a `QuantLinear`;
`merge()` on it returns a new float Linear (W_hat + s B A) and never re-quantizes.

`load_gguf_gpt(path, keep_blocks=True)` builds minitx's Llama-flavoured GPT from the file with
every block linear layer a GGMLLinear (Wq / Wk rows put back in Hugging Face's order by moving
whole block rows, see `minitx.gguf_model.unpermute_qk`); norms and the token embedding (which
is also the tied output head) are float32. The model carries `peft_name_map = "hf-llama"`, so
`save_adapter` writes PEFT's keys (base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight)
that PEFT on transformers' LlamaForCausalLM loads (benchmarks/make_smollm2_peft_reference.py).
"""
import dataclasses
import os

import numpy as np

from minitx import backend
from minitx.autograd import Function
from minitx.nn.modules import Module
from minitx.quant import ggml as blocks
from minitx.quant.ggml_types import ggml_type

NR = 256                       # rows of W decoded at a time (as minitx.kernels.ggml.NR)
BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


class GGMLLinear(Module):
    """A frozen y = x W^T with W (out_features, in_features) kept as ggml block rows.

    Args:
        raw: (out_features, in_features / 32 * type_size) uint8 rows (read-only afterwards).
        qtype: ggml type id or name: Q8_0, Q4_0, Q4_1, Q5_0 or Q5_1.
        in_features: K, a multiple of 32.
    Attributes:
        raw, qtype (id), in_features, out_features; bias is None (llama layers have none).
    """

    def __init__(self, raw, qtype, in_features):
        super().__init__()
        t = ggml_type(qtype)
        if t.name not in BLOCK_TYPES:
            raise ValueError(f"GGMLLinear holds one of {BLOCK_TYPES}, got ggml type {t.name}")
        raw = np.asarray(raw)
        if raw.dtype != np.uint8 or raw.ndim != 2:
            raise TypeError(f"raw must be 2-D uint8 ggml rows, got {raw.dtype} {raw.shape}")
        if in_features < 1 or in_features % t.block_size or \
                raw.shape[1] != in_features // t.block_size * t.type_size:
            raise ValueError(f"{t.name} rows of in_features={in_features} take "
                             f"{in_features // t.block_size * t.type_size} bytes, got raw of "
                             f"shape {raw.shape}")
        self.raw = np.ascontiguousarray(raw)
        self.raw.flags.writeable = False                   # the base is never written
        self.qtype, self.type_name = t.id, t.name
        self.in_features, self.out_features = in_features, raw.shape[0]
        self.bias = None

    @classmethod
    def from_float(cls, w, qtype):
        """Quantize a float (out, in) weight with minitx's ggml quantizer (for tests and
        synthetic files; a GGUF model's layers are built from the file's own bytes)."""
        w = np.asarray(w, np.float32)
        return cls(blocks.quantize_rows(w, qtype), qtype, w.shape[1])

    @property
    def weight_nbytes(self):
        """Resident bytes of the packed weight."""
        return self.raw.nbytes

    def weight_float(self):
        """The dequantized weight W_hat (out_features, in_features) float32 (for merge/tests)."""
        return blocks.dequantize_rows(self.raw, self.qtype, self.in_features)

    def _rows(self, n0, n1):
        return blocks.dequantize_rows(self.raw[n0:n1], self.qtype, self.in_features)  # (nr, K)

    def compute(self, x):
        """y = x W_hat^T on ndarrays: x (..., K) -> (..., N) float32."""
        from minitx.kernels.ggml import KERNEL_TYPES
        if x.shape[-1] != self.in_features:
            raise ValueError(f"GGMLLinear expects {self.in_features} input features, got input "
                             f"shape {x.shape}")
        x2 = np.ascontiguousarray(x.reshape(-1, self.in_features), dtype=np.float32)  # (M, K)
        if self.qtype in KERNEL_TYPES:
            y = backend.kernel("ggml_matmul")(x2, self.raw, self.qtype)               # (M, N)
        else:
            y = np.empty((x2.shape[0], self.out_features), np.float32)
            for n0 in range(0, self.out_features, NR):                # Q5_x: NR rows a time
                y[:, n0:n0 + NR] = backend.matmul(x2, self._rows(n0, n0 + NR).T)
        return y.reshape(*x.shape[:-1], self.out_features)

    def input_grad(self, g):
        """dx = g W_hat, W decoded NR rows at a time: g (..., N) -> (..., K) float32."""
        if g.shape[-1] != self.out_features:
            raise ValueError(f"GGMLLinear's output gradient needs {self.out_features} features, "
                             f"got shape {g.shape}")
        g2 = np.asarray(g.reshape(-1, self.out_features), dtype=np.float32)         # (M, N)
        gx = np.zeros((g2.shape[0], self.in_features), np.float32)                   # (M, K)
        for n0 in range(0, self.out_features, NR):
            gt = np.ascontiguousarray(g2[:, n0:n0 + NR])                             # (M, nr)
            gx += backend.matmul(gt, self._rows(n0, n0 + NR))                        # (M, K)
        return gx.reshape(*g.shape[:-1], self.in_features)

    def forward(self, x):
        return _GGMLLinearFn.apply(x, layer=self)

    def __repr__(self):
        return f"GGMLLinear({self.in_features}, {self.out_features}, {self.type_name})"


class _GGMLLinearFn(Function):
    """y = x W^T through frozen blocks; the backward gives only dx = g W."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return layer.compute(x).astype(np.result_type(x.dtype, np.float32), copy=False)

    @staticmethod
    def backward(ctx, g):
        return (ctx.layer.input_grad(g).astype(g.dtype, copy=False),)


# ============================== a GPT from a GGUF file ======================================
def _tensor_rows(g, name, n_heads, keep_blocks):
    """(raw rows, type id) or (float32 array, None) of one matrix, Q/K rows unpermuted."""
    from minitx.gguf_model import unpermute_qk
    info = g.info(name)
    if keep_blocks and info.type.name in BLOCK_TYPES:
        rows, qtype = g.raw(name), info.type_id
    else:
        rows, qtype = np.asarray(g.dequantize(name), np.float32), None
    if n_heads is not None:
        rows = unpermute_qk(rows, n_heads)                 # whole block rows move
    return rows, qtype


def load_gguf_gpt(path, keep_blocks=True):
    """minitx's Llama-flavoured GPT from a GGUF file, ready for LoRA / QLoRA.

    Args:
        path: a llama-architecture .gguf file.
        keep_blocks: True: every block linear layer stored in Q8_0 / Q4_0 / Q4_1 / Q5_x becomes
            a frozen GGMLLinear over the file's bytes (QLoRA on the GGUF base); False: decoded
            to float32 Linear layers (plain LoRA; the same as `minitx.gguf.load_model(path,
            quantized=False)`).
    Returns:
        GPT in eval mode with `peft_name_map = "hf-llama"` and `peft_base_model` = the path.
        At most one block's float Linear layers exist at a time while it is built.
    """
    from minitx.gguf import open_gguf
    from minitx.gguf_model import GPT_NAMES, LlamaHParams, _check_shapes, _file_gpt_class, \
        gpt_config
    from minitx.models.gpt import Block
    from minitx.nn.modules import Parameter, ModuleList
    from minitx.quant.linear import replace_module
    g = open_gguf(path)
    hp = LlamaHParams.from_metadata(g.metadata, g.path)
    _check_shapes(g, hp)
    tied = "output.weight" not in g.tensors
    config = gpt_config(hp, tied)
    small = dataclasses.replace(config, n_layer=1, vocab_size=1, tie_weights=True)
    model = _file_gpt_class()(small)                       # tiny shell, no 28M random table
    model.config = config
    model.wte.weight = Parameter(np.asarray(g.dequantize("token_embd.weight"), np.float32))
    model.wte.num_embeddings = hp.vocab_size
    model.ln_f.weight.data = np.asarray(g.dequantize("output_norm.weight"), np.float32)
    if not tied:
        from minitx.nn.modules import Linear
        model.lm_head = Linear(hp.n_embd, hp.vocab_size, bias=False)
        model.lm_head.weight.data = np.asarray(g.dequantize("output.weight"), np.float32)
    heads = {"attn_q": hp.n_head, "attn_k": hp.n_kv_head}
    layers = []
    for i in range(hp.n_layer):
        block = Block(config, i)                           # one block's float layers at a time
        for short, name in GPT_NAMES.items():
            rows, qtype = _tensor_rows(g, f"blk.{i}.{short}.weight", heads.get(short),
                                       keep_blocks)
            if short.endswith("norm"):
                dict(block.named_modules())[name].weight.data = rows
            elif qtype is not None:
                replace_module(block, name, GGMLLinear(rows, qtype, g.info(
                    f"blk.{i}.{short}.weight").ne[0]))
            else:
                dict(block.named_modules())[name].weight.data = rows
        layers.append(block)
    model.blocks = ModuleList(layers)
    model.peft_name_map = "hf-llama"
    model.peft_base_model = os.path.abspath(path)
    return model.eval()
