# %% [markdown]
# # 07 · LoRA and QLoRA: fine-tuning a frozen (and 4-bit) model through a low-rank door
#
# LoRA (Hu et al. 2021, arXiv 2106.09685) freezes a trained weight W (out x in) and learns only
# a low-rank update, y = x W^T + s x A^T B^T with A (r x in), B (out x r), s = alpha / r.
# QLoRA (Dettmers et al. 2023, arXiv 2305.14314) keeps that frozen W in 4-bit NF4 with double
# quantization and backpropagates through it into the adapters: LLaMA-65B fine-tuned on one
# 48 GB GPU instead of more than 780 GB. This tutorial walks `minitx.lora`:
#
# 1. the low-rank update drawn as matrices, and what it costs in parameters;
# 2. merge / unmerge (and why a quantized base is never merged in place);
# 3. the memory arithmetic of the QLoRA paper: 65B and 7B;
# 4. measured memory of one training step, full vs LoRA vs QLoRA (+ checkpointing), stacked
#    against the estimate;
# 5. a short QLoRA fine-tune on the one training loop, saved as a PEFT adapter;
# 6. a GGUF file's own quantized blocks as the frozen base.
#
# Run headless: `python tutorials/07_lora_qlora.py --quick` (well under a minute).

# %%
import argparse
import copy
import os
import sys
import tempfile
import tracemalloc

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
try:
    import minitx  # an installed minitx, with its compiled kernels
except ImportError:  # a source checkout: use it directly
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import minitx

import numpy as np  # noqa: E402

from minitx.autograd import Tensor  # noqa: E402
from minitx.lora import (LoRALinear, apply_lora, lora_parameters, memory_estimate,  # noqa: E402
                         prepare_qlora, save_adapter, trainable_parameters)
from minitx.models.gpt import GPT, GPTConfig, get_config  # noqa: E402
from minitx.nn.checkpoint import checkpoint_modules  # noqa: E402
from minitx.nn.modules import Linear  # noqa: E402
from minitx.optim import AdamW  # noqa: E402
from minitx.train import TrainConfig, Trainer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
QUICK = parser.parse_known_args()[0].quick
OUT = os.environ.get("MINITX_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="minitx_tut07_")
os.makedirs(OUT, exist_ok=True)
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None

# %% [markdown]
# ## 1 · The update is a product of two thin matrices
# B starts at zero, so the adapted layer starts exactly equal to the frozen one; A starts
# Kaiming-uniform (PEFT's default). After training, s B A is a rank-r matrix of W's shape.

# %%
minitx.manual_seed(0)
base = Linear(24, 16)
layer = LoRALinear(base, r=2, alpha=4)
x = Tensor(np.random.default_rng(0).standard_normal((3, 24)).astype(np.float32))
print("fresh adapter changes the output by", float(np.abs(layer(x).data - base(x).data).max()))
layer.lora_B.data = np.random.default_rng(1).standard_normal((16, 2)).astype(np.float32) * 0.1
delta = layer.delta_weight()
print(f"W {base.weight.shape}, A {layer.lora_A.shape}, B {layer.lora_B.shape}, "
      f"rank of s B A = {np.linalg.matrix_rank(delta)}")
if plt is not None:
    fig, ax = plt.subplots(1, 4, figsize=(11, 3.4), gridspec_kw={"width_ratios": [24, 2, 24, 24]})
    for a, (title, m) in zip(ax, [("W (frozen)", base.weight.data), ("B", layer.lora_B.data),
                                  ("A", layer.lora_A.data), ("s B A", delta)]):
        a.imshow(m, cmap="coolwarm")
        a.set_title(title)
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle("LoRA: the frozen W and the rank-2 update s B A")
    fig.savefig(os.path.join(OUT, "07_low_rank.png"), dpi=100)
    print("plot written to", os.path.join(OUT, "07_low_rank.png"))

cfg = get_config("default")
print("\ntrainable parameters of the default GPT with adapters on every linear layer:")
print("| r | trainable | of all |")
print("|--:|--:|--:|")
for r in (1, 4, 16, 64):
    minitx.manual_seed(0)
    m = GPT(cfg)
    apply_lora(m, r=r, alpha=2 * r, target_modules="all-linear")
    t, total = trainable_parameters(m)
    print(f"| {r} | {t:,} | {100 * t / total:.2f}% |")

# %% [markdown]
# ## 2 · Merge and unmerge
# On a float base, merging adds s B A into W (inference then costs nothing extra) and
# unmerging subtracts it: W comes back up to one rounding per element. A quantized base is
# never merged in place: adding s B A and re-quantizing would add a second error the adapter was
# not trained for, so `merge()` returns a new float Linear instead.

# %%
W0 = base.weight.data.copy()
y = layer(x).data.copy()
layer.merge()
print("merged forward - adapter forward:", float(np.abs(layer(x).data - y).max()))
layer.unmerge()
print("W after unmerge - W before:", float(np.abs(base.weight.data - W0).max()),
      f"(float32 eps x |W| ~ {np.finfo(np.float32).eps * np.abs(W0).max():.1e})")

# %% [markdown]
# ## 3 · The 65B-on-48GB arithmetic
# 16-bit full fine-tuning needs 2-byte weights and gradients plus two 4-byte Adam moments: 12
# bytes per parameter. QLoRA stores the linear weights at 4.127 bits (NF4 + double quant), trains
# r = 64 adapters on every linear layer (16-bit, fp32 Adam), and checkpoints activations.

# %%
MB, GB = 2 ** 20, 1e9
print("| model | method | weights | adapters | gradients | optimizer | activations | total |")
print("|---|---|--:|--:|--:|--:|--:|--:|")
for name in ("llama-7b", "llama-65b"):
    for method in ("full16", "lora16", "qlora"):
        e = memory_estimate(name, method, batch_size=1, seq_len=512, r=64)
        print(f"| {name} | {method} | " + " | ".join(
            f"{e[k] / GB:.1f} GB" for k in ("weights", "adapters", "gradients", "optimizer",
                                            "activations", "total")) + " |")
e65 = memory_estimate("llama-65b", "qlora", r=64)
f65 = memory_estimate("llama-65b", "full16")
print(f"65B: full16 static = {(f65['weights'] + f65['gradients'] + f65['optimizer']) / GB:.0f} GB"
      f" (> 780 GB), QLoRA total = {e65['total'] / GB:.1f} GB (< 48 GB)")
e7 = memory_estimate("llama-7b", "qlora", lora_fraction=0.002)
print(f"7B with adapters of 0.2% of the weights: LoRA parameters {e7['adapters'] / MB:.0f} MB "
      f"(the paper: 26 MB), 4-bit base {e7['weights'] / MB:,.0f} MB (the paper measures 5,048)")

# %% [markdown]
# ## 4 · Measured memory of one step, against the estimate
# The same small GPT and batch under four settings; tracemalloc counts every NumPy buffer.

# %%
shape = GPTConfig(n_layer=2, n_embd=128 if QUICK else 256, n_head=4, block_size=64)
idx = np.random.default_rng(0).integers(0, 256, (4, shape.block_size + 1))
rows = []
for label, method, quant, ckpt in [("full", "full32", None, False), ("LoRA", "lora32", None, False),
                                   ("QLoRA", "qlora32", "nf4", False),
                                   ("QLoRA+ckpt", "qlora32", "nf4", True)]:
    minitx.manual_seed(0)
    m = GPT(shape)
    if method == "full32":
        params = m.parameters()
    elif quant:
        params = prepare_qlora(m, quant, r=8, alpha=8)
    else:
        params = apply_lora(m, r=8, alpha=8, target_modules="all-linear")
    if ckpt:
        checkpoint_modules(m.blocks)
    opt = AdamW(params, lr=1e-4)
    tracemalloc.start()
    for _ in range(2):
        _, loss = m(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        del loss
    measured = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    est = memory_estimate(shape, method, batch_size=4, seq_len=shape.block_size, r=8,
                          checkpointing=ckpt)
    rows.append((label, measured, est))
    print(f"{label:11s} measured {measured / MB:6.1f} MiB, estimated {est['total'] / MB:6.1f} MiB")
if plt is not None:
    keys = ("weights", "adapters", "gradients", "optimizer", "activations")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, (label, measured, est) in enumerate(rows):
        bottom = 0
        for k, color in zip(keys, ("C0", "C1", "C2", "C3", "C4")):
            ax.bar(i - 0.2, est[k] / MB, 0.4, bottom=bottom, color=color,
                   label=k if i == 0 else None)
            bottom += est[k] / MB
        ax.bar(i + 0.2, measured / MB, 0.4, color="grey", label="measured" if i == 0 else None)
    ax.set_xticks(range(len(rows)), [r[0] for r in rows])
    ax.set_ylabel("MiB")
    ax.set_title("one training step: estimated (stacked) vs measured (grey)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "07_memory.png"), dpi=100)
    print("plot written to", os.path.join(OUT, "07_memory.png"))

# %% [markdown]
# ## 5 · A short QLoRA fine-tune on the one loop, saved as a PEFT adapter

# %%
minitx.manual_seed(0)
model = GPT(get_config("tiny"))
prepare_qlora(model, "nf4", r=4, alpha=8, target_modules="all-linear")
text = "".join(f"def add_{i}(a, b):\n    return a + b + {i}\n" for i in range(300)).encode()
ids = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
tc = TrainConfig(max_steps=20 if QUICK else 200, batch_size=8, lr=3e-3, warmup=5,
                 eval_interval=10 if QUICK else 50, eval_iters=5, log_interval=10)
before = Trainer(copy.deepcopy(model), tc, ids, ids, None, log=lambda *a: None).evaluate()
result = Trainer(model, tc, ids, ids, None, trainable=lora_parameters).fit()
print(f"validation loss {before:.3f} -> {result['val_loss']:.3f} with "
      f"{trainable_parameters(model)[0]:,} trainable parameters")
save_adapter(model, os.path.join(OUT, "adapter"), base_model_name_or_path="minitx-tiny")
print("adapter files:", sorted(os.listdir(os.path.join(OUT, "adapter"))))

# %% [markdown]
# ## 6 · A GGUF file's own blocks as the frozen base
# A llama.cpp GGUF file already stores the base quantized, in rows of 32-value blocks (Q4_1:
# a scale d, a minimum m and 32 four-bit codes, w = d q + m; 20 bytes per 32 weights).
# `GGMLLinear` keeps those bytes, read-only, as the only copy of W: the forward runs the ggml
# block kernel, the backward decodes 256 rows of W at a time for dx = g W and computes no dW.
# `python -m minitx finetune --gguf FILE` does this for every block layer of a real model
# (benchmarks/qlora_smollm2.py fine-tunes SmolLM2-135M this way).

# %%
import hashlib  # noqa: E402

from minitx.lora_gguf import GGMLLinear  # noqa: E402

w = np.random.default_rng(0).standard_normal((96, 64)).astype(np.float32)
blocks = GGMLLinear.from_float(w, "Q4_1")                  # what a GGUF file would hold
print(f"Q4_1 base: {blocks.weight_nbytes} bytes; as float32: {w.nbytes} bytes")
q = LoRALinear(blocks, r=4, alpha=8)
digest = hashlib.sha256(blocks.raw.tobytes()).hexdigest()
opt = AdamW([q.lora_A, q.lora_B], lr=1e-2)
xq = Tensor(np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32))
for _ in range(3):
    ((q(xq) - 1.0) ** 2).mean().backward()
    opt.step()
    q.zero_grad()
unchanged = hashlib.sha256(blocks.raw.tobytes()).hexdigest() == digest
print("blocks unchanged after 3 steps:", unchanged, "| max |B| =",
      float(np.abs(q.lora_B.data).max()))
print("merge() gives", q.merge(), "(a new float Linear; the blocks stay as they are)")
