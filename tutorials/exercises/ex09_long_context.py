"""Exercises for tutorial 09: long context (minitx/attention/sparse.py).
Grade with `python -m minitx grade 09`.

Replace each `raise NotImplementedError` with your code; plain Python and NumPy.
"""
import numpy as np  # noqa: F401  (you will need it)


def sliding_window(n, w, causal):
    """A block-sparse layout: which (query block, key block) tiles attention may read.

    Block i sees the blocks j with |i - j| <= w (and only j <= i when causal).

    Args:
        n: int >= 1, blocks per side. w: int >= 0, half-width in blocks. causal: bool.
    Returns:
        layout: (n, n) bool.
    """
    raise NotImplementedError
