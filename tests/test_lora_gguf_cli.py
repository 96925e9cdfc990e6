"""`python -m minitx finetune --gguf FILE`: QLoRA on a GGUF file's own blocks through the one
loop, checkpoints with Hugging Face module paths, exact resume, `generate --gguf --adapter`, and
one `error:` line (exit 2) for bad input. The file is a tiny synthetic Q4_1 GGUF written by
minitx's exporter (byte vocabulary), not the real model."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

import minitx
from minitx.cli import main
from minitx.gguf_export import export_gguf
from minitx.models.gpt import GPT, GPTConfig
from minitx.safetensors import load_file

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(300))
STEP = ["--max-steps", "6", "--batch-size", "2", "--eval-interval", "3", "--eval-iters", "2",
        "--ckpt-interval", "3", "--log-interval", "3"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_gguf_cli")
    minitx.manual_seed(0)
    cfg = GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_kv_head=1, n_embd=64,
                    ffn_hidden=96, norm="rmsnorm", pos="rope", mlp="swiglu", bias=False,
                    tie_weights=True, fused_qkv=False)
    export_gguf(GPT(cfg), str(root / "tiny.gguf"), "q4_1")
    (root / "data.txt").write_text(TEXT)
    (root / "notgguf.gguf").write_text(TEXT)
    return root


def finetune(files, out, *extra):
    return main(["finetune", "--gguf", str(files / "tiny.gguf"), "--data",
                 str(files / "data.txt"), "--out", str(out), "--block-size", "24",
                 "--lora-r", "2", "--target", "q_proj,v_proj,down_proj", *STEP, *extra])


def adapter(run_dir, step):
    return load_file(os.path.join(run_dir, f"step-{step:07d}", "adapter_model.safetensors"))


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_finetune_gguf_resume_is_bit_exact(files, tmp_path, capsys):
    before = sha(files / "tiny.gguf")
    assert finetune(files, tmp_path / "a") == 0
    out = capsys.readouterr().out
    assert "(gguf base)" in out and "step     6/6 | loss" in out
    whole = adapter(tmp_path / "a", 6)
    assert set(k.rsplit(".", 2)[0] for k in whole) == {
        f"base_model.model.model.layers.{i}.{m}" for i in range(2)
        for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")}
    assert any(np.any(v != 0) for k, v in whole.items() if "lora_B" in k)
    with open(tmp_path / "a" / "step-0000006" / "config.json") as f:
        config = json.load(f)
    assert config["quant"] == "gguf" and config["base"]["kind"] == "gguf"
    assert config["base"]["block_size"] == 24
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "step-0000006")
    (tmp_path / "b" / "latest").write_text("step-0000003\n")
    assert main(["finetune", "--data", str(files / "data.txt"), "--out", str(tmp_path / "b"),
                 "--resume", *STEP]) == 0
    resumed = adapter(tmp_path / "b", 6)
    assert sorted(resumed) == sorted(whole)
    for k in whole:
        assert np.array_equal(resumed[k], whole[k]), k
    assert sha(files / "tiny.gguf") == before                      # the base file untouched


def test_generate_gguf_with_adapter(files, tmp_path, capsys):
    assert finetune(files, tmp_path / "f") == 0
    args = ["--prompt", "def ", "--max-new-tokens", "8", "--temperature", "0"]
    capsys.readouterr()
    assert main(["generate", "--ckpt", str(tmp_path / "f")] + args) == 0      # the run itself
    run_sample = capsys.readouterr().out
    assert main(["generate", "--gguf", str(files / "tiny.gguf"), "--adapter",
                 str(tmp_path / "f")] + args) == 0
    assert capsys.readouterr().out == run_sample and "def " in run_sample
    code = main(["generate", "--gguf", str(files / "tiny.gguf"), "--adapter",
                 str(tmp_path / "f"), "--merge"] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "never re-quantized" in err[0], err


@pytest.mark.parametrize("flags, message", [
    (["--gguf", "missing.gguf"], "No such file"),
    (["--gguf", "{root}/notgguf.gguf"], "not a GGUF file"),
    (["--quant", "nf4"], "never re-quantized"),
    (["--ckpt", "{root}"], "not both"),
    (["--target", "qkv"], "match no Linear"),
    (["--block-size", "65"], "--block-size must be in [1, 64]"),
])
def test_finetune_gguf_bad_input_is_one_error_line(files, tmp_path, capsys, flags, message):
    flags = [f.format(root=files) for f in flags]
    code = finetune(files, tmp_path / "x", *flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "x" / "latest").exists()
