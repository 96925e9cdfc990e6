"""The block-sparse attention entry points under the adversarial-layout harness (issue 14 item 2,
tests/adversarial.py): the layout is one more array argument, varied like q, k, v."""
import numpy as np
import pytest

from adversarial import Kernel, assert_survives, register
from minitx import backend

needs_c = pytest.mark.skipif(not backend.c_available(), reason="minitx_c is not built")

# result dtype -> (rtol, atol): float32 sums in another order than the twin
TOL = {np.float32: (2e-4, 2e-5), np.float64: (1e-10, 1e-12)}


def make_sparse_forward(rng, Nq=9, Nk=7, Hkv=1, bias=False, is_causal=False, per_head=False,
                        dtype=np.float32):
    """Valid arguments: tiles of 4, a random layout over (3, 2) blocks (per query head or not)."""
    q = rng.standard_normal((1, 2, Nq, 8)).astype(dtype)
    k, v = (rng.standard_normal((1, Hkv, Nk, 8)).astype(dtype) for _ in range(2))
    shape = ((2,) if per_head else ()) + (-(-Nq // 4), -(-Nk // 4))
    return dict(q=q, k=k, v=v,
                bias=rng.standard_normal((1, 1, Nq, Nk)).astype(dtype) if bias else None,
                is_causal=is_causal, Br=4, Bc=4, block_layout=rng.random(shape) < 0.6)


def make_sparse_backward(rng, **dims):
    from minitx.attention.flash2 import flash2_forward
    kw = make_sparse_forward(rng, **dims)
    o, L = flash2_forward(**kw)
    kw.update(o=o, L=L, do=rng.standard_normal(o.shape).astype(o.dtype))
    return kw


DIMS = [dict(), dict(Hkv=2, bias=True, per_head=True), dict(is_causal=True, dtype=np.float64)]
register(Kernel("flash2_forward_block_sparse", c="minitx_c:flash2_forward",
                twin="minitx.attention.flash2:flash2_forward", make=make_sparse_forward,
                dims=DIMS, tol=TOL))
register(Kernel("flash2_backward_block_sparse", c="minitx_c:flash2_backward",
                twin="minitx.attention.flash2:flash2_backward", make=make_sparse_backward,
                dims=DIMS, tol=TOL))


@needs_c
@pytest.mark.parametrize("name", ["flash2_forward_block_sparse", "flash2_backward_block_sparse"])
def test_block_sparse_kernel_survives_adversarial_layouts(name):
    assert_survives([name])
