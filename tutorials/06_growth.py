# %% [markdown]
# # 06 · Growing the model while it trains
#
# The cheapest parameters are those you did not train from the start. Progressive growth trains a
# small network, then makes it bigger and keeps going. The idea is old — Ivakhnenko's GMDH grew
# polynomial networks layer by layer in the 1970s, Hinton's deep belief nets were stacked one
# layer at a time — and Net2Net (Chen et al. 2015) made it function-preserving: a wider or deeper
# net that computes the same function, by copying units. FLM-101B (Li et al. 2023, arXiv
# 2309.03852) trained a 101B-parameter model for about $100K by growing 16B -> 51B -> 101B with
# Masked Structural Growth (MSG, Yao et al. 2023, arXiv 2305.02869): new structure is multiplied by
# masks that start at 0 and ramp to 1, so growth preserves the function *exactly whatever the new
# weights are*. Gesmundo & Maile 2023 (arXiv 2308.06103) give six such expansions with proofs.
#
# This tutorial:
# 1. grows a tiny GPT by hand in each dimension (width, FFN, heads, depth) in both flavours and
#    shows that the logits do not move (masks at 0), while copy growth and unmasked growth break;
# 2. trains grown-from-small against the final size from scratch at the same FLOPs;
# 3. redoes FLM-101B's cost arithmetic.
#
# Run headless: `python tutorials/06_growth.py --quick` (a minute or two) or without `--quick`.

# %%
import argparse
import os
import sys
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import importlib.util  # noqa: E402

if importlib.util.find_spec("minitx") is None:  # a source checkout, not an installed minitx
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import minitx  # noqa: E402
from minitx.growth import grow, schedule_cost, set_mask_step  # noqa: E402
from minitx.growth.schedule import GrowthSchedule, parse_schedule  # noqa: E402
from minitx.models.gpt import GPT, GPTConfig  # noqa: E402
from minitx.train import TrainConfig, train  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="few steps (a minute or two)")
args, _ = parser.parse_known_args()
QUICK = args.quick
OUT = os.environ.get("MINITX_TUTORIAL_OUT") or tempfile.mkdtemp()

# %% [markdown]
# ## 1. Growth that does not move the logits
#
# The masks live in two places. A *masked Linear* multiplies the new input columns of the
# attention output projection (new heads), of the MLP's down projection (new FFN units) and all
# outputs of a new block's two residual branches by the mask. A *masked norm* handles the residual
# width: LayerNorm's mean and variance (RMSNorm's mean square) are averaged with the mask as
# weights, and the output is multiplied by the mask, so with the mask at 0 the statistics are
# those of the old coordinates — the one place where a naive widening breaks the function.
# We fill every new weight with N(0, 1) noise to show that the initialization does not matter.

# %%
FLAVOURS = {
    "gpt2": dict(norm="layernorm", pos="learned", mlp="gelu", bias=True),
    "llama": dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, tie_weights=False,
                  fused_qkv=False),
}
DIMS = {"n_embd 32->48": dict(n_embd=48), "ffn 128->200": dict(ffn=200),
        "n_head 2->4": dict(n_head=4), "n_layer 2->4": dict(n_layer=4),
        "all four": dict(n_embd=48, ffn=200, n_head=4, n_layer=4)}
rng = np.random.default_rng(0)
noise = lambda name, shape: rng.normal(0.0, 1.0, shape)                    # noqa: E731
print("relative max |logits after - before| (float64)")
print("| flavour | growth | MSG, masks at 0 | random, no masks | Net2Net copy |")
print("|---|---|---|---|---|")
for flavour, kw in FLAVOURS.items():
    minitx.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, **kw)
    model = GPT(cfg).to(np.float64)
    idx = rng.integers(0, 64, (2, 16))
    before = model(idx)[0].data
    rel = lambda m: np.abs(m(idx)[0].data - before).max() / np.abs(before).max()  # noqa: E731
    for label, dims in DIMS.items():
        msg = rel(grow(model, ramp_steps=10, init=noise, **dims))
        plain = rel(grow(model, ramp_steps=0, init="random", **dims))
        copy = rel(grow(model, ramp_steps=0, init="copy", **dims))
        print(f"| {flavour} | {label} | {msg:.1e} | {plain:.1e} | {copy:.1e} |")

# %% [markdown]
# Net2Net copying is exact for FFN units and heads (a copied unit's outgoing weights are halved),
# but not for the residual width (the norm's statistics see the duplicated coordinates, and a tied
# embedding is both copied and read) nor for depth (a copied block is not an identity). MSG is
# exact everywhere, to float rounding, with any new weights.
#
# After growth the masks ramp linearly to 1 over `ramp_steps` optimizer steps; at 1 they fold
# away and the model is a plain GPT of the new config:

# %%
minitx.manual_seed(0)
model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
grown = grow(model, n_embd=48, n_layer=3, ramp_steps=4, step=0)
for step in range(6):
    folded = set_mask_step(grown, step)
    masks = grown.__dict__.get("growth_masks")
    print(f"step {step}: mask {masks.values.values[1] if masks else 1.0:.2f}, folded: {folded}")
print("plain config after folding:", grown.config.n_layer, "layers, width", grown.config.n_embd)

# %% [markdown]
# ## 2. Grown from small against the final size from scratch, at the same FLOPs
#
# The growth schedule is an extension of the one training loop (`--grow` on the command line).
# FLOPs per token follow the model as it grows (6N + 12 L H d T); the scratch run gets as many
# steps as cost the same FLOPs. `benchmarks/growth.py` runs the full comparison with several seeds
# and the ablations (no masks, copy init); here one seed of a short run.

# %%
from minitx.data import default_corpus  # noqa: E402
from minitx.growth.cost import run_flops  # noqa: E402

steps, grow_at, ramp = (40, 15, 5) if QUICK else (300, 100, 25)
B, T = (4, 32) if QUICK else (8, 64)
small = GPTConfig(block_size=T, n_layer=2, n_embd=32, n_head=2, head_dim=16, ffn_hidden=128)
final = GPTConfig(block_size=T, n_layer=4, n_embd=64, n_head=4, head_dim=16, ffn_hidden=256)
schedule = f"{grow_at}:n_layer=4,n_embd=64,n_head=4,ffn=256"
events = parse_schedule(schedule)
budget, _ = run_flops(small, events, steps, B * T)
scratch_steps = int(round(budget / run_flops(final, [], 1, B * T)[0]))
text = default_corpus()
curves = {}
for name, cfg, n, ext in (("grown (MSG)", small, steps, [GrowthSchedule(events, ramp)]),
                          ("scratch", final, scratch_steps, [])):
    vals = {}

    def log(line, vals=vals):
        if "| val loss" in line:
            vals[int(line.split()[1])] = float(line.split("val loss")[1].split()[0])
    tc = TrainConfig(max_steps=n, batch_size=B, warmup=max(1, n // 10), eval_interval=max(1, n // 5),
                     eval_iters=4 if QUICK else 16, ckpt_interval=10 ** 9, log_interval=10 ** 9,
                     seed=7)
    r = train(cfg, tc, text, None, log=log, extensions=ext)
    curves[name] = (r["flops"], vals)
    print(f"{name:12s} {n:4d} steps, {r['flops'] / 1e12:.4f} TFLOP, final val loss "
          f"{r['val_loss']:.4f}, {r['seconds']:.0f} s")

# %%
try:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (_, vals) in curves.items():
        ax.plot(sorted(vals), [vals[s] for s in sorted(vals)], marker="o", label=name)
    ax.set_xlabel("step"), ax.set_ylabel("validation loss"), ax.legend()
    path = os.path.join(OUT, "06_growth.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print("plot written to", path)
except ImportError:
    print("matplotlib not installed: no plot")

# %% [markdown]
# ## 3. FLM-101B's arithmetic
#
# Stages of 16B, 51B and 101B parameters trained on 245.37B, 39.64B and 26.54B tokens (the
# paper's Table 1). With 6ND FLOPs per stage:

# %%
c = schedule_cost()
for (n, d), f in zip([(16e9, 245.37e9), (51e9, 39.64e9), (101e9, 26.54e9)], c["stage_flops"]):
    print(f"  {n / 1e9:5.0f}B params x {d / 1e9:7.2f}B tokens -> {f:.3e} FLOPs")
print(f"grown: {c['grown_flops']:.3e} FLOPs; 101B from scratch on the same {c['tokens'] / 1e9:.2f}B "
      f"tokens: {c['scratch_flops']:.3e}; ratio {c['ratio']:.3f}, saving {c['saving']:.1%}")
