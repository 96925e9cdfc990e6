"""Micro-benchmark: bias_gelu_forward/backward against the unfused add + gelu_forward and
gelu_backward + column sum, one (2048, 512) float32 array (the default GPT's MLP hidden), on
the current backend (MINITX_PURE=1 for numpy). CPU time, interleaved rounds, min and median.
Usage: OMP_NUM_THREADS=1 python benchmarks/bias_gelu_kernel.py [ROUNDS] [none|tanh]"""
import sys
import time

import numpy as np

from minitx import backend

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
approx = sys.argv[2] if len(sys.argv) > 2 else "tanh"
rng = np.random.default_rng(0)
x = rng.standard_normal((2048, 512)).astype(np.float32)
b = rng.standard_normal(512).astype(np.float32)
dy = rng.standard_normal((2048, 512)).astype(np.float32)
k = backend.kernel
_, h, t = k("bias_gelu_forward")(x, b, approx)
cases = {
    "unfused fwd": lambda: k("gelu_forward")(x + b, approx),
    "fused fwd": lambda: k("bias_gelu_forward")(x, b, approx),
    "unfused bwd": lambda: (lambda d: (d, d.sum(axis=0)))(k("gelu_backward")(dy, h, t, approx)),
    "fused bwd": lambda: k("bias_gelu_backward")(dy, h, t, approx),
}
times = {name: [] for name in cases}
for _ in range(rounds):
    for name, f in cases.items():
        t0 = time.process_time()
        f()
        times[name].append(time.process_time() - t0)
print(f"backend {backend.active()}, approximate={approx}, {rounds} rounds, CPU ms")
for name, v in times.items():
    v = sorted(v)
    print(f"{name:12s} min {v[0] * 1e3:6.2f}  median {v[len(v) // 2] * 1e3:6.2f}")
