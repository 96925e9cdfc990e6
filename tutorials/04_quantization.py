# %% [markdown]
# # 04 · Quantization from 8 bits down to 1
#
# Quantization stores weights in fewer bits: 8, 4, 3, 2, and finally 1 (binarization). Memory and
# memory traffic shrink by 4-32x; accuracy suffers a little or a lot, depending on how cleverly the
# few levels are placed. This tutorial measures it on a small GPT trained right here (and, if it is
# installed, on the real all-MiniLM-L6-v2 sentence encoder):
#
# 1. NF4 vs int4 vs FP4 on Gaussian weights (QLoRA, arXiv 2305.14314), and where NF4 stops winning;
# 2. post-training quantization (PTQ) of every scheme: validation loss against bits per weight;
# 3. per-tensor vs per-channel vs per-group scales (Nagel et al. 2021, arXiv 2106.08295);
# 4. PTQ vs quantization-aware training (STE, LSQ) at 4 and 2 bits;
# 5. PB-LLM partial binarization (arXiv 2310.00034): the salient-fraction sweep;
# 6. per-layer sensitivity and mixed precision;
# 7. compensation: frozen quantized model + small trained float layers;
# 8. MiniLM embedding fidelity per scheme.
#
# Run headless: `python tutorials/04_quantization.py --quick` (under a minute) or without
# `--quick` for the bigger model behind the README tables. Plots are written (when matplotlib is
# importable) to `$MINITX_TUTORIAL_OUT` or a temporary directory.

# %%
import argparse
import os
import sys
import tempfile
import time

# Tiny tensors: on a shared 2-core machine extra BLAS/OpenMP threads only add overhead.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
try:
    import minitx  # noqa: F401  (an installed minitx, with its compiled kernels)
except ImportError:  # a source checkout: use it directly
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from minitx.quant import NF4, FP4, quantize  # noqa: E402
from minitx.quant import experiments as E  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="small model, few steps (< 1 minute)")
args, _ = parser.parse_known_args()
QUICK = args.quick
OUT = os.environ.get("MINITX_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="minitx_tut04_")
os.makedirs(OUT, exist_ok=True)
try:
    import matplotlib
    if "ipykernel" not in sys.modules:   # a script or a test: draw off-screen
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
T0 = time.time()


def show(title, rows):
    print(f"\n### {title}\n")
    print(E.format_table(rows))


# %% [markdown]
# ## 1. The 4-bit codebooks
#
# A blockwise absmax quantizer divides each block of 64 weights by its largest magnitude and
# rounds every value to the nearest of 16 levels. int4 spaces the levels evenly; NF4 puts them at
# quantiles of a normal distribution (dense near 0, where Gaussian weights are); FP4 (E2M1) spaces
# them like a tiny floating-point format.

# %%
print("NF4:", np.round(NF4, 4))
print("FP4:", np.round(FP4, 4))
print("int4 (symmetric absmax):", np.round(np.arange(-7, 8) / 7, 4))
rows = E.codebook_mse_table(n=1 << (14 if QUICK else 18))
show("Weight MSE / variance, blockwise absmax (lower is better)", rows)
gauss64 = rows[0]
print(f"\nTarget: NF4 beats int4 on Gaussian weights, block 64: "
      f"{gauss64['nf4 MSE/var']:.4f} vs {gauss64['int4 MSE/var']:.4f} -> "
      f"{'met' if gauss64['nf4 MSE/var'] < gauss64['int4 MSE/var'] else 'NOT met'}")

# %% [markdown]
# NF4 wins on bell-shaped weights (Gaussian, Laplace, Student-t) and at every block size, but not
# on uniformly distributed weights: there the evenly spaced int4 grid is the right one. NF4 is
# optimal *for the distribution it was built for*.
#
# Double quantization stores the 32-bit absmax of every block in 8 bits (blocks of 256 constants):

# %%
w = np.random.default_rng(0).standard_normal((64, 64 * 256)).astype(np.float32)
for dq in (False, True):
    q = quantize(w, "nf4", double_quant=dq)
    print(f"nf4 double_quant={dq!s:5}: {q.bits_per_weight:.4f} bits/weight, "
          f"MSE {float(((q.dequantize() - w) ** 2).mean()):.6f}")

# %% [markdown]
# ## 2. Train a small GPT, then quantize it after training (PTQ)
#
# A character-level GPT learns minitx's own source code. Calibration runs a few training batches
# through it and records each Linear's input range (for W8A8) and the diagonal of its input
# Hessian H = 2 X^T X (for PB-LLM's Hessian saliency).

# %%
size = E.QUICK if QUICK else E.FULL
steps = 300 if QUICK else 1500
t = time.time()
model, train_data, val_data = E.train_gpt(size, steps=steps, B=16, lr=3e-3 if QUICK else 2e-3)
T = model.config.block_size
val = E.eval_batches(val_data, 16, T, 8 if QUICK else 32)
calib = E.eval_batches(train_data, 16, T, 4, seed=7)
print(f"trained {size} for {steps} steps in {time.time() - t:.0f} s; "
      f"val loss {E.evaluate(model, val):.4f} nats/byte")

# %%
ptq = E.ptq_table(model, val, calib)
show("PTQ: validation loss per scheme (weights of every Linear; embeddings stay float32)", ptq)
w8 = next(r for r in ptq if r["scheme"] == "int8 per-channel")
print(f"\nTarget: W8 per-channel PTQ costs <= 1% relative loss: {w8['rel. increase %']:.4f}% -> "
      f"{'met' if w8['rel. increase %'] <= 1.0 else 'NOT met'}")

# %% [markdown]
# ## 3. Per-tensor vs per-channel vs per-group
#
# One scale for a whole matrix lets its largest weight set the step for everyone; one scale per
# output channel (row) or per group of 32 inputs adapts to each row's range at 32 bits per scale.

# %%
gran = [r for r in ptq if any(k in r["scheme"] for k in ("per-tensor", "per-channel", "g32"))
        and r["scheme"].startswith(("int8", "int4"))]
show("Granularity (from the PTQ table)", gran)

# %% [markdown]
# ## 4. PTQ vs QAT at 4 and 2 bits
#
# QAT fine-tunes with the quantizer in the forward pass, gradients passing straight through the
# rounding (STE); LSQ also learns each channel's step size. The "float32 fine-tuned" column is the
# same extra training without quantization, so that QAT is not credited for mere extra training.

# %%
qat = E.qat_table(model, train_data, val, bits=(4, 2), steps=30 if QUICK else 200)
show("PTQ vs QAT, per-channel symmetric weights (validation loss)", qat)

# %% [markdown]
# ## 5. PB-LLM: how many salient weights must stay in 8 bits?

# %%
sweep = E.pbllm_sweep(model, val, calib,
                      fractions=(0.0, 0.05, 0.1, 0.2, 0.5) if QUICK else
                      (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5))
show("PB-LLM salient-fraction sweep (rest binarized; bits include the mask)", sweep)

# %% [markdown]
# ## 6. Which layers are sensitive? Mixed precision

# %%
sens, mixed = E.sensitivity_table(model, val, "int2", n_high=2, block_size=32)
show("Loss increase when only this layer is int2 g32", sens)
show("Mixed precision: 2 layers in int8, the rest int2 g32", mixed)

# %% [markdown]
# ## 7. Compensation: train small float layers on a frozen quantized model

# %%
comp = E.compensation_table(model, train_data, val, steps=30 if QUICK else 200)
show("Compensation (adapter: rank-4 residual per layer; head: one extra layer on the output)",
     comp)

# %% [markdown]
# ## 8. Real pretrained weights: all-MiniLM-L6-v2
#
# Every Linear of the sentence encoder is quantized; embedding cosine with the float model and
# agreement of similarity rankings are measured (see also `benchmarks/quant_minilm.py`).

# %%
try:
    from minitx.models.bert import FIDELITY_SCHEMES, SentenceEncoder, minilm_path, \
        quantization_fidelity
    encoder = SentenceEncoder.from_pretrained(minilm_path())
except (ImportError, FileNotFoundError) as e:
    print(f"skipping MiniLM: {e}")
    encoder = None
if encoder is not None:
    sentences = ["A man is playing a guitar.", "A musician performs a song.",
                 "How do I bake bread?", "What is the best bread recipe?",
                 "The stock market fell sharply.", "Share prices dropped on Monday.",
                 "It will rain tomorrow.", "Expect showers later today.",
                 "My cat sleeps all day.", "Der Zug hat Verspätung.", "Le train est en retard.", "a"]
    schemes = FIDELITY_SCHEMES if not QUICK else [s for s in FIDELITY_SCHEMES
                                                  if s[0] in ("int8", "int4", "nf4", "binary")]
    show("MiniLM embedding fidelity", quantization_fidelity(encoder, sentences, schemes))

# %% [markdown]
# ## Plots

# %%
FAMILIES = {"float32": "black", "W8A8": "tab:cyan", "int8": "tab:blue", "int4": "tab:green",
            "nf4": "tab:olive", "fp4": "tab:pink", "int3": "tab:orange", "int2": "tab:red",
            "pbllm": "tab:purple", "binary": "tab:brown"}
MARKERS = "osD^vPX<>h"        # one shape per scheme within a family


def family(scheme):
    """The family of a PTQ scheme: the first word of its name ("int4 g32" -> "int4")."""
    return next((f for f in FAMILIES if scheme.startswith(f)), "other")


if plt is not None:
    fig, ax = plt.subplots(1, 3, figsize=(16, 5.5), gridspec_kw={"width_ratios": [5, 3, 4]})
    # Many schemes land within 0.1% of float32 around 4 bits: instead of labels on top of each
    # other, each point gets a marker (shape and colour by family) and a line of the table in the
    # middle panel, sorted by bits. The y axis is linear within +-0.1% and logarithmic beyond.
    handles, labels = [], []
    for r in sorted(ptq, key=lambda r: (r["bits/weight"], r["scheme"])):
        fam = family(r["scheme"])
        k = sum(1 for other in handles if other.get_label() == fam)     # k-th of its family
        h = ax[0].scatter(r["bits/weight"], r["rel. increase %"], color=FAMILIES.get(fam, "gray"),
                          marker=MARKERS[k % len(MARKERS)], s=60, alpha=0.8, label=fam)
        handles.append(h)
        labels.append(f"{r['scheme']:<22} {r['bits/weight']:5.2f} b  "
                      f"{r['rel. increase %']:+7.3f}%")
    ax[0].set_xscale("log", base=2)
    ticks = [1, 2, 3, 4, 5, 8, 16, 32]
    ax[0].set_xticks(ticks, [str(t) for t in ticks])
    ax[0].minorticks_off()
    ax[0].set_yscale("symlog", linthresh=0.1)
    increases = [r["rel. increase %"] for r in ptq]
    ax[0].set_ylim(min(-0.2, 2 * min(increases)), 2 * max(increases))   # no marker on the frame
    ax[0].axhline(0, color="k", lw=0.8)
    ax[0].set_xlabel("stored bits per weight (log scale)")
    ax[0].set_ylabel("validation loss increase over float32, %")
    ax[0].set_title("PTQ: loss vs bits (every Linear quantized)")
    ax[0].grid(True, alpha=0.3)
    ax[1].axis("off")
    ax[1].legend(handles, labels, loc="center", prop={"family": "monospace",
                                                                  "size": 7},
                 title="scheme, bits/weight, loss increase", title_fontsize=8, frameon=False)
    for sal in ("magnitude", "hessian"):
        ax[2].plot([r["salient fraction"] for r in sweep], [r[f"{sal} val loss"] for r in sweep],
                   marker="o", label=f"saliency: {sal}")
    ax[2].axhline(sweep[0]["float32 val loss"], color="k", ls="--", label="float32")
    ax[2].set_xlabel("salient fraction kept in int8 (the rest binarized)")
    ax[2].set_ylabel("validation loss (nats / byte)")
    ax[2].set_title("PB-LLM: salient-fraction sweep")
    ax[2].legend()
    fig.tight_layout()
    path = os.path.join(OUT, "04_quantization.png")
    fig.savefig(path, dpi=120)
    print(f"saved {path}")
else:
    print("matplotlib not installed: tables only")
print(f"\ndone in {time.time() - T0:.0f} s")
