"""Every Cython kernel has a NumPy twin of the same name and signature (minitx.backend.TWINS),
and the fused row kernels agree with their twins; the backend switch behaves as documented."""
import inspect
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitx import backend
from minitx.kernels import fused

RTOL = {np.float32: 2e-5, np.float64: 1e-12}
ATOL = {np.float32: 2e-6, np.float64: 1e-13}

needs_c = pytest.mark.skipif(not backend.c_available(), reason="minitx_c is not built")


@needs_c
@pytest.mark.parametrize("name", sorted(backend.TWINS))
def test_twin_signatures_match_name_for_name(name):
    import minitx_c
    ref = backend.reference(name)
    fast = getattr(minitx_c, name)
    assert list(inspect.signature(fast).parameters) == list(inspect.signature(ref).parameters), \
        f"{name}: minitx_c{inspect.signature(fast)} vs reference{inspect.signature(ref)}"


@needs_c
def test_every_exported_kernel_is_registered():
    import minitx_c
    runtime = {"get_num_threads", "set_num_threads", "have_openmp"}
    exported = {n for n in vars(minitx_c) if not n.startswith("_") and callable(getattr(minitx_c, n))}
    missing = exported - runtime - set(backend.TWINS)
    assert not missing, f"minitx_c exports kernels with no NumPy twin in TWINS: {sorted(missing)}"


@st.composite
def rows(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    scale = draw(st.sampled_from([1.0, 30.0]))
    return (rng.standard_normal(shape) * scale).astype(dtype), rng


def _close(a, b, dtype, what):
    np.testing.assert_allclose(a, b, rtol=RTOL[dtype], atol=ATOL[dtype], err_msg=what)


@needs_c
@given(case=rows(), affine=st.booleans())
def test_fused_kernels_equal_their_twins(case, affine):
    import minitx_c
    x, rng = case
    dt = x.dtype.type
    C = x.shape[-1]
    w = rng.standard_normal(C).astype(dt) if affine else None
    b = rng.standard_normal(C).astype(dt) if affine else None
    _close(minitx_c.softmax_lastdim(x), fused.softmax_lastdim(x), dt, f"softmax {x.shape}")
    got, ref = minitx_c.layer_norm_forward(x, w, b, 1e-5), fused.layer_norm_forward(x, w, b, 1e-5)
    for g, r, what in zip(got, ref, ("y", "mean", "rstd")):
        assert g.dtype == r.dtype == x.dtype and g.shape == r.shape
        _close(g, r, dt, f"layer_norm {what} {x.shape}")
    dy = rng.standard_normal(x.shape).astype(dt)
    got = minitx_c.layer_norm_backward(dy, x, w, ref[1], ref[2])
    want = fused.layer_norm_backward(dy, x, w, ref[1], ref[2])
    for g, r, what in zip(got, want, ("dx", "dweight", "dbias")):
        if r is None:
            assert g is None
        else:
            _close(g, r, dt, f"layer_norm_backward {what} {x.shape}")


@needs_c
def test_fused_kernels_reject_bad_input_before_work():
    import minitx_c
    x = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="float32 or float64, got int64"):
        minitx_c.softmax_lastdim(np.ones((2, 3), np.int64))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        minitx_c.softmax_lastdim([1.0, 2.0])
    with pytest.raises(ValueError, match="empty last dimension"):
        minitx_c.softmax_lastdim(np.ones((2, 0), np.float32))
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        minitx_c.layer_norm_forward(x, np.ones(4, np.float32), None, 1e-5)
    with pytest.raises(TypeError, match="differs from x dtype"):
        minitx_c.layer_norm_forward(x, np.ones(3, np.float64), None, 1e-5)
    with pytest.raises(ValueError, match="must match x"):
        minitx_c.layer_norm_backward(np.ones((2, 4), np.float32), x, None,
                                     np.ones(2, np.float32), np.ones(2, np.float32))


def test_pure_mode_falls_back_with_a_notice():
    env = dict(os.environ, MINITX_PURE="1")
    out = subprocess.run([sys.executable, "-c", "import minitx; print(minitx.backend.active())"],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "numpy"
    assert "MINITX_PURE" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_malloc_keeps_freed_memory_unless_told_not_to():
    """minitx sets glibc's mmap/trim thresholds (freed activations are reused, not re-faulted),
    on both backends; MINITX_MALLOC=default leaves them alone."""
    code = "import minitx; print(minitx.backend.MALLOC_TUNED)"
    for extra, want in (({"MINITX_PURE": "1"}, "True"), ({"MINITX_MALLOC": "default"}, "False")):
        env = {k: v for k, v in os.environ.items() if k not in ("MINITX_PURE", "MINITX_MALLOC")}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**env, **extra}, check=True)
        assert out.stdout.strip() == want


def test_set_backend_validates():
    with pytest.raises(ValueError, match="'c' or 'numpy'"):
        backend.set_backend("cuda")
    with backend.using("numpy"):
        assert backend.kernel("softmax_lastdim") is fused.softmax_lastdim


def test_missing_extension_falls_back_with_a_notice(tmp_path):
    fake = tmp_path / "minitx_c"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('simulated: no compiled kernels')\n")
    import minitx
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), os.path.dirname(os.path.dirname(minitx.__file__))]))
    env.pop("MINITX_PURE", None)
    code = ("import numpy as np, minitx, minitx.nn.functional as F\n"
            "x = minitx.tensor(np.ones((2, 3)), requires_grad=True)\n"
            "F.layer_norm(F.softmax(x), 3).sum().backward()\n"
            "print(minitx.backend.active(), minitx.backend.available())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, cwd=tmp_path)
    assert out.stdout.strip() == "numpy ['numpy']"
    assert "simulated: no compiled kernels" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


_THREADS_CHILD = r"""
import os, sys, threading
import numpy as np
import minitx_c

def os_threads():
    return len(os.listdir("/proc/self/task"))

def kernels():
    a, q = np.ones((300, 300), np.float32), np.ones((300, 300), np.int8)
    minitx_c.matmul(a, a)
    minitx_c.matmul_int8(q, q)
    minitx_c.softmax_lastdim(np.ones((512, 512), np.float32))
    minitx_c.layer_norm_forward(np.ones((512, 512), np.float32), None, None, 1e-5)
    minitx_c.linear_w8(np.ones((2, 512), np.float32), np.ones((512, 512), np.int8),
                       np.ones(512, np.float32))
    qkv = np.ones((4, 4, 256, 32), np.float32)
    o, L = minitx_c.flash2_forward(qkv, qkv, qkv)
    minitx_c.flash2_backward(qkv, qkv, qkv, None, o, L, qkv)

def in_worker(n):
    minitx_c.set_num_threads(n)            # in the main thread
    seen = {}
    def work():
        seen["get"] = minitx_c.get_num_threads()
        before = os_threads()
        kernels()
        seen["new"] = os_threads() - before   # OpenMP threads started for this thread's team
    t = threading.Thread(target=work)
    t.start()
    t.join()
    return seen["get"], seen["new"]

print(*in_worker(1), *in_worker(3))
"""


@needs_c
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_set_num_threads_holds_in_worker_threads():
    """OpenMP's own setting is per OS thread; minitx_c's must hold in a threading.Thread too.
    Counted as OS threads started while a worker thread runs the parallel kernels."""
    import minitx_c
    if not minitx_c.have_openmp():
        pytest.skip("serial build")
    env = dict(os.environ, OMP_NUM_THREADS="4")         # the default a worker would fall back to
    out = subprocess.run([sys.executable, "-c", _THREADS_CHILD], capture_output=True, text=True,
                         env=env, check=True)
    get1, new1, get3, new3 = map(int, out.stdout.split())
    assert (get1, new1) == (1, 0), f"set_num_threads(1): worker saw {get1}, started {new1} threads"
    assert get3 == 3 and new3 >= 1, f"set_num_threads(3): worker saw {get3}, started {new3} threads"


@needs_c
def test_empty_reductions_and_read_only_inputs_match_the_twins():
    """Issue 14: K = 0 in linear_w8/w4 and C = 0 in layer_norm raised reshape errors where the
    twins return results; the fused kernels refused read-only inputs."""
    import minitx_c
    from minitx.kernels import int8
    x0, b = np.zeros((3, 0), np.float32), np.arange(4, dtype=np.float32)
    for name, w in (("linear_w8", np.zeros((4, 0), np.int8)),
                    ("linear_w4", np.zeros((4, 0), np.uint8))):
        got = getattr(minitx_c, name)(x0, w, np.ones(4, np.float32), None, b)
        np.testing.assert_array_equal(got, getattr(int8, name)(x0, w, np.ones(4, np.float32),
                                                               None, b))
        assert got.shape == (3, 4) and (got == b).all()
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        want = fused.layer_norm_forward(x0, None, None, 1e-5)
    got = minitx_c.layer_norm_forward(x0, None, None, 1e-5)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)                   # y empty, mean and rstd NaN
    x = np.random.default_rng(0).standard_normal((4, 5))
    x.flags.writeable = False
    _close(minitx_c.softmax_lastdim(x), fused.softmax_lastdim(x), np.float64, "read-only softmax")
    for g, w in zip(minitx_c.layer_norm_forward(x, None, None, 1e-5),
                    fused.layer_norm_forward(x, None, None, 1e-5)):
        _close(g, w, np.float64, "read-only layer_norm")
