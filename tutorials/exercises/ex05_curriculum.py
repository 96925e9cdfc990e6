"""Exercises for tutorial 05: curriculum learning (minitx/curriculum.py).
Grade with `python -m minitx grade 05`.

Replace each `raise NotImplementedError` with your code; plain Python and NumPy.
"""
import math  # noqa: F401  (you will need it)


def fixed_root(step, min_difficulty, max_difficulty, total_curriculum_step, difficulty_step,
               root_degree):
    """DeepSpeed's fixed_root pacing function: the sequence length to train on at a step.

    f = floor((step / total_curriculum_step) ** (1 / root_degree) * (max - min) + min), rounded
    down to a multiple of difficulty_step, and never above max_difficulty.

    Args:
        step: int >= 1, DeepSpeed's global step.
        min_difficulty, max_difficulty: ints, 1 <= min <= max.
        total_curriculum_step: int >= 1, the step at which max is reached.
        difficulty_step: int >= 1. root_degree: int >= 1 (1: linear pacing).
    Returns:
        difficulty: int.
    """
    raise NotImplementedError


def reshape_batch(x, y, L):
    """Feed a shorter context without losing tokens: (B, T) batches as rows of length L.

    Each row keeps its first (T // L) * L tokens, cut into T // L consecutive rows of L; inputs
    and targets are cut identically, so every target stays next to its input.

    Args:
        x, y: (B, T) int arrays, inputs and next-token targets. L: int, 1 <= L <= T.
    Returns:
        (x_rows, y_rows): (B * (T // L), L) each.
    """
    raise NotImplementedError
