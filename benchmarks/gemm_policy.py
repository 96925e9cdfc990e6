"""Who should serve each product of the models, minitx_c.matmul or OpenBLAS: the measurement
behind `minitx.backend.GEMM_POLICY`.

    python benchmarks/gemm_policy.py [--threads 1,2] [--pairs 5]

For the products a Linear makes in the default GPT (B*T = 2048 rows, C = 128, FFN 512) and in
MiniLM (32 x 128 tokens, C = 384, FFN 1536), in each shape class of GEMM_POLICY (forward
x @ W^T, input grad dY @ W, weight grad dY^T @ X, with the strides autograd passes), and for
each thread count in its own process (OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = n): `--pairs`
interleaved pairs (np.matmul, then minitx_c.matmul), each side the best of 5 back-to-back
calls. On 1 thread the clock is process CPU time (robust on a shared machine), on more
threads wall time, with a 0.2 s pause before each side so that the other library's spinning
worker threads have gone to sleep. The table gives GFLOP/s (medians) and the median of the
per-pair ratios minitx / OpenBLAS (above 1: minitx faster), then the verdict per class and
thread count: the faster library on the majority of shapes.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = (("gpt", 2048, 128, 512), ("minilm", 4096, 384, 1536))


def products(rng):
    """(model, layer, class, a, b) for the Linear products of SHAPES, strided as in autograd."""
    import numpy as np

    def r(*s):
        return rng.standard_normal(s, dtype=np.float32)
    out = []
    for tag, M, C, F in SHAPES:
        x, h = r(M, C), r(M, F)
        for name, W in (("qkv", r(3 * C, C)), ("fc", r(F, C)), ("down", r(C, F))):
            inp = h if name == "down" else x                       # (M, in)
            g = r(M, W.shape[0])                                   # (M, out)
            out += [(tag, name, "x@W^T", inp, W.T), (tag, name, "dY@W", g, W),
                    (tag, name, "dY^T@X", g.T, inp)]
    return out


def worker(threads, pairs):
    import numpy as np
    sys.path.insert(0, ROOT)
    import minitx_c
    minitx_c.set_num_threads(threads)
    clock = time.process_time if threads == 1 else time.perf_counter
    settle = 0.0 if threads == 1 else 0.2

    def best(f):
        b = float("inf")
        for _ in range(5):
            t = clock()
            f()
            b = min(b, clock() - t)
        return b
    rows = []
    for tag, name, cls, a, b in products(np.random.default_rng(0)):
        flops = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
        tn, tm = [], []
        for _ in range(pairs):
            time.sleep(settle)
            tn.append(best(lambda: np.matmul(a, b)))
            time.sleep(settle)
            tm.append(best(lambda: minitx_c.matmul(a, b)))
        rows.append(dict(model=tag, layer=name, cls=cls, shape=f"{a.shape[0]}x{a.shape[1]}x"
                         f"{b.shape[1]}", threads=threads,
                         openblas=flops / statistics.median(tn) / 1e9,
                         minitx=flops / statistics.median(tm) / 1e9,
                         ratio=statistics.median(n / m for n, m in zip(tn, tm))))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker is not None:
        print(json.dumps(worker(a.worker, a.pairs)))
        return 0
    rows = []
    for n in [int(t) for t in a.threads.split(",")]:
        env = dict(os.environ, OMP_NUM_THREADS=str(n), OPENBLAS_NUM_THREADS=str(n))
        res = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(n),
                              "--pairs", str(a.pairs)], env=env, check=True, capture_output=True,
                             text=True)
        rows += json.loads(res.stdout.strip().splitlines()[-1])
    print(f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}; 1 thread: CPU time, "
          "more: wall time")
    print("| model | layer | class | M x K x N | threads | OpenBLAS GFLOP/s | minitx GFLOP/s | "
          "minitx/OpenBLAS |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['layer']} | {r['cls']} | {r['shape']} | {r['threads']} | "
              f"{r['openblas']:.1f} | {r['minitx']:.1f} | {r['ratio']:.2f} |")
    print("\n| threads | class | minitx faster on | median ratio | verdict |")
    print("|---:|---|---:|---:|---|")
    for n in sorted({r["threads"] for r in rows}):
        for cls in ("x@W^T", "dY@W", "dY^T@X"):
            sel = [r["ratio"] for r in rows if r["threads"] == n and r["cls"] == cls]
            wins = sum(x > 1 for x in sel)
            print(f"| {n} | {cls} | {wins}/{len(sel)} | {statistics.median(sel):.2f} | "
                  f"{'minitx' if wins * 2 > len(sel) else 'openblas'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
