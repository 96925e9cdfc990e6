"""Adversarial-layout harness: every C kernel entry point against its NumPy twin, on the array
layouts that break hand-written kernels (issue 14, "What must exist" item 2).

A kernel is registered once with a recipe for valid inputs; the harness derives the cases:
for every array argument (and `out`, if the kernel writes one) each layout of LAYOUTS (odd and
negative byte strides, a data pointer inside an element, zero strides, read-only, byte-swapped,
Fortran order, strided views), each unsupported dtype and a plain list; `out` also aliasing or
half-overlapping an input; one array passed for two arguments; every shape variant of the recipe (zero-size dims included); and a
seeded sample of mixed cases (every argument a random layout at once).

Each case calls the twin and the kernel on identical, freshly built arguments. It passes if the
twin raises and the kernel raises the same exception type, or both return equal results (to
the kernel's tolerance, NaN where the twin has NaN, `out` itself when the twin returns `out`)
and leave equal contents in `out`. Every array lives in its own byte buffer with guard bytes:
the kernel must not change a byte of an input, nor a byte of `out`'s buffer outside `out`'s
elements (an out-of-bounds write is caught even when it does not crash).

Cases run in child processes, a batch per kernel: a crash, abort or hang kills the child, is
reported as that case's failure, and a new child continues with the next case.

Registering a kernel:

    from adversarial import Kernel, register, assert_survives
    register(Kernel("my_op",              # minitx_c.my_op and its twin in backend.TWINS
                    make=lambda rng, n: dict(x=rng.standard_normal((3, n)).astype(np.float32)),
                    dims=[dict(n=5), dict(n=0)], tol={np.float32: (1e-5, 1e-6)}))

    def test_my_op_adversarial():
        assert_survives(["my_op"])
"""
import importlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np

GUARD = 64                       # guard bytes before and after every array
CANARY = 0xA5                    # their value (and of the gaps inside odd-strided views)
N_MIXED = {"ci": 24, "dev": 60, "thorough": 400}    # mixed cases per kernel, by profile
BAD_DTYPES = ("float16", "float32", "float64", "int8", "int32", "uint8", "complex64", "bool")
KERNELS = {}                     # name -> Kernel


@dataclass
class Kernel:
    """One C entry point and its twin.

    Args:
        name: registry key (usually the function's name).
        c, twin: the functions, or "module:attr" strings imported when first called. Left out,
            they follow from `name` as minitx.backend does: minitx_c.<name> and the module
            backend.TWINS gives for it.
        make: make(rng, **dims) -> dict of VALID keyword arguments; its ndarray values are the
            arrays the harness varies (others, like eps or is_causal, are passed as they are).
        dims: shape variants, each a dict of keyword arguments for `make` (include zero sizes).
        out: None, or out(kwargs) -> a valid `out` array for these arguments (its contents are
            the initial contents, e.g. random for an accumulating kernel).
        out_name: keyword under which `out` is passed.
        tol: result dtype -> (rtol, atol); dtypes not listed must match exactly.
        skip: names of arguments not to vary (e.g. an index array with a fixed meaning).
    """
    name: str
    c: object = None
    twin: object = None
    make: object = None
    dims: list = field(default_factory=lambda: [{}])
    out: object = None
    out_name: str = "out"
    tol: dict = field(default_factory=dict)
    skip: tuple = ()

    def __post_init__(self):
        from minitx.backend import TWINS
        if self.make is None:
            raise TypeError(f"Kernel {self.name!r} needs make=")
        if self.c is None:
            self.c = f"minitx_c:{self.name}"
        if self.twin is None:
            self.twin = f"{TWINS[self.name]}:{self.name}"
        self.source = os.path.abspath(inspect.getfile(self.make))   # re-imported by children


def register(kernel):
    """Add `kernel` to KERNELS (the children find it by importing the file that defined make)."""
    old = KERNELS.get(kernel.name)
    if old is not None and old.source != kernel.source:
        raise ValueError(f"kernel {kernel.name!r} already registered from {old.source}")
    KERNELS[kernel.name] = kernel
    return kernel


# ------------------------------------------------------------------------------- layouts
def _c_strides(shape, itemsize):
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.insert(0, step)
        step *= max(n, 1)
    return strides


def _padded_strides(shape, inner, pad):
    """Innermost stride `inner` bytes, each outer stride pad bytes past the inner dims' span."""
    strides, step = [], inner
    for n in reversed(shape):
        strides.insert(0, step)
        step = step * max(n, 1) + pad
    return strides


def _first_wide_dim(shape):
    return next((d for d, n in enumerate(shape) if n > 1), None)


def _layout(name, shape, itemsize):
    """(byte strides, extra byte offset, read-only) of layout `name`."""
    c = _c_strides(shape, itemsize)
    if name == "contiguous":
        return c, 0, False
    if name == "fortran":
        return list(reversed(_c_strides(tuple(reversed(shape)), itemsize))), 0, False
    if name == "reversed":                                    # every stride negative
        return [-s for s in c], 0, False
    if name == "strided":                                     # every dim with step 2
        return [2 * s for s in _c_strides(tuple(2 * n for n in shape), itemsize)], 0, False
    if name == "odd_rows":                                    # rows start inside an element
        return _padded_strides(shape, itemsize, 2), 0, False
    if name == "odd_elems":                                   # no stride a whole element
        return _padded_strides(shape, itemsize + 1, 3), 0, False
    if name == "odd_negative":
        return [-s for s in _padded_strides(shape, itemsize, 2)], 0, False
    if name == "misaligned":                                  # data pointer off by one byte
        return c, 1, False
    if name == "broadcast":                                   # a zero stride (np.broadcast_to)
        d = _first_wide_dim(shape)
        return [0 if i == d else s for i, s in enumerate(c)], 0, True
    if name == "readonly":
        return c, 0, True
    if name == "readonly_odd":
        return _padded_strides(shape, itemsize, 2), 0, True
    if name == "byteswapped":
        return c, 0, False
    raise KeyError(name)


LAYOUTS = ("contiguous", "fortran", "reversed", "strided", "odd_rows", "odd_elems",
           "odd_negative", "misaligned", "broadcast", "readonly", "readonly_odd", "byteswapped")
OUT_EXTRA = ("alias", "overlap")      # out IS an input / out and an input overlap by all but one


class _Buffers:
    """The byte buffers behind one call's arrays, and which bytes the call may write."""

    def __init__(self):
        self.items = []                   # [buffer, snapshot, writable-bytes mask, names]

    def new(self, nbytes, name):
        buf = np.full(GUARD + max(nbytes, 0) + GUARD, CANARY, dtype=np.uint8)
        self.items.append([buf, None, np.zeros(buf.size, dtype=bool), [name]])
        return buf

    def allow_writes(self, buf, arr):
        """Mark the bytes of arr's elements (arr a view of buf) as writable by the call."""
        entry = next(e for e in self.items if e[0] is buf)
        if arr.size == 0:
            return
        start = arr.__array_interface__["data"][0] - buf.__array_interface__["data"][0]
        offs = np.full(arr.shape, start, dtype=np.int64)
        for d, (n, s) in enumerate(zip(arr.shape, arr.strides)):
            offs += (np.arange(n) * s).reshape([-1 if i == d else 1 for i in range(arr.ndim)])
        idx = offs.reshape(-1, 1) + np.arange(arr.itemsize)
        entry[2][idx.ravel()] = True

    def snapshot(self):
        for e in self.items:
            e[1] = e[0].copy()

    def violations(self):
        """Names of the buffers with a changed byte the call was not allowed to write."""
        bad = []
        for buf, snap, ok, names in self.items:
            changed = (buf != snap) & ~ok
            if changed.any():
                bad.append(f"{'/'.join(names)} (byte {int(np.argmax(changed)) - GUARD})")
        return bad


def _raw(x, strides, extra, bufs, name, dtype=None):
    """An array with x's values and shape, at the given byte strides, in a guarded buffer."""
    dtype = np.dtype(dtype or x.dtype)
    shape = x.shape
    lo = sum(s * (n - 1) for s, n in zip(strides, shape) if s < 0 and n > 0)
    hi = sum(s * (n - 1) for s, n in zip(strides, shape) if s > 0 and n > 0) + dtype.itemsize
    size = 0 if x.size == 0 else hi - lo
    buf = bufs.new(size + extra, name)
    a = np.ndarray(shape, dtype, buffer=buf, offset=GUARD - (lo if x.size else 0) + extra,
                   strides=strides)
    if x.size:
        a[...] = x                      # with a zero stride the last value along it wins
    return buf, a


def _build_array(x, layout, bufs, name):
    """x (a valid argument) rebuilt in `layout`, a bad dtype ("dtype:int8") or a list."""
    if layout == "list":
        return None, x.tolist()
    if layout.startswith("dtype:"):
        dt = np.dtype(layout[6:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vals = x.real.astype(dt) if dt.kind != "c" else x.astype(dt)
        return _raw(vals, _c_strides(x.shape, dt.itemsize), 0, bufs, name)
    dtype = x.dtype.newbyteorder() if layout == "byteswapped" else x.dtype
    strides, extra, readonly = _layout(layout, x.shape, dtype.itemsize)
    buf, a = _raw(x, strides, extra, bufs, name, dtype)
    if readonly:
        a.flags.writeable = False
    return buf, a


# --------------------------------------------------------------------------------- cases
def _arrays(kernel, kwargs):
    return [k for k, v in kwargs.items() if isinstance(v, np.ndarray) and k not in kernel.skip]


def _base(kernel, d):
    seed = zlib.crc32(f"{kernel.name}/{d}".encode())
    return kernel.make(np.random.default_rng(seed), **kernel.dims[d])


def _profile():
    return os.environ.get("HYPOTHESIS_PROFILE", "dev")


def cases(kernel):
    """All cases of `kernel`: a list of (dims index, {argument: layout}, label)."""
    out = []
    for d in range(len(kernel.dims)):
        kwargs = _base(kernel, d)
        names = _arrays(kernel, kwargs)
        outs = [None] if kernel.out is None else [None, "contiguous"]
        for o in outs:
            out.append((d, {kernel.out_name: o} if o else {}, None))
        for name in names:
            x = kwargs[name]
            bad = [f"dtype:{t}" for t in BAD_DTYPES if np.dtype(t) != x.dtype] + ["list"]
            for lay in LAYOUTS + (tuple(bad) if d == 0 else ()):   # dtypes: one shape is enough
                out.append((d, {name: lay}, None))
        for i, n1 in enumerate(names):                         # one array passed twice
            for n2 in names[i + 1:]:
                if kwargs[n1].shape == kwargs[n2].shape and kwargs[n1].dtype == kwargs[n2].dtype:
                    out.append((d, {n2: f"same:{n1}"}, None))
        if kernel.out is not None:
            o = kernel.out(kwargs)
            extra = [f"{k}:{n}" for k in OUT_EXTRA for n in names
                     if kwargs[n].shape == o.shape and kwargs[n].dtype == o.dtype]
            bad = ["dtype:float64", "list"] if d == 0 else []
            for lay in LAYOUTS + tuple(extra) + tuple(bad):
                out.append((d, {kernel.out_name: lay}, None))
    rng = np.random.default_rng(zlib.crc32(kernel.name.encode()))
    for _ in range(N_MIXED.get(_profile(), N_MIXED["dev"])):
        d = int(rng.integers(len(kernel.dims)))
        names = _arrays(kernel, _base(kernel, d))
        lay = {n: str(rng.choice(LAYOUTS)) for n in names}
        if kernel.out is not None:
            lay[kernel.out_name] = str(rng.choice(LAYOUTS))
        out.append((d, lay, "mixed"))
    return [(d, lay, _label(kernel, d, lay, tag)) for d, lay, tag in out]


def _label(kernel, d, lay, tag):
    dims = ",".join(f"{k}={v}" for k, v in kernel.dims[d].items())
    what = " ".join(f"{k}={v}" for k, v in lay.items()) or "plain"
    return f"{kernel.name}[{dims}] {what}" + (f" ({tag})" if tag else "")


def build(kernel, d, lay):
    """Fresh arguments of one case: (kwargs, buffers, out array or None)."""
    kwargs = _base(kernel, d)
    bufs = _Buffers()
    built = {}
    for name in _arrays(kernel, kwargs):
        if not lay.get(name, "").startswith("same:"):
            buf, built[name] = _build_array(kwargs[name], lay.get(name, "contiguous"), bufs, name)
    for name in _arrays(kernel, kwargs):
        if lay.get(name, "").startswith("same:"):              # the very same array object
            built[name] = built[lay[name][5:]]
    out = None
    olay = lay.get(kernel.out_name)
    if kernel.out is not None and olay is not None:
        o = kernel.out(kwargs)
        if olay.startswith("alias:"):                          # out is the input itself
            out = built[olay[6:]]
            entry = next(e for e in bufs.items if olay[6:] in e[3])
            entry[3].append(kernel.out_name)
            bufs.allow_writes(entry[0], out)
        elif olay.startswith("overlap:"):                      # shifted by one element
            src = kwargs[olay[8:]]
            flat = np.concatenate([src.ravel(), src.ravel()[:1]]) if src.size else src.ravel()
            buf, whole = _raw(flat, [src.itemsize], 0, bufs, f"{olay[8:]}+{kernel.out_name}")
            n = src.size
            built[olay[8:]] = whole[:n].reshape(src.shape)
            out = whole[1:n + 1].reshape(src.shape) if n else o.copy()
            out[...] = o
            built[olay[8:]][...] = src
            bufs.allow_writes(buf, out)
        else:
            buf, out = _build_array(o, olay, bufs, kernel.out_name)
            if buf is not None and out.flags.writeable:
                bufs.allow_writes(buf, out)
        built[kernel.out_name] = out
    kwargs.update(built)
    return kwargs, bufs, out


def _resolve(f):
    if callable(f):
        return f
    mod, _, attr = f.partition(":")
    return getattr(importlib.import_module(mod), attr)


def _call(fn, kwargs):
    try:
        return fn(**kwargs), None
    except Exception as e:                                     # noqa: BLE001 (compared below)
        return None, e


def _compare(t, c, tol, where):
    """None if c equals t (to tol), else a message."""
    if isinstance(t, (tuple, list)):
        if type(c) is not type(t) or len(c) != len(t):
            return f"{where}: twin returned {type(t).__name__} of {len(t)}, kernel {type(c).__name__}"
        for i, (ti, ci) in enumerate(zip(t, c)):
            msg = _compare(ti, ci, tol, f"{where}[{i}]")
            if msg:
                return msg
        return None
    if t is None or c is None:
        return None if t is None and c is None else f"{where}: twin {t!r:.40}, kernel {c!r:.40}"
    t, c = np.asarray(t), np.asarray(c)
    if t.shape != c.shape or t.dtype != c.dtype:
        return f"{where}: twin {t.dtype}{t.shape}, kernel {c.dtype}{c.shape}"
    rtol, atol = tol.get(t.dtype.type, (0, 0))
    if t.dtype.kind in "fc":
        ok = np.isclose(c, t, rtol=rtol, atol=atol, equal_nan=True)
    else:
        ok = c == t
    if not ok.all():
        i = np.unravel_index(np.argmin(ok), t.shape)
        return f"{where}: differs at {i}: twin {t[i]!r}, kernel {c[i]!r} (shape {t.shape})"
    return None


def run_case(kernel, d, lay):
    """Run one case; returns None if it passes, else a message."""
    kt, _, out_t = build(kernel, d, lay)
    rt, et = _call(_resolve(kernel.twin), kt)
    kc, bufs, out_c = build(kernel, d, lay)
    bufs.snapshot()
    rc, ec = _call(_resolve(kernel.c), kc)
    bad = bufs.violations()
    if bad:
        return f"kernel wrote outside its output: {', '.join(bad)}"
    if et is not None or ec is not None:
        if et is None or ec is None or type(et) is not type(ec):
            return (f"twin: {type(et).__name__ if et else 'result'}({str(et)[:80] if et else ''})"
                    f" vs kernel: {type(ec).__name__ if ec else 'result'}"
                    f"({str(ec)[:80] if ec else ''})")
        return None
    if out_t is not None and (rt is out_t) != (rc is out_c):
        return "the twin returns `out` itself and the kernel does not (or the reverse)"
    msg = _compare(rt, rc, kernel.tol, "result")
    if msg is None and out_t is not None:
        msg = _compare(out_t, out_c, kernel.tol, "out")
    return msg


# ------------------------------------------------------------------- child and parent side
def _child(source, name, start):
    """Child process: load the registering file, run cases start.. of kernel `name`."""
    warnings.simplefilter("ignore")
    spec = importlib.util.spec_from_file_location(f"_adversarial_src_{zlib.crc32(source.encode())}",
                                                  source)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kernel = KERNELS[name]
    for i, (d, lay, _) in enumerate(cases(kernel)):
        if i < start:
            continue
        print(json.dumps(["start", i]), flush=True)
        try:
            msg = run_case(kernel, d, lay)
        except Exception as e:                                 # noqa: BLE001 (e.g. no twin)
            msg = f"the harness could not run the case: {type(e).__name__}: {e}"
        print(json.dumps(["done", i, msg]), flush=True)


_CHILD = ("import sys; sys.path[:0] = sys.argv[1].split('|'); import adversarial; "
          "adversarial._child(sys.argv[2], sys.argv[3], int(sys.argv[4]))")


def assert_survives(names, timeout=300):
    """Assert that every adversarial case of the named kernels ran (at least one) and passed."""
    failures, n = check_kernels(names, timeout)
    assert n > 0, f"no adversarial cases for {names}"
    assert not failures, (f"{len(failures)} of {n} adversarial cases fail:\n"
                          + "\n".join(failures[:25]))


def check_kernels(names, timeout=300):
    """Run every case of the named kernels in child processes.

    Returns:
        (failures, n_cases): one message per failing case ("label: what"), and the case count.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    import minitx
    root = os.path.dirname(os.path.dirname(os.path.abspath(minitx.__file__)))
    failures, total = [], 0
    for name in names:
        kernel = KERNELS[name]
        labels = [c[2] for c in cases(kernel)]
        total += len(labels)
        start = 0
        while start < len(labels):
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, f"{here}|{root}", kernel.source, name, str(start)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
                why = f"child died (exit status {proc.returncode})"
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
                why = f"child hung (> {timeout} s)"
            current = None
            for line in stdout.splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue                  # a kernel printed something: not ours
                if rec[0] == "start":
                    current = rec[1]
                elif rec[0] == "done":
                    current = None
                    start = rec[1] + 1
                    if rec[2]:
                        failures.append(f"{labels[rec[1]]}: {rec[2]}")
            if current is not None or (proc.returncode != 0 and start < len(labels)):
                i = current if current is not None else start
                tail = " | ".join(stderr.strip().splitlines()[-3:])
                failures.append(f"{labels[i]}: {why}: {tail[-300:]}")
                start = i + 1
    return failures, total
