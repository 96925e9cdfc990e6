"""Compensation: freeze a quantized model, train small float layers that win back the loss.

Two kinds of small unquantized layers, trained on the language-modelling loss while every
quantized weight (and everything else) stays frozen:
  - "adapter": a LoRA adapter (`minitx.lora.LoRALinear`, arXiv 2106.09685; on a quantized base
    this is QLoRA's form, arXiv 2305.14314) on each quantized layer, with alpha = r so the
    scaling is 1: y = QuantLinear(x) + (x A^T) B^T, A (r, K), B (N, r), B = 0 at the start so
    training begins exactly at the quantized model;
  - "head": one extra Linear on the final hidden state, h' = h + h W^T (W = 0 at the start),
    inserted before the output projection: a correction on the network's output.
The figure of merit is the fraction of the quantization loss gap won back:
    recovered = (L_quant - L_compensated) / (L_quant - L_float).
"""
from minitx.lora import apply_lora, freeze
from minitx.nn.modules import Linear, Module
from minitx.quant.linear import QuantLinear

KINDS = ("adapter", "head")


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
        names = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
        if names:
            new = apply_lora(model, r=rank, alpha=rank, target_modules=names)
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
