"""Hugging Face hand-off (minitx.hf): export, import, optimizer state, CLI.

Reference data (tests/data/hf_reference.npz, tests/data/hf/) comes from transformers 5.24 and
torch 2.13 via benchmarks/make_hf_reference.py; nothing here imports either.
"""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

import minitx
from minitx.bpe import bytes_to_unicode as byte_to_unicode
from minitx.cli import main as cli
from minitx.hf import (HFError, InitFromHF, export_checkpoint, export_hf,
                       from_hf, hf_config, to_hf_state)
from minitx.models import from_hf as models_from_hf
from minitx.models.gpt import GPT, GPTConfig, get_config
from minitx.safetensors import load_file, save_file
from minitx.tokenizer import ByteTokenizer
from minitx.train import Trainer, TrainConfig, prepare_data, train

DATA = os.path.join(os.path.dirname(__file__), "data")
REF = np.load(os.path.join(DATA, "hf_reference.npz"))
SAVED = os.path.join(DATA, "hf")

# Tolerances, keyed by dtype. Logits: float32 transformers vs float32 minitx on the same weights;
# the two sum matmuls in different orders and transformers computes RoPE tables in float32
# (minitx in float64), so logits of size ~7 differ by a few hundred ulps of 1.0 (measured
# <= 6.2e-6, see the script's output): atol 2e-5 = 3 x that, rtol one part in 1e5.
LOGITS_TOL = {np.float32: dict(rtol=1e-5, atol=2e-5)}
# One AdamW step: the update is lr * m_hat / (sqrt(v_hat) + eps), |update| <= ~lr; gradients
# from the two implementations differ by ~1e-5 relative (summation order), so parameters after
# the step agree to ~1e-5 * lr plus one ulp of the parameter (measured <= 1.2e-7 at lr 1e-2).
STEP_TOL = {np.float32: dict(rtol=2.0 ** -22, atol_per_lr=2e-5)}
# Moments m = b1 m + (1 - b1) g inherit the gradients' ~1e-5 relative difference.
MOMENT_TOL = {np.float32: dict(rtol=1e-4, atol_of_max=1e-5)}


def _config(key):
    return GPTConfig(**json.loads(str(REF[key])))


def _reference_model(case):
    minitx.manual_seed(0)
    model = GPT(_config(f"{case}/config"))
    prefix = f"{case}/w/"
    model.load_state_dict({k[len(prefix):]: REF[k] for k in REF.files if k.startswith(prefix)})
    return model.eval()


def _random_model(seed=0, **kw):
    minitx.manual_seed(seed)
    model = GPT(GPTConfig(**kw))
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] = rng.normal(0.0, 0.5, p.shape)
    return model


GPT2 = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)
LLAMA = dict(GPT2, n_head=4, n_kv_head=2, head_dim=8, ffn_hidden=24, norm="rmsnorm", pos="rope",
             mlp="swiglu", bias=False, tie_weights=False, fused_qkv=False)
LAYOUTS = {"gpt2": GPT2, "llama": LLAMA, "gpt2_untied_split": dict(GPT2, tie_weights=False,
                                                                    fused_qkv=False),
           "llama_fused_bias_tied": dict(LLAMA, fused_qkv=True, bias=True, tie_weights=True)}


# ============================== round trips ==================================================
@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_round_trip_is_bit_exact(tmp_path, case):
    model = _random_model(**LAYOUTS[case])
    export_hf(model, tmp_path / "a")
    back = models_from_hf(str(tmp_path / "a"))
    # the flavour's own layout comes back (GPT-2 fused, Llama split); values are regrouped only
    assert back.config.fused_qkv == (back.config.pos == "learned")
    exported = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert set(exported) == set(to_hf_state(back.state_dict(), back.config))
    export_hf(back, tmp_path / "b")
    again = load_file(str(tmp_path / "b" / "model.safetensors"))
    for name, a in exported.items():
        assert a.dtype == np.float32 and a.tobytes() == again[name].tobytes(), name
    ids = np.arange(12).reshape(2, 6) % 64
    assert np.array_equal(model(ids)[0].data, back(ids)[0].data)
    assert json.loads((tmp_path / "a" / "config.json").read_text()) == hf_config(model.config)
    assert not (tmp_path / "a" / "tokenizer.json").exists()     # vocab 64 is not the byte one


def test_tokenizer_json_is_the_byte_tokenizer(tmp_path):
    export_hf(GPT(get_config("tiny")), tmp_path / "t")
    tok = json.loads((tmp_path / "t" / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    assert sorted(vocab.values()) == list(range(256)) and tok["model"]["merges"] == []
    assert all(len(ch) == 1 and ch.isprintable() and not ch.isspace() for ch in vocab)
    # a ByteLevel pre-tokenizer maps byte b to byte_to_unicode()[b]; the vocab gives b back
    text = "Grüße, 世界!\n\t x"
    table = byte_to_unicode()
    assert [vocab[table[b]] for b in text.encode("utf-8")] == list(ByteTokenizer().encode(text))
    assert tok["pre_tokenizer"]["type"] == tok["decoder"]["type"] == "ByteLevel"
    assert not tok["pre_tokenizer"]["add_prefix_space"] and not tok["pre_tokenizer"]["use_regex"]


def test_gpt2_conv1d_layout_is_transposed(tmp_path):
    model = _random_model(**GPT2)
    tensors = to_hf_state(model.state_dict(), model.config)
    w = model.state_dict()["blocks.0.attn.qkv.weight"]                    # (3C, C)
    assert np.array_equal(tensors["transformer.h.0.attn.c_attn.weight"], w.T)
    assert "lm_head.weight" not in tensors                                 # tied


# ============================== logits against transformers ================================
@pytest.mark.parametrize("case", ["gpt2", "llama", "gpt2_untied_split", "llama_bias_tied"])
def test_logits_equal_transformers(on_backend, case):
    model = _reference_model(case)
    ours = model(REF[f"{case}/ids"])[0].data
    ref = REF[f"{case}/hf_logits"]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, **LOGITS_TOL[np.float32])


@pytest.mark.parametrize("case", ["gpt2", "llama", "gpt2_untied_split", "llama_bias_tied"])
def test_export_writes_what_transformers_loaded(tmp_path, case):
    """Today's exporter writes, under each name, the tensor transformers loaded for the reference
    logits (sha256 of its float32 bytes), and every parameter transformers has."""
    export_hf(_reference_model(case), tmp_path / "x")
    ours = load_file(str(tmp_path / "x" / "model.safetensors"))
    theirs = json.loads(str(REF[f"{case}/hf_sha256"]))
    assert set(ours) == set(theirs)
    for name, a in ours.items():
        assert hashlib.sha256(a.tobytes()).hexdigest() == theirs[name], name


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_reads_save_pretrained_dirs(on_backend, tmp_path, name):
    directory = os.path.join(SAVED, name)
    if name == "gpt2":           # real GPT-2 configs carry attn_pdrop, which minitx lacks
        with pytest.warns(UserWarning, match="attn_pdrop"):
            model = from_hf(directory)
    else:
        model = from_hf(directory)
        assert model.config.rope_base == 1000.0 and model.config.n_kv_head == 2
    ours = model(REF[f"saved_{name}/ids"])[0].data
    np.testing.assert_allclose(ours, REF[f"saved_{name}/logits"], **LOGITS_TOL[np.float32])
    export_hf(model, tmp_path / "x")                   # HF -> minitx -> HF: same tensors
    original = load_file(os.path.join(directory, "model.safetensors"))
    again = load_file(str(tmp_path / "x" / "model.safetensors"))
    assert set(original) == set(again)
    for k in original:
        assert original[k].tobytes() == again[k].tobytes(), k


def test_sharded_directory_reads_like_single_file(tmp_path):
    src = os.path.join(SAVED, "llama")
    tensors = load_file(os.path.join(src, "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(os.path.join(src, "config.json"), d)
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(d / shard))
    index = {"metadata": {}, "weight_map": {k: s for s, ks in shards.items() for k in ks}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    a, b = from_hf(src).state_dict(), from_hf(str(d)).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    os.remove(d / "model-00002-of-00002.safetensors")
    with pytest.raises(HFError, match="missing"):
        from_hf(str(d))
    index["weight_map"][names[0]] = "../model.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(HFError, match="not a file of"):
        from_hf(str(d))


# ============================== bad and foreign directories =================================
def _copy_saved(tmp_path, name="llama"):
    d = tmp_path / name
    shutil.copytree(os.path.join(SAVED, name), d)
    return d


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(d, fn):
    path = str(d / "model.safetensors")
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path)


@pytest.mark.parametrize("change, message", [
    (lambda d: _edit_config(d, model_type="bert"), "model_type 'bert'"),
    (lambda d: _edit_config(d, hidden_act="gelu"), "hidden_act='gelu'"),
    (lambda d: _edit_config(d, rope_scaling={"rope_type": "linear", "factor": 2.0}),
     "rope_scaling"),
    (lambda d: _edit_config(d, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}),
     "rope_type 'yarn'"),
    (lambda d: _edit_config(d, mlp_bias=True), "mlp_bias"),
    (lambda d: _edit_config(d, num_key_value_heads=3), "n_head % n_kv_head"),
    (lambda d: _edit_config(d, hidden_size=None), "lacks n_embd"),
    (lambda d: _edit_config(d, minitx_attention="fast"), "minitx_attention='fast'"),
    (lambda d: _edit_config(d, architectures=["LlamaModel"]), "architectures=\\['LlamaModel'\\]"),
    (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda d: os.remove(d / "config.json"), "no config.json"),
    (lambda d: os.remove(d / "model.safetensors"), "no model.safetensors"),
    (lambda d: os.rename(d / "model.safetensors", d / "pytorch_model.bin"), "pickle"),
    (lambda d: _edit_tensors(d, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
     "missing \\['model.layers.1.mlp.up_proj.weight'\\]"),
    (lambda d: _edit_tensors(d, lambda t: t.update(extra=np.zeros(2, np.float32))),
     "unexpected \\['extra'\\]"),
    (lambda d: _edit_tensors(d, lambda t: t.update({"model.norm.weight": np.ones(17, np.float32)})),
     "model.norm.weight has shape \\(17,\\)"),
    (lambda d: _edit_tensors(d, lambda t: t.update({"model.norm.weight": np.full(16, np.nan,
                                                                                  np.float32)})),
     "non-finite"),
    (lambda d: _edit_tensors(d, lambda t: t.update({"model.norm.weight": np.ones(16)})),
     "dtype float64"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00"), "cannot read weights"),
])
def test_bad_directories_are_clear_errors(tmp_path, change, message):
    d = _copy_saved(tmp_path)
    change(d)
    with pytest.raises(HFError, match=message):
        from_hf(str(d))


def test_gpt2_tied_head_must_match(tmp_path):
    d = _copy_saved(tmp_path, "gpt2")
    _edit_tensors(d, lambda t: t.update({"lm_head.weight": np.zeros((64, 16), np.float32)}))
    with pytest.warns(UserWarning), pytest.raises(HFError, match="lm_head.weight differs"):
        from_hf(str(d))


def test_missing_directory(tmp_path):
    with pytest.raises(HFError, match="not found"):
        from_hf(str(tmp_path / "nowhere"))


# ============================== what Hugging Face cannot express ============================
@pytest.mark.parametrize("overrides, message", [
    (dict(pos="rope"), "GPT2LMHeadModel needs pos=learned; LlamaForCausalLM needs "
                       "norm=rmsnorm, mlp=swiglu"),
    (dict(bias=False), "GPT2LMHeadModel needs bias=True;"),
    (dict(n_kv_head=1), "GPT2LMHeadModel needs n_kv_head == n_head;"),
    (dict(head_dim=4), "GPT2LMHeadModel needs n_head \\* head_dim == n_embd;"),
    (dict(pos="rope", mlp="swiglu"), "LlamaForCausalLM needs norm=rmsnorm \\("),
    (dict(norm="rmsnorm", pos="rope", mlp="swiglu", dropout=0.1),
     "LlamaForCausalLM needs dropout=0"),
    (dict(attention_pattern="window:8"), "GPT2LMHeadModel needs attention_pattern=dense;"),
])
def test_inexpressible_models_are_errors(tmp_path, overrides, message):
    model = GPT(get_config("tiny", **overrides))
    with pytest.raises(HFError, match=message):
        export_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()          # nothing written


def test_export_refuses_non_finite_weights(tmp_path):
    model = GPT(get_config("tiny"))
    model.ln_f.weight.data[3] = np.inf
    with pytest.raises(ValueError, match="ln_f.weight.*non-finite"):
        export_hf(model, tmp_path / "out")
    assert os.listdir(tmp_path) == []                 # no directory, no temporary left behind


def test_export_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(HFError, match="not an empty directory"):
        export_hf(GPT(get_config("tiny")), tmp_path / "out")


# ============================== optimizer state =============================================
def _trained(tmp_path, case):
    """A 3-step run of the main training job, as the reference script made it."""
    tc = TrainConfig(**json.loads(str(REF["opt_train"])))
    text = minitx.data.default_corpus()[:20000]
    ckpt = str(tmp_path / f"ckpt_{case}")
    train(_config(f"opt_{case}/config"), tc, text, ckpt, log=lambda *a: None)
    return ckpt, tc, text


@pytest.mark.parametrize("case", ["gpt2", "llama"])
def test_optimizer_export_matches_a_torch_adamw_step(on_backend, tmp_path, case):
    ckpt, tc, text = _trained(tmp_path, case)
    out = tmp_path / "hf"
    export_checkpoint(ckpt, str(out), with_optimizer=True)
    from minitx.checkpoint import load_checkpoint
    model, step, opt_state, state, _ = load_checkpoint(ckpt)
    model.train()
    # layout: every HF parameter has step, exp_avg, exp_avg_sq; groups decay matrices only
    moments = load_file(str(out / "optimizer.safetensors"))
    meta = json.loads((out / "optimizer.json").read_text())
    hf_weights = to_hf_state(model.state_dict(), model.config)
    for name, w in hf_weights.items():
        assert moments[f"{name}.exp_avg"].shape == w.shape
        assert moments[f"{name}.step"].shape == () and moments[f"{name}.step"] == step
    decay, no_decay = meta["param_groups"]
    assert decay["weight_decay"] == tc.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(hf_weights[n].ndim == 2 for n in decay["params"])
    assert all(hf_weights[n].ndim == 1 for n in no_decay["params"])
    assert sorted(decay["params"] + no_decay["params"]) == sorted(hf_weights)
    # minitx's own next step, on the batch the reference's torch step used
    train_ids, val_ids = prepare_data(text, tc, model.config.block_size)
    trainer = Trainer(model, tc, train_ids, val_ids, None, log=lambda *a: None)
    trainer.load_state(step, opt_state, state)
    seen, draw = [], trainer.sampler.next_batch
    trainer.sampler.next_batch = lambda t: seen.append(draw(t)) or seen[-1]
    trainer.train_step()
    assert np.array_equal(seen[0][0], REF[f"opt_{case}/x"])
    assert np.array_equal(seen[0][1], REF[f"opt_{case}/y"])
    assert decay["lr"] == trainer.lr
    after = to_hf_state(trainer.model.state_dict(), model.config)
    m_after = {id(p): trainer.optimizer.state[id(p)]["exp_avg"] for p in model.parameters()}
    m_after = to_hf_state({n: m_after[id(p)] for n, p in model.named_parameters()}, model.config)
    tol, mtol = STEP_TOL[np.float32], MOMENT_TOL[np.float32]
    for name, ours in after.items():
        ref = REF[f"opt_{case}/param/{name}"]
        if name.endswith("attn.c_attn.bias"):
            # the key bias adds q.b_k to every score of a query: softmax ignores it, so its
            # gradient is 0 in exact arithmetic and rounding noise (~1e-13) in both programs,
            # which Adam normalises to arbitrary +-lr steps. Compare q and v biases only.
            C = model.config.n_embd
            ours, ref = np.delete(ours, np.s_[C:2 * C]), np.delete(ref, np.s_[C:2 * C])
        np.testing.assert_allclose(ours, ref, rtol=tol["rtol"],
                                   atol=tol["atol_per_lr"] * trainer.lr, err_msg=name)
        m_ref = REF[f"opt_{case}/exp_avg/{name}"]
        np.testing.assert_allclose(m_after[name], m_ref, rtol=mtol["rtol"],
                                   atol=mtol["atol_of_max"] * np.abs(m_ref).max(), err_msg=name)


# ============================== training from a Hugging Face directory ======================
def test_init_from_hf_starts_from_its_weights():
    init = InitFromHF(os.path.join(SAVED, "llama"))
    tc = TrainConfig(max_steps=1, batch_size=2, eval_iters=1)
    ids = np.arange(400) % 64
    minitx.manual_seed(0)
    model = GPT(init.config)
    Trainer(model, tc, ids, ids, None, extensions=[init], log=lambda *a: None)
    ref = from_hf(os.path.join(SAVED, "llama")).state_dict()
    assert all(np.array_equal(v, ref[k]) for k, v in model.state_dict().items())


def test_cli_export_train_init_from_and_errors(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello byte world. " * 60)
    export_hf(_random_model(**dict(LLAMA, vocab_size=256)), tmp_path / "start")
    assert cli(["train", "--init-from", str(tmp_path / "start"), "--data", str(text),
                "--max-steps", "2", "--batch-size", "2", "--eval-iters", "1", "--out",
                str(tmp_path / "ck"), "--sample-tokens", "0"]) == 0
    assert cli(["export-hf", "--ckpt", str(tmp_path / "ck"), "--out", str(tmp_path / "hf"),
                "--with-optimizer"]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert (tmp_path / "hf" / "optimizer.safetensors").is_file()
    assert from_hf(str(tmp_path / "hf")).config.n_kv_head == 2
    foreign = _copy_saved(tmp_path)
    _edit_config(foreign, model_type="t5")
    rope_gpt = tmp_path / "rope_gpt"
    from minitx.checkpoint import save_checkpoint
    save_checkpoint(str(rope_gpt), GPT(get_config("tiny", pos="rope")), 0)
    for args, message in [
        (["export-hf", "--ckpt", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
         "not found"),
        (["export-hf", "--ckpt", str(rope_gpt), "--out", str(tmp_path / "o")], "pos=learned"),
        (["export-hf", "--ckpt", str(rope_gpt), "--out", str(tmp_path / "o"),
          "--with-optimizer"], "weights only"),
        (["export-hf", "--ckpt", str(tmp_path / "ck"), "--out", str(tmp_path / "hf")],
         "not an empty directory"),
        (["train", "--init-from", str(foreign), "--out", str(tmp_path / "o")], "'t5'"),
        (["train", "--init-from", str(foreign), "--config", "tiny"], "leave out --config"),
        (["train", "--init-from", os.path.join(SAVED, "llama")], "vocab_size 64"),
        (["export-hf", "--ckpt", str(tmp_path / "ck")], "--out"),
    ]:
        code = _run_cli(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error:"), (args, err)
        assert message in err[0], (message, err)


def _run_cli(args):
    """The CLI's exit status, whether it returns it or argparse exits."""
    try:
        return cli(args)
    except SystemExit as e:
        return e.code


def test_ds_config_describes_the_default_run():
    """benchmarks/ds_config.json: minitx's default run for DeepSpeed, its curriculum block the
    one minitx.curriculum reads (DeepSpeed's legacy curriculum_learning)."""
    from minitx.curriculum import CurriculumScheduler
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "ds_config.json")
    with open(path, encoding="utf-8") as f:
        ds = json.load(f)
    tc, cfg = TrainConfig(), get_config("default")
    sched = CurriculumScheduler(ds["curriculum_learning"], strict=True)
    assert sched.max == cfg.block_size and sched.get_difficulty(1) == sched.min
    opt = ds["optimizer"]["params"]
    assert ds["optimizer"]["type"] == "AdamW" and tuple(opt["betas"]) == tc.betas
    assert (opt["lr"], opt["weight_decay"]) == (tc.lr, tc.weight_decay)
    assert ds["gradient_clipping"] == tc.grad_clip
    assert ds["train_micro_batch_size_per_gpu"] == tc.batch_size
    lr = ds["scheduler"]["params"]
    assert (lr["total_num_steps"], lr["warmup_num_steps"]) == (tc.max_steps, tc.warmup)
    assert lr["cos_min_ratio"] * tc.lr == pytest.approx(tc.min_lr)
