# %% [markdown]
# # 09 · Long context: the N^2 wall, and three ways around it
#
# Exact self-attention costs O(N^2) time, and no exact algorithm does fundamentally better
# (Keles & Hegde 2023: sub-quadratic exact attention would refute SETH). FlashAttention removes
# the N^2 *memory* (tutorial 02) but not the N^2 *work*. This tutorial walks the remedies minitx
# implements, each behind `F.scaled_dot_product_attention` or next to it:
#
# 1. the N^2 wall, measured: time against N and the fitted exponent;
# 2. block-sparse attention (`minitx/attention/sparse.py`): layouts as pictures, and the
#    tiled kernels' work following the number of live tiles;
# 3. linear attention (`minitx/attention/linear.py`): prefix sums, and the same numbers from
#    an RNN whose state does not grow; Performer's random features converging to softmax;
# 4. memory (`minitx/attention/memory.py`): Transformer-XL's cached segment, a kNN memory.
#
# Every one of them trades something: sparse layouts drop pairs, linear attention changes the
# kernel, memories see the past through a fixed-size or stale window. Tay et al. 2022 ("Scaling
# Laws vs Model Architectures") found no variant that beats dense attention across the board;
# section 6 shows minitx's own small study (`benchmarks/long_context_study.py`).
#
# Run headless: `python tutorials/09_long_context.py --quick` (well under a minute).

# %%
import argparse
import os
import sys
import tempfile
import time

try:
    import minitx  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from minitx.attention import linear, memory, sparse  # noqa: E402
from minitx.attention import scaled_dot_product_attention as sdpa  # noqa: E402
from minitx.attention.naive import naive_forward  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="small sizes (< 1 minute)")
args, _ = parser.parse_known_args()
rng = np.random.default_rng(0)
OUT = os.environ.get("MINITX_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="minitx_09_")
os.makedirs(OUT, exist_ok=True)
try:
    import matplotlib
    if "ipykernel" not in sys.modules:   # a script or a test: draw off-screen
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
impl = "flash2"
try:
    import minitx_c.flash  # noqa: F401
    impl = "c"
except ImportError:
    pass


def thread_time(fn, repeats=2):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


# %% [markdown]
# ## 1. The N^2 wall
# Causal attention, one head, d = 64, forward only. Dense work grows as N^2 (exponent near 2 once
# N is large enough for the fixed costs to fade); a 256-key window and linear attention grow as N.

# %%
ns = [256, 512, 1024, 2048] if args.quick else [1024, 2048, 4096, 8192]
variants = {
    "dense": lambda q, k, v: sdpa(q, k, v, is_causal=True, impl=impl),
    "window 256": lambda q, k, v: sdpa(q, k, v, is_causal=True, window=(256, 0), impl=impl),
    "linear": lambda q, k, v: linear.linear_attention(q, k, v),
}
times = {name: [] for name in variants}
for N in ns:
    q, k, v = (rng.standard_normal((1, 1, N, 64)).astype(np.float32) for _ in range(3))
    for name, fn in variants.items():
        times[name].append(thread_time(lambda: fn(q, k, v)))
print("| variant | " + " | ".join(f"N={n}" for n in ns) + " | exponent |")
for name, ts in times.items():
    b = np.polyfit(np.log(ns), np.log(ts), 1)[0]
    print(f"| {name} | " + " | ".join(f"{t * 1e3:.1f} ms" for t in ts) + f" | {b:.2f} |")

# %% [markdown]
# ## 2. Block-sparse layouts
# A layout says which (query block, key block) tiles exist. '#' is a live tile.

# %%
for title, lay in [("sliding window (Longformer)", sparse.sliding_window(12, 1, causal=True)),
                   ("strided (Sparse Transformer)", sparse.strided(12, 3)),
                   ("fixed (Sparse Transformer)", sparse.fixed(12, 4)),
                   ("BigBird: window + global + random", sparse.bigbird(12, 1, 1, 1, causal=True))]:
    print(f"{title}: {sparse.live_tiles(lay)} of {lay.size} tiles live")
    print(sparse.draw(lay), end="\n\n")

# %% [markdown]
# The tiled kernels take the layout with `block_size` as their tile and never read the others,
# so the time follows the live tiles. The result equals dense attention with the layout as a
# mask:

# %%
N, bs = (512, 32) if args.quick else (2048, 64)
q, k, v = (rng.standard_normal((1, 2, N, 64)) for _ in range(3))
lay = sparse.bigbird(sparse.n_blocks(N, bs), 1, 1, 2, seed=0, causal=True)
o_sparse = sdpa(q, k, v, is_causal=True, block_layout=lay, block_size=bs, impl=impl).data
mask = np.repeat(np.repeat(lay, bs, 0), bs, 1)[:N, :N]
o_dense = sdpa(q, k, v, is_causal=True, attn_mask=mask, impl="naive").data
print(f"block-sparse ({impl}) vs dense masked naive: max diff {np.abs(o_sparse - o_dense).max():.1e}")
for density in (0.1, 0.3, 1.0):
    lay = np.tril(rng.random(lay.shape) < density) | np.eye(lay.shape[0], dtype=bool)
    t = thread_time(lambda: sdpa(q, k, v, is_causal=True, block_layout=lay, block_size=bs,
                                 impl=impl))
    print(f"live tiles {sparse.live_tiles(lay):5d}: {t * 1e3:7.1f} ms")

# %% [markdown]
# ## 3. Linear attention is an RNN
# With a positive feature map phi, causal attention becomes prefix sums S_i = sum phi(k_j) v_j^T:
# the parallel form (training) and a recurrence with a fixed-size state (decoding) give the
# same numbers.

# %%
q, k, v = (rng.standard_normal((1, 2, 64, 16)) for _ in range(3))
parallel = linear.linear_attention(q, k, v).data
state = linear.LinearAttentionState()
rnn = np.stack([state.step(q[..., t, :], k[..., t, :], v[..., t, :]) for t in range(64)], -2)
print(f"parallel vs recurrent: max diff {np.abs(parallel - rnn).max():.1e}; state per head "
      f"{state.S.shape[-2]} x {state.S.shape[-1]} floats after {state.n_tokens} tokens")

exact = sdpa(q, k, v).data
print("Performer (FAVOR+) mean |error| against softmax attention, 3 seeds:")
for m in (16, 64, 256) if args.quick else (16, 64, 256, 1024):
    err = np.mean([np.abs(linear.performer_attention(q, k, v, n_features=m, seed=s).data
                          - exact).mean() for s in range(3)])
    print(f"  m = {m:5d} features: {err:.4f}")

# %% [markdown]
# ## 4. Memory: Transformer-XL and a kNN store
# Transformer-XL processes a long sequence segment by segment and attends to the previous
# segment's cached keys (no gradient flows into them). With RoPE applied at absolute positions,
# a segment-wise pass equals full attention restricted to what the memory reaches.

# %%
N, S = 48, 16
q, k, v = (rng.standard_normal((1, 2, N, 8)) for _ in range(3))
xl = memory.segment_attention(q, k, v, segment_len=S, mem_len=S).data
i, j = np.arange(N)[:, None], np.arange(N)[None, :]
reach = (j <= i) & (j >= (i // S) * S - S)
full, _ = naive_forward(q, k, v, np.where(reach, 0.0, -np.inf)[None, None])
print(f"Transformer-XL segments vs full attention over the same reach: "
      f"max diff {np.abs(xl - full).max():.1e}")

store = memory.KNNMemory(size=64)
store.add(k, v)
near = memory.knn_attention(q, store, k=8).data
everything = sdpa(q, store.keys, store.values).data
print(f"kNN memory: top-8 of {len(store)} vs all {len(store)}: mean |diff| "
      f"{np.abs(near - everything).mean():.3f}; k = size gives "
      f"{np.abs(memory.knn_attention(q, store, k=len(store)).data - everything).max():.1e}")

# %% [markdown]
# ## 5. A Transformer-XL memory at work in the GPT
# `--attention-pattern xl:mem=M` makes every layer keep the last M keys and values (no
# gradient) and read a long text segment by segment (`minitx/long_context.py` trains it that
# way: each batch row continues its own stream). The cache carries the memory; RoPE rotates the
# memory's keys at positions -M..-1 relative to the segment, so no position grows along the
# stream. How far back does a token reach? Change the first token of a 4-segment text and see
# which segments' logits move: without memory only its own segment; with M = T one layer reaches
# one segment further, so L = 2 layers reach two (Transformer-XL's O(N L) context).

# %%
from minitx.long_context import stream_logits  # noqa: E402
from minitx.models.gpt import GPT, get_config  # noqa: E402

T = 16
text = rng.integers(0, 256, (1, 4 * T))
changed = text.copy()
changed[0, 0] = (changed[0, 0] + 1) % 256
for spec in ("xl:mem=0", f"xl:mem={T}", f"xl:mem={2 * T}"):
    minitx_model = GPT(get_config("llama", n_layer=2, n_head=2, n_embd=32, block_size=T,
                                  attention_pattern=spec))
    caches = minitx_model.new_caches()
    moved = np.abs(stream_logits(minitx_model, changed)
                   - stream_logits(minitx_model, text, caches)).reshape(4, T, -1).max(axis=(1, 2))
    print(f"{spec:10s} logits moved per segment: " + "  ".join(f"{m:.0e}" for m in moved)
          + f" | memory per layer: {caches[0]['mem_k'].shape if 'mem_k' in caches[0] else '-'}")
print("sampling reads the prompt into the memory, then continues segment after segment:",
      minitx_model.generate(text[:, :20], 3 * T, temperature=0).shape)

# %% [markdown]
# ## 6. No silver bullet: the study
# Seven patterns, equal parameters (the kNN layer adds 4 gate logits), equal training FLOPs
# (each pattern's own attention cost: cheap patterns train more steps), on three tasks:
# (a) the byte corpus (validation bits per byte at T = 1024); (b) associative recall, accuracy
# against the distance D between a key and its only earlier occurrence; (c) selective copying
# (Gu & Dao 2023): a few data tokens scattered over a span of S blank tokens, then a marker, then
# the data tokens in order, accuracy against S. In (b) and (c) documents are 5 segments of 64
# tokens, so D or S > 64 is beyond one segment: only xl's and knn's memories reach it. The table
# is the stored full run if present, else a seconds-long quick run (tiny sizes: its numbers mean
# nothing beyond "it runs").

# %%
import importlib.util  # noqa: E402
import json  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
bench = os.path.join(os.path.dirname(here), "benchmarks")
spec_ = importlib.util.spec_from_file_location("long_context_study",
                                               os.path.join(bench, "long_context_study.py"))
study = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(study)
stored = os.path.join(bench, "results", "long_context_study.json")
if os.path.exists(stored):
    with open(stored) as f:
        result = json.load(f)
    print(f"stored run ({stored}):")
    print(study.table(result))
else:
    print("no stored run: the quick study (tiny sizes)")
    result = study.main(["--quick"])

# %% [markdown]
# ## The pictures
# Left: the N^2 wall (time against N, log-log: slope 2 for dense, 1 for the others). Middle and
# right: two causal layouts as images (white = live tile).

# %%
if plt is not None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for name, ts in times.items():
        axes[0].loglog(ns, np.asarray(ts) * 1e3, "o-", label=name)
    axes[0].set(title="causal attention, forward", xlabel="N (keys)", ylabel="ms (CPU time)")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(ns, [str(n) for n in ns])
    axes[0].minorticks_off()
    axes[0].legend()
    axes[0].grid(True, which="both", alpha=0.3)
    for ax, (title, lay) in zip(axes[1:], [
            ("BigBird (window 1, 1 global, 2 random)",
             sparse.bigbird(32, 1, 1, 2, seed=0, causal=True)),
            ("Sparse Transformer, strided (stride 6)", sparse.strided(32, 6))]):
        ax.imshow(lay, cmap="gray", interpolation="nearest")
        ax.set(title=f"{title}\n{sparse.live_tiles(lay)} of {lay.size} tiles live",
               xlabel="key block", ylabel="query block")
    fig.tight_layout()
    path = os.path.join(OUT, "09_long_context.png")
    fig.savefig(path, dpi=100)
    print("plot written to", path)
else:
    print("matplotlib not installed: tables only")
