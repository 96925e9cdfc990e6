"""Attention benchmark (issue 3): time and peak memory against sequence length N.

Implementations: naive NumPy (materialised N x N), FlashAttention-2 in NumPy, the Cython kernel
(minitx_c.flash, forward and backward) and, when torch is importable, PyTorch's
`scaled_dot_product_attention` (its CPU flash kernel). One head, d = 64, float32, causal and not,
single thread everywhere (OpenBLAS/OpenMP/torch all pinned to 1 thread).

Time: best of --repeats runs of the CPU time of the calling thread (`time.thread_time`): with one
thread every implementation computes in the caller, and CPU time is not inflated when other
processes share the machine (use --clock wall for wall-clock time).
Memory: peak extra bytes during one forward call. minitx: `tracemalloc` (NumPy reports every
array to it, and the Cython kernel allocates all its scratch through NumPy). torch: growth of
the peak resident set (VmHWM) of a fresh process around one call, a coarser measure (page
granularity, includes allocator slack).

Usage:
    python benchmarks/attention.py                 # N = 512 ... 16384 (takes a few minutes)
    python benchmarks/attention.py --quick         # N = 512 ... 2048
    python benchmarks/attention.py --ns 4096 --repeats 7
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # source checkout
from minitx.attention.flash2 import flash2_forward as np_flash2_forward  # noqa: E402
from minitx.attention.naive import naive_forward  # noqa: E402

try:
    import minitx_c
    from minitx_c.flash import flash2_backward as c_backward, flash2_forward as c_forward
    minitx_c.set_num_threads(1)
except ImportError:
    c_forward = c_backward = None
try:
    import torch
    torch.set_num_threads(1)
except ImportError:
    torch = None

MB = 1024 * 1024
DEFAULT_TILES = "default (equal tiles near 128, near 64 when causal)"


def measure_time(run, repeats, clock, setup=None):
    """Best time (seconds) of `repeats` calls of run(setup())."""
    best = float("inf")
    for _ in range(repeats):
        arg = setup() if setup is not None else None
        t0 = clock()
        run(arg)
        best = min(best, clock() - t0)
        if best > 5 and repeats > 1:                # slow NumPy runs: one is enough
            break
    return best


def interleaved(fns, repeats, clock):
    """Best time of each {name: (run, setup)} over `repeats` rounds; every round runs each once,
    so that a burst of load from other processes hits all of them alike."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, (run, setup) in fns.items():
            arg = setup() if setup is not None else None
            t0 = clock()
            run(arg)
            best[name] = min(best[name], clock() - t0)
    return best


def peak_numpy_bytes(run):
    """Peak extra bytes NumPy allocates during run()."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    run()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


_TORCH_MEMORY_SCRIPT = """
import sys, numpy as np, torch
torch.set_num_threads(1)
N, d, causal = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
q, k, v = (torch.from_numpy(np.random.default_rng(i).standard_normal((1, 1, N, d)).astype(
    np.float32)) for i in range(3))
def hwm():
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1])
open("/proc/self/clear_refs", "w").write("5")
base = hwm()
with torch.no_grad():
    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
print((hwm() - base) * 1024)
"""


def torch_peak_rss_bytes(N, d, causal):
    """Growth of the peak resident set of a fresh process during one torch forward (Linux only;
    a fresh process so that freed-but-resident memory of earlier runs cannot hide the growth)."""
    import subprocess
    try:
        out = subprocess.run([sys.executable, "-c", _TORCH_MEMORY_SCRIPT, str(N), str(d),
                              "1" if causal else "0"], capture_output=True, text=True, timeout=300)
        return int(out.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def bench_one(N, d, causal, args, clock):
    """Times (ms) and memory (MB) of every implementation at one N."""
    rng = np.random.default_rng(N)
    q, k, v, do = (rng.standard_normal((1, 1, N, d)).astype(np.float32) for _ in range(4))
    r = {}
    R = args.repeats
    if N <= args.max_naive:
        r["naive"] = measure_time(lambda _: naive_forward(q, k, v, is_causal=causal), R, clock)
        r["naive_mb"] = peak_numpy_bytes(lambda: naive_forward(q, k, v, is_causal=causal)) / MB
    if N <= args.max_numpy:
        r["np2"] = measure_time(lambda _: np_flash2_forward(q, k, v, is_causal=causal), R, clock)
        r["np2_mb"] = peak_numpy_bytes(lambda: np_flash2_forward(q, k, v, is_causal=causal)) / MB
    fast = {}                                   # timed interleaved, round by round
    if c_forward is not None:
        fb = {} if args.Br is None else dict(Br=args.Br, Bc=args.Bc)     # kernel defaults
        bb = {} if args.Br is None else dict(Br=args.Br, Bc=args.Bc)
        o, L = c_forward(q, k, v, is_causal=causal, **fb)
        fast["c"] = (lambda _: c_forward(q, k, v, is_causal=causal, **fb), None)
        fast["c_bwd"] = (lambda _: c_backward(q, k, v, None, o, L, do, is_causal=causal, **bb),
                         None)
        r["c_mb"] = peak_numpy_bytes(lambda: c_forward(q, k, v, is_causal=causal, **fb)) / MB
    if torch is not None:
        tq, tk, tv, tdo = (torch.from_numpy(a) for a in (q, k, v, do))
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def torch_fwd(_):
            with torch.no_grad():
                sdpa(tq, tk, tv, is_causal=causal)

        def setup():
            leaves = [t.detach().clone().requires_grad_() for t in (tq, tk, tv)]
            return sdpa(*leaves, is_causal=causal)
        fast["torch"] = (torch_fwd, None)
        fast["torch_bwd"] = (lambda y: y.backward(tdo), setup)
        mem = torch_peak_rss_bytes(N, d, causal)
        r["torch_mb"] = None if mem is None else mem / MB
    rounds = max(3, min(args.fast_repeats, args.fast_repeats * 4096 // N))   # fewer at large N
    r.update(interleaved(fast, rounds, clock))
    return {key: (val * 1e3 if not key.endswith("_mb") and val is not None else val)
            for key, val in r.items()}


def fmt(x, width=9, digits=1):
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None else a / b


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 512 ... 2048 only")
    p.add_argument("--ns", default=None, help="comma-separated sequence lengths")
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="runs of the NumPy implementations")
    p.add_argument("--fast-repeats", type=int, default=10,
                   help="interleaved rounds of the Cython and torch runs (N <= 4096; "
                        "proportionally fewer, at least 3, above)")
    p.add_argument("--max-naive", type=int, default=8192, help="largest N for naive NumPy")
    p.add_argument("--max-numpy", type=int, default=16384, help="largest N for NumPy flash2")
    p.add_argument("--Br", type=int, default=None, help="Cython block rows (default: kernel's)")
    p.add_argument("--Bc", type=int, default=None, help="Cython block cols (with --Br)")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = p.parse_args(argv)
    ns = ([512, 1024, 2048] if args.quick else [512, 1024, 2048, 4096, 8192, 16384])
    if args.ns:
        ns = [int(n) for n in args.ns.split(",")]
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    print(f"attention, 1 head, d={args.d}, float32, 1 thread, {args.clock} time in ms "
          f"(best of {args.repeats} for NumPy, of {args.fast_repeats} interleaved rounds for "
          f"Cython and torch); Cython blocks "
          f"{'Br=%s Bc=%s' % (args.Br, args.Bc) if args.Br else DEFAULT_TILES}; "
          f"torch {'%s' % torch.__version__ if torch is not None else 'not installed'}")
    results = {}
    for causal in (False, True):
        for N in ns:
            results[causal, N] = bench_one(N, args.d, causal, args, clock)
            print(f"  done N={N} causal={causal}", file=sys.stderr, flush=True)
    cols = ("N causal | naive_np flash2_np  cython_fwd cython_bwd  torch_fwd torch_bwd | "
            "c/torch_fwd c/torch_bwd c_bwd/c_fwd c_causal/c_full")
    print("\nTIME (ms)\n" + cols)
    for (causal, N), r in results.items():
        full = results.get((False, N), {})
        print(f"{N:>5} {str(causal):>6} |{fmt(r.get('naive'))}{fmt(r.get('np2'), 11)}"
              f"{fmt(r.get('c'), 12)}{fmt(r.get('c_bwd'), 11)}{fmt(r.get('torch'), 11)}"
              f"{fmt(r.get('torch_bwd'), 10)} |{fmt(ratio(r.get('c'), r.get('torch')), 12, 2)}"
              f"{fmt(ratio(r.get('c_bwd'), r.get('torch_bwd')), 12, 2)}"
              f"{fmt(ratio(r.get('c_bwd'), r.get('c')), 12, 2)}"
              f"{fmt(ratio(r.get('c'), full.get('c')) if causal else None, 16, 2)}")
    print("\nPEAK EXTRA MEMORY OF ONE FORWARD (MB; minitx: tracemalloc, torch: peak RSS growth)\n"
          "    N causal |  naive_np flash2_np     cython      torch")
    for (causal, N), r in results.items():
        print(f"{N:>5} {str(causal):>6} |{fmt(r.get('naive_mb'), 10)}{fmt(r.get('np2_mb'), 10)}"
              f"{fmt(r.get('c_mb'), 11)}{fmt(r.get('torch_mb'), 11)}")
    print_targets(results)


def print_targets(results):
    """The issue's targets, each met / not met, from the numbers above."""
    def verdict(ok):
        return "n/a" if ok is None else ("MET" if ok else "NOT MET")
    full, causal = results.get((False, 4096), {}), results.get((True, 4096), {})
    rt = ratio(full.get("c"), full.get("torch"))
    rc = ratio(causal.get("c"), full.get("c"))
    rb = ratio(full.get("c_bwd"), full.get("c"))
    m8 = results.get((False, 8192), {})
    print("\nTARGETS (N = 4096 for time, N = 8192 for memory)")
    print(f"  cython fwd <= 1.5x torch fwd     : {fmt(rt, 6, 2)}x  "
          f"{verdict(None if rt is None else rt <= 1.5)}")
    print(f"  cython causal <= 0.6x non-causal : {fmt(rc, 6, 2)}x  "
          f"{verdict(None if rc is None else rc <= 0.6)}")
    print(f"  cython bwd <= 3x cython fwd      : {fmt(rb, 6, 2)}x  "
          f"{verdict(None if rb is None else rb <= 3)}")
    n2, nv = m8.get("np2_mb"), m8.get("naive_mb")
    ok = None if n2 is None or nv is None else (n2 < 64 and nv > 256)
    print(f"  flash2_np fwd < 64 MB, naive > 256 MB: {fmt(n2, 6)} MB vs {fmt(nv, 6)} MB  "
          f"{verdict(ok)}")


if __name__ == "__main__":
    main()
