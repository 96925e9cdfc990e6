"""LoRA and QLoRA: low-rank adapters on a frozen (optionally 4-bit) base, with PEFT's names.

LoRA (Hu et al. 2021, arXiv 2106.09685, eq. 3) keeps a pretrained weight W (out, in) frozen and
learns a low-rank update:

    h = x W^T + s * dropout(x) A^T B^T,    A (r, in), B (out, r),    s = alpha / r

(rsLoRA, Kalajdzievski 2023, arXiv 2312.03732: s = alpha / sqrt(r)). A starts Kaiming-uniform
with a = sqrt(5), as Hugging Face PEFT does (torch's `kaiming_uniform_(a=sqrt(5))` draws
U(-b, b) with b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)), i.e. b = 1 / sqrt(in)),
and B = 0, so a fresh adapter leaves the model's outputs exactly unchanged. Names follow PEFT:
`lora_A`, `lora_B`, `r`, `lora_alpha`, `scaling`, `merge()`, `unmerge()`.

QLoRA (Dettmers et al. 2023, arXiv 2305.14314) puts the same adapters on a base whose Linear
weights are NF4 with double quantization (`QuantLinear`): the packed codes are the only resident
copy of the base; every forward and backward dequantizes one layer at a time, and the backward
through a frozen quantized layer computes only the input gradient. A GGUF model's own blocks
(Q4_1, Q8_0, ...: `minitx.lora_gguf.GGMLLinear`) serve as the base as they are, never re-quantized.

Adapter files (PEFT's format) live in `minitx.lora_io`, the memory arithmetic of the QLoRA paper
in `minitx.lora_memory` (both re-exported here), fine-tuning checkpoints in
`minitx.lora_checkpoint`, activation checkpointing in `minitx.nn.checkpoint`, the paged AdamW in
`minitx.optim`. Training is the one loop: `Trainer(..., trainable=lora_parameters)`.
"""
import math
import re

import numpy as np

from minitx import backend
from minitx import random as _random
from minitx.autograd import Function, is_grad_enabled
from minitx.lora_gguf import GGMLLinear
from minitx.nn import functional as F
from minitx.nn.modules import Linear, Module, Parameter
from minitx.quant.linear import QuantLinear, quantize_model, replace_module

__all__ = ["LoRALinear", "apply_lora", "find_targets", "target_matches", "freeze",
           "lora_layers", "lora_parameters", "trainable_parameters", "quantize_base",
           "prepare_qlora", "merge_and_unload", "apply_adapter_dir", "save_adapter",
           "load_adapter", "hf_llama_path", "memory_estimate", "SHAPES", "QUANT_OPTIONS"]

BASE_TYPES = (Linear, QuantLinear, GGMLLinear)   # what LoRALinear wraps (and apply_lora finds)
QUANT_OPTIONS = {          # name -> (quantize scheme, kwargs): the frozen base of QLoRA
    "nf4": ("nf4", {"block_size": 64, "double_quant": True}),    # the paper's choice
    "int4": ("int4", {"block_size": 64}),                         # symmetric absmax, groups of 64
    "int8": ("int8", {}),                                         # symmetric absmax per channel
}


def _kaiming_uniform_a_sqrt5(shape, dtype):
    """PEFT's default init of lora_A: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = shape[1]."""
    bound = 1.0 / math.sqrt(shape[1])
    return _random.generator().uniform(-bound, bound, size=shape).astype(dtype)


class LoRALinear(Module):
    """A frozen Linear (or QuantLinear) plus a trainable low-rank update s * B A.

    Args:
        base: `nn.Linear`, `QuantLinear` or `GGMLLinear` (a GGUF file's blocks, see
            `minitx.lora_gguf`) (out_features, in_features); its parameters are frozen.
        r: rank, an int >= 1.
        alpha: lora_alpha; the update is scaled by alpha / r (alpha / sqrt(r) with rsLoRA).
        dropout: probability of dropping inputs to the adapter path (training only).
        use_rslora: scale by alpha / sqrt(r) instead of alpha / r.
    Attributes:
        lora_A: Parameter (r, in_features), Kaiming-uniform. lora_B: Parameter (out_features, r),
        zeros. merged: whether s * B A is currently folded into a float base weight.
    """

    def __init__(self, base, r=8, alpha=8, dropout=0.0, use_rslora=False):
        super().__init__()
        if not isinstance(base, BASE_TYPES):
            raise TypeError(f"LoRALinear wraps a Linear, QuantLinear or GGMLLinear, got "
                            f"{type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
            raise ValueError(f"LoRA rank r must be an integer >= 1, got {r!r}")
        if not isinstance(alpha, (int, float, np.number)) or not math.isfinite(alpha):
            raise ValueError(f"lora_alpha must be a finite number, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {dropout!r}")
        for p in base.parameters():
            p.requires_grad = False
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.lora_alpha, self.lora_dropout = int(r), alpha, float(dropout)
        self.use_rslora = bool(use_rslora)
        self.scaling = alpha / (math.sqrt(r) if use_rslora else r)
        dtype = base.weight.dtype if isinstance(base, Linear) else np.float32
        self.lora_A = Parameter(_kaiming_uniform_a_sqrt5((self.r, self.in_features), dtype))
        self.lora_B = Parameter(np.zeros((self.out_features, self.r), dtype))
        self.merged = False

    @property
    def quantized(self):
        """True for a packed base (QuantLinear, or GGMLLinear's GGUF blocks)."""
        return not isinstance(self.base, Linear)

    def _base_frozen(self):
        return not any(p.requires_grad for p in self.base.parameters())

    def forward(self, x):                                   # x (..., in) -> (..., out)
        if self.merged:
            return self.base(x)
        mask = None
        if self.training and self.lora_dropout > 0:
            keep = _random.generator().random(x.shape) >= self.lora_dropout
            mask = keep.astype(x.dtype) / np.asarray(1 - self.lora_dropout, x.dtype)
        if self._base_frozen():                             # the usual case: one fused node
            return _LoRAFn.apply(x, self.lora_A, self.lora_B, layer=self, mask=mask)
        y = self.base(x)                                    # base weights trained too
        h = x if mask is None else x * mask                 # (..., in)
        z = F.linear(F.linear(h, self.lora_A), self.lora_B)  # (..., r) -> (..., out)
        return y + z * self.scaling

    def delta_weight(self):
        """s * B A, the low-rank update as a dense (out_features, in_features) array."""
        return (self.scaling * (self.lora_B.data @ self.lora_A.data)).astype(self.lora_A.dtype)

    def merge(self):
        """Fold s * B A into the base weight.

        Float base: W <- W + s B A in place (forward then skips the adapter path); `unmerge()`
        subtracts it again, which restores W up to one float rounding per element.
        Quantized base: the packed weight is never re-quantized (that would add a second
        quantization error the adapter was not trained for). Instead a NEW float32 `Linear`
        holding W_hat + s B A is returned and this module is left unchanged.
        Returns:
            the float base Linear (merged in place), or the new float Linear (quantized base).
        """
        if self.quantized:
            W = self.base.weight_float() + self.delta_weight().astype(np.float32)  # (out, in)
            lin = Linear(self.in_features, self.out_features, bias=self.base.bias is not None)
            lin.weight.data = W
            if self.base.bias is not None:
                lin.bias.data = self.base.bias.data.astype(np.float32).copy()
            return lin
        if not self.merged:
            self.base.weight.data += self.delta_weight()
            self.merged = True
        return self.base

    def unmerge(self):
        """Undo `merge()` on a float base: W <- W - s B A."""
        if self.quantized:
            raise ValueError("a quantized base is never merged in place; nothing to unmerge")
        if self.merged:
            self.base.weight.data -= self.delta_weight()
            self.merged = False
        return self

    def __repr__(self):
        return (f"LoRALinear({self.base!r}, r={self.r}, lora_alpha={self.lora_alpha}, "
                f"scaling={self.scaling:.4g}, dropout={self.lora_dropout})")


class _LoRAFn(Function):
    """y = base(x) + s * (x_d A^T) B^T as one graph node, x_d = dropout(x), base frozen.

    One node keeps one output per layer alive (four separate ops would keep four (..., out)
    arrays until the backward) and saves only u = x_d A^T (..., r) besides the mask. The
    backward computes the input gradient through W (a QuantLinear dequantizes it for the
    moment, a GGMLLinear decodes NR rows at a time: QLoRA's "backward through the frozen 4-bit
    weights") and the adapters' gradients, never a gradient for W:
        g_u = s g B;   dB = s g^T u;   dA = g_u^T x_d;   dx = g W + (g_u A) * mask
    """

    @staticmethod
    def forward(ctx, x, A, B, layer, mask):
        base = layer.base
        if not isinstance(base, Linear):                                  # packed base
            y = base.compute(x).astype(np.result_type(x.dtype, np.float32), copy=False)
        else:
            y = backend.matmul(x, base.weight.data.T)                      # (..., out)
            if base.bias is not None:
                y += base.bias.data
        xd = x if mask is None else x * mask                              # (..., in)
        u = backend.matmul(xd, A.T)                                       # (..., r)
        z = backend.matmul(u, B.T)                                        # (..., out)
        z *= np.asarray(layer.scaling, z.dtype)
        ctx.layer, ctx.mask = layer, mask
        if is_grad_enabled():
            ctx.save_for_backward(x, u, A, B)
        return y + z

    @staticmethod
    def backward(ctx, g):                                                 # g (..., out)
        x, u, A, B = ctx.saved_tensors
        layer, s = ctx.layer, ctx.layer.scaling
        xd = x if ctx.mask is None else x * ctx.mask
        gu = backend.matmul(g, B) * np.asarray(s, g.dtype)                # (..., r)
        g2, u2 = g.reshape(-1, g.shape[-1]), u.reshape(-1, u.shape[-1])
        gB = (backend.matmul(g2.T, u2) * np.asarray(s, g.dtype)).astype(B.dtype, copy=False)
        gA = backend.matmul(gu.reshape(-1, gu.shape[-1]).T, xd.reshape(-1, x.shape[-1]))
        gx = None
        if ctx.needs_input_grad[0]:
            ga = backend.matmul(gu, A)                                    # (..., in)
            if isinstance(layer.base, GGMLLinear):                        # NR rows at a time
                gx = layer.base.input_grad(g).astype(g.dtype, copy=False)  # (..., in)
            else:
                W = layer.base.weight_float() if layer.quantized else layer.base.weight.data
                gx = backend.matmul(g, W.astype(g.dtype, copy=False))      # (..., in)
            gx += ga if ctx.mask is None else ga * ctx.mask
            gx = gx.astype(x.dtype, copy=False)
        return gx, gA.astype(A.dtype, copy=False), gB


# ============================== applying adapters to a model =================================
def target_matches(target_modules, name):
    """PEFT's rule: a string is a regular expression that must match the whole module name
    (`re.fullmatch`); a list matches a name equal to one of its entries or ending in
    "." + an entry."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return name in target_modules or any(name.endswith("." + t) for t in target_modules)


def _linear_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, BASE_TYPES) and n]


def find_targets(model, target_modules):
    """Names of the Linear/QuantLinear modules that `target_modules` selects.

    "all-linear" (as PEFT) selects every linear layer except the output head `lm_head`.
    Raises ValueError when nothing matches, naming the targets and the candidate names.
    """
    if target_modules is None or (not isinstance(target_modules, str) and not target_modules):
        raise ValueError("target_modules must name the layers to adapt, e.g. ['q_proj', "
                         "'v_proj'], a regular expression, or 'all-linear'")
    if not isinstance(target_modules, str):
        target_modules = [str(t) for t in target_modules]
    names = _linear_names(model)
    if target_modules == "all-linear":
        hit = [n for n in names if n.rpartition(".")[2] != "lm_head"]
    else:
        hit = [n for n in names if target_matches(target_modules, n)]
        other = [n for n, m in model.named_modules()
                 if n and n not in names and target_matches(target_modules, n)]
        if other:
            kinds = {n: type(dict(model.named_modules())[n]).__name__ for n in other[:3]}
            raise ValueError(f"target_modules {target_modules!r} match modules that are not "
                             f"Linear layers: {kinds}")
    if not hit:
        leaves = sorted({n.rpartition(".")[2] for n in names})
        raise ValueError(f"target_modules {target_modules!r} match no Linear layer of the model; "
                         f"its Linear layers are named {leaves} (e.g. {names[:2]})")
    return hit


def freeze(model):
    """Turn off gradients for every parameter of `model`."""
    for p in model.parameters():
        p.requires_grad = False
    return model


def apply_lora(model, r=8, alpha=8, target_modules=None, dropout=0.0, use_rslora=False):
    """Freeze `model` and wrap every targeted Linear/QuantLinear in a LoRALinear (in place).

    Args:
        model: a Module (e.g. GPT). r, alpha, dropout, use_rslora: see LoRALinear.
        target_modules: list of names or suffixes, a regex (re.fullmatch), or "all-linear".
    Returns:
        list of the new trainable Parameters (lora_A, lora_B of each adapted layer, in order).
    """
    names = find_targets(model, target_modules)
    freeze(model)
    new = []
    modules = dict(model.named_modules())
    for name in names:
        layer = LoRALinear(modules[name], r=r, alpha=alpha, dropout=dropout,
                           use_rslora=use_rslora)
        replace_module(model, name, layer)
        new += [layer.lora_A, layer.lora_B]
    model.lora_settings = {"r": int(r), "lora_alpha": alpha, "lora_dropout": float(dropout),
                           "use_rslora": bool(use_rslora),
                           "target_modules": target_modules if isinstance(target_modules, str)
                           else list(target_modules)}
    return new


def lora_layers(model):
    """(name, LoRALinear) pairs of the model, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def lora_parameters(model):
    """The adapters' Parameters (lora_A, lora_B of every LoRALinear): the `trainable` set."""
    return [p for _, m in lora_layers(model) for p in (m.lora_A, m.lora_B)]


def trainable_parameters(model):
    """(trainable, total) parameter counts, as PEFT's `get_nb_trainable_parameters`.

    A QuantLinear's packed weight counts as its logical (out * in) parameters.
    """
    trainable = sum(p.data.size for p in model.parameters() if p.requires_grad)
    total = model.num_parameters()
    total += sum(int(np.prod(m.qweight.shape)) for m in model.modules()
                 if isinstance(m, QuantLinear))
    total += sum(m.out_features * m.in_features for m in model.modules()
                 if isinstance(m, GGMLLinear))
    return trainable, total


def quantize_base(model, quant="nf4", skip=("lm_head",)):
    """Replace the model's Linear layers (except `skip`) by packed QuantLinear, in place.

    Args:
        quant: "nf4" (NF4, blocks of 64, double quantization: QLoRA's base), "int4" or "int8".
    Returns:
        dict name -> scheme used.
    """
    if quant not in QUANT_OPTIONS:
        raise ValueError(f"quant must be one of {sorted(QUANT_OPTIONS)}, got {quant!r}")
    scheme, kw = QUANT_OPTIONS[quant]
    return quantize_model(model, scheme, skip=skip, **kw)


def prepare_qlora(model, quant="nf4", r=8, alpha=8, target_modules="all-linear", dropout=0.0,
                  use_rslora=False):
    """QLoRA in one call: quantize the base (packed, frozen), then add float32 adapters.

    Returns:
        list of the trainable adapter Parameters.
    """
    find_targets(model, target_modules)            # fail before quantizing anything
    quantize_base(model, quant)
    return apply_lora(model, r, alpha, target_modules, dropout, use_rslora)


def merge_and_unload(model, dequantize=False):
    """Replace every LoRALinear by a plain Linear holding W + s B A (PEFT's name), in place.

    Args:
        dequantize: must be True when a base layer is quantized: such a layer is replaced by a
            float32 Linear (W_hat + s B A), never re-quantized. Without it a quantized base
            raises ValueError, so a packed model is never silently expanded.
    Returns:
        the model.
    """
    layers = lora_layers(model)
    quantized = [n for n, m in layers if m.quantized]
    if quantized and not dequantize:
        raise ValueError(f"cannot merge adapters into quantized layers in place ({quantized[0]}"
                         f", ...): merging returns float32 weights (W_hat + s B A) and never "
                         "re-quantizes; pass dequantize=True to accept float32 layers")
    for name, m in layers:
        new = m.merge()                            # float base: merged in place; quantized:
        new.weight.requires_grad = False           # a new float32 Linear
        replace_module(model, name, new)
    return model


# adapter files and memory arithmetic: re-exported so `minitx.lora` is the one entry point
from minitx.lora_io import load_adapter, save_adapter, hf_llama_path   # noqa: E402,F401
from minitx.lora_memory import memory_estimate, SHAPES                 # noqa: E402,F401


def apply_adapter_dir(model, path, merge=False):
    """Load the adapter at `path` (a PEFT adapter directory, or a finetune run / step directory)
    onto `model`; with merge=True fold it into the weights (a quantized base refuses: merging
    would need float32 weights or a re-quantization)."""
    import os
    from minitx.checkpoint import resolve
    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        path = resolve(path)
    load_adapter(model, path)
    if merge:
        if any(m.quantized for _, m in lora_layers(model)):
            raise ValueError("--merge: the base is quantized, and merging never re-quantizes "
                             "(it would need float32 weights); sample without --merge")
        merge_and_unload(model)
    return model.eval()
