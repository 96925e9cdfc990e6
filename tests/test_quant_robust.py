"""The quantize command's defects from issue 14, each with a test that failed before the fix:
training state copied into the quantized checkpoint, scheme flags silently ignored, and weights
beyond float32's range (or near it) turning into NaN/inf instead of an error."""
import argparse
import os
import subprocess
import sys

import numpy as np
import pytest

import minitx
from minitx.models.gpt import GPT, get_config
from minitx.optim import AdamW
from minitx.quant import SCHEME_NAMES, quantize
from minitx.quant.cli import add_quantize_parser, quantize_checkpoint
from minitx.quant.linear import quantize_model

F32_MAX = float(np.finfo(np.float32).max)


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_quantize_parser(parser.add_subparsers())
    return parser.parse_args(["quantize", *argv])


def _trained_checkpoint(directory):
    """A float checkpoint with optimizer state, as `train` writes it."""
    from minitx.checkpoint import save_checkpoint
    minitx.random.manual_seed(0)
    model = GPT(get_config("tiny", vocab_size=48, n_embd=64))
    opt = AdamW(model.parameters(), lr=1e-3)
    loss = model(np.arange(8)[None, :] % 48, np.arange(1, 9)[None, :] % 48)[1]
    loss.backward()
    opt.step()
    save_checkpoint(directory, model.eval(), step=1, optimizer=opt)
    return model


def _tensor_bytes(directory):
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
               if f.endswith(".safetensors"))


def test_quantized_checkpoint_holds_weights_only(tmp_path, capsys):
    from minitx.checkpoint import resolve
    src, out = str(tmp_path / "f"), str(tmp_path / "q")
    _trained_checkpoint(src)
    step_dir = resolve(src)                                  # the run's latest step directory
    assert os.path.isfile(os.path.join(step_dir, "train_state.safetensors"))
    quantize_checkpoint(_args("--ckpt", src, "--out", out, "--scheme", "int4"))
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    float_weights = os.path.getsize(os.path.join(step_dir, "model.safetensors"))
    assert _tensor_bytes(out) * 3 < float_weights          # int4: the directory really shrinks
    line = capsys.readouterr().out
    ratio = float(line.split("x smaller")[0].rsplit("(", 1)[1])
    assert ratio == pytest.approx(float_weights / _tensor_bytes(out), rel=1e-2)


@pytest.mark.parametrize("scheme, flags, named", [
    ("int8", ["--double-quant"], "--double-quant"), ("binary", ["--block-size", "16"], "--block-size"),
    ("pbllm", ["--block-size", "8"], "--block-size"), ("binary", ["--double-quant"], "--double-quant"),
    ("nf4", ["--asymmetric"], "--asymmetric"), ("fp4", ["--range-method", "mse"], "--range-method"),
    ("int4", ["--salient-fraction", "0.2"], "--salient-fraction"),
    ("int4", ["--block-size", "0"], "--block-size"), ("pbllm", ["--salient-fraction", "2"], "--salient")])
def test_flags_a_scheme_does_not_use_are_errors_before_any_work(tmp_path, scheme, flags, named):
    missing = str(tmp_path / "no-such-checkpoint")          # never read: the flags fail first
    with pytest.raises(ValueError, match=named):
        quantize_checkpoint(_args("--ckpt", missing, "--out", str(tmp_path / "q"),
                                  "--scheme", scheme, *flags))


def test_cli_maps_a_flag_error_to_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "minitx", "quantize", "--ckpt", str(tmp_path),
                           "--out", str(tmp_path / "q"), "--scheme", "int8", "--double-quant"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--double-quant" in errors[0] and "Traceback" not in proc.stderr


def test_library_rejects_block_size_for_schemes_without_blocks():
    w = np.ones((4, 32), np.float32)
    for scheme in ("binary", "pbllm"):
        with pytest.raises(ValueError, match="block_size"):
            quantize(w, scheme, block_size=16)


def _all_variants():
    for s in SCHEME_NAMES:
        if s.startswith("int"):
            yield from [(s, {}), (s, {"symmetric": False}), (s, {"block_size": 32}),
                        (s, {"symmetric": False, "range_method": "mse"})]
        elif s in ("nf4", "fp4"):
            yield from [(s, {}), (s, {"double_quant": True})]
        elif s == "binary":
            yield from [(s, {}), (s, {"centered": True})]
        else:
            yield s, {}


@pytest.mark.parametrize("scheme, kwargs", list(_all_variants()))
@pytest.mark.parametrize("bad", [1e39, -1e39, np.inf, np.nan])
def test_weights_beyond_float32_are_an_error_before_quantizing(scheme, kwargs, bad):
    w = np.random.default_rng(0).standard_normal((8, 64))                  # float64
    w[3, 5] = bad
    with pytest.raises(ValueError, match="float32's range"):
        quantize(w, scheme, **kwargs)


@pytest.mark.parametrize("scheme, kwargs", list(_all_variants()))
@pytest.mark.parametrize("magnitude", [F32_MAX, F32_MAX / 1.01, F32_MAX / 2])
def test_weights_near_float32_max_never_become_nan_or_inf(scheme, kwargs, magnitude):
    """In range, but scale x code may overflow: the result is finite or a clear ValueError."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    w[1] = magnitude * rng.uniform(-1, 1, 64)
    w[2, 0], w[2, 1] = magnitude, -magnitude
    with np.errstate(over="ignore"):
        try:
            q = quantize(w, scheme, **kwargs)
        except ValueError as e:
            assert "overflow float32" in str(e) and magnitude > F32_MAX / 2
            return
    assert np.isfinite(q.dequantize()).all()


def test_quantize_model_names_the_layer():
    minitx.random.manual_seed(0)
    model = GPT(get_config("tiny", vocab_size=48, n_embd=64)).to(np.float64)
    model.blocks[1].mlp.fc.weight.data[0, 0] = 1e39
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc: weights must be finite \(no NaN"):
        quantize_model(model, "int8")


# ---------------------------------------------------------------- the quantized loader, fuzzed
def _quantized_loader(config_path):
    """load_fn for the fuzz harness: the corrupted file becomes the checkpoint's weights."""
    import shutil
    import tempfile
    from minitx.quant.serialize import load_quantized_model

    def load(path):
        with tempfile.TemporaryDirectory() as d:
            shutil.copy(config_path, os.path.join(d, "config.json"))
            shutil.copy(path, os.path.join(d, "model.safetensors"))
            model = load_quantized_model(d)
        out = model.state_dict()
        for name, m in model.named_modules():
            if hasattr(m, "qweight"):
                out[name] = m.qweight.dequantize()
        return out
    return load


def test_fuzz_quantized_checkpoint_loader(tmp_path):
    """The harness of tests/fuzzing.py on a second format: corrupted model.safetensors of a
    quantized checkpoint loads cleanly or raises SafetensorsError / QuantCheckpointError."""
    from fuzzing import fuzz_loader
    from minitx.quant.serialize import QuantCheckpointError, save_quantized_model
    from minitx.safetensors import SafetensorsError
    minitx.random.manual_seed(0)
    model = GPT(get_config("tiny", vocab_size=16, n_embd=16, n_layer=1, n_head=2,
                           block_size=8)).eval()
    quantize_model(model, "int4", block_size=8)
    save_quantized_model(model, str(tmp_path), options={"scheme": "int4"})
    valid = (tmp_path / "model.safetensors").read_bytes()
    fuzz_loader(_quantized_loader(str(tmp_path / "config.json")), valid,
                (SafetensorsError, QuantCheckpointError), cases=20)


@pytest.mark.parametrize("field, value", [("n_embd", 8192), ("n_layer", 200_000),
                                          ("vocab_size", 10**8), ("ffn_hidden", 2**24)])
def test_quantized_loader_checks_config_sizes_before_allocating(tmp_path, field, value):
    """A corrupted config.json must not build a multi-GB model before the weights are checked
    (sizes GPTConfig itself accepts: below its 2e9-parameter cap, yet gigabytes)."""
    import json
    from fuzzing import Mutation, run_batch
    from minitx.quant.serialize import QuantCheckpointError, load_quantized_model, \
        save_quantized_model
    minitx.random.manual_seed(0)
    model = GPT(get_config("tiny", vocab_size=16, n_embd=16, n_layer=1, n_head=2)).eval()
    quantize_model(model, "int8")
    save_quantized_model(model, str(tmp_path), options={"scheme": "int8"})
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model"][field] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    failures = run_batch(lambda _: load_quantized_model(str(tmp_path)),      # under RLIMIT_AS
                         [Mutation(f"{field}={value}", b"")], QuantCheckpointError,
                         budget=256 * 1024 * 1024)
    assert not failures, failures
    with pytest.raises(QuantCheckpointError, match="config"):           # safe now: no allocation
        load_quantized_model(str(tmp_path))
