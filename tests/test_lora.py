"""minitx.lora: LoRALinear over float and quantized bases, apply_lora's matching, merge/unmerge,
gradients against finite differences and against the merged-weight forward."""
import copy
import re

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minitx
from minitx.autograd import Tensor
from minitx.lora import (LoRALinear, apply_lora, find_targets, lora_parameters, merge_and_unload,
                         prepare_qlora, trainable_parameters)
from minitx.models.gpt import GPT, get_config
from minitx.nn.modules import Linear
from minitx.optim import AdamW
from minitx.quant.linear import QuantLinear

# tolerances, keyed by what is compared
TOL = {
    "fd64": dict(rtol=1e-6, atol=1e-8),       # central differences in float64 (eps 1e-6)
    "float32": dict(rtol=1e-5, atol=1e-5),    # two float32 evaluation orders of the same sum
    "float64": dict(rtol=1e-12, atol=1e-12),
}
BASES = ["float", "int8", "int4", "nf4"]
QUANT = {"int8": ("int8", {}), "int4": ("int4", {"block_size": 16}),
         "nf4": ("nf4", {"block_size": 16, "double_quant": True})}


def make_base(kind, n_in, n_out, bias, seed, dtype=np.float64):
    minitx.manual_seed(seed)
    lin = Linear(n_in, n_out, bias=bias, dtype=np.float32)
    if kind == "float":
        return lin.to(dtype)
    scheme, kw = QUANT[kind]
    return QuantLinear.from_linear(lin, scheme, **kw)


def random_adapter(layer, seed, dtype=np.float64):
    """Give the adapter non-zero A and B (a trained one), in `dtype`."""
    rng = np.random.default_rng(seed)
    layer.lora_A.data = rng.standard_normal(layer.lora_A.shape).astype(dtype)
    layer.lora_B.data = rng.standard_normal(layer.lora_B.shape).astype(dtype)


cases = st.fixed_dictionaries(dict(
    kind=st.sampled_from(BASES), n_in=st.sampled_from([16, 32]), n_out=st.integers(1, 12),
    r=st.integers(1, 6), alpha=st.sampled_from([1, 4, 8.0, 16]), bias=st.booleans(),
    rslora=st.booleans(), lead=st.sampled_from([(3,), (2, 3)]), seed=st.integers(0, 1000)))


@given(cases)
def test_fresh_adapter_leaves_outputs_unchanged(c):
    base = make_base(c["kind"], c["n_in"], c["n_out"], c["bias"], c["seed"], np.float32)
    x = np.random.default_rng(c["seed"]).standard_normal(c["lead"] + (c["n_in"],))
    x = Tensor(x.astype(np.float32))
    want = base(x).data.copy()
    layer = LoRALinear(base, r=c["r"], alpha=c["alpha"], use_rslora=c["rslora"])
    assert np.array_equal(layer(x).data, want)
    assert np.all(layer.lora_B.data == 0)
    bound = 1 / np.sqrt(c["n_in"])                    # PEFT: kaiming_uniform(a=sqrt(5))
    assert np.abs(layer.lora_A.data).max() <= bound and layer.lora_A.shape == (c["r"], c["n_in"])
    assert layer.scaling == c["alpha"] / (np.sqrt(c["r"]) if c["rslora"] else c["r"])


@given(cases, st.sampled_from([0.0, 0.3]))
def test_gradients_match_finite_differences(c, p):
    base = make_base(c["kind"], c["n_in"], c["n_out"], c["bias"], c["seed"])
    layer = LoRALinear(base, r=c["r"], alpha=c["alpha"], dropout=p, use_rslora=c["rslora"])
    random_adapter(layer, c["seed"])
    rng = np.random.default_rng(c["seed"] + 1)
    x = rng.standard_normal(c["lead"] + (c["n_in"],))
    w = rng.standard_normal(c["lead"] + (c["n_out"],))

    def loss():
        minitx.manual_seed(7)                         # the same dropout mask every call
        return float((layer(Tensor(x)).data * w).sum())

    minitx.manual_seed(7)
    (layer(Tensor(x)) * Tensor(w)).sum().backward()
    for P in (layer.lora_A, layer.lora_B):
        num = np.zeros_like(P.data)
        for i in np.ndindex(P.shape):
            old = P.data[i]
            P.data[i] = old + 1e-6
            up = loss()
            P.data[i] = old - 1e-6
            num[i] = (up - loss()) / 2e-6
            P.data[i] = old
        np.testing.assert_allclose(P.grad, num, **TOL["fd64"])
    for p_ in base.parameters():
        assert p_.grad is None                        # the base is frozen


@given(cases)
def test_gradients_match_merged_weight_forward(c):
    """y = x (W + s B A)^T: the adapter's gradients follow from dL/dW_merged = G^T X."""
    base = make_base(c["kind"], c["n_in"], c["n_out"], c["bias"], c["seed"])
    layer = LoRALinear(base, r=c["r"], alpha=c["alpha"], use_rslora=c["rslora"])
    random_adapter(layer, c["seed"])
    rng = np.random.default_rng(c["seed"] + 2)
    x = Tensor(rng.standard_normal(c["lead"] + (c["n_in"],)), requires_grad=True)
    G = rng.standard_normal(c["lead"] + (c["n_out"],))
    y = layer(x)
    (y * Tensor(G)).sum().backward()
    A, B, s = layer.lora_A.data, layer.lora_B.data, layer.scaling
    W = base.weight.data if c["kind"] == "float" else base.weight_float().astype(np.float64)
    Wm = W + s * B @ A                                               # (out, in)
    b = 0 if base.bias is None else base.bias.data
    X, G2 = x.data.reshape(-1, c["n_in"]), G.reshape(-1, c["n_out"])
    dW = G2.T @ X                                                    # (out, in)
    tol = TOL["float64"] if c["kind"] == "float" else TOL["float32"]
    np.testing.assert_allclose(y.data, x.data @ Wm.T + b, **tol)
    np.testing.assert_allclose(layer.lora_B.grad, s * dW @ A.T, **TOL["float64"])
    np.testing.assert_allclose(layer.lora_A.grad, s * B.T @ dW, **TOL["float64"])
    np.testing.assert_allclose(x.grad, G @ Wm, **tol)


@given(cases)
def test_merge_unmerge(c):
    base = make_base(c["kind"], c["n_in"], c["n_out"], c["bias"], c["seed"], np.float32)
    layer = LoRALinear(base, r=c["r"], alpha=c["alpha"], use_rslora=c["rslora"])
    random_adapter(layer, c["seed"], np.float32)
    x = Tensor(np.random.default_rng(c["seed"]).standard_normal((4, c["n_in"])).astype(np.float32))
    want = layer(x).data.copy()
    if c["kind"] != "float":
        codes = {k: v.copy() for k, v in base.qweight.arrays.items()}
        merged = layer.merge()                        # a new float Linear, never re-quantized
        assert isinstance(merged, Linear) and not layer.merged
        np.testing.assert_allclose(merged(x).data, want, **TOL["float32"])
        assert all(np.array_equal(base.qweight.arrays[k], v) for k, v in codes.items())
        with pytest.raises(ValueError, match="quantized"):
            layer.unmerge()
        return
    W0 = base.weight.data.copy()
    layer.merge()
    assert layer.merged
    np.testing.assert_allclose(layer(x).data, want, **TOL["float32"])
    layer.unmerge()
    D = layer.delta_weight()
    # W + D - D in float32: at most one rounding of each of the two operations
    bound = 2 * np.finfo(np.float32).eps * (np.abs(W0) + np.abs(D))
    assert np.all(np.abs(base.weight.data - W0) <= bound)
    np.testing.assert_allclose(layer(x).data, want, **TOL["float32"])
    W1 = base.weight.data.copy()
    layer.lora_B.data[...] = 0                        # a zero update merges exactly
    layer.merge()
    layer.unmerge()
    assert np.array_equal(base.weight.data, W1)


def test_invalid_arguments():
    lin = Linear(4, 3)
    for r in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="rank"):
            LoRALinear(lin, r=r)
    with pytest.raises(ValueError, match="dropout"):
        LoRALinear(lin, dropout=1.0)
    with pytest.raises(TypeError, match="Linear"):
        LoRALinear(GPT(get_config("tiny")).ln_f)


def tiny(name="tiny", **kw):
    minitx.manual_seed(0)
    return GPT(get_config(name, **kw))


def test_target_matching_follows_peft():
    model = tiny("llama", n_layer=2, n_embd=32, n_head=2, block_size=16)
    names = [n for n, m in model.named_modules() if isinstance(m, Linear)]
    some = names[0].rpartition(".")[2]                # e.g. "qkv" or "q_proj"
    hit = find_targets(model, [some])                 # a suffix after "."
    assert len(hit) == 2 and all(n.endswith("." + some) for n in hit)
    assert find_targets(model, [names[0]]) == [names[0]]          # a full name
    assert find_targets(model, r"blocks\.1\.(attn|mlp)\..*") == [n for n in names
                                                                 if n.startswith("blocks.1.")]
    with pytest.raises(ValueError, match="match no Linear"):       # regex: whole name only
        find_targets(model, re.escape(names[0][:-1]))             # a prefix of a name
    assert "lm_head" not in find_targets(model, "all-linear")
    assert set(find_targets(model, "all-linear")) == set(names) - {"lm_head"}
    with pytest.raises(ValueError, match="match no Linear"):
        apply_lora(model, target_modules=["nonexistent_proj"])
    with pytest.raises(ValueError, match="not Linear"):
        find_targets(model, ["ln1"])
    with pytest.raises(ValueError, match="target_modules"):
        apply_lora(model, target_modules=None)


@pytest.mark.parametrize("quant", [None, "nf4", "int8"])
def test_only_adapters_train(quant):
    model = tiny()
    if quant:
        params = prepare_qlora(model, quant, r=2, alpha=4, target_modules="all-linear")
    else:
        params = apply_lora(model, r=2, alpha=4, target_modules=["qkv", "fc"])
    assert params == lora_parameters(model)
    frozen = {n: p.data.copy() for n, p in model.named_parameters() if not p.requires_grad}
    trainable, total = trainable_parameters(model)
    assert trainable == sum(p.data.size for p in params)
    assert trainable == sum(m.r * (m.in_features + m.out_features) for m in model.modules()
                            if isinstance(m, LoRALinear))
    assert total > trainable
    opt = AdamW(params, lr=1e-2)
    idx = np.random.default_rng(0).integers(0, 256, (2, 16))
    for _ in range(2):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, n
        opt.step()
        opt.zero_grad()
    assert set(opt.state) == {id(p) for p in params}
    for n, p in model.named_parameters():
        if n in frozen:
            assert np.array_equal(p.data, frozen[n]), n
    assert any(np.any(m.lora_B.data != 0) for m in model.modules() if isinstance(m, LoRALinear))


def test_merge_and_unload():
    model = tiny()
    apply_lora(model, r=2, alpha=4, target_modules=["qkv", "proj"])
    for m in model.modules():
        if isinstance(m, LoRALinear):
            random_adapter(m, 1, np.float32)
            m.lora_B.data *= 0.01
    idx = np.arange(12).reshape(1, 12)
    want = model(idx)[0].data
    merge_and_unload(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    np.testing.assert_allclose(model(idx)[0].data, want, **TOL["float32"])
    q = tiny()
    prepare_qlora(q, "nf4", r=2, target_modules=["qkv"])
    with pytest.raises(ValueError, match="re-quantize"):
        merge_and_unload(copy.deepcopy(q))
    want = q(idx)[0].data
    merge_and_unload(q, dequantize=True)
    np.testing.assert_allclose(q(idx)[0].data, want, **TOL["float32"])
