"""Training throughput of the default GPT: minitx against PyTorch eager on the same config.

    python benchmarks/train_throughput.py [--threads 1] [--steps 10] [--config default]

Each framework trains the same architecture (embedding, pre-LayerNorm blocks, causal attention,
tanh-GELU MLP, tied head) with AdamW on random token batches; the table gives the median
tokens/s over the timed steps (after 2 warm-up steps) and the ratio minitx / PyTorch. PyTorch is
optional: without it only minitx's row is printed. Thread counts are fixed through the
environment before NumPy loads (OpenBLAS, OpenMP), and with torch.set_num_threads.
"""
import argparse
import os
import sys
import time


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--config", default="default")
    p.add_argument("--attention", default=None, help="minitx attention impl (default: config's)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cpu-time", action="store_true",
                   help="time with process CPU time instead of wall-clock time")
    return p.parse_args()


ARGS = _args()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402  (after the thread settings)

import minitx  # noqa: E402
from minitx.models.gpt import GPT, get_config  # noqa: E402
from minitx.optim import AdamW  # noqa: E402


def _time_steps(step, n):
    """Median seconds per step: wall-clock time, or process CPU time with --cpu-time (a fairer
    measure on a machine shared with other jobs, for single-threaded runs)."""
    clock = time.process_time if ARGS.cpu_time else time.perf_counter
    for _ in range(2):
        step()
    times = []
    for _ in range(n):
        t = clock()
        step()
        times.append(clock() - t)
    return float(np.median(times))


def bench_minitx(cfg, batches):
    minitx.manual_seed(0)
    model = GPT(cfg)
    opt = AdamW(model.parameters(), lr=1e-3)
    it = iter(batches)

    def step():
        x, y = next(it)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return _time_steps(step, ARGS.steps)


def bench_torch(cfg, batches):
    import torch
    import torch.nn as nn
    import torch.nn.functional as TF
    torch.set_num_threads(ARGS.threads)
    torch.manual_seed(0)
    C, H, T, V = cfg.n_embd, cfg.n_head, cfg.block_size, cfg.vocab_size

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.fc, self.out = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T_, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(B, T_, 3, H, C // H).permute(2, 0, 3, 1, 4)
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T_, C))
            return x + self.out(TF.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class TorchGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for b in self.blocks:
                x = b(x)
            logits = self.ln_f(x) @ self.wte.weight.T
            return TF.cross_entropy(logits.view(-1, V), targets.view(-1))

    model = TorchGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    it = iter([(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches])

    def step():
        x, y = next(it)
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return _time_steps(step, ARGS.steps), torch.__version__


def main():
    overrides = {"attention": ARGS.attention} if ARGS.attention else {}
    cfg = get_config(ARGS.config, **overrides)
    rng = np.random.default_rng(0)
    n = ARGS.steps + 2
    B, T = ARGS.batch_size, cfg.block_size
    batches = [(rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T)))
               for _ in range(n)]
    tokens = B * T
    print(f"config '{ARGS.config}': {cfg.n_layer} layers, d={cfg.n_embd}, {cfg.n_head} heads, "
          f"T={T}, batch {B} ({tokens} tokens/step), {ARGS.threads} thread(s), minitx backend "
          f"{minitx.backend.active()}, attention {cfg.attention}")
    t_mx = bench_minitx(cfg, batches)
    rows = [("minitx", t_mx)]
    try:
        t_pt, version = bench_torch(cfg, batches)
        rows.append((f"PyTorch {version} eager", t_pt))
    except ImportError:
        t_pt = None
    print(f"| {'framework':<24} | {'s/step':>8} | {'tokens/s':>9} | {'minitx / this':>13} |")
    print(f"|{'-' * 26}|{'-' * 10}|{'-' * 11}|{'-' * 15}|")
    for name, t in rows:
        print(f"| {name:<24} | {t:8.3f} | {tokens / t:9,.0f} | {t / t_mx:13.2f} |")
    if t_pt is None:
        print("(PyTorch not installed: pip install torch==2.13.0 to compare)")


if __name__ == "__main__":
    sys.exit(main())
