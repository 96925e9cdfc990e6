"""Training, checkpoints and data: exact resume, atomic and validated checkpoints, NaN stops,
safetensors round trips, data-file validation, and the CLI's error handling."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minitx
from minitx import data
from minitx.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from minitx.models.gpt import GPT, GPTConfig
from minitx.safetensors import SafetensorsError, load_file, save_file
from minitx.train import TrainConfig, TrainingError, train

TEXT = ("The quick brown fox jumps over the lazy dog. " * 40
        + "Pack my box with five dozen liquor jugs! " * 40
        + "How vexingly quick daft zebras jump? " * 40)
MODEL = GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.1)


def _tc(**kw):
    return TrainConfig(**{**dict(max_steps=8, batch_size=2, warmup=2, eval_interval=4,
                                 eval_iters=2, ckpt_interval=4, log_interval=4, seed=3), **kw})


def _quiet(*_):
    pass


def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path):
    straight = train(MODEL, _tc(), TEXT, str(tmp_path / "a"), log=_quiet)

    def crash_after_step_6(line):
        if line.startswith("step     8/"):     # logged after step 8's update, before its save
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(MODEL, _tc(log_interval=1), TEXT, str(tmp_path / "b"), log=crash_after_step_6)
    assert load_checkpoint(str(tmp_path / "b"))[1] == 4
    resumed = train(MODEL, _tc(), TEXT, str(tmp_path / "b"), resume=True, log=_quiet)
    a, b = straight["model"].state_dict(), resumed["model"].state_dict()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert straight["val_loss"] == resumed["val_loss"]


def test_same_seed_same_run_different_seed_different_run(tmp_path):
    r1 = train(MODEL, _tc(max_steps=3), TEXT, str(tmp_path / "1"), log=_quiet)
    r2 = train(MODEL, _tc(max_steps=3), TEXT, str(tmp_path / "2"), log=_quiet)
    r3 = train(MODEL, _tc(max_steps=3, seed=4), TEXT, str(tmp_path / "3"), log=_quiet)
    w = "blocks.0.attn.qkv.weight"
    np.testing.assert_array_equal(r1["model"].state_dict()[w], r2["model"].state_dict()[w])
    assert not np.array_equal(r1["model"].state_dict()[w], r3["model"].state_dict()[w])


def _snapshot(directory):
    """{relative path: bytes} of every file below `directory`."""
    files = {}
    for root, _, names in os.walk(directory):
        for f in names:
            path = os.path.join(root, f)
            files[os.path.relpath(path, directory)] = open(path, "rb").read()
    return files


def test_nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    train(MODEL, _tc(max_steps=4), TEXT, out, log=_quiet)
    before = _snapshot(out)
    real_forward = GPT.forward

    def poisoned(self, idx, targets=None, **kw):
        logits, loss = real_forward(self, idx, targets, **kw)
        if targets is not None and self.training:
            loss = loss * float("nan")
        return logits, loss
    monkeypatch.setattr(GPT, "forward", poisoned)
    with pytest.raises(TrainingError, match=r"loss became nan at step 5.*last good checkpoint"):
        train(MODEL, _tc(max_steps=8), TEXT, out, resume=True, log=_quiet)
    assert _snapshot(out) == before


def test_non_finite_weights_are_never_saved(tmp_path):
    m = GPT(MODEL)
    save_checkpoint(str(tmp_path), m, step=1)
    m.wte.weight.data[0, 0] = np.inf
    with pytest.raises(CheckpointError, match="non-finite weights.*wte.weight"):
        save_checkpoint(str(tmp_path), m, step=2)
    assert load_model(str(tmp_path)).wte.weight.data[0, 0] != np.inf


def test_damaged_checkpoints_give_clear_errors(tmp_path):
    out = str(tmp_path / "run")
    train(MODEL, _tc(max_steps=4), TEXT, out, log=_quiet)
    path = os.path.join(out, "step-0000004", "model.safetensors")
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(out)
    open(path, "wb").write(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(out)
    open(path, "wb").write(raw)
    load_model(out)
    cfg = os.path.join(out, "step-0000004", "config.json")
    text = open(cfg).read()
    open(cfg, "w").write(text.replace('"step": 4', '"step": 3'))
    with pytest.raises(CheckpointError, match="from step 4 but config.json says step 3"):
        load_model(out)
    open(cfg, "w").write("{not json")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_model(out)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(str(tmp_path / "nowhere"))


def test_resume_refuses_different_data(tmp_path):
    out = str(tmp_path / "run")
    train(MODEL, _tc(max_steps=4), TEXT, out, log=_quiet)
    with pytest.raises(CheckpointError, match="different data"):
        train(MODEL, _tc(), TEXT + "more", out, resume=True, log=_quiet)


@given(shapes=st.lists(st.lists(st.integers(0, 4), max_size=3), min_size=1, max_size=4),
       dtype=st.sampled_from(["float32", "float64", "float16", "int8", "uint8", "int64", "bool"]))
def test_safetensors_round_trip(tmp_path_factory, shapes, dtype):
    rng = np.random.default_rng(len(shapes))
    tensors = {f"t{i}": (rng.standard_normal(s) * 10).astype(dtype) for i, s in enumerate(shapes)}
    path = str(tmp_path_factory.mktemp("st") / "x.safetensors")
    save_file(tensors, path, metadata={"k": "v"})
    back = load_file(path)
    assert back.keys() == tensors.keys()
    for k in tensors:
        assert back[k].dtype == tensors[k].dtype and back[k].shape == tensors[k].shape
        np.testing.assert_array_equal(back[k], tensors[k])


def test_safetensors_rejects_garbage(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x05\x00")
    with pytest.raises(SafetensorsError, match="truncated"):
        load_file(str(p))
    p.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(SafetensorsError, match="header length"):
        load_file(str(p))
    with pytest.raises(TypeError, match="cannot store"):
        save_file({"c": np.zeros(2, np.complex64)}, str(p))


# ---------------------------------------------------------------- data
def test_load_text_rejects_unusable_files(tmp_path):
    cases = {"empty.txt": (b"", "empty"), "bin.dat": (b"ab\x00cd", "NUL byte at offset 2"),
             "latin1.txt": ("caf\u00e9".encode("latin-1"), "not valid UTF-8 \\(byte 3")}
    for name, (raw, msg) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(data.DataError, match=msg):
            data.load_text(str(tmp_path / name))
    with pytest.raises(data.DataError, match="not found"):
        data.load_text(str(tmp_path / "missing.txt"))
    with pytest.raises(data.DataError, match="directory"):
        data.load_text(str(tmp_path))


def test_split_and_batches():
    ids = np.arange(100_000) % 251
    tr, va = data.train_val_split(ids, 0.1)
    assert len(tr) + len(va) == len(ids) and 0.08 < len(va) / len(ids) < 0.12
    tr2, va2 = data.train_val_split(ids, 0.1)
    np.testing.assert_array_equal(va, va2)
    x, y = data.get_batch(tr, 4, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    with pytest.raises(data.DataError, match="shorter than block_size"):
        data.get_batch(np.arange(5), 1, 16, np.random.default_rng(0))


def test_default_corpus_is_real_text_over_a_megabyte():
    text = data.default_corpus()
    assert len(text.encode("utf-8")) >= data.MIN_CORPUS_BYTES
    words = text.split()
    common = sum(w.lower() in {"the", "a", "of", "to", "is", "and"} for w in words)
    assert common / len(words) > 0.05                    # English prose, not code or tables
    assert text == data.default_corpus()                 # deterministic (cached or rebuilt)


# ---------------------------------------------------------------- CLI
def _cli(*args, cwd):
    # run the minitx this test imported (installed, or the source tree in development)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(minitx.__file__)))
    return subprocess.run([sys.executable, "-m", "minitx", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def test_cli_train_generate_and_errors(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    r = _cli("train", "--config", "tiny", "--data", "t.txt", "--max-steps", "4", "--batch-size",
             "2", "--eval-interval", "2", "--eval-iters", "1", "--out", "ck", "--sample-tokens",
             "10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "val loss" in r.stdout and "unigram baseline" in r.stdout
    r = _cli("generate", "--ckpt", "ck", "--prompt", "The", "--max-new-tokens", "5", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count("The") >= 1, r.stderr
    (tmp_path / "bad.bin").write_bytes(b"\x00\x01\x02")
    for args, msg in [(("train", "--data", "bad.bin"), "NUL byte"),
                      (("train", "--data", "nope.txt"), "not found"),
                      (("generate", "--ckpt", "nowhere"), "not found"),
                      (("train", "--data", "t.txt", "--max-steps", "0"), "max_steps=0")]:
        r = _cli(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        last = r.stderr.strip().splitlines()[-1]          # (a backend notice may come first)
        assert last.startswith("error:") and msg in last and "Traceback" not in r.stderr
