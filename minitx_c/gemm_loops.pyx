# cython: boundscheck=False, cdivision=True, initializedcheck=False
# wraparound stays on at module level: the def wrappers index Python tuples with -1.
"""The textbook matrix-product loops, compiled: what loop order and blocking alone are worth
before packing and a register micro-kernel (tutorials/03_gemm.py, steps 2 and 3).

Not a production kernel (use `minitx_c.matmul`); the NumPy twin is
`minitx.kernels.gemm.matmul_loops` (the same loops, and the same argument checks).
"""
cimport cython
import numpy as np
from minitx.kernels.gemm import check_matmul_loops


@cython.wraparound(False)
cdef void _loops_ijk(const float[:, ::1] A, const float[:, ::1] B, float[:, ::1] C) noexcept nogil:
    cdef Py_ssize_t i, j, k
    cdef float s
    for i in range(A.shape[0]):
        for j in range(B.shape[1]):
            s = 0
            for k in range(A.shape[1]):                  # B[k, j]: stride N, no vectors
                s = s + A[i, k] * B[k, j]
            C[i, j] = s


@cython.wraparound(False)
cdef void _loops_ikj(const float[:, ::1] A, const float[:, ::1] B, float[:, ::1] C,
                     Py_ssize_t bs) noexcept nogil:
    """C += A @ B by tiles of bs x bs x bs; inside a tile i, k, j (contiguous rows)."""
    cdef Py_ssize_t M = A.shape[0], K = A.shape[1], N = B.shape[1]
    cdef Py_ssize_t ib, kb, jb, i0, k0, j0, i, k, j
    cdef float a
    for ib in range((M + bs - 1) // bs):
        i0 = ib * bs
        for kb in range((K + bs - 1) // bs):
            k0 = kb * bs
            for jb in range((N + bs - 1) // bs):
                j0 = jb * bs
                for i in range(i0, min(i0 + bs, M)):
                    for k in range(k0, min(k0 + bs, K)):
                        a = A[i, k]
                        for j in range(j0, min(j0 + bs, N)):   # compiler vectorises this
                            C[i, j] += a * B[k, j]


def matmul_loops(a, b, order="ikj", block=0):
    """The textbook loops, compiled: what loop order and blocking alone are worth (tutorial 03).

    Args:
        a: (M, K) float32; b: (K, N) float32.
        order: "ijk" (dot product per C[i, j], B read down columns) or "ikj" (row updates).
        block: with order="ikj", tile size for cache blocking (0 = no blocking).
    Returns:
        (M, N) float32.
    """
    block = check_matmul_loops(a, b, order, block)
    C = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    cdef const float[:, ::1] Av = np.require(a, requirements=("C", "A"))   # aligned copies
    cdef const float[:, ::1] Bv = np.require(b, requirements=("C", "A"))   # if needed
    cdef float[:, ::1] Cv = C
    cdef Py_ssize_t bs = block if block > 0 else max(1, max(a.shape[0], a.shape[1], b.shape[1]))
    if order == "ijk":
        with nogil:
            _loops_ijk(Av, Bv, Cv)
    else:
        with nogil:
            _loops_ikj(Av, Bv, Cv, bs)
    return C
