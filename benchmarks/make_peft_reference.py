"""Make tests/data/peft_llama/: PEFT's own logits for minitx adapters, and a PEFT-written adapter.

Runs OUTSIDE minitx's dependencies, in a throwaway virtualenv:
    python -m venv /work/venvs/peft
    /work/venvs/peft/bin/pip install torch==2.13.0 peft transformers safetensors numpy
    MINITX_PURE=1 /work/venvs/peft/bin/python benchmarks/make_peft_reference.py
(minitx itself is imported from this checkout; it needs only NumPy).

What it writes (about 150 KB):
    base.safetensors              a tiny random LlamaForCausalLM (Hugging Face names, float32)
    minitx_adapter/               a LoRA adapter made and saved by minitx (`save_adapter`,
                                  name_map="hf-llama"): random A and B, r=4, alpha=8
    peft_adapter/                 a LoRA adapter made and saved by PEFT (`save_pretrained`,
                                  init_lora_weights=False so B != 0, rsLoRA on)
    reference.safetensors         ids (2, 12); logits of the base, of PEFT with minitx's
                                  adapter (`PeftModel.from_pretrained`), of PEFT with its own
                                  adapter; metadata: versions, rms_norm_eps
tests/test_lora_io.py loads the same files with minitx alone and compares the logits.
"""
import json
import os
import sys

import numpy as np
import peft
import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from minitx.lora import apply_lora, save_adapter  # noqa: E402
from minitx.lora_io import hf_llama_path, load_hf_llama_weights  # noqa: E402
from minitx.models.gpt import GPT, get_config  # noqa: E402
from minitx.nn.modules import Linear, RMSNorm  # noqa: E402
from minitx.safetensors import save_file  # noqa: E402

OUT = os.path.join(ROOT, "tests", "data", "peft_llama")
SHAPE = dict(vocab_size=64, n_embd=32, n_head=2, n_layer=2, block_size=32)
EPS = 1e-6


def hf_model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["n_embd"], intermediate_size=88,
        num_hidden_layers=SHAPE["n_layer"], num_attention_heads=SHAPE["n_head"],
        num_key_value_heads=SHAPE["n_head"], max_position_embeddings=SHAPE["block_size"],
        rms_norm_eps=EPS, rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False,
        mlp_bias=False, hidden_act="silu", initializer_range=0.2)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    return model


def minitx_model(base):
    model = GPT(get_config("llama", **SHAPE))
    for m in model.modules():
        if isinstance(m, RMSNorm):
            m.eps = EPS
    return load_hf_llama_weights(model, base).eval()


@torch.no_grad()
def logits(model, ids):
    return model(torch.from_numpy(ids)).logits.numpy().astype(np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    hf = hf_model()
    base = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}
    save_file(base, os.path.join(OUT, "base.safetensors"))
    ids = np.random.default_rng(0).integers(0, SHAPE["vocab_size"], (2, 12)).astype(np.int64)
    ref = {"ids": ids, "base_logits": logits(hf, ids)}

    # 1. minitx writes an adapter, PEFT loads it onto the PyTorch model
    m = minitx_model(base)
    targets = [n for n, mod in m.named_modules() if isinstance(mod, Linear)
               and n != "lm_head" and hf_llama_path(n) is not None]
    apply_lora(m, r=4, alpha=8, target_modules=targets)
    rng = np.random.default_rng(1)
    for _, mod in m.named_modules():
        if hasattr(mod, "lora_B"):
            mod.lora_A.data = rng.standard_normal(mod.lora_A.shape).astype(np.float32) * 0.3
            mod.lora_B.data = rng.standard_normal(mod.lora_B.shape).astype(np.float32) * 0.3
    save_adapter(m, os.path.join(OUT, "minitx_adapter"), "tiny-random-llama",
                 name_map="hf-llama")
    pm = peft.PeftModel.from_pretrained(hf_model(), os.path.join(OUT, "minitx_adapter")).eval()
    ref["peft_logits_minitx_adapter"] = logits(pm, ids)

    # 2. PEFT writes an adapter (rsLoRA, random B), minitx will load it
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj",
                                                                  "gate_proj", "down_proj"],
                             use_rslora=True, init_lora_weights=False, task_type="CAUSAL_LM")
    torch.manual_seed(2)
    pm2 = peft.get_peft_model(hf_model(), config).eval()
    pm2.save_pretrained(os.path.join(OUT, "peft_adapter"))
    ref["peft_logits_peft_adapter"] = logits(pm2, ids)
    meta = {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "rms_norm_eps": json.dumps(EPS)}
    save_file(ref, os.path.join(OUT, "reference.safetensors"), metadata=meta)
    for k, v in ref.items():
        print(k, v.shape)
    print(meta)


if __name__ == "__main__":
    main()
