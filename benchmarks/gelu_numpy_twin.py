"""Interleaved micro-benchmark of the float32 exact-GELU NumPy twin (numpy backend) against the
float32 Numerical-Recipes erfc GELU that main had before merge speed-fused (copied below as the
baseline). CPU time (process_time), 1M elements, min and median of N interleaved rounds.
Usage: OMP_NUM_THREADS=1 MINITX_PURE=1 python benchmarks/gelu_numpy_twin.py REPO_ROOT [ROUNDS]"""
import math, sys, time
import numpy as np

def old_erf(x):
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    erfc = t * np.exp(-z * z + poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0).astype(x.dtype)

def old_fwd(x):
    cdf = 0.5 * (1 + old_erf(x / math.sqrt(2)))
    return x * cdf, cdf

def old_bwd(g, x, saved):
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return (g * (saved + x * pdf)).astype(x.dtype, copy=False)

sys.path.insert(0, sys.argv[1])
from minitx.kernels import fused_act as fa
rng = np.random.default_rng(0)
x = (rng.standard_normal(1 << 20) * 2).astype(np.float32)
g = rng.standard_normal(1 << 20).astype(np.float32)
_, so = old_fwd(x)
_, sn = fa.gelu_forward(x, "none")
cases = {"old_fwd": lambda: old_fwd(x), "new_fwd": lambda: fa.gelu_forward(x, "none"),
         "old_bwd": lambda: old_bwd(g, x, so),
         "new_bwd": lambda: fa.gelu_backward(g, x, sn, "none")}
res = {k: [] for k in cases}
for r in range(int(sys.argv[2]) if len(sys.argv) > 2 else 7):
    for k, f in cases.items():
        t = time.process_time()
        f()
        res[k].append(time.process_time() - t)
for k, v in res.items():
    v = sorted(v)
    print(f"{k}: min {v[0] * 1e3:.1f} ms  median {v[len(v) // 2] * 1e3:.1f} ms")
