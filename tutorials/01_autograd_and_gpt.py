# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 01 · From a derivative to a GPT
#
# This tutorial builds reverse-mode automatic differentiation from nothing, checks it against
# finite differences, and then trains the small GPT that the rest of minitx makes cheaper.
#
# Run it as a notebook (`jupytext --to notebook`) or as a script:
# `python tutorials/01_autograd_and_gpt.py [--quick]`. Plots are written as PNG files to
# `$MINITX_TUTORIAL_OUT` (default: a temporary directory) when matplotlib is installed.

# %%
import os
import sys
import tempfile
import time

import numpy as np

try:
    import minitx  # noqa: F401  (an installed minitx, with its compiled kernels)
except ImportError:  # a source checkout: use it directly
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

QUICK = "--quick" in sys.argv or os.environ.get("MINITX_QUICK") == "1"
OUT = os.environ.get("MINITX_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="minitx-tutorial-")
os.makedirs(OUT, exist_ok=True)

# %% [markdown]
# ## 1. The chain rule, one number at a time
#
# Every value remembers which values it was computed from and how to pass a gradient back to
# them. `backward` visits values in reverse topological order, so a node's gradient is complete
# (summed over all its uses) before it is passed on. This is the whole idea; `minitx.autograd`
# does the same on arrays.


# %%
class Value:
    def __init__(self, data, parents=(), backward=lambda g: ()):
        self.data, self.grad = data, 0.0
        self.parents, self._backward = parents, backward

    def __add__(self, other):
        return Value(self.data + other.data, (self, other), lambda g: (g, g))

    def __mul__(self, other):
        return Value(self.data * other.data, (self, other),
                     lambda g: (g * other.data, g * self.data))

    def tanh(self):
        t = np.tanh(self.data)
        return Value(t, (self,), lambda g: (g * (1 - t * t),))

    def backward(self):
        order, seen, stack = [], set(), [(self, False)]
        while stack:                               # iterative post-order DFS
            v, done = stack.pop()
            if done:
                order.append(v)
            elif id(v) not in seen:
                seen.add(id(v))
                stack.append((v, True))
                stack.extend((p, False) for p in v.parents)
        self.grad = 1.0
        for v in reversed(order):                  # outputs first
            for p, g in zip(v.parents, v._backward(v.grad)):
                p.grad += g


x, w, b = Value(0.5), Value(-2.0), Value(0.3)
y = (x * w + b).tanh()
y.backward()
print(f"y = {y.data:.4f}, dy/dw = {w.grad:.4f}, by hand: {(1 - y.data ** 2) * x.data:.4f}")

# %% [markdown]
# ## 2. The same on arrays: `minitx.Tensor`
#
# `minitx.tensor` behaves like `torch.tensor`. Broadcasting in the forward pass becomes a sum
# in the backward pass: `b` below was broadcast over 4 rows, so its gradient sums 4 rows.

# %%
import minitx  # noqa: E402
import minitx.nn.functional as F  # noqa: E402

rng = np.random.default_rng(0)
X = minitx.tensor(rng.standard_normal((4, 3)))
W = minitx.tensor(rng.standard_normal((3, 2)), requires_grad=True)
bias = minitx.tensor(np.zeros(2), requires_grad=True)
loss = ((X @ W + bias).tanh() ** 2).mean()
loss.backward()
print("dL/dW =\n", W.grad, "\ndL/db =", bias.grad)

# %% [markdown]
# ## 3. Trust, but check: gradients against central differences
#
# `minitx.gradcheck` perturbs each input element by ±eps in float64 and compares
# (L(x+eps) - L(x-eps)) / 2eps with the analytic gradient. A checker is only useful if it can
# fail, so we also give it a backward pass with a deliberate mistake.

# %%
from minitx.autograd import Function  # noqa: E402
from minitx.gradcheck import GradcheckError, gradcheck  # noqa: E402

a = rng.standard_normal((3, 5))
print("softmax max |diff|:", gradcheck(lambda t: F.softmax(t, dim=-1), [a]))
print("layer_norm max |diff|:", gradcheck(lambda t: F.layer_norm(t, 5), [a]))


class BadSigmoid(Function):
    @staticmethod
    def forward(ctx, x):
        s = 1 / (1 + np.exp(-x))
        ctx.save_for_backward(s)
        return s

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        return g * s                     # wrong: should be g * s * (1 - s)


try:
    gradcheck(BadSigmoid.apply, [a])
except GradcheckError as e:
    print("caught:", e)

# %% [markdown]
# ## 4. A GPT, trained on prose that ships with Python
#
# The default corpus is the docstrings and comments of the Python standard library (a few MB of
# English, no download). Tokens are bytes. Before training, the number to beat is the unigram
# baseline: the loss of predicting every byte from its frequency alone.

# %%
from minitx.data import default_corpus, get_batch, train_val_split, unigram_loss  # noqa: E402
from minitx.models.gpt import GPT, get_config  # noqa: E402
from minitx.optim import AdamW, clip_grad_norm_, cosine_lr  # noqa: E402
from minitx.tokenizer import ByteTokenizer  # noqa: E402

text = default_corpus()
ids = ByteTokenizer().encode(text[: 300_000] if QUICK else text)
train_ids, val_ids = train_val_split(ids, 0.1)
baseline = unigram_loss(train_ids, val_ids, 256)
cfg = get_config("tiny" if QUICK else "default")
minitx.manual_seed(0)
model = GPT(cfg)
print(f"{model.num_params():,} parameters, {model.flops_per_token() / 1e6:.2f} MFLOP/token, "
      f"unigram baseline {baseline:.3f} nats")

# %%
steps, batch = (200, 16) if QUICK else (600, 16)
opt = AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
data_rng = np.random.default_rng(0)
losses, t0 = [], time.perf_counter()
for step in range(steps):
    for g in opt.param_groups:
        g["lr"] = cosine_lr(step, 3e-3, 3e-4, steps // 10, steps)
    x, y = get_batch(train_ids, batch, cfg.block_size, data_rng)
    _, loss = model(x, y)
    loss.backward()
    clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    losses.append(loss.item())
    if step % (steps // 6) == 0 or step == steps - 1:
        print(f"step {step:4d}  loss {loss.item():.3f}")
elapsed = time.perf_counter() - t0
print(f"{steps * batch * cfg.block_size / elapsed:,.0f} tokens/s")

with minitx.no_grad():
    model.eval()
    vx, vy = get_batch(val_ids, 32, cfg.block_size, np.random.default_rng(1))
    val = model(vx, vy)[1].item()
print(f"validation loss {val:.3f} vs unigram {baseline:.3f}")
assert val < baseline, "the model should beat the unigram baseline"

# %% [markdown]
# ## 5. The loss curve, and a sample

# %%
try:
    import matplotlib
    if "ipykernel" not in sys.modules:   # a script or a test: draw off-screen
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
if plt is not None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, label="train loss")
    ax.axhline(baseline, color="gray", ls="--", label="unigram baseline")
    ax.axhline(np.log(256), color="red", ls=":", label="uniform (ln 256)")
    ax.axhline(val, color="green", ls="-.", label=f"validation loss at the end ({val:.2f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / byte)")
    ax.set_title(f"Training the '{'tiny' if QUICK else 'default'}' GPT "
                 f"({model.num_params():,} parameters)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "01_loss_curve.png"), dpi=100)
    print("saved", os.path.join(OUT, "01_loss_curve.png"))
else:
    for s in range(0, steps, max(1, steps // 10)):
        print(f"step {s:4d} {'#' * int(losses[s] * 10)} {losses[s]:.2f}")

tok = ByteTokenizer()
out = model.generate(tok.encode("Return the "), 120 if not QUICK else 40, temperature=0.8,
                     top_k=40, rng=np.random.default_rng(0))
print(tok.decode(out[0]))
