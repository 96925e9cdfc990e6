"""Exercises for tutorial 03: the BLIS matrix product. Grade with `python -m minitx grade 03`.

Replace each `raise NotImplementedError` with your code; NumPy only. The answer key is
minitx/kernels/gemm.py (its module docstring draws the five loops).
"""
import numpy as np  # noqa: F401  (you will need it)

MR, NR = 6, 16          # the micro-tile of C the micro-kernel keeps in registers


def pack_a(A_blk):
    """Pack an (mc, kc) block of A into MR-tall micro-panels, zero-padded.

    Args:
        A_blk: (mc, kc) float32.
    Returns:
        Ap: (ceil(mc / MR), kc, MR) float32 with Ap[ip, p, i] = A_blk[ip * MR + i, p], and 0
        where ip * MR + i >= mc.
    """
    raise NotImplementedError


def pack_b(B_blk):
    """Pack a (kc, nc) block of B into NR-wide micro-panels, zero-padded.

    Args:
        B_blk: (kc, nc) float32.
    Returns:
        Bp: (ceil(nc / NR), kc, NR) float32 with Bp[jp, p, j] = B_blk[p, jp * NR + j], and 0
        where jp * NR + j >= nc.
    """
    raise NotImplementedError


def micro_kernel(a_panel, b_panel):
    """The micro-kernel: kc rank-1 updates of an MR x NR tile, sum_p outer(a_panel[p], b_panel[p]).

    Args:
        a_panel: (kc, MR) one packed micro-panel of A; b_panel: (kc, NR) one of B. Same dtype.
    Returns:
        tile: (MR, NR), the same dtype.
    """
    raise NotImplementedError


def matmul_blocked(A, B):
    """C = A @ B by the BLIS loops: pack blocks of A and B, then micro-kernel tiles of C.

    Use your pack_a, pack_b and micro_kernel, with block sizes of your choice (e.g. MC = 12,
    KC = 8, NC = 32, so that the grader's small matrices still cross block edges); trim the
    padded tiles at the edges of C. Not np.matmul / @ on whole matrices.

    Args:
        A: (M, K) float32; B: (K, N) float32.
    Returns:
        C: (M, N) float32.
    """
    raise NotImplementedError
