"""minitx.profiler: counts, nesting and bytes on a known graph; the table; nothing when off."""
import time

import numpy as np
import pytest

import minitx
from minitx import autograd, profiler
from minitx.autograd import Function


class _Slow(Function):
    """x * 2 that sleeps, so its time dominates its row and the rows around it."""

    @staticmethod
    def forward(ctx, x):
        time.sleep(0.01)
        return x * 2

    @staticmethod
    def backward(ctx, g):
        time.sleep(0.01)
        return (g * 2,)


def _graph(a):
    b = a * a                                # Mul: a new (3, 4) array
    c = b.reshape(12)                        # Reshape: a view, 0 bytes
    d = _Slow.apply(c)                       # _Slow
    return d.sum()                           # Sum


def test_counts_and_bytes_of_a_known_graph():
    a = minitx.tensor(np.ones((3, 4), np.float32), requires_grad=True)
    with profiler.profile() as prof:
        with profiler.record("forward"):
            loss = _graph(a)
        with profiler.record("backward"):
            loss.backward()
    s = prof.stats
    for name in ("Mul", "Reshape", "Slow", "Sum", "forward", "backward",
                 "MulBackward", "ReshapeBackward", "SlowBackward", "SumBackward"):
        assert s[name].calls == 1, (name, s[name].calls)
    assert s["Mul"].bytes == 48 and s["Reshape"].bytes == 0 and s["Sum"].bytes == 4
    assert s["MulBackward"].bytes == 2 * 48              # one gradient per operand
    np.testing.assert_array_equal(a.grad, np.full((3, 4), 4.0, np.float32))


def test_nesting_splits_total_and_self_time():
    a = minitx.tensor(np.ones((3, 4), np.float32), requires_grad=True)
    with profiler.profile() as prof:
        with profiler.record("step"):
            with profiler.record("forward"):
                loss = _graph(a)
            loss.backward()
    s = prof.stats
    fwd_children = s["Mul"].total + s["Reshape"].total + s["Slow"].total + s["Sum"].total
    assert s["forward"].total >= fwd_children
    assert s["forward"].self == pytest.approx(s["forward"].total - fwd_children, abs=1e-9)
    assert s["Slow"].total >= 0.01 and s["SlowBackward"].total >= 0.01
    assert s["forward"].self < 0.005                  # the sleep belongs to Slow, not forward
    # "step" holds forward and every backward row: its self time excludes all of them
    inner = s["forward"].total + sum(v.total for k, v in s.items() if k.endswith("Backward"))
    assert s["step"].self == pytest.approx(s["step"].total - inner, abs=1e-9)
    assert prof.wall >= s["step"].total


def test_no_grad_records_forward_rows_only():
    a = minitx.tensor(np.ones(5, np.float32), requires_grad=True)
    with profiler.profile() as prof, minitx.no_grad():
        (a * a).sum()
    assert set(prof.stats) == {"Mul", "Sum"}


def test_table_renders_sorted_and_limited():
    a = minitx.tensor(np.ones((3, 4), np.float32), requires_grad=True)
    with profiler.profile() as prof:
        _graph(a).backward()
    text = prof.table(sort_by="total", row_limit=3)
    lines = text.splitlines()
    assert "Name" in lines[1] and "Self %" in lines[1] and "Calls" in lines[1]
    body = lines[3:-2]
    assert len(body) == 3
    assert body[0].startswith("Slow")                  # the sleeping rows are the largest
    assert "3 of 8 rows shown" in lines[-1]
    assert len(prof.table(row_limit=None).splitlines()) == 8 + 5
    assert prof.key_averages("cpu")[0].cpu >= 0.0
    by_calls = prof.key_averages("calls")
    assert by_calls[0].calls >= by_calls[-1].calls
    with pytest.raises(ValueError, match="sort_by"):
        prof.table(sort_by="cpu_time")
    with pytest.raises(ValueError, match="row_limit"):
        prof.table(row_limit=-1)


def test_off_records_nothing_and_profiles_do_not_nest():
    a = minitx.tensor(np.ones((3, 4), np.float32), requires_grad=True)
    with profiler.profile() as prof:
        pass
    loss = _graph(a)
    loss.backward()
    with profiler.record("outside"):                   # no profile: a no-op
        (a * 3).sum()
    assert prof.stats == {} and autograd._profiler is None
    with profiler.profile():
        with pytest.raises(RuntimeError, match="already recording"):
            with profiler.profile():
                pass
    assert autograd._profiler is None


def test_profiled_training_step_gives_the_same_gradients(on_backend):
    from minitx.models.gpt import GPT, GPTConfig
    cfg = GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16)
    x = np.random.default_rng(0).integers(0, 32, (2, 8))
    grads = []
    for profiled in (False, True):
        minitx.manual_seed(0)
        model = GPT(cfg)
        if profiled:
            with profiler.profile() as prof:
                model(x, x)[1].backward()
            assert prof.stats["Linear"].calls == prof.stats["LinearBackward"].calls > 0
            assert prof.stats["CrossEntropy"].calls == 1
        else:
            model(x, x)[1].backward()
        grads.append([p.grad.copy() for p in model.parameters()])
    for g0, g1 in zip(*grads):
        np.testing.assert_array_equal(g0, g1)
