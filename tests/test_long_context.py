"""The memory patterns in the GPT (issue 12 items 3-4): Transformer-XL (`xl`) and kNN memory
(`knn`) trained over long streams segment by segment (minitx/long_context.py), their decoding,
their errors, and the per-pattern FLOPs accounting."""
import subprocess
import sys

import numpy as np
import pytest

import minitx
from minitx import backend
from minitx.attention import scaled_dot_product_attention as sdpa
from minitx.attention import patterns
from minitx.attention.patterns import Pattern, parse
from minitx.long_context import (SegmentSampler, SegmentTraining, decode_array, encode_array,
                                 stream_logits)
from minitx.models.gpt import GPT, _Rope, get_config, num_params_of, rope_tables
from minitx.train import TrainConfig, Trainer, train

# Tolerances, in one place.
TOL = {"float64": 1e-10,            # segment-wise vs masked dense forward, float64 logits
       "float32_logits": 2e-4}      # incremental decoding vs teacher-forced, float32 logits

IMPLS = ["naive", "flash2"] + (["c"] if "c" in backend.available() else [])
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom. "
        * 40 + "Call me Ishmael. Some years ago, never mind how long precisely. " * 40)


def model_for(spec, T=8, dtype=None, **kw):
    minitx.manual_seed(0)
    m = GPT(get_config("llama", n_layer=2, n_head=2, n_embd=16, block_size=T,
                       attention_pattern=spec, **kw))
    return m.to(dtype) if dtype is not None else m


def masked_dense_forward(model, idx, allowed):
    """The GPT's forward over the whole idx (B, N) with RoPE at absolute positions 0..N-1 and
    attention restricted to `allowed` (N, N) bool: the reference for the segment-wise run."""
    cfg = model.config
    x = model.wte(idx)
    rope = rope_tables(cfg.head_dim, np.arange(idx.shape[1]), cfg.rope_base)
    for blk in model.blocks:
        a = blk.attn
        q, k, v = a.project_qkv(blk.ln1(x))
        q, k = _Rope.apply(q, *rope), _Rope.apply(k, *rope)
        y = sdpa(q, k, v, attn_mask=allowed, impl="naive",
                 enable_gqa=cfg.n_kv_head != cfg.n_head)
        B, _, N, _ = y.shape
        x = x + a.o_proj(y.permute(0, 2, 1, 3).reshape(B, N, -1))
        x = x + blk.mlp(blk.ln2(x))
    return model.lm_head(model.ln_f(x))


def xl_span(N, T, M):
    """Query i (segment s = i // T) sees keys j <= i with j >= s T - M."""
    i, j = np.arange(N)[:, None], np.arange(N)[None, :]
    return (j <= i) & (j >= (i // T) * T - M)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("M,n_kv_head", [(0, 2), (5, 2), (8, 1), (19, 2)])
def test_xl_segments_equal_dense_attention_over_the_same_span(on_backend, impl, M, n_kv_head):
    T, N = 8, 30                                          # 4 segments, the last one short
    model = model_for(f"xl:mem={M}", T, np.float64, attention=impl, n_kv_head=n_kv_head)
    idx = np.random.default_rng(1).integers(0, 256, (2, N))
    got = stream_logits(model, idx)                                         # (B, N, V)
    with minitx.no_grad():
        want = masked_dense_forward(model, idx, xl_span(N, T, M)).data
    assert np.abs(got - want).max() <= TOL["float64"]
    if M:                                                 # the memory matters: not local only
        assert np.abs(got - masked_dense_forward(model, idx, xl_span(N, T, 0)).data).max() > 1e-6


def test_xl_segments_spec_sets_the_memory_in_block_sizes():
    assert Pattern(*parse("xl:segments=3"), 16, 0, block_size=8).mem_len == 24
    assert Pattern(*parse("xl"), 16, 0, block_size=8).mem_len == 8
    assert Pattern(*parse("xl:mem=5"), 16, 0, block_size=8).mem_len == 5


def test_no_gradient_flows_into_the_memory(on_backend):
    """Tokens only in segment 1 get no input-embedding gradient from segment 2's loss under
    xl (stop-gradient), but do under the same attention span without it."""
    T = 8
    model = model_for("xl:mem=8", T, np.float64)
    rng = np.random.default_rng(2)
    seg1, seg2 = rng.integers(0, 100, (1, T)), rng.integers(150, 256, (1, T))
    tgt = rng.integers(0, 256, (1, T))
    caches = model.new_caches()
    with minitx.no_grad():
        model(seg1, caches=caches)
    model(seg2, tgt, caches=caches)[1].backward()
    g = model.wte.weight.grad
    rows1 = np.unique(seg1)
    assert np.all(g[rows1] == 0) and np.abs(g[np.unique(seg2)]).max() > 0
    assert all(isinstance(v, np.ndarray) for c in caches for v in c.values())
    model.zero_grad()                                     # the reference: no stop-gradient
    idx = np.concatenate([seg1, seg2], axis=1)
    logits = masked_dense_forward(model, idx, xl_span(2 * T, T, 8))
    from minitx.nn import functional as F
    F.cross_entropy(logits[:, T:].reshape(T, -1), tgt.reshape(T)).backward()
    assert np.abs(model.wte.weight.grad[rows1]).max() > 1e-8


def test_segment_sampler_walks_each_row_in_order_and_wraps():
    ids = np.arange(103)
    s = SegmentSampler(ids, 2, 10)                        # rows of 51: 5 segments of 10 + 1
    assert s.n_segments == 5
    seen = []
    for i in range(6):
        x, y, w = s.next_batch()
        assert w is None and np.array_equal(y, x + 1)
        assert s.starts_stream == (i % 5 == 0)
        seen.append(x)
    assert np.array_equal(seen[0][1], np.arange(51, 61)) and np.array_equal(seen[1][0],
                                                                             np.arange(10, 20))
    assert np.array_equal(seen[5], seen[0]) and s.epoch == 1
    t = SegmentSampler(ids, 2, 10)
    t.load_state_dict(s.state_dict())
    assert np.array_equal(t.next_batch()[0], s.next_batch()[0])
    with pytest.raises(ValueError, match="no segment"):
        SegmentSampler(np.arange(15), 2, 10)


class Record:
    name = "record"

    def __init__(self):
        self.losses = []

    def on_step_end(self, trainer, metrics):
        self.losses.append(metrics["loss"])

    def state_dict(self):
        return {}

    def load_state_dict(self, d):
        pass


@pytest.mark.parametrize("spec", ["xl:mem=12", "knn:k=4,size=40;xl:mem=8"])
def test_resume_is_bit_exact_with_the_memory(on_backend, tmp_path, spec):
    cfg = get_config("llama", n_layer=2, n_head=2, n_embd=16, block_size=8,
                     attention_pattern=spec)
    tc = dict(max_steps=6, batch_size=2, warmup=2, eval_interval=3, eval_iters=2,
              ckpt_interval=3, log_interval=3, seed=5)
    quiet = lambda *a: None  # noqa: E731
    rec_a = Record()
    a = train(cfg, TrainConfig(**tc), TEXT, str(tmp_path / "a"), log=quiet,
              extensions=[SegmentTraining(), rec_a])
    rec_b1, rec_b2 = Record(), Record()
    train(cfg, TrainConfig(**{**tc, "max_steps": 3}), TEXT, str(tmp_path / "b"), log=quiet,
          extensions=[SegmentTraining(), rec_b1])
    b = train(cfg, TrainConfig(**tc), TEXT, str(tmp_path / "b"), resume=True, log=quiet,
              extensions=[SegmentTraining(), rec_b2])
    assert rec_a.losses == rec_b1.losses + rec_b2.losses
    assert len(rec_a.losses) == 6 and a["val_loss"] == b["val_loss"]
    for k, v in a["model"].state_dict().items():
        np.testing.assert_array_equal(v, b["model"].state_dict()[k], err_msg=k)


def test_memory_changes_training_and_resets_at_the_stream_start():
    cfg = get_config("llama", n_layer=1, n_head=2, n_embd=16, block_size=8,
                     attention_pattern="xl:mem=8")
    ids = np.random.default_rng(0).integers(0, 256, 2 * 25)
    minitx.manual_seed(0)
    ext = SegmentTraining()
    tr = Trainer(GPT(cfg), TrainConfig(max_steps=4, batch_size=2, warmup=1), ids, ids, None,
                 extensions=[ext], log=lambda *a: None)
    tr.train_step()
    assert ext.caches[0]["mem_k"].shape == (2, 2, 8, 8)
    tr.train_step(), tr.train_step()                      # 3 segments per row: wraps here
    ext.caches[0]["mem_k"][...] = np.nan                  # a reset must drop it
    assert np.isfinite(tr.train_step()["loss"])


def test_saved_memory_round_trips_and_bad_data_is_refused():
    a = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    assert np.array_equal(decode_array(encode_array(a)), a)
    bad = encode_array(a)
    bad["shape"] = [2, 3, 5]
    with pytest.raises(ValueError, match="bytes for shape"):
        decode_array(bad)


def test_knn_generation_matches_its_teacher_forced_forward(on_backend):
    T = 8
    model = model_for("knn:k=3,size=20", T)
    model.eval()
    prompt = np.random.default_rng(3).integers(0, 256, (2, 11))
    out = model.generate(prompt, 18, temperature=0)                         # (2, 29)
    ref = stream_logits(model, out[:, :-1])                                 # (2, 28, V)
    assert np.array_equal(ref[:, 10:].argmax(-1), out[:, 11:])
    caches, steps = model.new_caches(), []                # one token at a time, segments wrap
    with minitx.no_grad():
        for t in range(out.shape[1] - 1):
            steps.append(model(out[:, t:t + 1], caches=caches, start_pos=t % T)[0].data)
    assert np.abs(np.concatenate(steps, axis=1) - ref).max() <= TOL["float32_logits"]
    assert model.blocks[0].attn.knn_gate.shape == (2,)


def test_knn_memory_is_fifo_and_bounded():
    model = model_for("knn:k=2,size=12", 4)
    caches = model.new_caches()
    idx = np.random.default_rng(4).integers(0, 256, (1, 20))
    stream_logits(model, idx, caches)
    mem = caches[0]["mem_k"]
    assert mem.shape[-2] == 12                            # 5 segments of 4 seen, newest 12 kept
    ref = model.new_caches()
    stream_logits(model, idx[:, 8:], ref)                 # the last 3 segments alone
    np.testing.assert_array_equal(mem, ref[0]["mem_k"])


BAD = ["xl:mem=-1", "xl:mem=4,segments=2", "xl:size=3", "knn:k=0", "knn:k=8,size=4",
       "knn:k=x", "xl;knn"]


@pytest.mark.parametrize("spec", BAD)
def test_bad_memory_specs_raise_naming_the_problem(spec):
    with pytest.raises(ValueError, match="attention pattern|must be"):
        get_config("llama", n_layer=3, attention_pattern=spec)


def test_memory_patterns_need_rope_and_knn_needs_full_heads():
    with pytest.raises(ValueError, match="pos='rope'"):
        get_config("tiny", attention_pattern="xl:mem=4")
    with pytest.raises(ValueError, match="n_kv_head"):
        get_config("llama", n_kv_head=2, attention_pattern="knn")


def test_cli_bad_memory_spec_is_one_error_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minitx", "train", "--config", "llama",
                        "--attention-pattern", "knn:k=3,size=2", "--out", str(tmp_path / "o"),
                        "--max-steps", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("minitx: MINITX")]
    assert len(lines) == 1 and lines[0].startswith("error:") and "k must be <= size" in lines[0]


# ---------------------------------------------------------------- FLOPs
def causal_pairs(T, allowed):
    """Count the (i, j) pairs, j <= i < T, that allowed(i, j) admits: the hand count."""
    return sum(1 for i in range(T) for j in range(i + 1) if allowed(i, j))


@pytest.mark.parametrize("spec", ["dense", "window:5", "strided:block=4,stride=2",
                                  "bigbird:block=4,window=1,global=1,random=1,seed=2",
                                  "linear", "performer:features=8", "xl:mem=12",
                                  "knn:k=4,size=64"])
def test_attention_flops_per_pattern_against_a_hand_count(spec):
    T, H, d = 16, 2, 8
    p = Pattern(*parse(spec), d, 0, block_size=T)
    dense_fwd = 4 * H * d * T                             # PaLM: the whole T x T matrix
    if spec == "dense":
        want = 3 * dense_fwd
    elif spec == "window:5":
        want = 3 * dense_fwd * causal_pairs(T, lambda i, j: i - j <= 5) / causal_pairs(
            T, lambda i, j: True)
    elif spec.startswith(("strided", "bigbird")):
        lay = p.layout(4)                                 # 4 x 4 blocks of 4
        live = sum(bool(lay[r, c]) for r in range(4) for c in range(r + 1))
        assert live == int(np.count_nonzero(lay))         # causal layouts: no upper tile
        want = 3 * dense_fwd * live / 10
    elif spec in ("linear", "performer:features=8"):
        m = d if spec == "linear" else 8
        C = 16                                            # one chunk of the prefix sums
        per_head = 2 * m * C + 2 * C * (d + 1) + 4 * m * (d + 1)
        per_head += 0 if spec == "linear" else 4 * d * m
        want = 3 * H * per_head
    elif spec == "xl:mem=12":
        want = 3 * dense_fwd * (T * 12 + T * (T + 1) / 2) / (T * (T + 1) / 2)
    else:
        want = 3 * (dense_fwd + 4 * H * d * 4) + 2 * H * d * 64   # search: forward only
    assert p.attention_flops(T, H, d) == pytest.approx(want, rel=1e-12)


def test_trainer_counts_each_layers_pattern_flops():
    cfg = get_config("llama", n_layer=2, n_head=2, n_embd=16, block_size=8,
                     attention_pattern="xl:mem=8;knn:k=2,size=16")
    minitx.manual_seed(0)
    model = GPT(cfg)
    assert model.num_params() == num_params_of(cfg)       # the kNN gate is counted
    n = model.num_params(non_embedding=True)
    xl = 3 * 4 * 2 * 8 * 8 * (8 * 8 + 36) / 36
    knn = 3 * (4 * 2 * 8 * 8 + 4 * 2 * 8 * 2) + 2 * 2 * 8 * 16
    assert model.flops_per_token() == pytest.approx(6 * n + xl + knn, rel=1e-12)
    ids = np.random.default_rng(0).integers(0, 256, 200)
    tr = Trainer(model, TrainConfig(max_steps=2, batch_size=2, warmup=1), ids, ids, None,
                 extensions=[SegmentTraining()], log=lambda *a: None)
    tr.train_step()
    assert tr.flops == pytest.approx((6 * n + xl + knn) * 2 * 8, rel=1e-12)
    dense = GPT(get_config("llama", n_layer=2, n_head=2, n_embd=16, block_size=8))
    assert dense.flops_per_token() == 6 * (n - 2) + 12 * 2 * 2 * 8 * 8   # n less the gate
    assert patterns.STATEFUL == ("xl", "knn")


def test_study_quick_mode_trains_every_pattern_at_equal_flops():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "long_context_study.py")
    spec = importlib.util.spec_from_file_location("long_context_study", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    result = study.main(["--quick", "--tasks", "recall", "copy", "--impl", "flash2"])
    for task in ("recall", "copy"):
        rows = [r for r in result["rows"] if r["task"] == task]
        assert [r["pattern"] for r in rows] == list(study.patterns(16))
        budget = rows[0]["flops"]                         # dense's
        for r in rows:                                    # equal up to one step's worth
            assert abs(r["flops"] - budget) <= budget / r["steps"], r["pattern"]
            assert r["params"] == rows[0]["params"] + (4 if r["pattern"] == "knn" else 0)
            assert sorted(map(int, r["acc"])) == [4, 12, 30]
            assert all(0 <= a <= 1 for a in r["acc"].values())
    md = study.table(result)
    assert "| knn |" in md and "| copy S=4 | copy S=12 | copy S=30 |" in md
