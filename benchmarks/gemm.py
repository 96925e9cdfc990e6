"""GEMM benchmark: minitx_c's BLIS-style kernels against OpenBLAS (through NumPy), same run.

    python benchmarks/gemm.py                 # 1 and 2 threads, full table (about 2 minutes)
    python benchmarks/gemm.py --quick         # fewer shapes and repeats
    python benchmarks/gemm.py --threads 1     # one thread count only

Each thread count runs in a fresh subprocess with OPENBLAS_NUM_THREADS = OMP_NUM_THREADS = n
(and minitx_c.set_num_threads(n)), so both libraries get the same cores. OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE, which some machines set to keep old OpenBLAS builds safe and which slow a
current NumPy, are removed from the subprocesses' environment only (--keep-openblas-env keeps
them); the OpenBLAS kernel in use is printed when threadpoolctl is installed.

Timing: for every shape, `--pairs` interleaved pairs (NumPy call, then minitx call), each side
the best of a few back-to-back calls; the ratio column is the median of the per-pair ratios
and GFLOP/s are medians too. With 2 threads each side is preceded by a 0.2 s pause: a
library's worker threads spin for a while after a call, and would otherwise take a core from
the other library's next call (this is also why mixing OpenBLAS and OpenMP threads in one
program costs speed). Other processes share the machine, so expect a few % of noise;
rerun and compare medians.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)                           # run from a source checkout


def _best_time(fn, inner):
    best = float("inf")
    for _ in range(inner):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _pairs(f_ref, f_new, flops, pairs, settle=0.0):
    """Median GFLOP/s of both and median ratio new/ref over interleaved pairs.

    settle: seconds to sleep before each side's timing. With several threads, OpenBLAS's
    workers (and OpenMP's) keep spinning on a core for a while after a call; without a pause
    the other library's next call would find one core taken.
    """
    t = _best_time(f_ref, 1)                       # warm-up and calibration
    _best_time(f_new, 1)
    inner = int(min(50, max(1, 0.05 / max(t, 1e-7))))
    ref, new = [], []
    for _ in range(pairs):
        time.sleep(settle)
        ref.append(_best_time(f_ref, inner))
        time.sleep(settle)
        new.append(_best_time(f_new, inner))
    ref, new = np.array(ref), np.array(new)
    return (flops / np.median(ref) / 1e9, flops / np.median(new) / 1e9,
            float(np.median(ref / new)), float(np.median(ref)), float(np.median(new)))


def gpt_products(quick, rng):
    """(label, a, b) for the products one GPT training step makes, as autograd calls them.

    Linear y = x @ W^T with W (out, in): forward x @ W.T (a transposed view), input grad
    g @ W, weight grad g^T @ x (a transposed view); attention q @ k^T and p @ v per head.
    """
    def r(*shape):
        return rng.standard_normal(shape, dtype=np.float32)
    out = []
    configs = [(16, 128, 128, 4)] if quick else [(16, 128, 128, 4), (32, 128, 128, 4),
                                                 (16, 128, 384, 6)]
    for B, T, C, H in configs:
        tag = f"B{B} T{T} C{C}"
        x, h = r(B, T, C), r(B, T, 4 * C)
        for name, W in (("qkv", r(3 * C, C)), ("fc", r(4 * C, C)), ("proj", r(C, 4 * C))):
            inp = h if name == "proj" else x                       # (B, T, in)
            g = r(B, T, W.shape[0])                                # (B, T, out)
            out.append((f"{tag} {name} fwd", inp, W.T))
            out.append((f"{tag} {name} dX", g, W))
            out.append((f"{tag} {name} dW", g.reshape(-1, W.shape[0]).T, inp.reshape(-1, W.shape[1])))
        q, k = r(B, H, T, C // H), r(B, H, T, C // H)
        out.append((f"{tag} attn q@k^T", q, np.swapaxes(k, -1, -2)))
        out.append((f"{tag} attn p@v", r(B, H, T, T), k))
        out.append((f"{tag} lm_head fwd", x, r(256, C).T))
    return out


def _operands(M, K, N, layout, rng):
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    if layout[0] == "t":
        a = np.ascontiguousarray(a.T).T            # a transposed view, as in x^T
    if layout[1] == "t":
        b = np.ascontiguousarray(b.T).T            # as in W^T
    return a, b


def worker(threads, quick, pairs, kinds):
    import minitx_c
    minitx_c.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []

    def row(kind, label, flops, f_ref, f_new):
        if kind not in kinds:
            return
        g_ref, g_new, ratio, t_ref, t_new = _pairs(f_ref, f_new, flops, pairs,
                                                   settle=0.2 if threads > 1 else 0.0)
        rows.append(dict(kind=kind, label=label, threads=threads, ref=g_ref, new=g_new,
                         ratio=ratio, t_ref=t_ref, t_new=t_new))

    sizes = [64, 256, 1024] if quick else [64, 128, 256, 512, 1024, 1536, 2048]
    for n in sizes:
        a, b = _operands(n, n, n, "nn", rng)
        row("square", f"n={n}", 2.0 * n ** 3, lambda: a @ b, lambda: minitx_c.matmul(a, b))
    for label, a, b in gpt_products(quick, rng):
        flops = 2.0 * np.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2])) * a.shape[-2] \
            * a.shape[-1] * b.shape[-1]
        row("gpt", label, flops, lambda: a @ b, lambda: minitx_c.matmul(a, b))
    for n in ([8, 32] if quick else [4, 8, 16, 32, 48]):
        a, b = _operands(n, n, n, "nn", rng)
        row("small", f"n={n}", 2.0 * n ** 3, lambda: a @ b, lambda: minitx_c.matmul(a, b))
    # int8: ops/s of matmul_int8 against the float32 kernel (ratio = int8 speed / float speed).
    for n in ([1024] if quick else [512, 1024, 2048]):
        a, b = _operands(n, n, n, "nn", rng)
        ai = rng.integers(-128, 128, (n, n), dtype=np.int8)
        bi = rng.integers(-128, 128, (n, n), dtype=np.int8)
        row("int8", f"n={n}", 2.0 * n ** 3, lambda: minitx_c.matmul(a, b),
            lambda: minitx_c.matmul_int8(ai, bi))
    # weight-only linears, one row (generation) and 64 rows, vs float32 x @ W^T in NumPy.
    for M, N, K in ([(1, 1536, 384)] if quick else [(1, 1536, 384), (1, 4096, 4096),
                                                     (64, 1536, 384)]):
        from minitx.kernels.int8 import pack_int4
        x = rng.standard_normal((M, K), dtype=np.float32)
        w = rng.standard_normal((N, K), dtype=np.float32)
        q8 = rng.integers(-127, 128, (N, K), dtype=np.int8)
        p4 = pack_int4(rng.integers(-8, 8, (N, K)))
        s = np.ones((N, K // 64), dtype=np.float32)
        row("w8", f"M={M} {N}x{K} g64", 2.0 * M * N * K, lambda: x @ w.T,
            lambda: minitx_c.linear_w8(x, q8, s, 64))
        row("w4", f"M={M} {N}x{K} g64", 2.0 * M * N * K, lambda: x @ w.T,
            lambda: minitx_c.linear_w4(x, p4, s, 64))
    return rows


def openblas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed (pip install threadpoolctl to see the OpenBLAS kernel)"
    infos = [i for i in threadpool_info() if i.get("internal_api") == "openblas"]
    return "; ".join(f"{i.get('version')} {i.get('architecture')} threading={i.get('threading_layer')}"
                     for i in infos) or "no OpenBLAS found"


HEADERS = {
    "square": ("square float32 C = A @ B", "OpenBLAS", "minitx", "minitx/OpenBLAS"),
    "gpt": ("GPT training shapes (float32)", "OpenBLAS", "minitx", "minitx/OpenBLAS"),
    "small": ("small shapes: time per call in us", "np.matmul", "minitx", "np/minitx speedup"),
    "int8": ("matmul_int8 vs the float32 kernel (Gop/s)", "float32", "int8", "int8/float32"),
    "w8": ("linear_w8 vs float32 x @ W^T (NumPy)", "float32", "w8", "w8/float32"),
    "w4": ("linear_w4 vs float32 x @ W^T (NumPy)", "float32", "w4", "w4/float32"),
}


def print_table(rows):
    for kind, (title, c1, c2, c3) in HEADERS.items():
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        print(f"\n### {title}\n")
        print(f"| shape | threads | {c1} | {c2} | {c3} |")
        print("|---|---|---|---|---|")
        for r in sel:
            if kind == "small":
                a, b = f"{r['t_ref'] * 1e6:.2f} us", f"{r['t_new'] * 1e6:.2f} us"
            else:
                a, b = f"{r['ref']:.1f}", f"{r['new']:.1f}"
            print(f"| {r['label']} | {r['threads']} | {a} | {b} | {r['ratio']:.3f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--pairs", type=int, default=None, help="interleaved pairs per shape")
    p.add_argument("--kinds", default=",".join(HEADERS),
                   help="comma-separated tables to run: " + ",".join(HEADERS))
    p.add_argument("--keep-openblas-env", action="store_true")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    pairs = args.pairs or (5 if args.quick else 9)
    if args.worker is not None:
        print(json.dumps(dict(rows=worker(args.worker, args.quick, pairs, args.kinds.split(",")),
                              openblas=openblas_info())))
        return
    import minitx_c
    from minitx_c.gemm import gemm_config
    print(f"minitx_c gemm config: {gemm_config()}; OpenMP: {minitx_c.have_openmp()}")
    rows = []
    for n in args.threads:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(n), OMP_NUM_THREADS=str(n))
        if not args.keep_openblas_env:
            for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
                if env.pop(var, None) is not None:
                    print(f"(unset {var} for the benchmark subprocess)")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(n), "--pairs", str(pairs),
               "--kinds", args.kinds]
        res = subprocess.run(cmd + (["--quick"] if args.quick else []), env=env, check=True,
                             capture_output=True, text=True)
        out = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"threads={n}: OpenBLAS {out['openblas']}")
        rows += out["rows"]
    print_table(sorted(rows, key=lambda r: list(HEADERS).index(r["kind"])))


if __name__ == "__main__":
    main()
