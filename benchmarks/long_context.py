"""Long-context cost exponents (issue 12 item 5): time and peak memory against N per variant.

Variants (one head, d = 64, float32, causal, one thread):
    dense        Cython FlashAttention-2 kernel, every causal pair
    window       the same kernel, sliding window of 256 keys (tiles outside skipped)
    bigbird      the same kernel with a causal BigBird block layout (block 64, window 1,
                 1 global, 1 random block per row)
    naive        NumPy materialised N x N (stops where its memory would pass --naive-max-mb)
    linear       linear attention, elu + 1, chunked prefix sums (NumPy)
    performer    Performer FAVOR+, 64 features (NumPy)
For each: forward and forward+backward time (best of --repeats, CPU time of this thread, so
other processes on a shared machine inflate it less), peak extra memory of one forward
(tracemalloc: NumPy reports every array, and the Cython kernel's scratch is NumPy-allocated),
and the exponent b of a least-squares fit time ~ N^b over the measured N. Then, at fixed N, the
block-sparse kernel's forward time against the number of live tiles (random layouts of growing
density): the time per live tile should be about constant.

Usage:
    python benchmarks/long_context.py --quick        # N = 512 ... 4096, about a minute
    python benchmarks/long_context.py                # N = 1024 ... 65536 (long: minutes-hours)
    python benchmarks/long_context.py --svg out.svg  # also draw time against N (log-log)
    python benchmarks/long_context.py --ns 16384 65536 --variants window linear --no-tiles
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minitx  # noqa: E402
from minitx.attention import linear, sparse  # noqa: E402
from minitx.attention.naive import naive_backward, naive_forward  # noqa: E402

try:
    import minitx_c
    from minitx_c.flash import flash2_backward as c_bwd, flash2_forward as c_fwd
    minitx_c.set_num_threads(1)
except ImportError:
    c_fwd = c_bwd = None

MB = 1024 * 1024
D, WINDOW, BLOCK = 64, 256, 64


def kernel_variant(kw_of_n):
    """fwd(q, k, v, do), bwd(...) for the Cython kernel with the keyword arguments kw_of_n(N)."""
    def fwd(q, k, v, do):
        return c_fwd(q, k, v, **kw_of_n(q.shape[2]))

    def both(q, k, v, do):
        kw = kw_of_n(q.shape[2])
        o, L = c_fwd(q, k, v, **kw)
        kw = dict(kw, Br=kw.get("Br", 64), Bc=kw.get("Bc", 192))
        return c_bwd(q, k, v, None, o, L, do, **kw)
    return fwd, both


def bigbird_kw(N):
    lay = sparse.bigbird(sparse.n_blocks(N, BLOCK), 1, 1, 1, seed=0, causal=True)
    return dict(is_causal=True, block_layout=lay, Br=BLOCK, Bc=BLOCK)


def naive_fwd(q, k, v, do):
    return naive_forward(q, k, v, is_causal=True)


def naive_both(q, k, v, do):
    o, P = naive_forward(q, k, v, is_causal=True)
    return naive_backward(q, k, v, P, do, is_causal=True)


def linear_variant(features):
    def fwd(q, k, v, do):
        with minitx.no_grad():
            return linear.linear_attention(q, k, v, feature_map=features)

    def both(q, k, v, do):
        ts = [minitx.tensor(a, requires_grad=True) for a in (q, k, v)]
        (linear.linear_attention(*ts, feature_map=features) * minitx.tensor(do)).sum().backward()
        return [t.grad for t in ts]
    return fwd, both


def variants():
    out = {}
    if c_fwd is not None:
        out["dense"] = kernel_variant(lambda N: dict(is_causal=True))
        out["window"] = kernel_variant(lambda N: dict(is_causal=True, window=(WINDOW, 0)))
        out["bigbird"] = kernel_variant(bigbird_kw)
    out["naive"] = (naive_fwd, naive_both)
    out["linear"] = linear_variant(None)
    out["performer"] = linear_variant(linear.PerformerFeatures(D, 64, seed=0))
    return out


def best_time(fn, args, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        fn(*args)
        best = min(best, time.thread_time() - t0)
        if best > 10:
            break
    return best


def peak_mb(fn, args):
    tracemalloc.start()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / MB


def exponent(ns, ts):
    ok = [(n, t) for n, t in zip(ns, ts) if t is not None and t > 0]
    if len(ok) < 2:
        return float("nan")
    return float(np.polyfit(np.log([n for n, _ in ok]), np.log([t for _, t in ok]), 1)[0])


def cost_table(ns, repeats, naive_max_mb, only=None):
    rng = np.random.default_rng(0)
    rows = {}
    for name, (fwd, both) in variants().items():
        if only and name not in only:
            continue
        rows[name] = []
        for N in ns:
            if name == "naive" and 3 * 4 * N * N / MB > naive_max_mb:
                rows[name].append(None)                        # S, P, E would not fit
                continue
            args = [rng.standard_normal((1, 1, N, D)).astype(np.float32) for _ in range(4)]
            tf = best_time(fwd, args, repeats)
            tb = best_time(both, args, repeats)
            rows[name].append((tf, tb, peak_mb(fwd, args)))
            print(f"  {name:9s} N={N:6d} fwd {tf * 1e3:9.1f} ms  fwd+bwd {tb * 1e3:9.1f} ms  "
                  f"peak {rows[name][-1][2]:8.1f} MB", flush=True)
    return rows


def print_cost_table(ns, rows):
    print("\n| variant | " + " | ".join(f"N={n}" for n in ns) + " | exponent fwd | exponent fwd+bwd |")
    print("|---" * (len(ns) + 3) + "|")
    for name, cells in rows.items():
        txt = ["–" if c is None else f"{c[0] * 1e3:.1f} / {c[1] * 1e3:.1f} ms, {c[2]:.1f} MB"
               for c in cells]
        bf = exponent(ns, [None if c is None else c[0] for c in cells])
        bb = exponent(ns, [None if c is None else c[1] for c in cells])
        print(f"| {name} | " + " | ".join(txt) + f" | {bf:.2f} | {bb:.2f} |")


def live_tile_table(N, repeats):
    """Forward time of the block-sparse kernel against the live-tile count at fixed N."""
    if c_fwd is None:
        return []
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 1, N, D)).astype(np.float32) for _ in range(3))
    n = sparse.n_blocks(N, BLOCK)
    rows = []
    for density in (0.02, 0.05, 0.1, 0.25, 0.5, 1.0):
        lay = rng.random((n, n)) < density
        t = best_time(lambda: c_fwd(q, k, v, block_layout=lay, Br=BLOCK, Bc=BLOCK), (), repeats)
        rows.append((sparse.live_tiles(lay), t))
    print(f"\nBlock-sparse Cython forward, N={N}, block {BLOCK}, random layouts:")
    print("| live tiles | fraction | ms | us per live tile |\n|---|---|---|---|")
    for live, t in rows:
        print(f"| {live} | {live / n ** 2:.3f} | {t * 1e3:.2f} | {t * 1e6 / max(live, 1):.1f} |")
    slope = np.polyfit([r[0] for r in rows], [r[1] for r in rows], 1)
    fit = np.polyval(slope, [r[0] for r in rows])
    r2 = 1 - np.sum((fit - [r[1] for r in rows]) ** 2) / np.var([r[1] for r in rows]) / len(rows)
    print(f"linear fit: {slope[0] * 1e6:.1f} us per live tile + {slope[1] * 1e3:.2f} ms, "
          f"R^2 = {r2:.4f}")
    return rows


def write_svg(path, ns, rows):
    """Log-log lines of forward time against N, one per variant (no plotting library needed)."""
    W, H, pad = 640, 420, 60
    pts = [(n, c[0]) for cells in rows.values() for n, c in zip(ns, cells) if c is not None]
    lx = np.log10([p[0] for p in pts])
    ly = np.log10([p[1] for p in pts])
    sx = lambda x: pad + (np.log10(x) - lx.min()) / max(np.ptp(lx), 1e-9) * (W - 2 * pad)  # noqa
    sy = lambda y: H - pad - (np.log10(y) - ly.min()) / max(np.ptp(ly), 1e-9) * (H - 2 * pad)  # noqa
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle">forward time vs N (log-log)</text>']
    for i, (name, cells) in enumerate(rows.items()):
        xy = [(sx(n), sy(c[0])) for n, c in zip(ns, cells) if c is not None]
        if not xy:
            continue
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        col = colors[i % len(colors)]
        out.append(f'<polyline fill="none" stroke="{col}" stroke-width="2" points="{line}"/>')
        out.append(f'<text x="{xy[-1][0] + 4:.1f}" y="{xy[-1][1]:.1f}" fill="{col}">{name}</text>')
    for n in ns:
        out.append(f'<text x="{sx(n):.1f}" y="{H - pad + 18}" text-anchor="middle">{n}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))
    print(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 512 ... 4096, 2 repeats")
    ap.add_argument("--ns", type=int, nargs="*", help="sequence lengths")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--naive-max-mb", type=float, default=1500.0)
    ap.add_argument("--svg", help="write a log-log plot of forward time against N here")
    ap.add_argument("--variants", nargs="*", help="only these (dense window bigbird naive "
                                                  "linear performer)")
    ap.add_argument("--no-tiles", action="store_true", help="skip the live-tile table")
    args = ap.parse_args()
    ns = args.ns or ([512, 1024, 2048, 4096] if args.quick
                     else [1024, 2048, 4096, 8192, 16384, 32768, 65536])
    repeats = args.repeats or (2 if args.quick else 3)
    print(f"one head, d={D}, float32, causal, 1 thread; best of {repeats}")
    rows = cost_table(ns, repeats, args.naive_max_mb, args.variants)
    print_cost_table(ns, rows)
    if not args.no_tiles:
        live_tile_table(ns[-1], repeats)
    if args.svg:
        write_svg(args.svg, ns, rows)


if __name__ == "__main__":
    main()
