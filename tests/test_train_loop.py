"""The one training loop and the trunk it shares: extension points, atomic step checkpoints,
the format registry, GPTConfig's new fields, the CLI's validation table, and generation fixes."""
import json
import os
import stat

import numpy as np
import pytest

import minitx
from minitx import backend, checkpoint
from minitx.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from minitx.cli import main
from minitx.models.gpt import GPT, GPTConfig, get_config, num_params_of
from minitx.train import TrainConfig, Trainer, prepare_data, train

TEXT = ("The quick brown fox jumps over the lazy dog. " * 40
        + "Pack my box with five dozen liquor jugs! " * 40
        + "How vexingly quick daft zebras jump? " * 40)
MODEL = GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.1)

# Validation losses of the loop before it was opened up (commit 80fd510, NumPy backend, this
# machine's OpenBLAS): the refactored loop must draw the same batches, dropout masks and updates.
# (Same-machine runs matched to the last bit; 1e-6 allows another CPU's BLAS summation order.)
BASELINE_VAL_LOSS = {"tiny-dropout": 5.336248159408569, "default-shape": 4.242039203643799}
RTOL_BASELINE = 1e-6


def _tc(**kw):
    return TrainConfig(**{**dict(max_steps=8, batch_size=2, warmup=2, eval_interval=4,
                                 eval_iters=2, ckpt_interval=4, log_interval=4, seed=3), **kw})


def _quiet(*_):
    pass


def test_default_run_gives_the_losses_it_gave_before_the_refactor(tmp_path):
    runs = {"tiny-dropout": (MODEL, _tc()),
            "default-shape": (get_config("default", block_size=32),
                              _tc(max_steps=4, batch_size=4, eval_iters=2, seed=1337))}
    with backend.using("numpy"):
        for name, (mc, tc) in runs.items():
            r = train(mc, tc, TEXT, str(tmp_path / name), log=_quiet)
            assert r["val_loss"] == pytest.approx(BASELINE_VAL_LOSS[name], rel=RTOL_BASELINE), name


# ---------------------------------------------------------------- checkpoints
def test_each_save_is_a_step_directory_and_latest_moves_last(tmp_path):
    out = str(tmp_path / "run")
    train(MODEL, _tc(max_steps=16), TEXT, out, log=_quiet)
    steps = sorted(d for d in os.listdir(out) if d.startswith("step-"))
    assert steps == ["step-0000008", "step-0000012", "step-0000016"]      # the last 3 kept
    assert open(os.path.join(out, "latest")).read().strip() == "step-0000016"
    assert load_checkpoint(out)[1] == 16
    mode = stat.S_IMODE(os.stat(os.path.join(out, "step-0000016", "model.safetensors")).st_mode)
    assert mode == 0o666 & ~_umask()                                        # not mkstemp's 0600


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_a_crash_during_a_save_leaves_the_previous_save_intact(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    m = GPT(MODEL)
    save_checkpoint(out, m, step=1)
    calls = []
    real = checkpoint.save_file

    def dies_on_second_file(*a, **kw):
        calls.append(a[1])
        if len(calls) == 2:
            raise KeyboardInterrupt("power cut")
        return real(*a, **kw)
    monkeypatch.setattr(checkpoint, "save_file", dies_on_second_file)
    opt = minitx.optim.AdamW(m.parameters())
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(out, m, step=2, optimizer=opt)
    assert sorted(os.listdir(out)) == ["latest", "step-0000001"]            # no partial dir
    assert load_checkpoint is not None and checkpoint.read_config(out)["step"] == 1


def test_old_single_directory_checkpoints_and_llama_names_still_load(tmp_path):
    minitx.manual_seed(0)
    old_cfg = get_config("llama", n_layer=1, n_embd=32, n_head=2, block_size=8, fused_qkv=True)
    m = GPT(old_cfg)
    d = str(tmp_path / "old")
    os.makedirs(d)
    checkpoint.write_checkpoint_files(d, m, step=5)
    # rewrite as earlier minitx wrote it: SwiGLU weights named w1 (gate), w3 (up), w2 (down),
    # and a config without the fields added since
    sd = {k.replace("gate_proj", "w1").replace("up_proj", "w3").replace("down_proj", "w2"): v
          for k, v in m.state_dict().items()}
    checkpoint.save_file(sd, os.path.join(d, "model.safetensors"), metadata={"step": "5"})
    cfg = json.load(open(os.path.join(d, "config.json")))
    for k in ("head_dim", "n_kv_head", "ffn_hidden", "rope_base", "norm_eps", "fused_qkv"):
        del cfg["model"][k]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    loaded = load_model(d)
    x = np.arange(8)[None]
    with minitx.no_grad():
        np.testing.assert_array_equal(loaded(x)[0].data, m.eval()(x)[0].data)


def test_loading_dispatches_on_the_format_through_the_registry(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"format": "my-format", "step": 0}))
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'my-format'"):
        load_model(str(d))
    checkpoint.register_format("my-format", lambda path: ("loaded", path))
    try:
        assert load_model(str(d)) == ("loaded", str(d))
    finally:
        del checkpoint.FORMATS["my-format"]


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("model"), "no 'model' section"),
    (lambda c: c["model"].update(n_embd=2**20), "config does not fit the weights|more "
                                                           "than minitx builds"),
    (lambda c: c["model"].update(n_embd="64"), "must be integers"),
    (lambda c: c["model"].update(bogus=1), "unknown GPTConfig fields"),
    (lambda c: c.update(model=[1, 2]), "JSON object"),
])
def test_a_bad_config_json_is_a_checkpoint_error_before_any_allocation(tmp_path, edit, message):
    d = str(tmp_path / "run")
    save_checkpoint(d, GPT(MODEL), step=1)
    path = os.path.join(checkpoint.resolve(d), "config.json")
    cfg = json.load(open(path))
    edit(cfg)
    json.dump(cfg, open(path, "w"))
    with pytest.raises(CheckpointError, match=message):
        load_model(d)


# ---------------------------------------------------------------- resume and extension points
class CountingExtension:
    """Counts steps and draws from its own generator: its state must survive a resume."""
    name = "counter"

    def __init__(self):
        self.seen, self.rng = 0, np.random.default_rng(7)

    def on_step_end(self, trainer, metrics):
        self.seen += 1
        trainer.progress["drawn"] = int(self.rng.integers(1000))

    def state_dict(self):
        return {"seen": self.seen, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, d):
        self.seen = d["seen"]
        self.rng.bit_generator.state = d["rng"]


def test_resume_restores_every_extensions_state_exactly(tmp_path):
    straight = CountingExtension()
    a = train(MODEL, _tc(), TEXT, str(tmp_path / "a"), log=_quiet, extensions=[straight])
    class Crash:
        name = "crash"

        def on_step_begin(self, trainer):
            if trainer.step == 6:                   # after step 4's save, mid-interval
                raise KeyboardInterrupt

        def state_dict(self):
            return {}
    with pytest.raises(KeyboardInterrupt):
        train(MODEL, _tc(), TEXT, str(tmp_path / "b"), log=_quiet,
              extensions=[CountingExtension(), Crash()])
    resumed = CountingExtension()
    b = train(MODEL, _tc(), TEXT, str(tmp_path / "b"), resume=True, log=_quiet,
              extensions=[resumed])
    assert resumed.seen == straight.seen == 8
    assert resumed.rng.integers(10**9) == straight.rng.integers(10**9)
    for k, v in a["model"].state_dict().items():
        np.testing.assert_array_equal(v, b["model"].state_dict()[k], err_msg=k)
    assert a["flops"] == b["flops"] and a["tokens"] == b["tokens"] == 8 * 2 * 16


def test_resume_uses_the_checkpoints_block_size_and_counts_steps_right(tmp_path):
    out = str(tmp_path / "run")
    train(MODEL, _tc(max_steps=4), TEXT, out, log=_quiet)
    lines = []
    r = train(get_config("default"), _tc(max_steps=4), TEXT, out, resume=True, log=lines.append)
    assert r["step"] == 4 and r["model"].config.block_size == 16
    r = train(get_config("default"), _tc(max_steps=6), TEXT, out, resume=True, log=_quiet)
    assert r["step"] == 6 and r["tokens"] == 6 * 2 * 16


def test_only_the_trainable_parameters_change_and_get_optimizer_state(tmp_path):
    minitx.manual_seed(0)
    model = GPT(MODEL)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    head = [model.blocks[0].mlp.fc.weight]
    tr_ids, va_ids = prepare_data(TEXT, _tc(), 16)
    tr = Trainer(model, _tc(max_steps=3), tr_ids, va_ids, None, log=_quiet,
                 trainable=lambda m: head)
    tr.fit()
    changed = {k for k, v in model.state_dict().items() if not np.array_equal(v, before[k])}
    assert changed == {"blocks.0.mlp.fc.weight"}
    assert len(tr.optimizer.state) == 1


def test_per_example_weights_of_one_give_the_plain_loss():
    minitx.manual_seed(0)
    model = GPT(MODEL).eval()
    tr_ids, va_ids = prepare_data(TEXT, _tc(), 16)
    tr = Trainer(model, _tc(), tr_ids, va_ids, None, log=_quiet)
    x, y = tr_ids[:32].reshape(2, 16), tr_ids[1:33].reshape(2, 16)
    plain = tr.loss(x, y).item()
    assert tr.loss(x, y, np.ones(2)).item() == pytest.approx(plain, rel=1e-6)
    assert tr.loss(x, y, np.array([2.0, 0.0])).item() != pytest.approx(plain, rel=1e-3)


def test_flops_are_accounted_per_step_with_the_steps_sequence_length(tmp_path):
    class Short:
        def __call__(self, trainer):
            return {"lr": 1e-3, "seq_len": 8 if trainer.step < 2 else 16}
    minitx.manual_seed(0)
    model = GPT(MODEL)
    tr_ids, va_ids = prepare_data(TEXT, _tc(), 16)
    tr = Trainer(model, _tc(max_steps=4), tr_ids, va_ids, None, log=_quiet, schedule=Short())
    tr.fit()
    want = 2 * 2 * 8 * model.flops_per_token(seq_len=8) + 2 * 2 * 16 * model.flops_per_token()
    assert tr.flops == want and tr.tokens == 2 * 2 * 8 + 2 * 2 * 16


# ---------------------------------------------------------------- GPTConfig's new fields
@pytest.mark.parametrize("kw", [dict(n_kv_head=1), dict(head_dim=6), dict(fused_qkv=False),
                                dict(fused_qkv=False, n_kv_head=1, ffn_hidden=40)])
@pytest.mark.parametrize("flavour", ["tiny", "llama"])
def test_gqa_head_dim_and_split_projections_decode_like_a_full_forward(flavour, kw):
    minitx.manual_seed(1)
    cfg = get_config(flavour, n_layer=2, n_head=4, n_embd=24, block_size=12, **kw)
    m = GPT(cfg).eval()
    assert m.num_params() == num_params_of(cfg)
    x = np.random.default_rng(0).integers(0, 256, (2, 9))
    with minitx.no_grad():
        full = m(x)[0].data
        caches = m.new_caches()
        step = [m(x[:, :5], caches=caches)[0].data]
        for t in range(5, 9):
            step.append(m(x[:, t:t + 1], caches=caches, start_pos=t)[0].data)
    np.testing.assert_allclose(np.concatenate(step, axis=1), full, rtol=1e-4, atol=1e-5)


def test_llama_flavour_uses_hugging_face_names():
    names = GPT(get_config("llama", n_layer=1)).state_dict()
    for leaf in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f".{leaf}.weight" in k for k in names), leaf


# ---------------------------------------------------------------- generation
def test_generate_restores_training_mode_and_handles_block_size_one():
    m = GPT(get_config("tiny", block_size=1))
    m.train()
    out = m.generate(np.array([65]), 4, temperature=0)
    assert out.shape == (1, 5) and m.training
    for bad in (float("nan"), 1e-300, -1.0, float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            m.generate(np.array([65]), 2, temperature=bad)


# ---------------------------------------------------------------- the CLI's validation table
CLI_BAD = [
    (["train", "--lr", "nan"], "lr=nan"),
    (["train", "--lr", "-1"], "lr=-1"),
    (["train", "--lr", "1e-5", "--min-lr", "1e-4"], "min_lr=0.0001 is above lr"),
    (["train", "--warmup", "-5"], "warmup=-5"),
    (["train", "--max-steps", "0"], "max_steps=0"),
    (["train", "--batch-size", "100000000"], "--batch-size 100000000"),
    (["train", "--eval-iters", "0"], "eval_iters=0"),
    (["train", "--grad-clip", "-1"], "grad_clip=-1"),
    (["train", "--weight-decay", "inf"], "weight_decay=inf"),
    (["train", "--seed", "-1"], "seed=-1"),
    (["train", "--sample-tokens", "-1"], "--sample-tokens"),
    (["train", "--attention", "fast"], "invalid choice"),
    (["train", "--config", "huge"], "invalid choice"),
    (["train", "--resume", "--config", "tiny"], "leave out --config"),
    (["train", "--out", "a_file"], "not a directory"),
    (["train", "--max-steps", "ten"], "invalid int value"),
    (["generate", "--top-k", "-3"], "--top-k"),
    (["generate", "--temperature", "nan"], "--temperature"),
    (["generate", "--temperature", "1e-300"], "--temperature"),
    (["generate", "--max-new-tokens", "-1"], "--max-new-tokens"),
    (["generate", "--ckpt", "nowhere"], "not found"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("argv, message", CLI_BAD, ids=[" ".join(a) for a, _ in CLI_BAD])
def test_every_bad_flag_is_one_error_line_and_exit_2_before_any_work(argv, message, tmp_path,
                                                                     monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    import minitx.data
    monkeypatch.setattr(minitx.data, "default_corpus", lambda: pytest.fail("work started"))
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, (code, err)
    assert err[0].startswith("error:") and message.split("|")[0] in err[0], err[0]


def test_quantization_experiments_train_on_the_one_loop_exactly_as_their_old_loop():
    """quant/experiments.train used to be a private loop; on the Trainer it must give the same
    weights bit for bit (so the tables of tutorial 04 did not move)."""
    from minitx.optim import AdamW
    from minitx.quant import experiments as E
    data = np.frombuffer(TEXT.encode(), np.uint8)
    cfg = GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16)
    minitx.manual_seed(0)
    a = GPT(cfg)
    minitx.manual_seed(0)
    b = GPT(cfg)
    params = [a.blocks[0].mlp.fc.weight, a.ln_f.weight]
    E.train(a, params, data, steps=6, B=3, lr=3e-3, seed=1, warmup=2)
    # the loop as it was written before (commit 80fd510), kept here as the reference
    opt = AdamW([b.blocks[0].mlp.fc.weight, b.ln_f.weight], lr=3e-3, weight_decay=0.0)
    rng = np.random.default_rng(1)
    b.train()
    for step in range(6):
        scale = min(1.0, (step + 1) / 2) * 0.5 * (1 + np.cos(np.pi * step / 6))
        for group in opt.param_groups:
            group["lr"] = 3e-3 * max(scale, 0.05)
        x, y = E.batch(data, 3, 16, rng)
        _, loss = b(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k], err_msg=k)


# ---------------------------------------------------------------- fuzzing the checkpoint loader
def _checkpoint_fuzz_target(tmp_path, which):
    """(load_fn, valid bytes of `which`): load_fn puts a corrupted `which` beside the valid other
    files of a checkpoint and loads it for resuming, as `--resume` does."""
    import shutil
    import tempfile
    src = str(tmp_path / "run")
    train(MODEL, _tc(max_steps=2, ckpt_interval=2, eval_interval=2), TEXT, src, log=_quiet)
    step_dir = checkpoint.resolve(src)

    def load(path):
        with tempfile.TemporaryDirectory() as d:
            shutil.copytree(step_dir, d, dirs_exist_ok=True)
            shutil.copy(path, os.path.join(d, which))
            model, _, opt, _, _ = load_checkpoint(d)
            return {**model.state_dict(), **{k: v for k, v in opt["state"].items()
                                             if isinstance(v, np.ndarray)}}
    return load, open(os.path.join(step_dir, which), "rb").read()


@pytest.mark.parametrize("which", ["config.json", "train_state.safetensors"])
def test_fuzzed_checkpoint_files_load_or_raise_checkpoint_errors_only(tmp_path, which):
    from fuzzing import fuzz_loader
    load, valid = _checkpoint_fuzz_target(tmp_path, which)
    fuzz_loader(load, valid, CheckpointError)


# ---------------------------------------------------------------- resume refuses what does not fit
def _edit_train_state(out, edit):
    """Rewrite the latest step's train_state.safetensors through `edit(tensors, meta)`."""
    path = os.path.join(checkpoint.resolve(out), "train_state.safetensors")
    tensors = checkpoint.load_file(path)
    _, meta, _ = checkpoint.read_header(path)
    edit(tensors, meta)
    checkpoint.save_file(tensors, path, metadata=meta)


def _drop_moment(t, m):
    del t["optim.0.exp_avg"]


def _zero_steps(t, m):
    m["optim_scalars"] = "{}"


def _f64_moment(t, m):
    t["optim.0.exp_avg"] = t["optim.0.exp_avg"].astype(np.float64)


def _no_rng(t, m):
    state = json.loads(m["train_state"])
    del state["global_rng"]
    m["train_state"] = json.dumps(state)


def _bad_betas(t, m):
    groups = json.loads(m["optim_groups"])
    groups[0]["betas"] = [0.9]
    m["optim_groups"] = json.dumps(groups)


@pytest.mark.parametrize("edit, message", [
    (_drop_moment, "exp_avg .* is missing"), (_zero_steps, "step None"),
    (_f64_moment, "float64"), (_no_rng, "global_rng"), (_bad_betas, "betas"),
])
def test_a_malformed_training_state_is_a_checkpoint_error_before_any_step(tmp_path, edit, message):
    out = str(tmp_path / "run")
    train(MODEL, _tc(max_steps=4), TEXT, out, log=_quiet)
    _edit_train_state(out, edit)
    with pytest.raises(CheckpointError, match=message):
        train(MODEL, _tc(), TEXT, out, resume=True, log=_quiet)


def test_resume_with_other_settings_or_without_the_saved_extensions_is_refused(tmp_path):
    from minitx.hard_examples import HardExamples
    out = str(tmp_path / "run")
    train(MODEL, _tc(max_steps=4), TEXT, out, log=_quiet, extensions=[CountingExtension()])
    with pytest.raises(CheckpointError, match="trained with counter"):
        train(MODEL, _tc(), TEXT, out, resume=True, log=_quiet)
    with pytest.raises(CheckpointError, match=r"lr 0\.05 \(checkpoint: 0\.002\)"):
        train(MODEL, _tc(lr=0.05), TEXT, out, resume=True, log=_quiet,
              extensions=[CountingExtension()])
    with pytest.raises(CheckpointError, match="sampler UniformSampler, this run has "
                                              "HardExampleSampler"):
        train(MODEL, _tc(), TEXT, out, resume=True, log=_quiet,
              extensions=[HardExamples("hard"), CountingExtension()])


# ---------------------------------------------------------------- from the adversarial review
def test_quantize_refuses_to_write_into_a_run_directory(tmp_path, capsys):
    out = str(tmp_path / "run")
    train(MODEL, _tc(max_steps=2, ckpt_interval=2, eval_interval=2), TEXT, out, log=_quiet)
    step_dir = checkpoint.resolve(out)
    for target, message in ((step_dir, "inside it"), (out, "is --ckpt"),
                            (str(tmp_path / "run"), "is --ckpt")):
        assert main(["quantize", "--ckpt", out, "--out", target, "--scheme", "int8"]) == 2
        assert message in capsys.readouterr().err
    other = str(tmp_path / "other")
    train(MODEL, _tc(max_steps=2, ckpt_interval=2, eval_interval=2), TEXT, other, log=_quiet)
    assert main(["quantize", "--ckpt", out, "--out", other, "--scheme", "int8"]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert checkpoint.read_config(out)["format"] == "minitx-gpt"          # nothing overwritten


def test_data_paths_that_are_not_regular_files_are_refused_before_reading(tmp_path):
    from minitx.data import DataError, load_text
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)                                   # reading it would block forever
    with pytest.raises(DataError, match="not a regular file"):
        load_text(fifo)


def test_a_bad_backend_variable_is_one_error_line(tmp_path):
    import subprocess
    import sys
    env = dict(os.environ, MINITX_BACKEND="bogus",
               PYTHONPATH=os.path.dirname(os.path.dirname(minitx.__file__)))
    r = subprocess.run([sys.executable, "-m", "minitx", "generate", "--ckpt", "nowhere"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: MINITX_BACKEND must be")


def test_a_run_directory_is_not_a_step_directory(tmp_path):
    out = str(tmp_path / "run")
    train(MODEL, _tc(max_steps=2, ckpt_interval=2, eval_interval=2), TEXT, out, log=_quiet)
    with pytest.raises(CheckpointError, match="one save of a run"):
        train(MODEL, _tc(), TEXT, checkpoint.resolve(out), resume=True, log=_quiet)


def test_cross_entropy_checks_the_target_shape_of_nd_logits():
    from minitx.nn import functional as F
    logits = minitx.tensor(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        F.cross_entropy(logits, np.zeros((3, 2), np.int64), reduction="none")
