"""Growth (minitx/growth): MSG masks keep the function exactly, for any init of the new weights;
gradients of the old weights, folding after the ramp, optimizer moments, Net2Net baseline."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minitx
from minitx.growth import grow, has_masks, set_mask_step
from minitx.growth.operators import kind_maps, placement
from minitx.models.gpt import GPT, GPTConfig
from minitx.optim import AdamW
from minitx.train import make_optimizer, TrainConfig

# relative max error of logits (max |a - b| / max |a|), keyed by dtype
RTOL = {np.float32: 1e-5, np.float64: 1e-10}
FLAVOURS = {
    "gpt2": dict(norm="layernorm", pos="learned", mlp="gelu", bias=True, tie_weights=True),
    "llama": dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, tie_weights=False,
                  fused_qkv=False),
}


@st.composite
def grow_cases(draw):
    """A small GPT config of either flavour and a sequence of 1-2 growth calls."""
    flavour = draw(st.sampled_from(sorted(FLAVOURS)))
    Hkv = draw(st.integers(1, 2))
    H = Hkv * draw(st.integers(1, 2))
    cfg = GPTConfig(vocab_size=37, block_size=12, n_layer=draw(st.integers(1, 2)), n_head=H,
                    n_kv_head=Hkv, head_dim=draw(st.sampled_from([2, 4])),
                    n_embd=draw(st.integers(3, 10)), ffn_hidden=draw(st.integers(2, 12)),
                    **FLAVOURS[flavour])
    steps, c = [], cfg
    for _ in range(draw(st.integers(1, 2))):
        dims = draw(st.sets(st.sampled_from(["n_embd", "ffn", "n_head", "n_layer"]), min_size=1))
        kw = {}
        if "n_embd" in dims:
            kw["n_embd"] = c.n_embd + draw(st.integers(1, 5))
        if "ffn" in dims:
            kw["ffn"] = c.ffn_hidden + draw(st.integers(1, 6))
        if "n_head" in dims:
            kw["n_head"] = c.n_head + c.n_kv_head * draw(st.integers(1, 2))
        if "n_layer" in dims:
            add = draw(st.integers(1, 2))
            kw["n_layer"] = c.n_layer + add
            kw["insert_at"] = draw(st.lists(st.integers(0, c.n_layer + add - 1), min_size=add,
                                            max_size=add, unique=True))
        steps.append(kw)
        c = GPTConfig(**{**c.__dict__, "n_embd": kw.get("n_embd", c.n_embd),
                         "ffn_hidden": kw.get("ffn", c.ffn_hidden),
                         "n_head": kw.get("n_head", c.n_head),
                         "n_kv_head": (kw.get("n_head", c.n_head) if c.n_kv_head == c.n_head
                                       else c.n_kv_head),
                         "n_layer": kw.get("n_layer", c.n_layer)})
    return cfg, steps, draw(st.integers(0, 2 ** 31))


def _model(cfg, dtype, seed=0):
    minitx.manual_seed(seed)
    return GPT(cfg).to(dtype)


def _random_init(seed):
    rng = np.random.default_rng(seed)
    return lambda name, shape: rng.normal(0.0, 1.0, shape)   # large, non-zero new weights


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


def _grow_all(model, steps, seed, **kw):
    for s in steps:
        model = grow(model, ramp_steps=5, init=_random_init(seed), **s, **kw)
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(case=grow_cases())
def test_masked_growth_preserves_logits(on_backend, dtype, case):
    cfg, steps, seed = case
    model = _model(cfg, dtype)
    idx = np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, 7))
    before = model(idx)[0].data
    grown = _grow_all(model, steps, seed)
    assert has_masks(grown)
    after = grown(idx)[0].data
    err = _rel(before, after)
    assert err <= RTOL[dtype], f"steps {steps}: relative logits error {err:.3e}"


@given(case=grow_cases())
def test_old_gradients_unchanged_right_after_growth(case):
    cfg, steps, seed = case
    model = _model(cfg, np.float64)
    rng = np.random.default_rng(seed)
    idx, tgt = rng.integers(0, cfg.vocab_size, (2, 2, 7))
    model(idx, tgt)[1].backward()
    old_grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    grown = _grow_all(model, steps[:1], seed)
    grown(idx, tgt)[1].backward()
    maps = kind_maps(cfg, grown.config)
    new_params = dict(grown.named_parameters())
    src = [None] * grown.config.n_layer
    ins = steps[0].get("insert_at") or list(range(cfg.n_layer, grown.config.n_layer))
    olds = iter(range(cfg.n_layer))
    src = [None if i in ins else next(olds) for i in range(grown.config.n_layer)]
    for name, p in new_params.items():
        if name.startswith("blocks.") and src[int(name.split(".")[1])] is None:
            assert np.all(p.grad == 0), f"{name}: a masked new block must get zero gradient"
            continue
        oname = name if not name.startswith("blocks.") else \
            f"blocks.{src[int(name.split('.')[1])]}.{name.split('.', 2)[2]}"
        ix = np.ix_(*[np.arange(s) if i is None else i
                      for s, i in zip(old_grads[oname].shape, placement(oname, maps))])
        got = p.grad[ix]
        np.testing.assert_allclose(got, old_grads[oname], rtol=1e-9, atol=1e-12,
                                   err_msg=f"{name}: gradient of the old entries moved")
        rest = p.grad.copy()
        rest[ix] = 0
        assert np.all(rest == 0), f"{name}: new entries must get zero gradient at mask 0"


@given(case=grow_cases())
def test_ramp_folds_to_plain_gpt(case):
    cfg, steps, seed = case
    grown = _grow_all(_model(cfg, np.float64), steps, seed, step=0)
    idx = np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, 7))
    assert not set_mask_step(grown, 3)                        # mid-ramp: masks stay
    grown.growth_masks.values.values[:] = 1.0                 # all masks at 1, still masked
    at_one = grown(idx)[0].data
    assert set_mask_step(grown, 5) and not has_masks(grown)
    assert "growth_masks" not in grown.__dict__
    plain = GPT(grown.config).to(np.float64)
    plain.load_state_dict(grown.state_dict())
    assert list(plain.state_dict()) == list(grown.state_dict())
    np.testing.assert_allclose(plain(idx)[0].data, at_one, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dims", [dict(n_embd=40), dict(ffn=150), dict(n_head=4),
                                  dict(n_layer=3), dict(n_embd=40, ffn=150, n_head=4, n_layer=3)])
@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_moments_move_with_params_and_training_goes_on(flavour, dims):
    cfg = GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=32,
                    **FLAVOURS[flavour])
    model = _model(cfg, np.float32)
    opt = make_optimizer(model.parameters(), TrainConfig())
    rng = np.random.default_rng(1)
    for _ in range(2):
        idx, tgt = rng.integers(0, 40, (2, 2, 8))
        model(idx, tgt)[1].backward()
        opt.step()
        opt.zero_grad()
    old_state = {n: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                     for k, v in opt.state[id(p)].items()} for n, p in model.named_parameters()}
    grown = grow(model, opt, ramp_steps=3, **dims)
    maps = kind_maps(cfg, grown.config)
    params = dict(grown.named_parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == len(params)
    for name, p in params.items():
        st = opt.state[id(p)]
        assert st["step"] == 2
        if name in old_state and (not name.startswith("blocks.")
                                  or int(name.split(".")[1]) < cfg.n_layer):
            ix = np.ix_(*[np.arange(s) if i is None else i for s, i in
                          zip(old_state[name]["exp_avg"].shape, placement(name, maps))])
            for key in ("exp_avg", "exp_avg_sq"):
                assert st[key].shape == p.shape
                np.testing.assert_array_equal(st[key][ix], old_state[name][key])
                rest = st[key].copy()
                rest[ix] = 0
                assert not rest.any(), f"{name}.{key}: new entries must start at zero"
        else:
            assert not st["exp_avg"].any() and not st["exp_avg_sq"].any()
    for step in range(2, 7):                                   # through the ramp and past it
        set_mask_step(grown, step)
        idx, tgt = rng.integers(0, 40, (2, 2, 8))
        loss = grown(idx, tgt)[1]
        loss.backward()
        for p in grown.parameters():
            assert p.grad.shape == p.shape
        opt.step()
        opt.zero_grad()
        assert np.isfinite(loss.item())
    assert not has_masks(grown)
    for p in grown.parameters():
        assert opt.state[id(p)]["exp_avg"].shape == p.shape and opt.state[id(p)]["step"] == 7


def test_net2net_copy_is_exact_for_ffn_and_heads_and_breaks_for_width_and_depth():
    cfg = GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=32, n_kv_head=1)
    model = _model(cfg, np.float64)
    idx = np.random.default_rng(0).integers(0, 40, (2, 8))
    before = model(idx)[0].data
    for dims, exact in ((dict(ffn=200), True), (dict(n_head=4), True),
                        (dict(n_embd=48), False), (dict(n_layer=3), False)):
        grown = grow(model, init="copy", **dims)
        assert not has_masks(grown)
        err = _rel(before, grown(idx)[0].data)
        assert (err < 1e-12) == exact, f"{dims}: copy growth relative error {err:.2e}"


@pytest.mark.parametrize("kw, match", [
    (dict(n_embd=16), "shrink"), (dict(n_head=7), "multiple of the model's n_kv_head"),
    (dict(), "nothing to grow"), (dict(ffn=2.5), "must be an int"),
    (dict(n_embd=40, init="ones"), "init must be"), (dict(n_embd=40, ramp_steps=-1), "ramp_steps"),
    (dict(n_layer=3, insert_at=[5]), "insert_at"),
])
def test_bad_growth_is_a_clear_error(kw, match):
    model = _model(GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=4, n_embd=32,
                             n_kv_head=2), np.float32)
    with pytest.raises((ValueError, TypeError), match=match):
        grow(model, **kw)


def test_grow_rejects_a_non_gpt():
    with pytest.raises(TypeError, match="expected a GPT"):
        grow(AdamW, n_embd=3)


# ---------------------------------------------------------------- the schedule in training
from minitx.growth.schedule import (GrowthSchedule, GrowthScheduleError, parse_schedule,  # noqa: E402
                                    validate_schedule)
from minitx.models.gpt import get_config  # noqa: E402
from minitx.train import train  # noqa: E402

SCHEDULE = "10:n_embd=40,n_layer=3;14:n_head=4,ffn=150"


class _Crash(Exception):
    pass


class _CrashAt:
    """An extension that stops the run after step `step` (the previous checkpoint survives)."""
    name = "crash"

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, metrics):
        if trainer.step == self.step:
            raise _Crash

    def state_dict(self):
        return {}

    def load_state_dict(self, d):
        pass


def _run(out, resume=False, crash=None, flavour="tiny"):
    cfg = get_config(flavour, n_layer=2, n_head=2, n_embd=32, block_size=16)
    tc = TrainConfig(max_steps=20, batch_size=2, warmup=4, eval_interval=100, eval_iters=2,
                     ckpt_interval=4, log_interval=100, seed=3)
    text = "".join(f"line {i}: the quick brown fox {i * 7 % 13} jumps.\n" for i in range(600))
    ext = [GrowthSchedule(parse_schedule(SCHEDULE), ramp_steps=4)]
    if crash is not None:
        ext.append(_CrashAt(crash))
    return train(cfg, tc, text, str(out), resume=resume, log=lambda *a: None, extensions=ext)


@pytest.mark.parametrize("crash", [9, 13])              # before the first growth; mid-ramp
def test_resume_across_growth_is_bit_exact(tmp_path, crash):
    full = _run(tmp_path / "full")["model"]
    with pytest.raises(_Crash):
        _run(tmp_path / "cut", crash=crash)
    resumed = _run(tmp_path / "cut", resume=True)["model"]
    assert resumed.config == full.config and not has_masks(resumed)
    a, b = full.state_dict(), resumed.state_dict()
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_mid_ramp_checkpoint_says_it_holds_masks(tmp_path):
    from minitx.checkpoint import CheckpointError, load_model, read_config
    with pytest.raises(_Crash):
        _run(tmp_path / "cut", crash=13)             # the save at step 12 is mid-ramp
    assert read_config(str(tmp_path / "cut"))["format"] == "minitx-gpt-masked"
    with pytest.raises(CheckpointError, match="mid-way through a growth ramp"):
        load_model(str(tmp_path / "cut"))
    resumed = _run(tmp_path / "cut", resume=True)    # past the ramp: a plain GPT again
    assert read_config(str(tmp_path / "cut"))["format"] == "minitx-gpt"
    assert not has_masks(load_model(str(tmp_path / "cut"))) and resumed["step"] > 13


@pytest.mark.parametrize("text, match", [
    ("", "empty schedule"), ("300", "STEP:SIZE=VALUE"), ("x:n_layer=3", "must be an integer"),
    ("5:depth=3", "SIZE one of"), ("5:n_layer=3,n_layer=4", "given twice"),
    ("5:n_layer=three", "must be an integer"),
])
def test_bad_schedule_syntax(text, match):
    with pytest.raises(GrowthScheduleError, match=match):
        parse_schedule(text)


@pytest.mark.parametrize("text, match", [
    ("10:n_layer=1", "shrink"), ("10:n_head=7", "n_kv_head"), ("10:n_layer=4;5:n_layer=5",
                                                               "increasing step order"),
    ("100:n_layer=4", "before --max-steps"), ("0:n_layer=4", "must be > 0"),
    ("10:n_layer=2", "changes nothing"),
])
def test_bad_schedule_meaning(text, match):
    cfg = get_config("tiny", n_layer=2, n_head=4, n_kv_head=2)
    with pytest.raises(GrowthScheduleError, match=match):
        validate_schedule(parse_schedule(text), cfg, max_steps=100, ramp_steps=5)


def test_cli_bad_schedule_is_one_error_line_before_training(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "minitx", "train", "--config", "tiny",
                        "--max-steps", "50", "--out", str(tmp_path / "o"),
                        "--grow", "30:n_layer=4;20:n_layer=6"], capture_output=True, text=True)
    assert r.returncode == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "increasing step order" in errors[0], r.stderr
    assert "step " not in r.stdout and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- compute accounting
def test_trainer_flops_follow_the_grown_sizes(tmp_path):
    from minitx.growth.cost import run_flops
    result = _run(tmp_path / "f")
    cfg = get_config("tiny", n_layer=2, n_head=2, n_embd=32, block_size=16)
    expected, stages = run_flops(cfg, parse_schedule(SCHEDULE), 20, tokens_per_step=2 * 16)
    assert [s for s, _ in stages] == [0, 10, 14]
    assert result["flops"] == pytest.approx(expected, rel=1e-12)
    assert stages[-1][1] == result["model"].config


def test_flops_per_token_of_a_config_matches_the_model():
    from minitx.growth.cost import flops_per_token
    for name in ("tiny", "llama"):
        cfg = get_config(name, n_kv_head=2)
        assert flops_per_token(cfg) == GPT(cfg).flops_per_token()


def test_schedule_cost_is_6nd_per_stage_against_the_final_size():
    from minitx.growth.cost import FLM_101B_STAGES, schedule_cost
    r = schedule_cost()
    grown = sum(6 * n * d for n, d in FLM_101B_STAGES)
    scratch = 6 * FLM_101B_STAGES[-1][0] * sum(d for _, d in FLM_101B_STAGES)
    assert r["grown_flops"] == pytest.approx(grown) and r["scratch_flops"] == pytest.approx(scratch)
    assert 0.70 < r["saving"] < 0.75                      # FLM-101B reports a 72% saving
    assert schedule_cost([(1.0, 10.0)])["saving"] == 0.0  # no growth, no saving
    with pytest.raises(ValueError, match="stages"):
        schedule_cost([(0, 1)])


# ---------------------------------------------------------------- tutorial 06 (quick mode)
def test_tutorial_06_growth_quick(tmp_path):
    import os
    import re
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, MINITX_TUTORIAL_OUT=str(tmp_path), MPLBACKEND="Agg",
               PYTHONPATH=os.path.dirname(os.path.dirname(minitx.__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "tutorials", "06_growth.py"), "--quick"],
                       capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = re.findall(r"^\| (gpt2|llama) \| ([^|]+) \| ([0-9.e+-]+) \| ([0-9.e+-]+) \| "
                      r"([0-9.e+-]+) \|$", r.stdout, flags=re.M)
    assert len(rows) == 10, r.stdout
    for flavour, label, msg, plain, copy in rows:
        assert float(msg) < 1e-12 and float(plain) > 1e-3, (flavour, label, msg, plain)
    assert "folded: True" in r.stdout and "saving 72.6%" in r.stdout
    assert re.search(r"grown \(MSG\)\s+\d+ steps, [0-9.]+ TFLOP, final val loss [0-9.]+", r.stdout)
