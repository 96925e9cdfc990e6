"""minitx against PyTorch's documented behaviour (issue 14): type promotion, norms over several
trailing dims, pow with negative and zero bases, cross-entropy with ignored and -inf rows.

The expected values were written down from a throwaway PyTorch 2.13 run by
benchmarks/make_torch_semantics.py into tests/data/torch_semantics.npz (inputs included); this
test never imports torch. Two documented differences are asserted as such:
  - a NumPy *array* operand is a non-tensor in minitx (its width never wins; minitx.promotion);
  - an ignored cross-entropy row whose logits are all -inf gets gradient 0 (torch: NaN).
"""
import os

import numpy as np
import pytest

import minitx
import minitx.nn.functional as F
from minitx import nn
from minitx.autograd import Tensor

DATA = np.load(os.path.join(os.path.dirname(__file__), "data", "torch_semantics.npz"))
TOL = {np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
       np.dtype(np.float32): dict(rtol=2e-6, atol=1e-6),
       np.dtype(np.float16): dict(rtol=1e-3, atol=0)}


def _inputs():
    return {k[len("input/"):]: DATA[k] for k in DATA.files if k.startswith("input/")}


def _tensors(requires_grad=()):
    return {k: Tensor(v.copy(), requires_grad=k in requires_grad) for k, v in _inputs().items()}


def _close(actual, expected, what):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != torch's {expected.shape}"
    tol = TOL.get(actual.dtype, dict(rtol=0, atol=0))
    np.testing.assert_allclose(actual, expected, equal_nan=True, err_msg=what, **tol)


# ---------------------------------------------------------------- type promotion
PROMOTION = {          # the same table as benchmarks/make_torch_semantics.py
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


@pytest.mark.parametrize("name", sorted(PROMOTION))
def test_promotion_matches_torch(name):
    r = PROMOTION[name](_tensors())
    assert str(r.dtype) == str(DATA[f"promote/{name}/dtype"]), name
    _close(r.data, DATA[f"promote/{name}/value"], name)


def test_float32_leaf_never_gets_a_float64_grad():
    t = _tensors(requires_grad=("f32",))
    (t["f32"] * t["f64"]).sum().backward()
    assert t["f32"].grad.dtype == np.float32
    _close(t["f32"].grad, DATA["grad_dtype/f32 leaf * f64"], "grad")


def test_numpy_array_operands_are_non_tensors():
    """The documented difference: torch makes an ndarray a tensor (float32 + float64 array is
    float64); in minitx it is a non-tensor, so the Tensor's dtype (category) wins."""
    x = _inputs()
    f32, i32 = Tensor(x["f32"]), Tensor(x["i32"])
    assert (f32 + x["f64"]).dtype == np.float32 and (x["f64"] + f32).dtype == np.float32
    assert (i32 * x["f64"]).dtype == np.float32                  # float category, default width
    np.testing.assert_allclose((i32 * x["f64"]).data, x["i32"] * x["f64"], rtol=1e-7)


# ---------------------------------------------------------------- pow
def test_tensor_pow_tensor_matches_torch():
    t = _tensors(requires_grad=("pow_a", "pow_b"))
    r = t["pow_a"] ** t["pow_b"]
    r.sum().backward()
    _close(r.data, DATA["pow/tt/out"], "a ** b")
    _close(t["pow_a"].grad, DATA["pow/tt/ga"], "d(a ** b)/da")
    _close(t["pow_b"].grad, DATA["pow/tt/gb"], "d(a ** b)/db")


POW = {"x ** 0": lambda v: v ** 0, "x ** 0.5": lambda v: v ** 0.5, "x ** -1": lambda v: v ** -1.0,
       "-2 ** x": lambda v: (-2.0) ** v, "0 ** x": lambda v: 0.0 ** v, "2 ** x": lambda v: 2.0 ** v}


@pytest.mark.parametrize("label", sorted(POW))
def test_pow_with_a_constant_matches_torch(label):
    v = _tensors(requires_grad=("pow_x",))["pow_x"]
    r = POW[label](v)
    r.sum().backward()
    _close(r.data, DATA[f"pow/{label}/out"], label)
    _close(v.grad, DATA[f"pow/{label}/grad"], f"grad of {label}")


# ---------------------------------------------------------------- norms over several dims
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_norms_over_two_trailing_dims_match_torch(on_backend, kind):
    t = _tensors(requires_grad=("norm_x", "norm_w", "norm_b"))
    x, w, b = t["norm_x"], t["norm_w"], t["norm_b"]
    if kind == "layer_norm":
        y, grads = F.layer_norm(x, (3, 4), w, b, eps=1e-5), (x, w, b)
    else:
        y, grads = F.rms_norm(x, (3, 4), w, eps=1e-5), (x, w)
    (y * Tensor(_inputs()["norm_dy"])).sum().backward()
    _close(y.data, DATA[f"norm/{kind}/y"], f"{kind} (3, 4)")
    for label, g in zip(("gx", "gw", "gb"), grads):
        _close(g.grad, DATA[f"norm/{kind}/{label}"], f"{kind} {label}")


@pytest.mark.parametrize("cls", [nn.LayerNorm, nn.RMSNorm])
def test_norm_modules_take_the_whole_normalized_shape(cls):
    m = cls((3, 4), dtype=np.float64)
    assert m.weight.shape == (3, 4)
    y = m(Tensor(_inputs()["norm_x"])).data
    rows = y.reshape(2, 12)
    if cls is nn.LayerNorm:                       # zero mean, unit variance over all 12 values
        np.testing.assert_allclose(rows.mean(1), 0, atol=1e-12)
    np.testing.assert_allclose((rows ** 2).mean(1), 1, rtol=1e-4)
    with pytest.raises(ValueError, match="trailing dims"):
        m(Tensor(np.zeros((2, 4, 3))))


def test_rms_norm_default_eps_is_finfo_eps_like_torch():
    m = nn.RMSNorm((3, 4))
    assert m.eps is None
    x = Tensor(_inputs()["small_x"])                  # mean(x^2) ~ 1e-8: eps matters
    _close(m(x).data, DATA["norm/rms_default_eps/y"], "RMSNorm default eps")
    assert float(DATA["norm/rms_default_eps/eps"]) == np.finfo(np.float32).eps
    assert not np.allclose(F.rms_norm(x, (3, 4), eps=1e-6).data, DATA["norm/rms_default_eps/y"],
                           rtol=1e-3)


# ---------------------------------------------------------------- cross-entropy
@pytest.mark.parametrize("case", ["ce", "ce_finite"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_with_ignored_and_inf_rows_matches_torch(case, reduction):
    t = _tensors(requires_grad=(f"{case}_logits",))
    z = t[f"{case}_logits"]
    loss = F.cross_entropy(z, t[f"{case}_target"].data, reduction=reduction)
    loss.sum().backward()
    _close(loss.data, DATA[f"{case}/{reduction}/loss"], f"{case} {reduction} loss")
    expected = DATA[f"{case}/{reduction}/grad"].copy()
    all_inf_ignored = np.isneginf(z.data).all(axis=1) & (t[f"{case}_target"].data == -100)
    assert np.isnan(expected[all_inf_ignored]).all()       # torch: NaN; minitx: an ignored row
    expected[all_inf_ignored] = 0                          # contributes nothing, gradient too
    _close(z.grad, expected, f"{case} {reduction} grad")


@pytest.mark.parametrize("label, target, reduction", [("1d none", 1, "none"),
                                                      ("1d none ignored", -100, "none"),
                                                      ("1d mean ignored", -100, "mean")])
def test_cross_entropy_of_1d_logits_matches_torch(label, target, reduction):
    loss = F.cross_entropy(Tensor(_inputs()["ce_1d"]), np.array(target), reduction=reduction)
    _close(loss.data, DATA[f"ce1d/{label}"], label)
    assert loss.shape == ()


def test_stored_values_come_from_torch():
    assert str(DATA["torch_version"]).startswith("2.13")
    assert minitx.tensor([1.0]).dtype == np.float32
