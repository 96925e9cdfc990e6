"""Quantized CPU generation: tokens/s and resident weight bytes, int8 / int4 / nf4 vs float32.

The llama2.c idea: token-by-token generation multiplies one activation vector by every weight
matrix, so it is bound by how many weight bytes stream through memory; int8 weights are 4x fewer
bytes, int4 8x fewer. Two tables:

  1. layer level: y = x W^T for one token (M = 1) and a small batch, float32 NumPy/OpenBLAS vs
     the weight-only kernels linear_w8 / linear_w4 (through minitx.backend: the Cython twin when
     built) and the NumPy dequantize-then-matmul path used for nf4;
  2. model level: GPT generation with a KV cache (greedy, batch 1), every Linear quantized,
     tokens/s and resident weight bytes (Linear weights, and all parameters); float32 is run on
     every backend and the fastest float32 is the baseline.

Run:  python benchmarks/quant_generate.py [--ckpt DIR] [--config default|small|wide]
          [--tokens 64] [--repeats 3]
Timings are medians of --repeats runs. On a machine shared with other jobs use
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 for stable numbers (the runs below set them by default).
"""
import argparse
import copy
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import minitx  # noqa: E402
from minitx import backend  # noqa: E402
from minitx.models.gpt import GPT, get_config  # noqa: E402
from minitx.quant.linear import QuantLinear, quantize_model, weight_bytes  # noqa: E402

SCHEMES = [("float32", None, {}), ("int8", "int8", {}), ("int4", "int4", {}),
           ("int4 g64", "int4", {"block_size": 64}), ("nf4", "nf4", {})]
CONFIGS = {"wide": dict(n_layer=4, n_head=8, n_embd=512, block_size=256)}


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def layer_table(shapes, repeats):
    rows = []
    rng = np.random.default_rng(0)
    for N, K in shapes:
        W = (rng.standard_normal((N, K)) * 0.02).astype(np.float32)
        for M in (1, 16):
            x = rng.standard_normal((M, K)).astype(np.float32)
            base = None
            for label, scheme, kw in SCHEMES:
                if scheme is None:
                    fn = lambda: x @ W.T                                     # noqa: E731
                    nbytes = W.nbytes
                else:
                    from minitx.nn.modules import Linear
                    lin = Linear(K, N, bias=False)
                    lin.weight.data[...] = W
                    ql = QuantLinear.from_linear(lin, scheme, **kw)
                    fn = lambda ql=ql: ql.compute(x)                          # noqa: E731
                    nbytes = ql.weight_nbytes
                n_inner = 200 if M == 1 else 50
                t = median_time(lambda: [fn() for _ in range(n_inner)], repeats) / n_inner
                base = t if base is None else base
                rows.append({"N x K": f"{N}x{K}", "M": M, "weights": label,
                             "path": "BLAS sgemm" if scheme is None else
                             (ql._plan[0] if ql._plan else "numpy dequant+matmul"),
                             "us/call": t * 1e6, "speed vs f32": base / t,
                             "weight bytes": nbytes, "bytes ratio": W.nbytes / nbytes})
    return rows


def generation_table(model, tokens, repeats):
    """Generation speed per scheme. float32 runs on every available backend and the FASTEST
    float32 run is the baseline of every ratio (so a slow float path cannot flatter int8)."""
    rows = []
    prompt = np.array([[1, 2, 3, 4]])
    runs = [("float32 " + b, None, {}, b) for b in backend.available()]
    runs += [(label, scheme, kw, backend.active()) for label, scheme, kw in SCHEMES[1:]]
    for label, scheme, kw, bk in runs:
        m = copy.deepcopy(model)
        if scheme is not None:
            quantize_model(m, scheme, **kw)
        lin = sum(q.weight_nbytes if isinstance(q, QuantLinear) else q.weight.data.nbytes
                  for _, q in m.named_modules() if hasattr(q, "in_features"))
        with backend.using(bk):
            m.generate(prompt, 4, temperature=0)                              # warm-up
            t = median_time(lambda: m.generate(prompt, tokens, temperature=0), repeats)
        rows.append({"weights": label, "backend": bk, "tokens/s": tokens / t,
                     "Linear weight MB": lin / 1e6, "all weights MB": weight_bytes(m) / 1e6})
    base = max(r["tokens/s"] for r in rows if r["weights"].startswith("float32"))
    f32 = rows[0]
    for r in rows:
        r["speed vs best f32"] = r["tokens/s"] / base
        r["Linear bytes ratio"] = f32["Linear weight MB"] / r["Linear weight MB"]
        r["all bytes ratio"] = f32["all weights MB"] / r["all weights MB"]
    return rows


def fmt(rows):
    keys = list(rows[0])
    f = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)             # noqa: E731
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] +
                     ["| " + " | ".join(f(r[k]) for k in keys) + " |" for r in rows])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", help="float checkpoint directory (default: random init)")
    p.add_argument("--config", default="default", help="default | small | wide (random init)")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-layers", action="store_true", help="model table only")
    args = p.parse_args()
    print(f"backend: {backend.active()} (kernels: {backend.kernel('linear_w8').__module__})")
    if not args.skip_layers:
        print("\n### One Linear layer, y = x W^T\n")
        print(fmt(layer_table([(768, 768), (3072, 768), (768, 3072), (2048, 2048)],
                              args.repeats)))
    if args.ckpt:
        from minitx.checkpoint import load_model
        model = load_model(args.ckpt)
    else:
        minitx.random.manual_seed(0)
        cfg = CONFIGS.get(args.config)
        model = GPT(get_config("default", **cfg) if cfg else get_config(args.config)).eval()
    print(f"\n### Generation, {model.config} , {args.tokens} tokens, greedy, batch 1\n")
    print(fmt(generation_table(model, args.tokens, args.repeats)))


if __name__ == "__main__":
    main()
