"""Exercises for tutorial 07: LoRA (minitx/lora.py).
Grade with `python -m minitx grade 07`.

Replace each `raise NotImplementedError` with your code; plain Python and NumPy.
"""
import numpy as np  # noqa: F401  (you will need it)


def lora_forward(x, W, A, B, alpha):
    """A frozen Linear plus a low-rank update, as PEFT computes it (no bias, no dropout).

        y = x W^T + (alpha / r) (x A^T) B^T,   r = the rank (A's first dim)

    Args:
        x: (N, in) float64. W: (out, in) the frozen weight. A: (r, in). B: (out, r).
        alpha: float, lora_alpha.
    Returns:
        y: (N, out).
    """
    raise NotImplementedError
