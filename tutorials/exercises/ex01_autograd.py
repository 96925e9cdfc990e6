"""Exercises for tutorial 01: autograd. Grade with `python -m minitx grade 01`.

Replace each `raise NotImplementedError` with your code; NumPy only. The answer key is minitx
itself (minitx/functions.py, minitx/gradcheck.py): try first, read after.
"""
import numpy as np  # noqa: F401  (you will need it)


def tanh_backward(x, grad_out):
    """The backward of y = tanh(x), as a `Function.backward` computes it.

    Args:
        x: (M, N) float64, the input the forward saw.
        grad_out: (M, N) float64, dL/dy.
    Returns:
        grad_x: (M, N) float64, dL/dx = dL/dy * (1 - tanh(x)^2).
    """
    raise NotImplementedError


def softmax_backward(x, grad_out):
    """The backward of y = softmax(x) over the last dim.

    Each row's Jacobian is diag(y) - y y^T, so dL/dx = y * (g - sum(g * y)) row by row; never
    build the Jacobian.

    Args:
        x: (M, N) float64 logits.
        grad_out: (M, N) float64, dL/dy.
    Returns:
        grad_x: (M, N) float64.
    """
    raise NotImplementedError


def matmul_backward(a, b, grad_out):
    """The backward of C = a @ b.

    Args:
        a: (M, K) float64; b: (K, N) float64.
        grad_out: (M, N) float64, dL/dC.
    Returns:
        (grad_a (M, K), grad_b (K, N)), both float64.
    """
    raise NotImplementedError


def sum_to_shape(grad, shape):
    """Undo broadcasting in the backward pass: sum `grad` down to `shape`.

    If x of `shape` was broadcast to grad.shape in the forward pass (NumPy rules: missing leading
    dims, and dims of size 1, are repeated), dL/dx sums grad over every repeated dim.

    Args:
        grad: float64 array, the broadcast shape, e.g. (4, 3, 5).
        shape: tuple, the input's shape, broadcastable to grad.shape, e.g. (3, 1).
    Returns:
        grad_x: float64 array of exactly `shape`.
    """
    raise NotImplementedError


def numerical_gradient(f, x, eps):
    """The gradient of a scalar function by central differences, as `minitx.gradcheck` does.

    dL/dx_i ~ (f(x + eps e_i) - f(x - eps e_i)) / (2 eps), one element at a time. The grader
    compares it with minitx's autograd gradient; a one-sided difference is not accurate enough.

    Args:
        f: callable, float64 array of x's shape -> float.
        x: (M, N) float64 point (do not modify it in place, or restore it).
        eps: float step, e.g. 1e-4.
    Returns:
        grad: (M, N) float64.
    """
    raise NotImplementedError
