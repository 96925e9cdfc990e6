"""Check a backward pass against central finite differences (in float64).

For f(inputs) -> Tensor, pick a fixed random weight w of the output's shape and compare the
analytic gradient of L = sum(w * f) (from `backward`) with the numerical one,
    dL/dx_i ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps),
element by element. A mismatch raises `GradcheckError` naming the input, its shape, the worst
index and both values, as llm.c's gradient checks print them.
"""
import numpy as np

from minitx.autograd import Tensor


class GradcheckError(AssertionError):
    """The analytic and numerical gradients disagree."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, seed=0):
    """Compare the gradients of `fn` at `inputs` with central differences.

    Args:
        fn: callable taking one Tensor per input and returning a Tensor.
        inputs: list of float64 ndarrays (each gets a gradient).
        eps: the finite-difference step. atol, rtol: |analytic - numeric| <= atol + rtol|numeric|.
    Returns:
        the largest absolute difference found (a float).
    Raises:
        GradcheckError on the first input whose gradient disagrees.
    """
    inputs = [np.array(x, dtype=np.float64) for x in inputs]
    for i, x in enumerate(inputs):
        if x.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 inputs, input {i} is {x.dtype}")
    tensors = [Tensor(x.copy(), requires_grad=True) for x in inputs]
    out = fn(*tensors)
    w = np.random.default_rng(seed).standard_normal(out.shape)
    (out * Tensor(w)).sum().backward()

    def loss(arrays):
        return float((fn(*[Tensor(a) for a in arrays]).data * w).sum())

    worst = 0.0
    for i, (x, t) in enumerate(zip(inputs, tensors)):
        analytic = t.grad if t.grad is not None else np.zeros_like(x)
        numeric = np.zeros_like(x)
        for j in np.ndindex(x.shape):
            arrays = [a.copy() for a in inputs]
            arrays[i][j] = x[j] + eps
            up = loss(arrays)
            arrays[i][j] = x[j] - eps
            numeric[j] = (up - loss(arrays)) / (2 * eps)
        diff = np.abs(analytic - numeric)
        if diff.size:
            worst = max(worst, float(diff.max()))
        bad = diff > atol + rtol * np.abs(numeric)
        if bad.any():
            k = np.unravel_index(np.argmax(diff - (atol + rtol * np.abs(numeric))), x.shape)
            raise GradcheckError(
                f"gradient of input {i} (shape {x.shape}) is wrong at index {tuple(map(int, k))}: "
                f"analytic {analytic[k]:.6g} vs numeric {numeric[k]:.6g}, max |diff| "
                f"{diff.max():.3g}, {int(bad.sum())} of {x.size} elements off")
    return worst
