"""A per-op profiler for the autograd graph, read like `torch.profiler`'s key_averages table.

    with minitx.profiler.profile() as prof:
        _, loss = model(x, y)
        loss.backward()
    print(prof.table(sort_by="total", row_limit=20))

While a `profile` is recording, every `Function.apply` (minitx/autograd.py) runs through
`profile.apply` below, which does the same steps as `Function.apply` with a clock around them,
and gives the graph node a timed backward. Each Function gets two rows: `Name` (its forward) and
`NameBackward` (its backward, as PyTorch names them). `record(name)` adds a row for any block of
code (the optimizer step, a whole forward), and rows nest: time spent in an inner row is the outer
row's "total" but not its "self" time.

What is counted per row:
  - calls: how many times it ran;
  - total: wall-clock seconds from entry to exit (time.perf_counter), children included;
  - self: total minus the time of rows that ran inside it;
  - cpu: process CPU seconds (time.process_time, all threads) from entry to exit, children
    included: on a machine shared with other jobs wall time includes waiting for a core, CPU
    time does not (a 2-thread GEMM counts both threads' CPU time);
  - bytes: the `nbytes` of the arrays it returned (the forward's output, the backward's input
    gradients) that do not share memory with an array it was given: a view (reshape, transpose)
    allocates nothing and counts 0. Temporaries freed before returning are not counted.

Overhead when not recording: one test of a module global in `Function.apply`.
"""
import contextlib
import time

import numpy as np

from minitx import autograd

_UNITS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"))
SORT_KEYS = ("total", "self", "cpu", "calls", "avg", "bytes")


class Stat:
    """Accumulated figures of one row: calls, total and self seconds, bytes returned."""
    __slots__ = ("name", "calls", "total", "self", "cpu", "bytes")

    def __init__(self, name):
        self.name, self.calls, self.bytes = name, 0, 0
        self.total, self.self, self.cpu = 0.0, 0.0, 0.0

    @property
    def avg(self):
        return self.total / self.calls if self.calls else 0.0


def _new_bytes(outputs, inputs):
    """Bytes of the ndarrays in `outputs` that share no memory with an ndarray in `inputs`."""
    n = 0
    for out in outputs:
        if not isinstance(out, np.ndarray):
            continue
        if not any(isinstance(a, np.ndarray) and np.may_share_memory(out, a) for a in inputs):
            n += out.nbytes
    return n


class _TimedBackward:
    """Stands in for a Function class in a graph node: times its backward under `NameBackward`."""

    def __init__(self, prof, fn):
        self.prof, self.fn = prof, fn
        self.__name__ = fn.__name__

    def backward(self, ctx, grad_out):
        prof = self.prof
        prof._enter()
        try:
            grads = self.fn.backward(ctx, grad_out)
        finally:
            elapsed, child, cpu = prof._exit()
        outs = grads if isinstance(grads, tuple) else (grads,)
        prof._add(self.fn.__name__.lstrip("_") + "Backward", elapsed, child,
                  _new_bytes(outs, (grad_out,) + tuple(ctx._saved)), cpu)
        return grads


class profile:
    """Context manager recording every autograd Function's forward and backward.

    Attributes after (or during) recording:
        stats: dict row name -> Stat.
        wall: seconds spent inside the `with` block.
    """

    def __init__(self):
        self.stats = {}
        self.wall = 0.0
        self._stack = []             # child seconds accumulated by each open row

    # ---- recording --------------------------------------------------------------------------
    def __enter__(self):
        if autograd._profiler is not None:
            raise RuntimeError("a minitx.profiler.profile is already recording; profiles do "
                               "not nest (use profiler.record(name) for a sub-range)")
        autograd._profiler = self
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._t0
        autograd._profiler = None
        return False

    def _enter(self):
        self._stack.append([time.perf_counter(), 0.0, time.process_time()])

    def _exit(self):
        t0, child, c0 = self._stack.pop()
        elapsed = time.perf_counter() - t0
        if self._stack:
            self._stack[-1][1] += elapsed          # the enclosing row's children time
        return elapsed, child, time.process_time() - c0

    def _add(self, name, elapsed, child, nbytes, cpu):
        s = self.stats.get(name)
        if s is None:
            s = self.stats[name] = Stat(name)
        s.calls += 1
        s.total += elapsed
        s.self += elapsed - child
        s.cpu += cpu
        s.bytes += nbytes

    def apply(self, fn, args, kwargs):
        """`fn.apply(*args, **kwargs)` as Function.apply does it, timed under fn's name."""
        self._enter()
        try:
            needs = tuple(isinstance(a, autograd.Tensor) and a.requires_grad for a in args)
            ctx = autograd.Context(needs)
            arrays = [a.data if isinstance(a, autograd.Tensor) else a for a in args]
            out = fn.forward(ctx, *arrays, **kwargs)
            requires = autograd._grad_enabled and any(needs)
            result = autograd.Tensor(out, requires_grad=requires)
            if requires:
                result._node = (_TimedBackward(self, fn), ctx, args)
        finally:
            elapsed, child, cpu = self._exit()
        self._add(fn.__name__.lstrip("_"), elapsed, child, _new_bytes((out,), arrays), cpu)
        return result

    @contextlib.contextmanager
    def section(self, name):
        """A row for the enclosed block (see the module-level `record`)."""
        self._enter()
        try:
            yield
        finally:
            elapsed, child, cpu = self._exit()
            self._add(name, elapsed, child, 0, cpu)

    # ---- reporting --------------------------------------------------------------------------
    def key_averages(self, sort_by="total"):
        """The rows as a list of Stat, largest `sort_by` first."""
        if sort_by not in SORT_KEYS:
            raise ValueError(f"sort_by must be one of {SORT_KEYS}, got {sort_by!r}")
        return sorted(self.stats.values(), key=lambda s: getattr(s, sort_by), reverse=True)

    def table(self, sort_by="total", row_limit=20):
        """A text table of the rows, like torch.profiler's key_averages().table().

        Args:
            sort_by: "total", "self", "cpu", "calls", "avg" or "bytes".
            row_limit: at most this many rows (the largest); None for all.
        Returns:
            str: one header, one line per row, and a footer with the time outside all rows.
        """
        if row_limit is not None and (not isinstance(row_limit, int) or row_limit < 0):
            raise ValueError(f"row_limit must be a non-negative int or None, got {row_limit!r}")
        rows = self.key_averages(sort_by)
        shown = rows if row_limit is None else rows[:row_limit]
        self_sum = sum(s.self for s in rows) or 1.0
        width = max([len("Name")] + [len(s.name) for s in shown])
        head = (f"{'Name':<{width}}  {'Self %':>7}  {'Self':>9}  {'Total %':>7}  {'Total':>9}  "
                f"{'Avg':>9}  {'CPU total':>9}  {'Calls':>6}  {'Bytes':>9}")
        rule = "-" * len(head)
        lines = [rule, head, rule]
        for s in shown:
            lines.append(f"{s.name:<{width}}  {100 * s.self / self_sum:6.1f}%  "
                         f"{_fmt_time(s.self):>9}  {100 * s.total / self_sum:6.1f}%  "
                         f"{_fmt_time(s.total):>9}  {_fmt_time(s.avg):>9}  "
                         f"{_fmt_time(s.cpu):>9}  {s.calls:>6}  "
                         f"{_fmt_bytes(s.bytes):>9}")
        lines.append(rule)
        outside = max(0.0, self.wall - sum(s.self for s in rows))
        lines.append(f"Self time of all rows: {_fmt_time(sum(s.self for s in rows))}; "
                     f"wall time profiled: {_fmt_time(self.wall)} (outside any row: "
                     f"{_fmt_time(outside)}); {len(shown)} of {len(rows)} rows shown")
        return "\n".join(lines)


@contextlib.contextmanager
def record(name):
    """Context manager: time the enclosed block as row `name` if a profile is recording.

    Costs one global test when none is (so library code can leave it in place).
    """
    prof = autograd._profiler
    if prof is None:
        yield
        return
    with prof.section(name):
        yield


def _fmt_time(seconds):
    for scale, unit in _UNITS:
        if seconds >= scale:
            return f"{seconds / scale:.3f}{unit}"
    return f"{seconds * 1e6:.3f}us"


def _fmt_bytes(n):
    for scale, unit in ((1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB")):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
