"""Measured memory of fine-tuning: full vs LoRA vs QLoRA vs QLoRA + activation checkpointing.

    python benchmarks/lora_memory.py [--layers 4 --d 512 --batch 4 --seq 128 --r 8]

Each setting runs in its own Python process (so RSS peaks do not mix): build the same GPT
(same seed), prepare it, run 2 AdamW steps on the same batch, and report
  - traced peak: tracemalloc's peak during the 2 steps, the prepared model's resident arrays
    included (NumPy registers its buffers with tracemalloc, so this is every array minitx
    allocates; memory-mapped optimizer state is not traced). Preparing (building the float
    model, then quantizing it) has its own peak, reported separately: a real QLoRA run would
    load the packed weights directly;
  - RSS peak: the process's VmHWM during the steps (reset after preparing, via
    /proc/self/clear_refs) minus its RSS after imports (includes allocator slack, BLAS
    buffers, and file-backed pages of the paged optimizer);
  - the estimate of `minitx.lora.memory_estimate(config, "<method>32", ...)` for the same
    shape and batch, and measured / estimated.
The machine is shared and noisy for time, not for memory: the peaks repeat to within a few %.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETTINGS = {  # name -> (estimate method, quant, checkpointing, paged optimizer)
    "full": ("full32", None, False, False),
    "full + paged AdamW": ("full32", None, False, True),
    "LoRA": ("lora32", None, False, False),
    "QLoRA nf4": ("qlora32", "nf4", False, False),
    "QLoRA nf4 + checkpointing": ("qlora32", "nf4", True, False),
}


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def run_one(name, args):
    import tracemalloc

    import numpy as np

    import minitx
    from minitx.lora import apply_lora, lora_parameters, memory_estimate, prepare_qlora
    from minitx.models.gpt import GPT, GPTConfig
    from minitx.nn.checkpoint import checkpoint_modules
    from minitx.optim import AdamW, PagedAdamW

    method, quant, ckpt, paged = SETTINGS[name]
    cfg = GPTConfig(n_layer=args.layers, n_embd=args.d, n_head=args.heads, block_size=args.seq)
    idx = np.random.default_rng(0).integers(0, 256, (args.batch, args.seq + 1))
    base_rss = _status("VmRSS")
    tracemalloc.start()
    minitx.manual_seed(0)
    model = GPT(cfg)
    if method == "full32":
        params = model.parameters()
    elif quant:
        params = prepare_qlora(model, quant, r=args.r, alpha=args.r, target_modules="all-linear")
    else:
        params = apply_lora(model, r=args.r, alpha=args.r, target_modules="all-linear")
    if ckpt:
        checkpoint_modules(model.blocks)
    opt = (PagedAdamW if paged else AdamW)(params, lr=1e-4)
    prepare_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()                   # from here: resident model + the steps
    resident_rss = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                           # reset VmHWM (Linux >= 4.0)
    t0 = time.perf_counter()
    for _ in range(2):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        del loss                               # as Trainer.train_step: the graph goes here
    seconds = (time.perf_counter() - t0) / 2
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    est = memory_estimate(cfg, method, batch_size=args.batch, seq_len=args.seq, r=args.r,
                          target_modules="all-linear", checkpointing=ckpt)
    trainable = sum(p.data.size for p in params)
    assert trainable == est["trainable"] or method == "full32", (trainable, est["trainable"])
    return {"setting": name, "trainable": trainable, "traced": traced,
            "rss": _status("VmHWM") - base_rss, "estimate": est, "s_per_step": seconds,
            "prepare_peak": prepare_peak, "resident_rss": resident_rss - base_rss,
            "lora": len(lora_parameters(model)) // 2}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    argv = [a for a in sys.argv[1:]]
    rows = []
    for name in SETTINGS:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", name] + argv,
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    MB = 2 ** 20
    print(f"GPT {args.layers} layers, d = {args.d}, {args.heads} heads, batch {args.batch} x "
          f"{args.seq} tokens, LoRA r = {args.r} on all linear layers, float32, 2 AdamW steps")
    print("| setting | trainable params | traced peak MiB | RSS peak MiB | estimate MiB "
          "(weights + adapters + grads + optim + acts) | traced / estimate | s/step | "
          "prepare peak MiB |")
    print("|---|--:|--:|--:|---|--:|--:|--:|")
    for r in rows:
        e = r["estimate"]
        parts = " + ".join(f"{e[k] / MB:.1f}" for k in ("weights", "adapters", "gradients",
                                                         "optimizer", "activations"))
        print(f"| {r['setting']} | {r['trainable']:,} | {r['traced'] / MB:.1f} | "
              f"{r['rss'] / MB:.1f} | {e['total'] / MB:.1f} ({parts}) | "
              f"{r['traced'] / e['total']:.2f} | {r['s_per_step']:.2f} | "
              f"{r['prepare_peak'] / MB:.1f} |")


if __name__ == "__main__":
    main()
