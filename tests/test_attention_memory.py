"""Memory-augmented attention (issue 12 item 3): Transformer-XL segment recurrence equals full
attention restricted to the same window (with RoPE at absolute positions), no gradient reaches
the cached segment; kNN memory with k = its size equals dense attention over it, FIFO eviction,
the gated layer, the gradient checker."""
import numpy as np
import pytest

import minitx
from minitx.attention import memory
from minitx.attention import scaled_dot_product_attention as sdpa
from minitx.attention.naive import naive_forward
from minitx.gradcheck import gradcheck
from minitx.models.gpt import _rotate, rope_tables

# Tolerances, in one place.
TOL = {"float64": 1e-10, "gradcheck_atol": 1e-6}


def rope(x, start=0):
    cos, sin = rope_tables(x.shape[-1], np.arange(start, start + x.shape[-2]))
    return _rotate(x, cos, sin)


def xl_window_mask(N, S, M):
    """Query i (segment s = i // S) sees keys j <= i with j >= s S - M: the memory's reach."""
    i, j = np.arange(N)[:, None], np.arange(N)[None, :]
    return (j <= i) & (j >= (i // S) * S - M)


@pytest.mark.parametrize("impl", ["naive", "flash2"])
@pytest.mark.parametrize("S, M", [(8, 8), (8, 5), (5, 12), (7, 0)])
def test_segments_equal_full_attention_over_the_same_window(impl, S, M):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 4, 37, 8))
    k, v = rng.standard_normal((2, 2, 37, 8)), rng.standard_normal((2, 2, 37, 8))
    q, k = rope(q), rope(k)                                  # absolute positions, once
    got = memory.segment_attention(q, k, v, S, M, impl=impl).data
    want, _ = naive_forward(q, k, v, np.where(xl_window_mask(37, S, M), 0.0, -np.inf)[None, None])
    assert np.abs(got - want).max() <= TOL["float64"]


@pytest.mark.parametrize("S, w", [(8, 8), (6, 3), (5, 9)])
def test_sliding_window_across_segments_equals_full_window_attention(S, w):
    rng = np.random.default_rng(1)
    q, k, v = (rope(rng.standard_normal((1, 2, 30, 8))) for _ in range(3))
    got = memory.segment_attention(q, k, v, S, mem_len=max(w, 1), window=w).data
    want, _ = naive_forward(q, k, v, is_causal=True, window=(w, 0))
    assert np.abs(got - want).max() <= TOL["float64"]


def test_rope_positions_must_be_absolute():
    """The same keys rotated by segment-local positions give a different (wrong) result."""
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 1, 16, 8)) for _ in range(3))
    S = 8
    want, _ = naive_forward(rope(q), rope(k), v, np.where(xl_window_mask(16, S, S), 0.0,
                                                          -np.inf)[None, None])
    local = [rope(x[..., s:s + S, :]) for x in (q, k) for s in (0, S)]
    ql, kl = np.concatenate(local[:2], -2), np.concatenate(local[2:], -2)
    wrong = memory.segment_attention(ql, kl, v, S, S).data
    assert np.abs(wrong[..., S:, :] - want[..., S:, :]).max() > 1e-3


def test_no_gradient_reaches_the_cached_segment():
    rng = np.random.default_rng(3)
    ts = [minitx.tensor(rng.standard_normal((1, 2, 12, 4)), requires_grad=True) for _ in range(3)]
    out = memory.segment_attention(*ts, segment_len=6, mem_len=6)
    out[..., 6:, :].sum().backward()                         # loss on the second segment only
    for t in ts:
        assert not t.grad[..., :6, :].any()                  # stop-gradient: memory is constant
    assert ts[0].grad[..., 6:, :].any()


def test_memory_keeps_the_last_mem_len_tokens():
    mem = memory.SegmentRecurrence(5)
    rng = np.random.default_rng(4)
    k = rng.standard_normal((1, 1, 12, 4))
    for s in range(0, 12, 4):
        mem(k[..., s:s + 4, :], k[..., s:s + 4, :], k[..., s:s + 4, :])
    assert np.array_equal(mem.k, k[..., -5:, :])


# ---------------------------------------------------------------- kNN memory
def test_knn_with_k_equal_to_size_is_dense_attention_over_the_memory():
    rng = np.random.default_rng(5)
    mem = memory.KNNMemory(size=24)
    keys, values = rng.standard_normal((2, 3, 30, 8)), rng.standard_normal((2, 3, 30, 8))
    mem.add(keys[..., :10, :], values[..., :10, :])
    mem.add(keys[..., 10:, :], values[..., 10:, :])          # 30 > 24: the 6 oldest evicted
    assert len(mem) == 24 and np.array_equal(mem.keys, keys[..., 6:, :])
    q = rng.standard_normal((2, 3, 7, 8))
    got = memory.knn_attention(q, mem, k=24).data
    want = sdpa(q, mem.keys, mem.values).data
    assert np.abs(got - want).max() <= TOL["float64"]


def test_knn_retrieves_the_exact_top_k():
    rng = np.random.default_rng(6)
    mem = memory.KNNMemory(size=50)
    mem.add(rng.standard_normal((3, 50, 6)), rng.standard_normal((3, 50, 2)))
    q = rng.standard_normal((3, 4, 6))
    idx = mem.search(q, 7)
    brute = np.argsort(-(q @ np.swapaxes(mem.keys, -1, -2)), axis=-1)[..., :7]
    assert np.array_equal(idx, brute)
    got = memory.knn_attention(q, mem, 7).data                # attention over exactly those 7
    s = np.take_along_axis(q @ np.swapaxes(mem.keys, -1, -2), brute, -1) / np.sqrt(6)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.einsum("bqk,bqkv->bqv", p, np.take_along_axis(mem.values[:, None], brute[..., None], 2))
    assert np.abs(got - want).max() <= TOL["float64"]


def test_knn_attention_gradcheck():
    rng = np.random.default_rng(7)
    mem = memory.KNNMemory(size=9)
    mem.add(rng.standard_normal((2, 9, 3)), rng.standard_normal((2, 9, 2)))
    gradcheck(lambda q: memory.knn_attention(q, mem, 4), [rng.standard_normal((2, 5, 3))],
              atol=TOL["gradcheck_atol"])


def test_memorizing_attention_gate_and_gradients():
    rng = np.random.default_rng(8)
    layer = memory.MemorizingAttention(n_head=2, size=16, k=4, impl="naive")
    seg = [rng.standard_normal((1, 2, 8, 4)) for _ in range(3)]
    first = layer(*(minitx.tensor(x) for x in seg)).data      # empty memory: local only
    assert np.abs(first - sdpa(*seg, is_causal=True).data).max() <= TOL["float64"]
    assert len(layer.memory) == 8
    q = rng.standard_normal((1, 2, 8, 4))
    gradcheck(lambda qq, g: _gated(layer, qq, g, seg), [q, np.array([0.3, -1.2])],
              atol=TOL["gradcheck_atol"])
    layer.gate = minitx.tensor(np.array([40.0, -40.0]))      # g = 1 on head 0, 0 on head 1
    out = layer(minitx.tensor(q), *(minitx.tensor(x) for x in seg[1:])).data
    mem_out = memory.knn_attention(q, _memory_before(seg), 4).data
    assert np.abs(out[:, 0] - mem_out[:, 0]).max() <= 1e-12
    assert np.abs(out[:, 1] - sdpa(q, *seg[1:], is_causal=True).data[:, 1]).max() <= 1e-12


def _memory_before(seg):
    m = memory.KNNMemory(16)
    m.add(seg[1], seg[2])
    return m


def _gated(layer, q, gate, seg):
    """The gated output for fixed memory (restored after each call) as a function of q, gate."""
    keys, values = layer.memory.keys, layer.memory.values
    layer.gate = gate
    out = layer(q, minitx.tensor(seg[1]), minitx.tensor(seg[2]))
    layer.memory.keys, layer.memory.values = keys, values
    return out


@pytest.mark.parametrize("call, match", [
    (lambda: memory.SegmentRecurrence(-1), "mem_len"),
    (lambda: memory.SegmentRecurrence(4, window=5), "window"),
    (lambda: memory.KNNMemory(0), "size"),
    (lambda: memory.KNNMemory(3).search(np.zeros((1, 2)), 1), "empty"),
    (lambda: memory.segment_attention(np.zeros((1, 4, 2)), np.zeros((1, 4, 2)),
                                      np.zeros((1, 4, 2)), 0, 2), "segment_len"),
])
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
