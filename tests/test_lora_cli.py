"""`python -m minitx finetune` and `generate --adapter`: the one loop, checkpoints, exact resume,
and one `error:` line (exit 2) for bad input."""
import os
import shutil

import numpy as np
import pytest

import minitx
from minitx.checkpoint import save_checkpoint
from minitx.cli import main
from minitx.models.gpt import GPT, get_config
from minitx.safetensors import load_file

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_cli")
    minitx.manual_seed(0)
    save_checkpoint(str(root / "base"), GPT(get_config("tiny")), 0)
    minitx.manual_seed(1)
    save_checkpoint(str(root / "other"), GPT(get_config("tiny", n_embd=48, n_head=2)), 0)
    (root / "data.txt").write_text(TEXT)
    return root


def finetune(base, out, *extra):
    return main(["finetune", "--ckpt", str(base / "base"), "--data", str(base / "data.txt"),
                 "--out", str(out), "--max-steps", "6", "--batch-size", "4",
                 "--eval-interval", "3", "--eval-iters", "2", "--ckpt-interval", "3",
                 "--log-interval", "3", "--lora-r", "2", "--lora-dropout", "0.1",
                 "--target", "qkv,fc", *extra])


def adapter(run_dir, step):
    return load_file(os.path.join(run_dir, f"step-{step:07d}", "adapter_model.safetensors"))


@pytest.mark.parametrize("quant", ["nf4", "none"])
def test_finetune_resume_is_bit_exact(base, tmp_path, capsys, quant):
    # nf4 with activation checkpointing; none with the paged AdamW (resumed with plain AdamW:
    # the two are the same arithmetic, so the resumed run still matches bit for bit)
    extra = ["--quant", quant] + (["--checkpointing"] if quant == "nf4" else ["--paged-optim"])
    assert finetune(base, tmp_path / "a", *extra) == 0
    out = capsys.readouterr().out
    assert "step     6/6 | loss" in out and "trainable 1,152 of" in out
    whole = adapter(tmp_path / "a", 6)
    assert set(k.rsplit(".", 2)[0] for k in whole) == {
        f"base_model.model.blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "mlp.fc")}
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "step-0000006")
    (tmp_path / "b" / "latest").write_text("step-0000003\n")
    assert main(["finetune", "--data", str(base / "data.txt"), "--out", str(tmp_path / "b"),
                 "--resume", "--max-steps", "6", "--batch-size", "4", "--eval-interval", "3",
                 "--eval-iters", "2", "--ckpt-interval", "3", "--log-interval", "3"]) == 0
    resumed = adapter(tmp_path / "b", 6)
    assert sorted(resumed) == sorted(whole)
    for k in whole:
        assert np.array_equal(resumed[k], whole[k]), k
    assert any(np.any(v != 0) for k, v in whole.items() if "lora_B" in k)


def test_generate_with_adapter_and_merge(base, tmp_path, capsys):
    assert finetune(base, tmp_path / "f", "--quant", "none") == 0
    args = ["--prompt", "def ", "--max-new-tokens", "12", "--temperature", "0"]
    capsys.readouterr()
    assert main(["generate", "--ckpt", str(tmp_path / "f")] + args) == 0      # the run itself
    run_sample = capsys.readouterr().out
    assert main(["generate", "--ckpt", str(base / "base"), "--adapter", str(tmp_path / "f")]
                + args) == 0
    assert capsys.readouterr().out == run_sample
    assert main(["generate", "--ckpt", str(base / "base"), "--adapter", str(tmp_path / "f"),
                 "--merge"] + args) == 0
    assert capsys.readouterr().out == run_sample


@pytest.mark.parametrize("flags, message", [
    (["--lora-r", "0"], "--lora-r"),
    (["--target", "nonexistent_proj"], "match no Linear"),
    (["--lora-dropout", "1.5"], "--lora-dropout"),
    (["--quant", "int3"], "invalid choice"),
])
def test_finetune_bad_input_is_one_error_line(base, tmp_path, capsys, flags, message):
    try:
        code = finetune(base, tmp_path / "x", *flags)
    except SystemExit as e:                   # argparse's own errors exit from the parser
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "x" / "latest").exists()


def test_generate_bad_adapter_is_one_error_line(base, tmp_path, capsys):
    assert finetune(base, tmp_path / "q", "--quant", "nf4") == 0
    capsys.readouterr()
    cases = [(["--ckpt", str(base / "other"), "--adapter", str(tmp_path / "q")], "another model"),
             (["--ckpt", str(base / "base"), "--adapter", str(tmp_path / "q" / "step-0000006"),
               "--merge"], None),
             (["--ckpt", str(base / "base"), "--merge"], "--merge needs --adapter")]
    for argv, message in cases:
        code = main(["generate", "--max-new-tokens", "2"] + argv)
        err = capsys.readouterr().err.strip().splitlines()
        if message is None:                   # a float base: the nf4 run's adapter merges
            assert code == 0
            continue
        assert code == 2 and len(err) == 1 and message in err[0], err
    code = main(["generate", "--ckpt", str(tmp_path / "q"), "--adapter",
                 str(tmp_path / "q"), "--merge", "--max-new-tokens", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "quantized" in err[0], err
