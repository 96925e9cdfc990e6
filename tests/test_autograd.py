"""Autograd: every op's gradient against central differences (float64, hypothesis shapes),
PyTorch's accumulation rules, graph freeing, deep graphs, and the checker's own failure."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minitx
from minitx.autograd import Function, Tensor, no_grad
from minitx.gradcheck import GradcheckError, gradcheck

from strategies import arrays, broadcastable_pair, shapes

TOL = {"atol": 1e-6, "rtol": 1e-5}     # float64 central differences with eps = 1e-6


# ---------------------------------------------------------------- elementwise, with broadcasting
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b * b + 1.0),
    "pow_tensor": lambda a, b: (a * a + 1.0) ** b,
    "where": lambda a, b: minitx.where(a.data > 0, a, b),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(pair=broadcastable_pair())
def test_binary_ops_gradients(name, pair):
    gradcheck(BINARY[name], list(pair), **TOL)


UNARY = {
    "neg": lambda a: -a,
    "exp": lambda a: a.exp(),
    "log": lambda a: (a * a + 0.5).log(),
    "tanh": lambda a: a.tanh(),
    "pow": lambda a: (a * a + 0.1) ** 1.5,
    "sqrt": lambda a: (a * a + 0.1).sqrt(),
    "rpow": lambda a: 2.0 ** a,
    "scalar_ops": lambda a: (3.0 - a) * 2.0 / 4.0 + 1.0,
    "rdiv": lambda a: 1.0 / (a * a + 1.0),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(x=arrays())
def test_unary_ops_gradients(name, x):
    gradcheck(UNARY[name], [x], **TOL)


# ---------------------------------------------------------------- reductions with dim / keepdim
@st.composite
def array_and_dim(draw):
    x = draw(arrays(min_dims=1))
    dim = draw(st.one_of(st.none(), st.integers(-x.ndim, x.ndim - 1)))
    return x, dim, draw(st.booleans())


@pytest.mark.parametrize("op", ["sum", "mean", "max"])
@given(case=array_and_dim())
def test_reduction_gradients(op, case):
    x, dim, keepdim = case
    if op == "max":        # distinct values: the max is differentiable there
        x = x + np.arange(x.size).reshape(x.shape) * 1e-2
    gradcheck(lambda t: getattr(t, op)(dim=dim, keepdim=keepdim), [x], **TOL)


def test_sum_over_several_dims():
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    gradcheck(lambda t: t.sum(dim=(0, 2), keepdim=True), [x], **TOL)
    gradcheck(lambda t: t.mean(dim=(-1, 0)), [x], **TOL)


# ---------------------------------------------------------------- matmul
@st.composite
def matmul_pair(draw):
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    batch = draw(shapes(max_dims=2, max_side=3))
    a_batch = batch[draw(st.integers(0, len(batch))):]      # broadcast: shorter batch on a
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    kind = draw(st.sampled_from(["mm", "vec_left", "vec_right"]))
    a_shape = (k,) if kind == "vec_left" else a_batch + (m, k)
    b_shape = (k,) if kind == "vec_right" else batch + (k, n)
    return rng.standard_normal(a_shape), rng.standard_normal(b_shape)


@given(pair=matmul_pair())
def test_matmul_gradients(pair):
    gradcheck(lambda a, b: a @ b, list(pair), **TOL)


def test_matmul_shape_error_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) @ \(4, 5\)"):
        minitx.tensor(np.ones((2, 3))) @ minitx.tensor(np.ones((4, 5)))


# ---------------------------------------------------------------- shape ops and indexing
@given(x=arrays(min_dims=2))
def test_reshape_transpose_permute_gradients(x):
    perm = tuple(reversed(range(x.ndim)))
    gradcheck(lambda t: t.reshape(-1) * 1.0, [x], **TOL)
    gradcheck(lambda t: t.transpose(0, -1), [x], **TOL)
    gradcheck(lambda t: t.permute(*perm) * t.permute(*perm), [x], **TOL)


def test_indexing_gradients_basic_and_advanced():
    x = np.random.default_rng(1).standard_normal((4, 5))
    gradcheck(lambda t: t[1:3, ::2], [x], **TOL)
    gradcheck(lambda t: t[np.array([0, 2, 2, 3])], [x], **TOL)        # repeated rows add up
    gradcheck(lambda t: t[x > 0], [x], **TOL)                           # boolean mask
    gradcheck(lambda t: t[..., 1, None], [x], **TOL)


def test_gather_cat_split_stack_masked_fill_gradients():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 2))
    idx = np.array([[0, 0, 3], [1, 2, 1], [3, 3, 3]])
    gradcheck(lambda t: t.gather(1, idx), [x], **TOL)
    gradcheck(lambda a, b: minitx.cat([a, b, a], dim=1), [x, y], **TOL)
    gradcheck(lambda t: minitx.split(t, 3, dim=1)[1] * 2.0, [x], **TOL)
    gradcheck(lambda t: minitx.stack(list(minitx.split(t, [1, 2], dim=0))[:1] * 2, dim=0), [x],
              **TOL)
    gradcheck(lambda t: t.masked_fill(x > 0.5, -1.0), [x], **TOL)


def test_gather_and_cat_validate_inputs():
    t = minitx.tensor(np.ones((2, 3)))
    with pytest.raises(IndexError, match="out of range"):
        t.gather(1, np.array([[0, 3, 1], [0, 0, 0]]))
    with pytest.raises(ValueError, match="differ outside dim"):
        minitx.cat([t, minitx.tensor(np.ones((3, 3)))], dim=1)


# ---------------------------------------------------------------- PyTorch's semantics
def test_grads_accumulate_until_zeroed():
    w = minitx.tensor([1.0, 2.0], requires_grad=True)
    (w * 3.0).sum().backward()
    (w * 3.0).sum().backward()
    np.testing.assert_array_equal(w.grad, [6.0, 6.0])
    w.grad = None
    (w * w).sum().backward()
    np.testing.assert_array_equal(w.grad, [2.0, 4.0])


def test_shared_subexpression_gets_both_paths():
    x = minitx.tensor([3.0], requires_grad=True)
    y = x * x
    (y + y * x).backward()                 # d/dx (x^2 + x^3) = 2x + 3x^2
    np.testing.assert_allclose(x.grad, [6.0 + 27.0])


def test_ten_thousand_node_chain_has_no_recursion_limit():
    x = minitx.tensor([1.0], dtype=np.float64, requires_grad=True)
    t = x
    for _ in range(10_000):
        t = t * 1.0001
    t.backward()
    np.testing.assert_allclose(x.grad, [1.0001 ** 10_000], rtol=1e-9)


def test_backward_twice_needs_retain_graph():
    x = minitx.tensor([2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, [8.0])
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_no_grad_and_detach_cut_the_graph():
    x = minitx.tensor([1.0, 2.0], requires_grad=True)
    with no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.is_leaf
    z = (x.detach() * x).sum()
    z.backward()
    np.testing.assert_array_equal(x.grad, [1.0, 2.0])     # only the non-detached path


def test_only_leaves_keep_grad_and_nonscalar_needs_grad_argument():
    x = minitx.tensor(np.ones((2, 2)), requires_grad=True)
    y = x * 2.0
    with pytest.raises(RuntimeError, match="scalar outputs"):
        y.backward()
    y.backward(np.ones((2, 2)))
    assert y.grad is None and x.grad is not None
    with pytest.raises(ValueError, match="does not match"):
        (x * 1.0).backward(np.ones(3))


def test_float32_default_and_float64_kept():
    assert minitx.tensor([1.0, 2.0]).dtype == np.float32
    assert minitx.tensor(np.zeros(2)).dtype == np.float64
    assert (minitx.tensor([1.0]) * 2.0).dtype == np.float32
    with pytest.raises(TypeError, match="floating point"):
        minitx.tensor([1, 2], requires_grad=True)


# ---------------------------------------------------------------- the checker itself can fail
class _WrongSquare(Function):
    """x^2 with a deliberately wrong backward (2x + 0.01)."""
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (2 * x + 0.01)


class _RightSquare(_WrongSquare):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 2 * x


def test_gradcheck_catches_a_wrong_backward():
    x = np.random.default_rng(3).standard_normal((3, 2))
    gradcheck(_RightSquare.apply, [x], **TOL)
    with pytest.raises(GradcheckError, match=r"input 0 \(shape \(3, 2\)\).*max \|diff\|"):
        gradcheck(_WrongSquare.apply, [x], **TOL)


def test_gradcheck_catches_a_missing_broadcast_reduction():
    class _BadAdd(Function):              # forgets to unbroadcast b's gradient
        @staticmethod
        def forward(ctx, a, b):
            return a + b

        @staticmethod
        def backward(ctx, g):
            return g, g.sum(axis=0) * 0.5

    a, b = np.ones((3, 2)), np.ones(2)
    with pytest.raises(GradcheckError, match="input 1"):
        gradcheck(_BadAdd.apply, [a, b], **TOL)


def test_backward_with_wrong_gradient_shape_is_reported():
    class _BadShape(Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2

        @staticmethod
        def backward(ctx, g):
            return g.sum(axis=0)

    x = Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"shape \(3,\) for an input of shape \(2, 3\)"):
        _BadShape.apply(x).sum().backward()


@st.composite
def array_dim_index(draw):
    x = draw(arrays(min_dims=1))
    dim = draw(st.integers(-x.ndim, x.ndim - 1))
    n = x.shape[dim]
    index_shape = list(x.shape)
    index_shape[dim] = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return x, dim, rng.integers(0, n, size=index_shape), rng


@given(case=array_dim_index())
def test_gather_cat_split_index_gradients_over_dims(case):
    x, dim, index, rng = case
    gradcheck(lambda t: t.gather(dim, index), [x], **TOL)
    other = rng.standard_normal(x.shape)
    gradcheck(lambda a, b: minitx.cat([a, b], dim=dim), [x, other], **TOL)
    n = x.shape[dim]
    sizes = [n // 2, n - n // 2] if n > 1 else [1]
    gradcheck(lambda t: minitx.split(t, sizes, dim=dim)[-1] * 3.0, [x], **TOL)
    picks = rng.integers(0, x.shape[0], size=3)                 # advanced, with repeats
    gradcheck(lambda t: t[picks], [x], **TOL)
