"""Exercises for tutorial 08: a real LLaMA-family model on the CPU (minitx/quant/ggml.py).
Grade with `python -m minitx grade 08`.

Replace each `raise NotImplementedError` with your code; plain Python and NumPy.
"""
import numpy as np  # noqa: F401  (you will need it)


def dequantize_q4_1(raw):
    """Decode ggml's Q4_1 blocks to float32.

    Each block is 20 bytes for 32 weights: d (float16, bytes 0-1), m (float16, bytes 2-3), then
    16 bytes of 4-bit codes q: byte j holds weight j in its low nibble and weight j + 16 in its
    high nibble. Weight i of the block is d * q_i + m.

    Args:
        raw: (R, nb * 20) uint8, R rows of nb blocks each (little-endian float16s).
    Returns:
        w: (R, nb * 32) float32.
    """
    raise NotImplementedError
