"""Exercises for tutorial 06: growing a model while it trains (minitx/growth/).
Grade with `python -m minitx grade 06`.

Replace each `raise NotImplementedError` with your code; plain Python and NumPy.
"""
import numpy as np  # noqa: F401  (you will need it)


def masked_layer_norm(x, weight, bias, mask, eps):
    """MSG's masked LayerNorm: the norm of a model whose new dimensions are still masked.

    With a = mask / sum(mask), the mean and variance are mask-weighted averages over the last dim:
        mu = sum(a x),  var = sum(a (x - mu)^2),  y = ((x - mu) / sqrt(var + eps) * weight + bias) * mask
    so dimensions with mask 0 neither change the statistics nor reach the output: the grown model
    computes what the small one did.

    Args:
        x: (N, C) float64. weight, bias: (C,). mask: (C,) values in [0, 1], not all 0.
        eps: float.
    Returns:
        y: (N, C).
    """
    raise NotImplementedError
