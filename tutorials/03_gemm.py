# %% [markdown]
# # 03 · From a triple loop to BLAS speed: how a matrix product gets fast
#
# A transformer spends most of its time in matrix products. Modern processors have "built-in
# vector and matrix operations": one AVX2 FMA instruction does 8 multiply-adds, and a Zen 3 core
# can issue two per cycle. This tutorial climbs from the textbook triple loop to a kernel that
# uses them, one idea per step, measuring GFLOP/s at each:
#
# 1. the triple loop (pure Python);
# 2. loop order, compiled: `i, k, j` streams rows of B and C, `i, j, k` strides down columns;
# 3. blocking: work on tiles that stay in cache;
# 4. packing + micro-kernel: the BLIS loop nest (`minitx/kernels/gemm.py`, NumPy on tiles);
# 5. the same loop nest in Cython with a 6 x 16 register tile of AVX2 FMAs (`minitx_c.matmul`);
# 6. threads: OpenMP over the row blocks of the 3rd loop;
# 7. and the roofline of this machine: peak FLOP/s from the vector width and FMA units,
#    memory bandwidth measured, and where each step sits under it.
#
# References: Goto & van de Geijn 2008, "Anatomy of High-Performance Matrix Multiplication";
# Van Zee & van de Geijn 2015, "BLIS"; Williams, Waterman & Patterson 2009, "Roofline".
#
# Run headless: `python tutorials/03_gemm.py --quick` (well under a minute). Plots are written
# (when matplotlib is importable) to `$MINITX_TUTORIAL_OUT` or a temporary directory.

# %%
import argparse
import os
import sys
import tempfile
import time

try:
    import minitx  # noqa: F401  (an installed minitx, with its compiled kernels)
except ImportError:  # a source checkout: use it directly
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from minitx import backend  # noqa: E402
from minitx.kernels import gemm as blis  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (< 1 minute)")
args, _ = parser.parse_known_args()
QUICK = args.quick
N_SLOW = 48 if QUICK else 96          # sizes for the Python-level steps
N_FAST = 512 if QUICK else 1024       # size for the compiled steps
OUT = os.environ.get("MINITX_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="minitx_03_")
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(0)


def gflops(fn, n, repeats):
    """Best-of-`repeats` GFLOP/s of fn() computing an n x n x n product (2 n^3 flops)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def operands(n):
    return (rng.standard_normal((n, n), dtype=np.float32),
            rng.standard_normal((n, n), dtype=np.float32))


results = []                           # (step, n, GFLOP/s)

# %% [markdown]
# ## 1. The triple loop
# `C[i, j] = sum_k A[i, k] B[k, j]`: 2 n^3 flops, each costing a trip through the Python
# interpreter.

# %%
def matmul_triple_loop(A, B):
    n, K = A.shape
    m = B.shape[1]
    C = [[0.0] * m for _ in range(n)]
    a, b = A.tolist(), B.tolist()
    for i in range(n):
        for j in range(m):
            s = 0.0
            for k in range(K):
                s += a[i][k] * b[k][j]
            C[i][j] = s
    return np.array(C, dtype=np.float32)


A, B = operands(N_SLOW)
assert np.allclose(matmul_triple_loop(A, B), A @ B, atol=1e-3)
results.append(("1 triple loop (Python)", N_SLOW, gflops(lambda: matmul_triple_loop(A, B),
                                                          N_SLOW, 1)))

# %% [markdown]
# ## 2. Loop order (compiled)
# From here on the loops are compiled C (`minitx_c.gemm_loops.matmul_loops`), so what we measure is
# the memory system, not the interpreter. `i, j, k` computes each C[i, j] as a dot product and
# reads B down a column: stride N floats, a new cache line per multiply-add, and a serial
# dependency on the sum. `i, k, j` updates a whole row, `C[i, :] += A[i, k] * B[k, :]`: two
# contiguous rows that the compiler can turn into vector instructions. Same flops.
#
# ## 3. Blocking
# `i, k, j` still streams all of B (N x K floats) for every row of A. Tiling the three loops
# (here 64 x 64 x 64) keeps a tile of B in cache while it is reused by 64 rows of A. Measure
# before believing it: on a Zen 3 core at n = 1024 the hardware prefetcher already streams B
# fast enough for this loop, and the short 64-wide inner loop costs more than the reuse saves
# (we measured 18 GFLOP/s unblocked, 12 blocked). Blocking pays once the data is also laid
# out for the kernel (packing) and the accumulators live in registers: steps 4 and 5.

# %%
have_c = "c" in backend.available()
A2, B2 = operands(N_FAST)
if have_c:
    from minitx_c.gemm_loops import matmul_loops
    for label, order, block in (("2a loops i,j,k (compiled)", "ijk", 0),
                                ("2b loops i,k,j (compiled)", "ikj", 0),
                                ("3 i,k,j in 64^3 tiles (compiled)", "ikj", 64)):
        assert np.allclose(matmul_loops(A2, B2, order, block), A2 @ B2, atol=1e-2)
        results.append((label, N_FAST, gflops(lambda: matmul_loops(A2, B2, order, block),
                                              N_FAST, 1)))
else:
    print("minitx_c is not built: compiled steps skipped (python setup.py build_ext --inplace)")

# %% [markdown]
# ## 4. Packing and the micro-kernel (BLIS loop nest, in NumPy)
# Five loops: NC-wide panels of B (L3), KC-deep slices (B packed into NR-wide micro-panels),
# MC-tall blocks of A (packed into MR-tall micro-panels, L2), then NR and MR steps over an
# MR x NR = 6 x 16 tile of C that the micro-kernel updates kc times with a rank-1 product.
# `minitx/kernels/gemm.py` is this, line by line; still NumPy, so still slow.

# %%
print("blocks:", dict(MR=blis.MR, NR=blis.NR, MC=blis.MC, KC=blis.KC, NC=blis.NC))
assert np.allclose(blis.matmul(A, B), A @ B, atol=1e-3)
results.append(("4 BLIS loop nest (NumPy twin)", N_SLOW, gflops(lambda: blis.matmul(A, B),
                                                                 N_SLOW, 2)))

# %% [markdown]
# ## 5. The micro-kernel in registers, and 6. threads
# `minitx_c/gemm.pyx` runs the same loops compiled; the micro-kernel (`gemm_kernel.h`) holds the
# 6 x 16 tile of C in 12 AVX registers and issues 12 FMAs per k. Then OpenMP splits the MC
# blocks of the 3rd loop over the cores. OpenBLAS (through `np.matmul`) is the bar to reach.

# %%
A, B = operands(N_FAST)
reps = 3 if QUICK else 7
try:
    from threadpoolctl import threadpool_limits
except ImportError:
    threadpool_limits = None
if have_c:
    import minitx_c
    saved = minitx_c.get_num_threads()
    minitx_c.set_num_threads(1)
    results.append(("5 Cython micro-kernel, 1 thread", N_FAST,
                    gflops(lambda: minitx_c.matmul(A, B), N_FAST, reps)))
    minitx_c.set_num_threads(max(2, saved))
    results.append((f"6 Cython, {max(2, saved)} threads", N_FAST,
                    gflops(lambda: minitx_c.matmul(A, B), N_FAST, reps)))
    minitx_c.set_num_threads(saved)
else:
    print("minitx_c is not built: steps 5 and 6 skipped (python setup.py build_ext --inplace)")
if threadpool_limits is not None:
    for t in (1, 2):
        with threadpool_limits(limits=t, user_api="blas"):
            results.append((f"OpenBLAS np.matmul, {t} thread(s)", N_FAST,
                            gflops(lambda: A @ B, N_FAST, reps)))
else:
    results.append(("OpenBLAS np.matmul (default threads)", N_FAST,
                    gflops(lambda: A @ B, N_FAST, reps)))

# %% [markdown]
# ## 7. The roofline of this machine
# Peak FLOP/s per core = clock x 8 floats per AVX2 register x 2 flops per FMA x 2 FMA units.
# Memory bandwidth is measured by copying a buffer much larger than the caches. A product of
# n x n matrices moves at least 3 n^2 floats and does 2 n^3 flops: arithmetic intensity n / 6
# flop/byte, so beyond n of a few dozen a GEMM is compute-bound; the Python steps are bound by
# the interpreter, far under both roofs.

# %%
def clock_ghz():
    """Clock from /proc/cpuinfo (Linux; often the nominal one, turbo can exceed it), else 3.0."""
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        return max(mhz) / 1000 if mhz else 3.0
    except OSError:
        return 3.0


def bandwidth_gbs(mbytes):
    src = np.ones(mbytes * 2 ** 20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9                  # read + write


ghz = clock_ghz()
peak_core = ghz * 8 * 2 * 2
cores = os.cpu_count() or 1
bw = bandwidth_gbs(64 if QUICK else 256)
print(f"\nclock {ghz:.2f} GHz (as reported; turbo may run faster, so % of peak can top 100) -> peak {peak_core:.0f} GFLOP/s per core, "
      f"{peak_core * cores:.0f} on {cores} cores; memory bandwidth ~{bw:.1f} GB/s "
      f"(ridge point {peak_core * cores / bw:.1f} flop/byte)")

print("\n| step | n | GFLOP/s | % of 1-core peak | bar |\n|---|---|---|---|---|")
top = max(g for _, _, g in results)
for step, n, g in results:
    bar = "#" * max(1, int(40 * np.log10(1 + g * 1e3) / np.log10(1 + top * 1e3)))
    print(f"| {step} | {n} | {g:.3g} | {100 * g / peak_core:.2g}% | {bar} |")

try:
    import matplotlib
    if "ipykernel" not in sys.modules:   # a script or a test: draw off-screen
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
if plt is not None:
    def kind(step):
        """Colour group of a step: what it runs on."""
        for key, name in (("Python", "Python"), ("NumPy", "NumPy"), ("Cython", "Cython"),
                          ("OpenBLAS", "OpenBLAS"), ("compiled", "compiled C loops")):
            if key in step:
                return name
        return "other"

    colours = {"Python": "tab:gray", "compiled C loops": "tab:orange", "NumPy": "tab:purple",
               "Cython": "tab:blue", "OpenBLAS": "tab:green", "other": "tab:brown"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    names, values = [s for s, _, _ in results][::-1], [g for _, _, g in results][::-1]
    ax1.barh(names, values, color=[colours[kind(s)] for s in names])
    for y, g in enumerate(values):
        ax1.text(g * 1.15, y, f"{g:.3g}", va="center", fontsize=8)
    ax1.set_xscale("log")
    ax1.set_xlim(min(values) / 3, max(max(values), peak_core * cores) * 6)
    ax1.set_xlabel("GFLOP/s (log scale; higher is better)")
    ax1.axvline(peak_core, color="r", ls="--", label=f"1-core peak at {ghz:.2f} GHz")
    ax1.axvline(peak_core * cores, color="r", ls=":", label=f"{cores}-core peak")
    ax1.set_title(f"Each step of the tutorial (n = {N_SLOW} for Python/NumPy, {N_FAST} compiled)")
    ax1.legend(loc="upper right", fontsize=8)      # beside the short bars at the top
    ai = np.logspace(-1, 3, 100)
    ax2.loglog(ai, np.minimum(peak_core * cores, ai * bw), "k-",
               label=f"roofline: {cores} cores, {bw:.1f} GB/s")
    ax2.loglog(ai, np.minimum(peak_core, ai * bw), "k--", lw=0.8, label="roofline: 1 core")
    for k, (step, n, g) in enumerate(results):
        ax2.plot(n / 6, g, "o", color=colours[kind(step)])
        ax2.annotate(step.split()[0] if step[0].isdigit() else "BLAS", (n / 6, g),
                     textcoords="offset points", xytext=(8 if k % 2 else -22, -3), fontsize=8)
    ax2.set_xlabel("arithmetic intensity (flop/byte) = n / 6 for float32")
    ax2.set_ylabel("GFLOP/s")
    ax2.set_title("Roofline: labels are the step numbers")
    ax2.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = os.path.join(OUT, "03_gemm.png")
    fig.savefig(path, dpi=100)
    print("saved", path)
