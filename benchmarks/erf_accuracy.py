"""Max ulp error of minitx's float32 erf over every positive float32, against float64 erf.

    python benchmarks/erf_accuracy.py [--chunk-bits 24] [--backend c|numpy]

erf is odd and both kernels compute it as copysign(erf(|x|), x), so the positive floats (all
2,139,095,040 finite ones, 0 included, in chunks of 2**chunk_bits bit patterns) cover every input.
The reference is float64 libm erf (minitx's float64 erf kernel calls it; math.erf is the same
function, checked on a sample first). The error of a float32 result y is
|y - erf(x)| / ulp(erf(x)), ulp(v) = 2**(floor(log2 v) - 23) (2**-149 below the normal range).
Prints the max error, where it occurs, and the share of results that are correctly rounded.
"""
import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # source checkout
from minitx import backend  # noqa: E402


def ulp32(v):
    """ulp of float32 at the exact values v (float64 array, v >= 0)."""
    _, e = np.frexp(v)                                   # v = m 2^e, m in [0.5, 1)
    return np.ldexp(1.0, np.maximum(e - 24, -149))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunk-bits", type=int, default=24)
    p.add_argument("--backend", default="c")
    args = p.parse_args()
    backend.set_backend(args.backend)
    erf = backend.kernel("erf")
    sample = np.random.default_rng(0).uniform(0, 5, 1000)
    assert all(erf(sample)[i] == math.erf(sample[i]) for i in range(len(sample)))
    last = np.float32(np.finfo(np.float32).max).view(np.uint32)
    step = 1 << args.chunk_bits
    worst, worst_x, n, n_rounded, t0 = 0.0, None, 0, 0, time.time()
    for start in range(0, int(last) + 1, step):
        bits = np.arange(start, min(start + step, int(last) + 1), dtype=np.uint32)
        x = bits.view(np.float32)
        exact = erf(x.astype(np.float64))
        err = np.abs(erf(x).astype(np.float64) - exact) / ulp32(exact)
        i = int(np.argmax(err))
        if err[i] > worst:
            worst, worst_x = float(err[i]), x[i]
        n += x.size
        n_rounded += int(np.count_nonzero(err <= 0.5))
    print(f"{args.backend} float32 erf over {n:,} positive floats ({time.time() - t0:.0f} s): "
          f"max error {worst:.3f} ulp at x = {worst_x!r} (erf = {math.erf(worst_x)!r}); "
          f"{n_rounded / n:.7%} correctly rounded")


if __name__ == "__main__":
    main()
