"""Compensation: freeze a quantized model, train small float layers that win back the loss.

Two kinds of small unquantized layers, trained on the language-modelling loss while every
quantized weight (and everything else) stays frozen:
  - "adapter": a low-rank residual on each quantized layer (the LoRA / QLoRA form,
    arXiv 2106.09685, 2305.14314): y = QuantLinear(x) + (x A^T) B^T, A (r, K), B (N, r), B = 0 at
    the start so training begins exactly at the quantized model;
  - "head": one extra Linear on the final hidden state, h' = h + h W^T (W = 0 at the start),
    inserted before the output projection: a correction on the network's output.
The figure of merit is the fraction of the quantization loss gap won back:
    recovered = (L_quant - L_compensated) / (L_quant - L_float).
"""
import numpy as np

from minitx import random as _random
from minitx.nn.modules import Linear, Module, Parameter
from minitx.quant.linear import QuantLinear, replace_module

KINDS = ("adapter", "head")


class LowRankAdapter(Module):
    """y = base(x) + (x A^T) B^T with a frozen quantized `base` and trainable A, B."""

    def __init__(self, base, rank=4):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        bound = 1.0 / np.sqrt(base.in_features)
        self.A = Parameter(_random.generator().uniform(-bound, bound, (rank, base.in_features))
                           .astype(np.float32))                                   # (r, K)
        self.B = Parameter(np.zeros((base.out_features, rank), np.float32))       # (N, r)

    def forward(self, x):                                        # (..., K) -> (..., N)
        return self.base(x) + (x @ self.A.transpose(0, 1)) @ self.B.transpose(0, 1)


class ResidualHead(Module):
    """h' = norm(h) + norm(h) W^T with W = 0 at the start: wraps the model's final norm."""

    def __init__(self, norm, C):
        super().__init__()
        self.norm = norm
        self.fix = Linear(C, C, bias=True)
        self.fix.weight.data[...] = 0
        self.fix.bias.data[...] = 0

    def forward(self, x):
        h = self.norm(x)
        return h + self.fix(h)


def freeze(model):
    """Turn off gradients for every parameter of `model`."""
    for p in model.parameters():
        p.requires_grad = False
    return model


def add_compensation(model, kind="adapter", rank=4):
    """Freeze `model` (in place) and add trainable float layers.

    Args:
        model: a GPT with QuantLinear layers.
        kind: "adapter" (low-rank residual per QuantLinear) or "head" (one extra layer on the
            final hidden state).
        rank: adapter rank.
    Returns:
        list of the new trainable Parameters.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    freeze(model)
    new = []
    if kind == "adapter":
        for name, m in list(model.named_modules()):
            if isinstance(m, QuantLinear):
                ad = LowRankAdapter(m, rank)
                replace_module(model, name, ad)
                new += [ad.A, ad.B]
    else:
        head = ResidualHead(model.ln_f, model.config.n_embd)
        model.ln_f = head
        new += head.fix.parameters()
    if not new:
        raise ValueError("the model has no QuantLinear layers to compensate")
    return new


def recovered_fraction(loss_float, loss_quant, loss_comp):
    """(L_quant - L_comp) / (L_quant - L_float); nan when quantization cost nothing."""
    gap = loss_quant - loss_float
    return float("nan") if gap <= 0 else (loss_quant - loss_comp) / gap
