"""QuantLinear, whole-model quantization, quantized checkpoints and the quantize CLI."""
import argparse
import copy
import json
import os

import numpy as np
import pytest

import minitx
from minitx.models.gpt import GPT, get_config
from minitx.nn.modules import Linear
from minitx.quant.cli import add_quantize_parser, quantize_checkpoint
from minitx.quant.linear import QuantLinear, kernel_plan, quantize_model, weight_bytes
from minitx.quant.serialize import load_quantized_model

# Tolerances, in one place: float32 matmuls in a different order (kernel vs NumPy).
TOL = {"float32": {"rtol": 1e-4, "atol": 1e-5}}
T = TOL["float32"]
SCHEMES = [("int8", {}), ("int8", {"block_size": 16}), ("int4", {}), ("int4", {"block_size": 16}),
           ("int3", {}), ("int2", {"symmetric": False}), ("nf4", {"double_quant": True}),
           ("fp4", {}), ("binary", {}), ("pbllm", {})]


def tiny_gpt(seed=0, **overrides):
    minitx.random.manual_seed(seed)
    return GPT(get_config("tiny", vocab_size=48, **overrides)).eval()


def _dequantized_copy(qmodel, fmodel):
    """The float model with every quantized layer's weight replaced by its dequantized weight."""
    ref = copy.deepcopy(fmodel)
    mods = dict(ref.named_modules())
    for name, m in qmodel.named_modules():
        if isinstance(m, QuantLinear):
            mods[name].weight.data[...] = m.weight_float()
    return ref


@pytest.mark.parametrize("scheme,kw", SCHEMES)
def test_quantized_forward_equals_dequantized_forward(on_backend, scheme, kw):
    model = tiny_gpt()
    qmodel = copy.deepcopy(model)
    quantize_model(qmodel, scheme, **kw)
    ref = _dequantized_copy(qmodel, model)
    idx = np.random.default_rng(1).integers(0, 48, (2, 12))
    with minitx.no_grad():
        got, want = qmodel(idx)[0].data, ref(idx)[0].data
    err = np.abs(got - want)
    assert np.allclose(got, want, **T), (f"{scheme} {kw} on {on_backend}: max diff {err.max()} "
                                         f"at {np.unravel_index(err.argmax(), err.shape)}")


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_quant_linear_gradients_reach_input_and_bias(scheme):
    minitx.random.manual_seed(0)
    lin = Linear(24, 10)
    ql = QuantLinear.from_linear(lin, scheme)
    ql.bias.requires_grad = True
    x = np.random.default_rng(0).standard_normal((3, 5, 24)).astype(np.float32)
    g = np.random.default_rng(1).standard_normal((3, 5, 10)).astype(np.float32)
    tx = minitx.tensor(x, requires_grad=True)
    (ql(tx) * minitx.tensor(g)).sum().backward()
    W = ql.weight_float()
    assert np.allclose(tx.grad, g @ W, **T)
    assert np.allclose(ql.bias.grad, g.reshape(-1, 10).sum(0), **T)


def test_kernel_plan_covers_symmetric_int8_int4():
    lin = Linear(32, 8)
    assert kernel_plan(QuantLinear.from_linear(lin, "int8").qweight)[0] == "linear_w8"
    assert kernel_plan(QuantLinear.from_linear(lin, "int4", block_size=16).qweight)[0] == "linear_w4"
    assert kernel_plan(QuantLinear.from_linear(lin, "nf4").qweight) is None


def test_weight_bytes_shrink_with_bits():
    model = tiny_gpt()
    sizes = {}
    for scheme in ("int8", "int4", "int2", "binary"):
        m = copy.deepcopy(model)
        quantize_model(m, scheme)
        sizes[scheme] = weight_bytes(m)
    f = weight_bytes(model)
    assert f > sizes["int8"] > sizes["int4"] > sizes["int2"] > sizes["binary"], (f, sizes)


def test_mixed_precision_keeps_chosen_layers_float():
    model = tiny_gpt()
    used = quantize_model(model, "int4", per_layer={"blocks.0.attn.qkv": None,
                                                    "blocks.1.mlp.fc": "int8"})
    assert used["blocks.0.attn.qkv"] == "float32" and used["blocks.1.mlp.fc"].startswith("int8")
    assert isinstance(model.blocks[0].attn.qkv, Linear)
    assert isinstance(model.blocks[1].mlp.fc, QuantLinear)


def _save_float(model, d):
    """A float checkpoint in the lead's format (minitx.checkpoint)."""
    from minitx.checkpoint import save_checkpoint
    save_checkpoint(d, model, step=7, train_config={"note": "kept"})


@pytest.mark.parametrize("scheme", ["int8", "int4", "nf4", "pbllm"])
def test_quantize_cli_writes_a_smaller_checkpoint_that_loads(tmp_path, scheme):
    model = tiny_gpt(n_embd=64)
    src, out = str(tmp_path / "f"), str(tmp_path / scheme)
    _save_float(model, src)
    parser = argparse.ArgumentParser()
    add_quantize_parser(parser.add_subparsers())
    qmodel = quantize_checkpoint(parser.parse_args(["quantize", "--ckpt", src, "--out", out,
                                             "--scheme", scheme]))
    loaded = load_quantized_model(out)
    idx = np.random.default_rng(2).integers(0, 48, (1, 10))
    with minitx.no_grad():
        assert np.array_equal(loaded(idx)[0].data, qmodel(idx)[0].data)
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["format"] == "minitx-gpt-quant" and cfg["step"] == 7
    assert cfg["train"] == {"note": "kept"}
    ratio = os.path.getsize(os.path.join(src, "step-0000007", "model.safetensors")) / os.path.getsize(
        os.path.join(out, "model.safetensors"))
    assert ratio > {"int8": 2.0, "int4": 3.0, "nf4": 3.0, "pbllm": 3.0}[scheme], ratio


def test_bad_input_is_named(tmp_path):
    with pytest.raises(TypeError, match="QuantizedTensor"):
        QuantLinear(np.ones((2, 2), np.float32))
    ql = QuantLinear.from_linear(Linear(8, 4), "int8")
    with pytest.raises(ValueError, match="8 input features"):
        ql(minitx.tensor(np.ones((2, 5), np.float32)))
    from minitx.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="config.json"):
        load_quantized_model(str(tmp_path))


def test_cli_end_to_end_quantize_then_generate(tmp_path):
    """`python -m minitx quantize` then `python -m minitx generate` on the quantized checkpoint."""
    from minitx import checkpoint
    import subprocess
    import sys
    minitx.random.manual_seed(0)
    model = GPT(get_config("tiny", vocab_size=256, n_embd=64)).eval()
    src, out = str(tmp_path / "f"), str(tmp_path / "q")
    checkpoint.save_checkpoint(src, model, step=0)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = lambda *a: subprocess.run([sys.executable, "-m", "minitx", *a], cwd=root,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    q = run("quantize", "--ckpt", src, "--out", out, "--scheme", "int4")
    assert q.returncode == 0, q.stderr
    g = run("generate", "--ckpt", out, "--prompt", "ab", "--max-new-tokens", "8")
    assert g.returncode == 0, g.stderr
    assert "tok/s" in g.stderr
    loaded = checkpoint.load_model(out)
    assert any(isinstance(m, QuantLinear) for m in loaded.modules())
