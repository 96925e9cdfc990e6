# %% [markdown]
# # 05 · Curriculum learning: short sequences first, hard examples later
#
# Training cost falls if the model is given easy tasks first and harder ones as it learns
# (Bengio et al. 2009, "Curriculum Learning"). For a language model the simplest difficulty is the
# context length: train on short sequences, then long ones (Li, Zhang, He 2022, "The
# Stability-Efficiency Dilemma: Investigating Sequence Length Warmup for Training GPT Models",
# the method behind DeepSpeed's curriculum learning). Another is the example itself: feed the
# model the windows it gets most wrong (Fernandez & Downey 2018; Wang et al. 2023).
#
# Everything here plugs into minitx's **one training loop** (`minitx/train.py`): a curriculum is
# a *schedule* (what length this step uses) and a *sampler* (which windows come next), installed
# by an *extension*; nothing writes a second loop. This tutorial walks:
#
# 1. DeepSpeed's pacing functions (`minitx/curriculum.py`), drawn;
# 2. what "truncate" and "reshape" do to a batch;
# 3. sequence-length warmup in the loop, at a learning rate where the baseline struggles;
# 4. hard-example sampling: where the draws go as training proceeds.
#
# Run headless: `python tutorials/05_curriculum.py --quick` (about a minute on 2 cores). Plots go
# to `$MINITX_TUTORIAL_OUT` (or a temporary directory) when matplotlib is installed.

# %%
import argparse
import os
import sys
import tempfile

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):   # small models: one thread is fastest
    os.environ.setdefault(_var, "1")
try:
    import minitx  # noqa: F401
except ImportError:  # a source checkout: use it directly
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import minitx  # noqa: E402
from minitx.curriculum import (CurriculumScheduler, SeqLenWarmup, reshape_batch,  # noqa: E402
                               truncate_batch, two_stage)
from minitx.data import default_corpus  # noqa: E402
from minitx.hard_examples import HardExamples  # noqa: E402
from minitx.models.gpt import GPT, GPTConfig  # noqa: E402
from minitx.train import TrainConfig, Trainer, TrainingError, prepare_data  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="small runs (about a minute)")
args, _ = parser.parse_known_args()
QUICK = args.quick
OUT = os.environ.get("MINITX_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="minitx_05_")
os.makedirs(OUT, exist_ok=True)
try:
    import matplotlib
    if "ipykernel" not in sys.modules:   # a script or a test: draw off-screen
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None

# %% [markdown]
# ## 1. Pacing functions
# DeepSpeed names the difficulty at global step s (optimizer steps taken + 1) with three
# functions; S is `total_curriculum_step`, Δ the `difficulty_step`:
#
#     fixed_linear:  floor(s/S * (max - min) + min), rounded down to a multiple of Δ
#     fixed_root:    the same with (s/S)^(1/r): fast at first, slow near the end
#     fixed_discrete: a staircase of (difficulty, max_step) pairs
#
# The text's two-stage schedule (short for S steps, then long) is a two-step staircase.

# %%
S, LO, HI = 300, 8, 128


def pacing(kind, **extra):
    sc = {"total_curriculum_step": S, "difficulty_step": 8, **extra}
    return CurriculumScheduler({"min_difficulty": LO, "max_difficulty": HI, "schedule_type": kind,
                                "schedule_config": sc})


curves = {"fixed_linear": pacing("fixed_linear"),
          "fixed_root (r=2)": pacing("fixed_root", root_degree=2),
          "fixed_root (r=4)": pacing("fixed_root", root_degree=4),
          "two_stage (8 then 128 at 150)": CurriculumScheduler(two_stage(8, 128, 150))}
steps = np.arange(1, 401)
print("step | " + " | ".join(curves))
for s in (1, 50, 100, 150, 151, 200, 300, 400):
    print(f"{s:4d} | " + " | ".join(f"{c.get_difficulty(s):>5d}" for c in curves.values()))
if plt is not None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, c in curves.items():
        ax.step(steps, [c.get_difficulty(int(s)) for s in steps], where="post", label=name)
    ax.set_xlabel("global step"), ax.set_ylabel("sequence length"), ax.legend()
    ax.set_title("DeepSpeed pacing functions (min 8, max 128, S = 300, step 8)")
    fig.savefig(os.path.join(OUT, "05_pacing.png"), dpi=100, bbox_inches="tight")
    print("plot written to", os.path.join(OUT, "05_pacing.png"))

# %% [markdown]
# ## 2. Truncate or reshape
# A batch is B windows of T + 1 tokens: inputs x and targets y = x shifted by one. At length L
# DeepSpeed offers two ways to use it. **Truncate** keeps the B rows and cuts each to L: early
# steps see fewer tokens (so count the learning-rate schedule in tokens, not steps).
# **Reshape** cuts every row into T // L rows of length L: the same tokens per step, more rows.
# Both cut x and y the same way, so y[b, t] is still the token after x[b, t].

# %%
ids = np.arange(2 * 17).reshape(2, 17)              # two windows of T + 1 = 17 "tokens"
x, y = ids[:, :-1], ids[:, 1:]                      # (2, 16) each
for name, cut in (("truncate", truncate_batch), ("reshape", reshape_batch)):
    cx, cy = cut(x, y, 4)
    print(f"{name:8s}: x {x.shape} -> {cx.shape}, {cx.size} tokens; first row x={cx[0]}, "
          f"y={cy[0]}; aligned: {bool(np.all(cy == cx + 1))}")

# %% [markdown]
# ## 3. Sequence-length warmup in the one loop
# The same small GPT, the same seed, the same data, at a high learning rate and a large batch:
# once plainly, once with `SeqLenWarmup` (fixed_linear from 8 to the full block over the first
# third of training). Li et al. report that warmup keeps training stable at 8x the batch and 4x
# the learning rate; at this scale look at the loss spikes and the early gradient norm.

# %%
text = default_corpus()[: 200_000 if QUICK else 1_000_000]
cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64)
STEPS, LR, BATCH = (60, 2e-2, 16) if QUICK else (400, 3e-2, 32)
data = prepare_data(text, TrainConfig(), cfg.block_size)


class Record:
    """An extension keeping the loss and gradient norm of every step."""
    name = "record"

    def __init__(self):
        self.loss, self.grad_norm, self.length = [], [], []

    def on_step_end(self, trainer, m):
        self.loss.append(m["loss"]), self.grad_norm.append(m["grad_norm"])
        self.length.append(m["seq_len"])

    def state_dict(self):
        return {}


def run(extensions, seed=0):
    tc = TrainConfig(max_steps=STEPS, batch_size=BATCH, lr=LR, warmup=STEPS // 20, seed=seed,
                     eval_iters=4, eval_interval=10**6, log_interval=10**6, ckpt_interval=10**6)
    minitx.manual_seed(seed)
    rec = Record()
    tr = Trainer(GPT(cfg), tc, *data, None, log=lambda *_: None, extensions=[*extensions, rec])
    try:
        tr.fit()
        val = tr.val_loss
    except TrainingError as e:                      # a diverged run is an outcome, not a crash
        print("  diverged:", str(e).split(";")[0])
        val = float("nan")
    return rec, val, tr.tokens


warm = CurriculumScheduler({"min_difficulty": 8, "max_difficulty": cfg.block_size,
                            "schedule_type": "fixed_linear",
                            "schedule_config": {"total_curriculum_step": STEPS // 3,
                                                "difficulty_step": 8}})
runs = {"baseline": run([]), "seq-len warmup": run([SeqLenWarmup(warm)])}
print(f"\nlr {LR}, batch {BATCH}, {STEPS} steps")
print("run            | val loss | tokens  | spikes (loss > 1.3 x running min) | early grad-norm var")
for name, (rec, val, tokens) in runs.items():
    loss = np.array(rec.loss)
    spikes = int(np.sum(loss[11:] > 1.3 * np.minimum.accumulate(loss)[10:-1]))
    early = np.var(rec.grad_norm[: STEPS // 4])
    print(f"{name:14s} | {val:8.4f} | {tokens:7d} | {spikes:33d} | {early:.3f}")
if plt is not None:
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, (rec, _, _) in runs.items():
        ax[0].plot(rec.loss, label=name)
        ax[1].plot(rec.grad_norm, label=name)
    ax[0].set_title("training loss"), ax[1].set_title("gradient norm (before clipping)")
    ax[0].set_ylabel("cross-entropy (nats/byte)"), ax[1].set_ylabel("global L2 norm")
    ax[1].set_yscale("log")                          # early norms are orders of magnitude larger
    for a in ax:
        a.set_xlabel("step"), a.legend()
    fig.savefig(os.path.join(OUT, "05_stability.png"), dpi=100, bbox_inches="tight")
    print("plot written to", os.path.join(OUT, "05_stability.png"))

# %% [markdown]
# ## 4. Hard examples
# `HardExamples("hard")` cuts the corpus into fixed windows and draws window i with probability
# (1 - u) softmax(l / tau)_i + u / n, where l_i is the window's latest loss. Every window starts
# at log(256), so the first draws are uniform; as the model learns, the draws concentrate on the
# windows it still gets wrong, and the floor u keeps the rest alive.

# %%
ext = HardExamples("hard", temperature=0.3, floor=0.2, refresh_every=20, refresh_size=64)
tc = TrainConfig(max_steps=STEPS, batch_size=16, lr=3e-3, warmup=5, seed=0, eval_iters=4,
                 eval_interval=10**6, log_interval=10**6, ckpt_interval=10**6)
minitx.manual_seed(0)
tr = Trainer(GPT(cfg), tc, *data, None, log=lambda *_: None, extensions=[ext])
tr.fit()
sampler = tr.sampler
p = sampler.probabilities()
order = np.argsort(sampler.scores)
top = order[-len(order) // 10:]
print(f"\n{sampler.n} windows; after {STEPS} steps the hardest 10% hold "
      f"{p[top].sum():.1%} of the probability (uniform: 10%); max/min probability "
      f"{p.max() / p.min():.1f}")
if plt is not None:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(sampler.scores, p * sampler.n, s=4)
    ax.set_yscale("log")                             # softmax: exponential in the score
    ax.axhline(1.0, color="grey", lw=0.8, label="uniform")
    ax.axhline(0.2, color="grey", lw=0.8, ls="--", label="the floor u")
    ax.axvline(np.log(256), color="tab:red", lw=0.8, ls=":",
               label="never drawn yet (score still log 256)")
    ax.set_xlabel("window score (latest loss, nats/byte)")
    ax.set_ylabel("probability x n (1 = uniform)")
    ax.legend()
    ax.set_title("hard-example sampling after training")
    fig.savefig(os.path.join(OUT, "05_hard_examples.png"), dpi=100, bbox_inches="tight")
    print("plot written to", os.path.join(OUT, "05_hard_examples.png"))

# %% [markdown]
# ## What to take away
# - A curriculum is a schedule plus a sampler; both plug into the one loop, and both are saved in
#   the checkpoint, so `--resume` in the middle of a curriculum continues bit for bit.
# - The command line does the same: `python -m minitx train --curriculum seqlen --pacing
#   fixed_linear --min-len 8 --curriculum-steps 300`, `--sampler hard`, `--sampler scored
#   --scorer CKPT`. `benchmarks/curriculum.py` runs the several-seed experiments whose tables are
#   in the README, and says where the papers' claims do and do not reproduce at this scale.
