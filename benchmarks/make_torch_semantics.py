"""Write tests/data/torch_semantics.npz: PyTorch's answers for the semantics minitx promises.

Issue 14 ("Semantics tests against PyTorch's documented behaviour"): type promotion, norms over
several trailing dims, pow with negative / zero bases, cross-entropy with ignored and -inf rows.
The inputs are stored too ("input/<name>"); tests/test_semantics_torch.py applies the same
expressions (the PROMOTION table is repeated there: the test must not import torch) to minitx
tensors and compares with these values.

Run in a throwaway virtualenv, never as a minitx dependency:
    python -m venv /work/venvs/torch && /work/venvs/torch/bin/pip install torch==2.13.0 numpy
    /work/venvs/torch/bin/python benchmarks/make_torch_semantics.py
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "torch_semantics.npz")
NINF = -np.inf


def inputs():
    """The inputs of every case, as NumPy arrays (stored with the results)."""
    rng = np.random.default_rng(14)
    return {
        "i32": np.array([1, 2, 3], np.int32), "i64": np.array([1, 2, 3], np.int64),
        "i8": np.array([1, -2, 3], np.int8), "u8": np.array([1, 2, 250], np.uint8),
        "b": np.array([True, False, True]), "f16": np.array([1.5, -2, 3], np.float16),
        "f32": np.array([1.5, -2, 3], np.float32), "f64": np.array([0.25, 4, -1], np.float64),
        "f64_0d": np.array(0.5, np.float64), "i64_0d": np.array(1, np.int64),
        "pow_a": np.array([-2, -2, -2, 0, 0, 0, 2, -0.0, 3, -1.5]),
        "pow_b": np.array([2, 3, 0.5, 0, 2, -1, 0.5, 0, -2, 1]),
        "pow_x": np.array([0, 1, -1, 0.5, 2, -3]),
        "norm_x": rng.standard_normal((2, 3, 4)), "norm_w": rng.standard_normal((3, 4)),
        "norm_b": rng.standard_normal((3, 4)), "norm_dy": rng.standard_normal((2, 3, 4)),
        "small_x": (rng.standard_normal((2, 3, 4)) * 1e-4).astype(np.float32),
        "ce_logits": np.array([[NINF, 1, 2], [0.5, NINF, 1], [NINF, NINF, NINF], [1, 2, 3]]),
        "ce_target": np.array([-100, 1, -100, 2]),
        "ce_finite_logits": np.array([[NINF, 1, 2], [0.5, NINF, 1], [1, 2, 3]]),
        "ce_finite_target": np.array([-100, 2, 0]),
        "ce_1d": np.array([1.0, 2.0, 3.0]),
    }


# name -> (function of the operand dict, with Python scalars written in) ; same table in the test
PROMOTION = {
    "i32 * 0.5": lambda t: t["i32"] * 0.5, "i32 + 0.5": lambda t: t["i32"] + 0.5,
    "i32 ** 0.5": lambda t: t["i32"] ** 0.5, "0.5 * i32": lambda t: 0.5 * t["i32"],
    "1 - i32": lambda t: 1 - t["i32"], "0.5 / i32": lambda t: 0.5 / t["i32"],
    "i32 / i32": lambda t: t["i32"] / t["i32"], "i64 ** 2": lambda t: t["i64"] ** 2,
    "i32 * f32": lambda t: t["i32"] * t["f32"], "f32 * f64": lambda t: t["f32"] * t["f64"],
    "f32 * f64_0d": lambda t: t["f32"] * t["f64_0d"], "i32 * f64_0d": lambda t: t["i32"] * t["f64_0d"],
    "i32 + i64_0d": lambda t: t["i32"] + t["i64_0d"], "b + 1": lambda t: t["b"] + 1,
    "b + 0.5": lambda t: t["b"] + 0.5, "u8 + i8": lambda t: t["u8"] + t["i8"],
    "f16 + 0.5": lambda t: t["f16"] + 0.5, "i8 * f16": lambda t: t["i8"] * t["f16"],
    "2 ** i32": lambda t: 2 ** t["i32"], "2.0 ** i32": lambda t: 2.0 ** t["i32"],
    "f32 + 2.5": lambda t: t["f32"] + 2.5, "f64 * 3": lambda t: t["f64"] * 3,
}


def _np(t):
    return t.detach().numpy().copy()


def main():
    arrays = inputs()
    x = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    out = {f"input/{k}": v for k, v in arrays.items()}
    for name, fn in PROMOTION.items():
        r = fn(x)
        out[f"promote/{name}/dtype"] = np.array(str(r.dtype).replace("torch.", ""))
        out[f"promote/{name}/value"] = _np(r)
    leaf = x["f32"].clone().requires_grad_()                  # float32 leaf, float64 partner
    (leaf * x["f64"]).sum().backward()
    out["grad_dtype/f32 leaf * f64"] = _np(leaf.grad)

    a, b = x["pow_a"].clone().requires_grad_(), x["pow_b"].clone().requires_grad_()
    r = a ** b
    r.sum().backward()
    out.update({"pow/tt/out": _np(r), "pow/tt/ga": _np(a.grad), "pow/tt/gb": _np(b.grad)})
    for label, fn in {"x ** 0": lambda v: v ** 0, "x ** 0.5": lambda v: v ** 0.5,
                      "x ** -1": lambda v: v ** -1.0, "-2 ** x": lambda v: (-2.0) ** v,
                      "0 ** x": lambda v: 0.0 ** v, "2 ** x": lambda v: 2.0 ** v}.items():
        v = x["pow_x"].clone().requires_grad_()
        r = fn(v)
        r.sum().backward()
        out[f"pow/{label}/out"], out[f"pow/{label}/grad"] = _np(r), _np(v.grad)

    _norms(x, out)
    _cross_entropy(x, out)
    np.savez_compressed(OUT, torch_version=np.array(torch.__version__), **out)
    print(f"wrote {len(out)} arrays to {os.path.normpath(OUT)} (torch {torch.__version__})")


def _norms(x, out):
    for kind in ("layer_norm", "rms_norm"):
        xx = x["norm_x"].clone().requires_grad_()
        w = x["norm_w"].clone().requires_grad_()
        b = x["norm_b"].clone().requires_grad_()
        if kind == "layer_norm":
            y = F.layer_norm(xx, (3, 4), w, b, eps=1e-5)
            grads = (xx, w, b)
        else:
            y = F.rms_norm(xx, (3, 4), w, eps=1e-5)
            grads = (xx, w)
        (y * x["norm_dy"]).sum().backward()
        out[f"norm/{kind}/y"] = _np(y)
        for label, g in zip(("gx", "gw", "gb"), grads):
            out[f"norm/{kind}/{label}"] = _np(g.grad)
    m = torch.nn.RMSNorm((3, 4))                               # eps=None: finfo(float32).eps
    assert m.eps is None
    out["norm/rms_default_eps/y"] = _np(m(x["small_x"]))
    out["norm/rms_default_eps/eps"] = np.array(torch.finfo(torch.float32).eps)


def _cross_entropy(x, out):
    for case in ("ce", "ce_finite"):
        prefix = "ce" if case == "ce" else "ce_finite"
        for reduction in ("mean", "sum", "none"):
            z = x[f"{prefix}_logits"].clone().requires_grad_()
            loss = F.cross_entropy(z, x[f"{prefix}_target"], reduction=reduction)
            loss.sum().backward()
            out[f"{case}/{reduction}/loss"] = _np(loss)
            out[f"{case}/{reduction}/grad"] = _np(z.grad)
    for label, target, reduction in (("1d none", 1, "none"), ("1d none ignored", -100, "none"),
                                     ("1d mean ignored", -100, "mean")):
        loss = F.cross_entropy(x["ce_1d"], torch.tensor(target), reduction=reduction)
        out[f"ce1d/{label}"] = _np(loss)                      # keeps its shape: () in torch


if __name__ == "__main__":
    main()
