"""Fine-tuning experiment: full vs LoRA (r = 1, 4, 16, 64) vs QLoRA (NF4, int4), attention-only
vs all linear layers, on the one training loop.

    python benchmarks/lora_finetune.py [--pretrain-steps 300 --steps 150 --seeds 0 1]

1. Pre-train a small GPT (2 layers, d = 64, context 64) on the embedded corpus (the standard
   library's docstrings and comments), as the main job does, only smaller.
2. Fine-tune copies of it on a different text, the standard library's source code (the first
   files in sorted order of this Python's stdlib, comments and code, about 400 KB), with each
   method, for the same number of steps and tokens, with the same schedule; learning rate 1e-3
   for full fine-tuning, 3e-3 for adapters (alpha = 2r, so the scaled update has the same size
   across ranks at initialisation of B = 0; rsLoRA off).
3. Report the validation loss on held-out source code (mean and spread over seeds), trainable
   parameters, the traced peak memory of a step and seconds per step. Before fine-tuning, the
   pre-trained model's loss on the source-code validation split is the "no fine-tuning" row.
The machine is shared: seconds per step are noisy, losses and memory are not.
"""
import argparse
import copy
import os
import sys
import sysconfig
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minitx  # noqa: E402
from minitx.data import default_corpus  # noqa: E402
from minitx.lora import apply_lora, lora_parameters, prepare_qlora  # noqa: E402
from minitx.models.gpt import GPT, GPTConfig  # noqa: E402
from minitx.train import TrainConfig, Trainer, prepare_data  # noqa: E402

ATTN = ["qkv", "attn.proj"]
METHODS = [  # (label, kind, quant, r, targets)
    ("full fine-tuning", "full", None, None, None),
    ("LoRA r=1 all", "lora", None, 1, "all-linear"),
    ("LoRA r=4 all", "lora", None, 4, "all-linear"),
    ("LoRA r=16 all", "lora", None, 16, "all-linear"),
    ("LoRA r=64 all", "lora", None, 64, "all-linear"),
    ("LoRA r=16 attention", "lora", None, 16, ATTN),
    ("QLoRA nf4 r=16 all", "lora", "nf4", 16, "all-linear"),
    ("QLoRA nf4 r=16 attention", "lora", "nf4", 16, ATTN),
    ("QLoRA int4 r=16 all", "lora", "int4", 16, "all-linear"),
]


def stdlib_source(limit=400_000):
    """The standard library's own source code, files in sorted order, up to `limit` bytes."""
    root = sysconfig.get_paths()["stdlib"]
    parts, size = [], 0
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not name.endswith(".py") or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        parts.append(text)
        size += len(text)
        if size >= limit:
            break
    return "".join(parts)[:limit]


def pretrain(cfg, steps, log):
    tc = TrainConfig(max_steps=steps, batch_size=16, lr=3e-3, warmup=30, eval_interval=steps,
                     eval_iters=10, ckpt_interval=steps, log_interval=steps, seed=0)
    train_ids, val_ids = prepare_data(default_corpus(), tc, cfg.block_size)
    minitx.manual_seed(0)
    model = GPT(cfg)
    Trainer(model, tc, train_ids, val_ids, None, log=log).fit()
    return model


def finetune(base, method, text, steps, seed):
    label, kind, quant, r, targets = method
    model = copy.deepcopy(base)
    tc = TrainConfig(max_steps=steps, batch_size=16, lr=1e-3 if kind == "full" else 3e-3,
                     warmup=10, eval_interval=steps, eval_iters=20, ckpt_interval=steps,
                     log_interval=steps, seed=seed, weight_decay=0.0)
    train_ids, val_ids = prepare_data(text, tc, model.config.block_size)
    minitx.manual_seed(seed)
    trainable = None
    if kind == "lora":
        if quant:
            prepare_qlora(model, quant, r=r, alpha=2 * r, target_modules=targets)
        else:
            apply_lora(model, r=r, alpha=2 * r, target_modules=targets)
        trainable = lora_parameters
    model.train()
    trainer = Trainer(model, tc, train_ids, val_ids, None, trainable=trainable,
                      log=lambda *a: None)
    tracemalloc.start()
    trainer.train_step()                                  # the first step allocates Adam state
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    t0 = time.perf_counter()
    result = trainer.fit()
    n = sum(p.data.size for p in (trainable or (lambda m: m.parameters()))(model))
    return {"val": result["val_loss"], "params": n, "peak": peak,
            "s_step": (time.perf_counter() - t0) / max(steps - 1, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args()
    cfg = GPTConfig(n_layer=2, n_embd=64, n_head=4, block_size=64)
    base = pretrain(cfg, args.pretrain_steps, log=lambda *a: None)
    text = stdlib_source()
    tc = TrainConfig(eval_iters=20, batch_size=16)
    _, val_ids = prepare_data(text, tc, cfg.block_size)
    none = Trainer(copy.deepcopy(base), tc, val_ids, val_ids, None).evaluate()
    print(f"base: {base.num_params():,} parameters, pre-trained {args.pretrain_steps} steps on "
          f"docstrings; fine-tuning {args.steps} steps of 16 x {cfg.block_size} tokens on "
          f"{len(text):,} bytes of stdlib source; seeds {args.seeds}")
    print("| method | trainable params | val loss (mean ± spread) | peak MiB (first step) | "
          "s/step |")
    print("|---|--:|--:|--:|--:|")
    print(f"| no fine-tuning | 0 | {none:.4f} | | |")
    for method in METHODS:
        runs = [finetune(base, method, text, args.steps, s) for s in args.seeds]
        vals = np.array([r["val"] for r in runs])
        print(f"| {method[0]} | {runs[0]['params']:,} | {vals.mean():.4f} ± "
              f"{(vals.max() - vals.min()) / 2:.4f} | {runs[0]['peak'] / 2**20:.1f} | "
              f"{np.mean([r['s_step'] for r in runs]):.3f} |", flush=True)


if __name__ == "__main__":
    main()
