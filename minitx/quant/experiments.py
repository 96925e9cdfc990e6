"""Whole-model quantization experiments on a small character-level GPT trained here.

Used by tutorials/04_quantization.py and the tests. The corpus is minitx's own source code
(bytes, vocabulary 256), split 90/10 into train and validation; everything is seeded.
Each `*_table` function returns a list of dict rows (print them with `format_table`).
"""
import copy

import numpy as np

import minitx
from minitx.models.gpt import GPT, GPTConfig
from minitx.quant import quantize
from minitx.quant.compensate import add_compensation, recovered_fraction
from minitx.quant.linear import QuantLinear, linear_layers, quantize_model
from minitx.nn.modules import Linear
from minitx.quant.ptq import (W8A8Linear, calibrate, layer_sensitivity, mixed_precision_plan,
                              quantize_w8a8, quantize_weights)
from minitx.quant.qat import convert, prepare_qat

QUICK = dict(n_layer=2, n_head=4, n_embd=64, block_size=32)
FULL = dict(n_layer=4, n_head=4, n_embd=128, block_size=64)


def corpus():
    """(train, val) uint8 byte arrays: the first CORPUS_BYTES of minitx's embedded corpus (the
    standard library's docstrings and comments), split 90/10. Frozen: adding modules to minitx
    does not move the tables (it did when the corpus was minitx's own source)."""
    from minitx.data import default_corpus
    data = np.frombuffer(default_corpus().encode("utf-8")[:CORPUS_BYTES], np.uint8)
    n = int(0.9 * data.size)
    return data[:n], data[n:]


CORPUS_BYTES = 1 << 20


def batch(data, B, T, rng):
    """Random (B, T) inputs and next-byte targets."""
    ix = rng.integers(0, data.size - T - 1, B)
    x = np.stack([data[i:i + T] for i in ix]).astype(np.int64)       # (B, T)
    y = np.stack([data[i + 1:i + T + 1] for i in ix]).astype(np.int64)
    return x, y


def eval_batches(data, B, T, n, seed=1234):
    """A fixed list of n validation batches (the same for every model compared)."""
    rng = np.random.default_rng(seed)
    return [batch(data, B, T, rng) for _ in range(n)]


def evaluate(model, batches):
    """Mean cross-entropy (nats per byte) of `model` over `batches`."""
    model.eval()
    with minitx.no_grad():
        return float(np.mean([float(model(x, y)[1].data) for x, y in batches]))


class BatchSampler:
    """Random (B, T) windows of `data` from a generator seeded by `seed` (minitx.train's sampler
    interface)."""

    def __init__(self, data, B, seed):
        self.data, self.B, self.rng = data, B, np.random.default_rng(seed)

    def next_batch(self, trainer):
        x, y = batch(self.data, self.B, trainer.seq_len, self.rng)
        return x, y, None

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, d):
        self.rng.bit_generator.state = d["rng"]


class WarmupCosineFloor:
    """lr * min(1, (step+1)/warmup) * cos-decay over `steps`, floored at 5% of lr."""

    def __init__(self, lr, steps, warmup):
        self.lr, self.steps, self.warmup = lr, steps, warmup

    def __call__(self, trainer):
        s = trainer.step
        scale = min(1.0, (s + 1) / self.warmup) * 0.5 * (1 + np.cos(np.pi * s / self.steps))
        return {"lr": self.lr * max(scale, 0.05), "seq_len": trainer.model.config.block_size}


def train(model, params, data, steps, B, lr, seed=0, warmup=20):
    """Fine-tune `params` of `model` for `steps` steps on minitx's one training loop (AdamW
    without weight decay or clipping, warmup + cosine). Returns the last loss."""
    from minitx.train import TrainConfig, Trainer
    params = list(params)
    tc = TrainConfig(max_steps=steps, batch_size=B, lr=lr, warmup=0, weight_decay=0.0,
                     betas=(0.9, 0.999), grad_clip=0.0, eval_interval=steps + 1,
                     log_interval=steps + 1, ckpt_interval=steps + 1, seed=seed)
    model.train()
    trainer = Trainer(model, tc, data, data[:0], out_dir=None, log=lambda *a: None,
                      sampler=BatchSampler(data, B, seed),
                      schedule=WarmupCosineFloor(lr, steps, warmup),
                      trainable=lambda m: params)
    loss = None
    while not trainer.done():
        loss = trainer.train_step()["loss"]
    model.eval()
    return float(loss)


def train_gpt(size=QUICK, steps=300, B=16, lr=3e-3, seed=0):
    """Train a small GPT on the corpus. Returns (model, train data, val data)."""
    tr, va = corpus()
    minitx.random.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=256, **size))
    train(model, model.parameters(), tr, steps, B, lr, seed)
    return model, tr, va


def linear_bits(model):
    """Mean stored bits per weight over the Linear-like layers (float32 layers count 32)."""
    bits, n = 0.0, 0
    for _, m in model.named_modules():
        if isinstance(m, QuantLinear):
            bits, n = bits + 8 * m.qweight.nbytes, n + m.qweight.numel
        elif isinstance(m, W8A8Linear):
            bits, n = bits + 8 * (m.w_int.nbytes + m.w_scale.nbytes), n + m.w_int.size
        elif isinstance(m, Linear):
            bits, n = bits + 32 * m.weight.data.size, n + m.weight.data.size
    return bits / max(n, 1)


WEIGHT_SCHEMES = [
    ("int8 per-channel", "int8", {}), ("int8 per-tensor", "int8", {"granularity": "tensor"}),
    ("int4 per-channel", "int4", {}), ("int4 per-tensor", "int4", {"granularity": "tensor"}),
    ("int4 g32", "int4", {"block_size": 32}), ("int4 per-channel MSE", "int4", {"range_method": "mse"}),
    ("int4 asym g32", "int4", {"block_size": 32, "symmetric": False}),
    ("int3 g32", "int3", {"block_size": 32}), ("int2 g32", "int2", {"block_size": 32}),
    ("int2 g32 MSE", "int2", {"block_size": 32, "range_method": "mse"}),
    ("nf4 b64", "nf4", {}), ("nf4 b64 double-quant", "nf4", {"double_quant": True}),
    ("fp4 b64", "fp4", {}), ("binary", "binary", {}), ("binary centred", "binary", {"centered": True}),
    ("pbllm 10% magnitude", "pbllm", {"salient_fraction": 0.1}),
    ("pbllm 10% hessian", "pbllm", {"salient_fraction": 0.1, "saliency": "hessian"}),
]


def ptq_table(model, val_batches, calib_batches):
    """Validation loss of every weight-only scheme and of W8A8 (three range settings)."""
    base = evaluate(model, val_batches)
    obs = calibrate(model, calib_batches)
    rows = [{"scheme": "float32", "bits/weight": 32.0, "val loss": base, "rel. increase %": 0.0}]

    def row(name, qmodel):
        loss = evaluate(qmodel, val_batches)
        rows.append({"scheme": name, "bits/weight": linear_bits(qmodel), "val loss": loss,
                     "rel. increase %": 100 * (loss - base) / base})
    for name, scheme, kw in WEIGHT_SCHEMES:
        row(name, quantize_weights(model, scheme, observers=obs, **kw)[0])
    for method in ("minmax", "percentile", "mse"):
        row(f"W8A8 act {method}", quantize_w8a8(model, obs, method=method))
    return rows


def codebook_mse_table(n=1 << 16, seed=0):
    """Weight MSE of nf4 / int4 / fp4 (block 64, absmax) on several distributions, and of
    Gaussian weights for growing block sizes: where NF4 stops being best."""
    rng = np.random.default_rng(seed)
    dists = {"gaussian": rng.standard_normal(n), "laplace": rng.laplace(size=n),
             "student-t (3)": rng.standard_t(3, size=n), "uniform": rng.uniform(-1, 1, n)}
    rows = []
    for name, w in dists.items():
        w = w.astype(np.float32).reshape(-1, 1024)
        row = {"weights": name, "block": 64}
        for s in ("nf4", "int4", "fp4"):
            row[f"{s} MSE/var"] = float(((quantize(w, s, block_size=64).dequantize() - w) ** 2)
                                        .mean() / w.var())
        row["best"] = min(("nf4", "int4", "fp4"), key=lambda s: row[f"{s} MSE/var"])
        rows.append(row)
    w = rng.standard_normal(n).astype(np.float32).reshape(-1, 4096)
    for block in (16, 256, 4096):
        row = {"weights": "gaussian", "block": block}
        for s in ("nf4", "int4", "fp4"):
            row[f"{s} MSE/var"] = float(((quantize(w, s, block_size=block).dequantize() - w) ** 2)
                                        .mean() / w.var())
        row["best"] = min(("nf4", "int4", "fp4"), key=lambda s: row[f"{s} MSE/var"])
        rows.append(row)
    return rows


def pbllm_sweep(model, val_batches, calib_batches, fractions=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5)):
    """Validation loss against salient fraction, magnitude vs Hessian saliency."""
    base = evaluate(model, val_batches)
    obs = calibrate(model, calib_batches)
    rows = []
    for p in fractions:
        row = {"salient fraction": p}
        for sal in ("magnitude", "hessian"):
            q, _ = quantize_weights(model, "pbllm", observers=obs, salient_fraction=p, saliency=sal)
            row["bits/weight"] = linear_bits(q)
            row[f"{sal} val loss"] = evaluate(q, val_batches)
        row["float32 val loss"] = base
        rows.append(row)
    return rows


def qat_table(model, train_data, val_batches, bits=(4, 2), steps=100, B=16, lr=1e-3):
    """PTQ (absmax and MSE per-channel) vs QAT (STE and LSQ, fine-tuned `steps` steps)."""
    base = evaluate(model, val_batches)
    tuned = copy.deepcopy(model)        # the same extra fine-tuning without quantization
    train(tuned, tuned.parameters(), train_data, steps, B, lr, seed=1, warmup=5)
    tuned_loss = evaluate(tuned, val_batches)
    rows = []
    for b in bits:
        row = {"bits": b, "float32": base, "float32 fine-tuned": tuned_loss}
        row["PTQ absmax"] = evaluate(quantize_weights(model, f"int{b}")[0], val_batches)
        row["PTQ MSE"] = evaluate(quantize_weights(model, f"int{b}", range_method="mse")[0],
                                  val_batches)
        for method in ("ste", "lsq"):
            m = copy.deepcopy(model)
            prepare_qat(m, b, method)
            train(m, m.parameters(), train_data, steps, B, lr, seed=1, warmup=5)
            row[f"QAT {method}"] = evaluate(convert(m), val_batches)
        rows.append(row)
    return rows


def compensation_table(model, train_data, val_batches, schemes=(("int2 g32", "int2", {"block_size": 32}),
                                                                ("binary", "binary", {})),
                       steps=100, B=16, lr=3e-3, rank=4):
    """Freeze a quantized model, train an adapter or an output layer; fraction of the gap won."""
    base = evaluate(model, val_batches)
    # the same small layers trained on the float model: how much of the gain is not compensation
    ref = {}
    for kind in ("adapter", "head"):
        m = copy.deepcopy(model)
        quantize_model(m, "int8")           # adapters attach to QuantLinear; int8 costs ~nothing
        train(m, add_compensation(m, kind, rank), train_data, steps, B, lr, seed=2, warmup=5)
        ref[kind] = evaluate(m, val_batches)
    rows = []
    for name, scheme, kw in schemes:
        qmodel, _ = quantize_weights(model, scheme, **kw)
        lq = evaluate(qmodel, val_batches)
        for kind in ("adapter", "head"):
            m = copy.deepcopy(qmodel)
            params = add_compensation(m, kind, rank)
            train(m, params, train_data, steps, B, lr, seed=2, warmup=5)
            lc = evaluate(m, val_batches)
            rows.append({"scheme": name, "compensation": kind,
                         "trainable params": sum(p.data.size for p in params),
                         "float32": base, "quantized": lq, "compensated": lc,
                         "gap recovered %": 100 * recovered_fraction(base, lq, lc),
                         "int8 + same layers": ref[kind]})
    return rows


def sensitivity_table(model, val_batches, scheme="int2", n_high=2, **kwargs):
    """Per-layer sensitivity to `scheme`, and mixed precision keeping the most sensitive layers
    in int8 against quantizing everything (and against keeping random layers in int8)."""
    ev = lambda m: evaluate(m, val_batches)       # noqa: E731
    sens = layer_sensitivity(model, ev, scheme, **kwargs)
    rows = [{"layer": n, "loss increase": d} for n, d in sens.items()]
    base = ev(model)
    names = linear_layers(model)
    plans = {"all " + scheme: {n: scheme for n in names},
             f"{n_high} most sensitive in int8": mixed_precision_plan(sens, scheme, "int8", n_high),
             f"{n_high} least sensitive in int8": mixed_precision_plan(dict(reversed(sens.items())),
                                                                        scheme, "int8", n_high)}
    mixed = []
    for label, plan in plans.items():
        m = copy.deepcopy(model)
        quantize_model(m, scheme, per_layer=plan, **kwargs)
        mixed.append({"plan": label, "bits/weight": linear_bits(m), "val loss": ev(m),
                      "float32": base})
    return rows, mixed


def format_table(rows, floatfmt="{:.4f}"):
    """Markdown table of a list of dict rows."""
    keys = list(rows[0])
    fmt = lambda v: floatfmt.format(v) if isinstance(v, float) else str(v)   # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
