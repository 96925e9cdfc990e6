# %% [markdown]
# # 02 · Exact attention without the N x N matrix: from the formula to FlashAttention-2
#
# Attention is `O = softmax(Q K^T / sqrt(d)) V`. Written the obvious way it builds the N x N score
# matrix S and probability matrix P: memory grows as N^2, and every element of S and P goes to
# slow memory and back. FlashAttention (Dao et al. 2022, arXiv 2205.14135) computes the *same*
# O tile by tile with an *online softmax*, so the N x N matrix never exists; FlashAttention-2
# (Dao 2023, arXiv 2307.08691) reorders the loops so Q blocks are independent. This tutorial walks:
#
# 1. the naive formula (`minitx/attention/naive.py`) and its N^2 memory;
# 2. the online softmax on one row: a running max `m` and running sum `l`;
# 3. FA-1 (`flash1.py`): K/V blocks outside, Q blocks inside, O rescaled at every step;
# 4. FA-2 (`flash2.py`): Q blocks outside, one normalisation at the end, one logsumexp L saved;
# 5. the same FA-2 loops in Cython (`minitx_c/flash.pyx`), AVX2 tiles and a vectorised exp;
# 6. the IO model of FA-1's Theorem 2 (`minitx/attention/io.py`);
# and plots of memory, time and IO against N.
#
# Run headless: `python tutorials/02_flash_attention.py --quick` (well under a minute). Plots
# (when matplotlib is importable) go to `$MINITX_TUTORIAL_OUT` or a temporary directory.

# %%
import argparse
import os
import sys
import tempfile
import time
import tracemalloc

try:
    import minitx  # noqa: F401  (an installed minitx, with its compiled kernels)
except ImportError:  # a source checkout: use it directly
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):   # one thread: like-for-like timings
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from minitx.attention import io, scaled_dot_product_attention  # noqa: E402
from minitx.attention.flash1 import flash1_forward  # noqa: E402
from minitx.attention.flash2 import flash2_backward, flash2_forward  # noqa: E402
from minitx.attention.naive import naive_backward, naive_forward  # noqa: E402

try:
    import minitx_c.flash as cflash
except ImportError:
    cflash = None

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="small sizes (< 1 minute)")
args, _ = parser.parse_known_args()
QUICK = args.quick
NS = [128, 256, 512, 1024] if QUICK else [256, 512, 1024, 2048, 4096]
OUT = os.environ.get("MINITX_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="minitx_02_")
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(0)
try:
    import matplotlib
    if "ipykernel" not in sys.modules:   # a script or a test: draw off-screen
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None


def qkv(N, d=64, dtype=np.float32, heads=1):
    return [rng.standard_normal((1, heads, N, d)).astype(dtype) for _ in range(3)]


# %% [markdown]
# ## 1. The naive formula
# `S = Q K^T * scale` is N x N; `P = softmax(S)` row by row; `O = P V`. Simple, exact, and the
# reference every other implementation here is tested against. Its extra memory is S and P:
# 2 N^2 floats, 128 MB at N = 4096 in float32 for one head.

# %%
q, k, v = qkv(6, d=4, dtype=np.float64)
o, P = naive_forward(q, k, v, is_causal=True)
print("causal P (each row sums to 1, zeros above the diagonal):")
print(np.round(P[0, 0], 3))

# %% [markdown]
# ## 2. The online softmax on one row
# softmax(x)_j = exp(x_j - m) / l with m = max(x), l = sum exp(x - m). Both can be computed while
# the row streams by in chunks: when a chunk raises the max from m to m', everything summed so far
# is rescaled by exp(m - m'). The same trick rescales a running weighted sum of V rows, which is
# all FlashAttention needs (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax").

# %%
x = rng.standard_normal(1000) * 5
m, l = -np.inf, 0.0
for chunk in np.array_split(x, 7):               # stream the row in 7 chunks
    m_new = max(m, chunk.max())
    l = l * np.exp(m - m_new) + np.exp(chunk - m_new).sum()
    m = m_new
exact = np.exp(x - x.max()).sum()
print(f"online softmax: m = {m:.6f} (max {x.max():.6f}), l = {l:.10f} (exact {exact:.10f})")
assert np.isclose(l, exact, rtol=1e-12) and m == x.max()

# %% [markdown]
# ## 3. FlashAttention-1 and 4. FlashAttention-2
# Both tile Q into blocks of Br rows and K, V into blocks of Bc rows. FA-1 keeps the K/V block in
# fast memory and sweeps all Q blocks past it, reading and writing O, m, l for every tile. FA-2
# turns the loops around: a Q block stays put while K/V stream past, O is divided by l once at the
# end, and only L = m + log(l) is kept for the backward, which recomputes P = exp(S - L) tile by
# tile. Neither ever holds more than a Br x Bc tile of S. In float64 both equal naive to rounding.

# %%
q, k, v = qkv(300, d=32, dtype=np.float64, heads=2)
o_ref, P = naive_forward(q, k, v, is_causal=True)
o1 = flash1_forward(q, k, v, is_causal=True, Br=48, Bc=40)[0]
o2, L = flash2_forward(q, k, v, is_causal=True, Br=48, Bc=40)
print(f"max |flash1 - naive| = {np.abs(o1 - o_ref).max():.2e}")
print(f"max |flash2 - naive| = {np.abs(o2 - o_ref).max():.2e}")
do = rng.standard_normal(q.shape)
g_ref = naive_backward(q, k, v, P, do)
g2 = flash2_backward(q, k, v, None, o2, L, do, is_causal=True, Br=48, Bc=40)
print("max |grad flash2 - naive| (dq, dk, dv) = "
      + ", ".join(f"{np.abs(a - b).max():.2e}" for a, b in zip(g2, g_ref)))

# %% [markdown]
# ## 5. The Cython kernel
# `minitx_c/flash.pyx` runs the same FA-2 loops (same names: Br, Bc, S, P, m, l, L), but every tile
# product is a register-blocked AVX2 GEMM on zero-padded panels and exp is a vectorised polynomial.
# In float32 it meets FlashAttention's own accuracy rule: its error against a float64 reference is
# at most twice that of naive float32 attention.

# %%
if cflash is not None:
    q32, k32, v32 = qkv(512)
    o_c, _ = cflash.flash2_forward(q32, k32, v32, is_causal=True)
    ref = naive_forward(*(a.astype(np.float64) for a in (q32, k32, v32)), is_causal=True)[0]
    naive32 = naive_forward(q32, k32, v32, is_causal=True)[0]
    err_c, err_n = np.abs(o_c - ref).max(), np.abs(naive32 - ref).max()
    print(f"float32 error vs float64: cython {err_c:.2e}, naive {err_n:.2e} "
          f"(rule: cython <= 2 x naive: {'met' if err_c <= 2 * err_n else 'NOT met'})")
    y = scaled_dot_product_attention(q32, k32, v32, is_causal=True, impl="c")
    print("the same through the public entry point, impl='c':", y.shape)
else:
    print("minitx_c is not built: skipping the Cython kernel")


# %% [markdown]
# ## Memory and time against N
# Peak extra memory of one forward (tracemalloc sees every NumPy allocation, including the Cython
# kernel's scratch) and its CPU time, single head, d = 64, causal, one thread for everyone.
# `benchmarks/attention.py` does the same up to N = 16384 and adds PyTorch for comparison.

# %%
if cflash is not None:
    import minitx_c
    minitx_c.set_num_threads(1)

def peak_mb(fn):
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak / 2 ** 20


def best_ms(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best * 1e3


impls = {"naive": lambda q, k, v: naive_forward(q, k, v, is_causal=True),
         "flash2 (NumPy)": lambda q, k, v: flash2_forward(q, k, v, is_causal=True)}
if cflash is not None:
    impls["flash2 (Cython)"] = lambda q, k, v: cflash.flash2_forward(q, k, v, is_causal=True)
mem = {name: [] for name in impls}
ms = {name: [] for name in impls}
for N in NS:
    q, k, v = qkv(N)
    for name, fn in impls.items():
        mem[name].append(peak_mb(lambda: fn(q, k, v)))
        fn(q, k, v)                                    # warm-up: caches, page faults
        ms[name].append(best_ms(lambda: fn(q, k, v), repeats=3))
print(f"{'N':>6} | " + " | ".join(f"{n:>22}" for n in impls))
for i, N in enumerate(NS):
    print(f"{N:>6} | " + " | ".join(f"{mem[n][i]:>9.2f} MB {ms[n][i]:>8.1f} ms" for n in impls))
grow = mem["naive"][-1] / mem["naive"][-2]
print(f"per doubling of N, naive memory grows x{grow:.1f} (N^2 would be x4), flash2 x"
      f"{mem['flash2 (NumPy)'][-1] / mem['flash2 (NumPy)'][-2]:.1f} (at most x2: O(N d) for O "
      "and L plus fixed tiles)")

# %% [markdown]
# ## 6. The IO model (FA-1 Theorem 2)
# Count the floats moved between slow memory and a fast memory of M floats: naive attention moves
# Theta(N d + N^2), the tiled algorithms Theta(N^2 d^2 / M). Doubling M halves tiled traffic and
# leaves naive traffic unchanged.

# %%
d, M = 64, 100 * 1024
io_ns = [512, 1024, 2048, 4096, 8192, 16384]
io_rows = [(N, io.naive_io(N, d)["total"], io.flash1_io(N, d, M)["total"],
            io.flash2_io(N, d, M)["total"], io.flash2_io(N, d, 2 * M)["total"]) for N in io_ns]
print(f"{'N':>6} | {'naive':>12} | {'flash1 M':>12} | {'flash2 M':>12} | {'flash2 2M':>12}  (floats)")
for row in io_rows:
    print(f"{row[0]:>6} | " + " | ".join(f"{x:>12.3e}" for x in row[1:]))

# %%
if plt is not None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in impls:
        axes[0].loglog(NS, mem[name], "o-", label=name)
        axes[1].loglog(NS, ms[name], "o-", label=name)
    axes[0].set(title="peak extra memory, one forward", xlabel="N", ylabel="MB")
    axes[1].set(title="forward time (causal, d=64, 1 thread)", xlabel="N", ylabel="ms")
    for j, label in enumerate(["naive", "flash1, M", "flash2, M", "flash2, 2M"]):
        axes[2].loglog(io_ns, [r[j + 1] for r in io_rows], "o-", label=label)
    axes[2].set(title=f"slow-memory traffic (d={d}, M={M} floats)", xlabel="N", ylabel="floats")
    for ax, ns in zip(axes, (NS, NS, io_ns)):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])             # the N we ran, not 2 x 10^2
        ax.minorticks_off()
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Attention: naive N x N vs FlashAttention tiles (lower is better; log-log)")
    fig.tight_layout()
    path = os.path.join(OUT, "02_flash_attention.png")
    fig.savefig(path, dpi=100)
    print("plot written to", path)
else:
    print("matplotlib not installed: tables only")
