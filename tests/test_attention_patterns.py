"""Attention patterns in the GPT (issue 12 item 4): parsing and errors, per-layer specs saved in
the config, KV-cache decoding equal to the full forward for every pattern, the CLI flag."""
import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from minitx.attention import patterns
from minitx.models.gpt import GPT, GPTConfig, get_config

# Tolerances, in one place.
TOL = {"float32_logits": 2e-4}     # incremental (cached) vs full forward, float32 logits ~ 1

SPECS = ["dense", "window:5", "bigbird:block=4,window=1,global=1,random=1,seed=3",
         "strided:block=4,stride=2", "fixed:block=4,stride=3,c=1", "longformer:block=4",
         "linear", "performer:features=16,seed=1", "window:3;linear"]


def tiny(spec, **kw):
    return get_config("tiny", attention_pattern=spec, block_size=24, **kw)


@pytest.mark.parametrize("spec", SPECS)
def test_cached_decoding_equals_full_forward(spec):
    """Logits of a prefill + one token at a time (KV cache) equal the full forward's."""
    model = GPT(tiny(spec))
    model.eval()
    idx = np.random.default_rng(0).integers(0, 256, (2, 21))
    full = model(idx)[0].data                                   # (B, T, V)
    caches = model.new_caches()
    steps = [model(idx[:, :9], caches=caches)[0].data]
    for t in range(9, 21):
        steps.append(model(idx[:, t:t + 1], caches=caches, start_pos=t)[0].data)
    inc = np.concatenate(steps, axis=1)
    assert np.abs(inc - full).max() <= TOL["float32_logits"], spec


def test_patterns_change_the_function_and_the_mask_is_causal():
    idx = np.random.default_rng(1).integers(0, 256, (1, 24))
    outs = {}
    for spec in ("dense", "window:2", "strided:block=4,stride=2", "linear"):
        model = GPT(tiny(spec))                                  # same seed: same weights
        outs[spec] = model(idx)[0].data
        changed = idx.copy()
        changed[0, 20] = (changed[0, 20] + 1) % 256
        after = model(changed)[0].data
        assert np.array_equal(after[0, :20], outs[spec][0, :20]), f"{spec}: not causal"
    dense = outs.pop("dense")
    for spec, out in outs.items():
        assert np.abs(out - dense).max() > 1e-3, f"{spec} equals dense attention"


def test_window_pattern_sees_only_the_window():
    model = GPT(tiny("window:3"))
    idx = np.random.default_rng(2).integers(0, 256, (1, 16))
    base = model(idx)[0].data
    changed = idx.copy()
    changed[0, 2] = (changed[0, 2] + 7) % 256
    after = model(changed)[0].data
    # 2 layers of window 3: position 2 reaches positions up to 2 + 2 * 3 = 8, not beyond
    assert np.array_equal(after[0, 9:], base[0, 9:]) and not np.array_equal(after[0, 8], base[0, 8])


def test_pattern_is_saved_in_the_config():
    cfg = tiny("window:3;linear")
    d = dataclasses.asdict(cfg)
    assert d["attention_pattern"] == "window:3;linear"
    assert GPTConfig.from_dict(d) == cfg
    old = {k: v for k, v in d.items() if k != "attention_pattern"}   # a pre-pattern checkpoint
    assert GPTConfig.from_dict(old).attention_pattern == "dense"


@pytest.mark.parametrize("spec, match", [
    ("sparse", "unknown attention pattern 'sparse'"),
    ("window:-1", "window size .* must be >= 0"),
    ("window:x", "must be an integer"),
    ("bigbird:block=0", "block .* must be >= 1"),
    ("bigbird:blocks=4", "bad setting 'blocks=4'"),
    ("linear:x=1", "linear takes no settings"),
    ("fixed:stride=2,c=3", "c must be <= stride"),
    ("dense;dense;dense", "one per layer"),
    ("", "non-empty"),
])
def test_bad_specs_raise(spec, match):
    with pytest.raises(ValueError, match=match):
        tiny(spec)


def test_linear_patterns_refuse_gqa():
    with pytest.raises(ValueError, match="n_kv_head == n_head"):
        get_config("tiny", attention_pattern="linear", n_kv_head=1)


def test_cli_bad_pattern_is_one_error_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minitx", "train", "--config", "tiny",
                        "--attention-pattern", "bigbird:block=x", "--out", str(tmp_path / "o"),
                        "--max-steps", "1"], capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and "block" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_parse_layers():
    layers = patterns.parse_layers("window:2;bigbird:block=8,random=0", 2)
    assert layers == [("window", {"window": 2}),
                      ("bigbird", {"block": 8, "window": 1, "global": 1, "random": 0, "seed": 0})]
    assert patterns.parse_layers("linear", 3) == [("linear", {})] * 3
