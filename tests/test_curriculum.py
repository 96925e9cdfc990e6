"""Curriculum learning: DeepSpeed's pacing functions, sequence-length warmup in the loop
(truncate / reshape), hard-example sampling, exact resume in the middle of both, CLI errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitx.cli import main
from minitx.curriculum import (CurriculumScheduler, SeqLenWarmup, TokenLRDecay, fixed_linear,
                               fixed_root, reshape_batch, truncate_batch, two_stage)
from minitx.hard_examples import (HardExamples, HardExampleSampler, ScoredSampler,
                                  hard_probabilities, num_windows, window_batch)
from minitx.models.gpt import GPTConfig
from minitx.train import TrainConfig, train

TEXT = ("The quick brown fox jumps over the lazy dog. " * 40
        + "Pack my box with five dozen liquor jugs! " * 40
        + "How vexingly quick daft zebras jump? " * 40)
MODEL = GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.1)


def _tc(**kw):
    return TrainConfig(**{**dict(max_steps=8, batch_size=2, warmup=2, eval_interval=4,
                                 eval_iters=2, ckpt_interval=4, log_interval=4, seed=3), **kw})


def _linear(lo, hi, total, step_size, kind="fixed_linear", **extra):
    return CurriculumScheduler({"min_difficulty": lo, "max_difficulty": hi, "schedule_type": kind,
                                "schedule_config": {"total_curriculum_step": total,
                                                    "difficulty_step": step_size, **extra}})


# ---------------------------------------------------------------- pacing functions
# Values worked out by hand from DeepSpeed's formula (curriculum_scheduler.py, fixed_root):
# floor((s/S)^(1/r) (max - min) + min), minus itself mod difficulty_step, capped at max.
DEEPSPEED_VALUES = [
    (dict(kind="fixed_linear"), [(1, 8), (50, 64), (99, 120), (100, 128), (101, 128), (10**6, 128)]),
    (dict(kind="fixed_root", root_degree=2), [(1, 16), (25, 64), (64, 104), (100, 128)]),
]


@pytest.mark.parametrize("spec, values", DEEPSPEED_VALUES)
def test_deepspeeds_values_at_given_steps(spec, values):
    sched = _linear(8, 128, 100, 8, **spec)
    assert [(s, sched.get_difficulty(s)) for s, _ in values] == values


def test_deepspeeds_quirk_when_max_is_not_a_multiple_of_the_step():
    sched = _linear(8, 100, 10, 8)          # at S the value sits at 96; max only after S
    assert [sched.get_difficulty(s) for s in (9, 10, 11, 10**4)] == [88, 96, 100, 100]


def test_fixed_discrete_and_two_stage():
    sched = CurriculumScheduler(two_stage(16, 64, 30))
    assert [sched.get_difficulty(s) for s in (1, 30, 31, 1000)] == [16, 16, 64, 64]
    d = CurriculumScheduler({"min_difficulty": 8, "max_difficulty": 32, "enabled": True,
                             "curriculum_type": "seqlen", "schedule_type": "fixed_discrete",
                             "schedule_config": {"difficulty": [8, 16, 32], "max_step": [5, 9]}})
    assert [d.get_difficulty(s) for s in (0, 5, 6, 9, 10)] == [8, 8, 16, 16, 32]


@given(lo_mult=st.integers(1, 8), hi_mult=st.integers(1, 32), step=st.sampled_from([1, 2, 4, 8]),
       total=st.integers(1, 500), root=st.sampled_from([1, 2, 3, 1.5]))
def test_pacing_is_monotone_bounded_aligned_and_reaches_max(lo_mult, hi_mult, step, total, root):
    lo, hi = step * lo_mult, step * max(lo_mult, hi_mult)
    d = [fixed_root(s, lo, hi, total, step, root) for s in range(0, total + 20)]
    assert all(a <= b for a, b in zip(d, d[1:]))                           # monotone
    assert all(lo <= x <= hi and x % step == 0 for x in d)                  # bounded, aligned
    assert all(x == hi for x in d[total:])                                  # max from S on
    assert fixed_linear(total // 2, lo, hi, total, step) == fixed_root(total // 2, lo, hi, total,
                                                                       step, 1)


@pytest.mark.parametrize("config, message", [
    ({"min_difficulty": 64, "max_difficulty": 8, "schedule_type": "fixed_linear"}, "min_difficulty <="),
    ({"min_difficulty": 8, "max_difficulty": 64, "schedule_type": "zigzag"}, "unknown schedule_type"),
    ({"max_difficulty": 64, "schedule_type": "fixed_linear"}, "lacks 'min_difficulty'"),
    ({"min_difficulty": 8, "max_difficulty": 64, "schedule_type": "fixed_root",
      "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 8}}, "root_degree"),
    ({"min_difficulty": 8, "max_difficulty": 64, "schedule_type": "fixed_discrete",
      "schedule_config": {"difficulty": [8, 64], "max_step": [5, 6]}}, "len\\(difficulty\\)"),
    ({"min_difficulty": 8, "max_difficulty": 64, "curriculum_type": "vocab",
      "schedule_type": "fixed_linear"}, "seqlen"),
    ({"min_difficulty": float("inf"), "max_difficulty": 64, "schedule_type": "fixed_linear",
      "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 8}}, "integer"),
    ({"min_difficulty": 8, "max_difficulty": 64, "schedule_type": "fixed_linear",
      "schedule_config": {"total_curriculum_step": 1e400, "difficulty_step": 8}}, "integer"),
    ({"min_difficulty": 8, "max_difficulty": 64, "schedule_type": "fixed_linear",
      "schedule_config": []}, "must be an object"),
    ({"min_difficulty": 8, "max_difficulty": 64, "schedule_type": "fixed_discrete",
      "schedule_config": {"difficulty": [8, 64], "max_step": 5}}, "must be lists"),
])

def test_bad_configs_are_named(config, message):
    """(and, from the review: non-finite numbers and wrong types are named, never OverflowError
    or TypeError)"""
    with pytest.raises(ValueError, match=message):
        CurriculumScheduler(config)


def test_a_tiny_root_degree_past_the_curriculum_stays_at_max():
    sched = _linear(8, 64, 10, 8, kind="fixed_root", root_degree=1e-4)
    assert sched.get_difficulty(11) == 64 and sched.get_difficulty(5) == 8


# ---------------------------------------------------------------- truncate and reshape
@given(B=st.integers(1, 4), T=st.integers(1, 33), L=st.integers(1, 33))
def test_truncate_and_reshape_keep_targets_aligned_and_count_tokens(B, T, L):
    L = min(L, T)
    ids = np.arange(B * (T + 1)).reshape(B, T + 1)
    x, y = ids[:, :-1], ids[:, 1:]
    for cut, rows, kept in ((truncate_batch, B, B * L), (reshape_batch, B * (T // L),
                                                          B * (T // L) * L)):
        cx, cy = cut(x, y, L)
        assert cx.shape == cy.shape == (rows, L) and cx.size == kept
        np.testing.assert_array_equal(cy, cx + 1)                          # y is x's next token


# ---------------------------------------------------------------- hard examples
def test_hard_sampler_draws_from_its_formula():
    ids = np.arange(2000) % 97
    s = HardExampleSampler(ids, 8, 16, seed=0, temperature=0.5, floor=0.2, refresh_every=0)
    s.scores = np.random.default_rng(1).uniform(1, 4, s.n)
    p = hard_probabilities(s.scores, 0.5, 0.2)
    z = np.exp(s.scores / 0.5)
    np.testing.assert_allclose(p, 0.8 * z / z.sum() + 0.2 / s.n, rtol=1e-12)

    class T:
        step = 1
    counts = np.zeros(s.n)
    for _ in range(2500):
        s.next_batch(T)
        np.add.at(counts, s.last, 1)
    expected = p * counts.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # chi-squared with n - 1 = 123 degrees of freedom: mean 123, sd ~15.7; 200 is ~ 5 sd above
    assert chi2 < 200, chi2
    assert min(p) >= 0.2 / s.n                                             # the uniform floor


def test_importance_weights_undo_the_sampling_bias():
    ids = np.arange(1000) % 50
    s = HardExampleSampler(ids, 4, 8, seed=0, importance=True)
    s.scores = np.linspace(1, 5, s.n)
    p = s.probabilities()
    _, _, w = s.next_batch(type("T", (), {"step": 1}))
    np.testing.assert_allclose(w * s.n * p[s.last], 1.0)


def test_window_batches_are_next_token_pairs():
    ids = np.arange(100)
    assert num_windows(100, 16) == 6
    x, y = window_batch(ids, [0, 5], 16)
    np.testing.assert_array_equal(x[1], np.arange(80, 96))
    np.testing.assert_array_equal(y, x + 1)


def test_scored_sampler_moves_from_uniform_to_hard():
    ids = np.arange(1000) % 50
    n = num_windows(1000, 8)
    s = ScoredSampler(ids, 4, 8, 0, np.linspace(0, 3, n), mix_steps=10)
    np.testing.assert_allclose(s.probabilities(0), np.full(n, 1 / n))
    np.testing.assert_allclose(s.probabilities(10), s.hard)
    with pytest.raises(ValueError, match="finite window scores"):
        ScoredSampler(ids, 4, 8, 0, np.zeros(3))


# ---------------------------------------------------------------- in the loop, with resume
def _extensions(kind):
    lin = _linear(4, 16, 6, 4)
    steps = CurriculumScheduler({"min_difficulty": 4, "max_difficulty": 16,
                                 "schedule_type": "fixed_discrete",
                                 "schedule_config": {"difficulty": [4, 8, 16], "max_step": [2, 4]}})
    return {"seqlen": lambda: [SeqLenWarmup(lin, "truncate")],
            "reshape": lambda: [SeqLenWarmup(steps, "reshape")],
            "hard": lambda: [HardExamples("hard", refresh_every=3, refresh_size=8,
                                          importance=True), SeqLenWarmup(lin, "truncate")],
            "tokens": lambda: [SeqLenWarmup(lin, "truncate"), TokenLRDecay(8 * 32, 2 * 32)],
            }[kind]


@pytest.mark.parametrize("kind", ["seqlen", "reshape", "hard", "tokens"])
def test_resume_in_the_middle_of_a_curriculum_is_bit_exact(tmp_path, kind):
    lines = []
    a = train(MODEL, _tc(log_interval=1), TEXT, str(tmp_path / "a"), log=lines.append,
              extensions=_extensions(kind)())

    class Crash:
        name = "crash"

        def on_step_begin(self, trainer):
            if trainer.step == 5:
                raise KeyboardInterrupt

        def state_dict(self):
            return {}
    with pytest.raises(KeyboardInterrupt):
        train(MODEL, _tc(), TEXT, str(tmp_path / "b"), log=lambda *_: None,
              extensions=_extensions(kind)() + [Crash()])
    b = train(MODEL, _tc(), TEXT, str(tmp_path / "b"), resume=True, log=lambda *_: None,
              extensions=_extensions(kind)())
    for k, v in a["model"].state_dict().items():
        np.testing.assert_array_equal(v, b["model"].state_dict()[k], err_msg=k)
    assert a["tokens"] == b["tokens"] and a["flops"] == b["flops"]
    if kind != "reshape":
        assert a["tokens"] < 8 * 2 * 16                  # truncation: fewer tokens early
        assert "len 4" in lines[1]                       # the progress line shows the length
    else:
        assert a["tokens"] == 8 * 2 * 16                 # reshape: the same tokens per step


def test_resume_with_other_curriculum_settings_is_refused(tmp_path):
    out = str(tmp_path / "run")
    train(MODEL, _tc(max_steps=4), TEXT, out, log=lambda *_: None,
          extensions=_extensions("seqlen")())
    with pytest.raises(ValueError, match="resume with the same flags"):
        train(MODEL, _tc(), TEXT, out, resume=True, log=lambda *_: None,
              extensions=[SeqLenWarmup(_linear(8, 16, 6, 8))])


# ---------------------------------------------------------------- CLI
CLI_BAD = [
    (["--curriculum", "seqlen", "--min-len", "200"], "min_difficulty <= max_difficulty"),
    (["--curriculum", "seqlen", "--min-len", "12"], "does not divide"),
    (["--curriculum", "seqlen", "--curriculum-steps", "-5"], "--curriculum-steps"),
    (["--curriculum", "seqlen", "--pacing", "zigzag"], "invalid choice"),
    (["--curriculum", "seqlen", "--pacing", "fixed_discrete"], "needs --discrete"),
    (["--curriculum", "seqlen", "--pacing", "fixed_discrete", "--discrete", "8:10,256"],
     "exceeds block_size"),
    (["--curriculum", "seqlen", "--pacing", "fixed_discrete", "--discrete", "8:x,16"],
     "expected 'LEN:STEP"),
    (["--curriculum", "seqlen", "--curriculum-config", "missing.json"], "missing.json"),
    (["--sampler", "scored"], "needs --scorer"),
    (["--sampler", "hard", "--hard-temperature", "0"], "--hard-temperature"),
    (["--sampler", "hard", "--hard-floor", "2"], "--hard-floor"),
]


@pytest.mark.parametrize("argv, message", CLI_BAD, ids=[" ".join(a) for a, _ in CLI_BAD])
def test_bad_curriculum_flags_are_one_error_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    import minitx.data
    monkeypatch.setattr(minitx.data, "default_corpus", lambda: pytest.fail("work started"))
    try:
        code = main(["train", *argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    assert message in err[0], err[0]


def test_seqlen_warmup_with_rotary_positions(tmp_path):
    """The llama flavour (RoPE, no position table) trains on short sequences too."""
    from minitx.models.gpt import get_config
    cfg = get_config("llama", n_layer=1, n_head=2, n_embd=16, block_size=16)
    lines = []
    r = train(cfg, _tc(max_steps=4, log_interval=1), TEXT, str(tmp_path / "r"), log=lines.append,
              extensions=[SeqLenWarmup(_linear(4, 16, 6, 4))])
    assert "len 4" in lines[1] and r["tokens"] < 4 * 2 * 16 and np.isfinite(r["val_loss"])
