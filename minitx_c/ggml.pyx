# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython twins of `minitx/kernels/ggml.py`: y = x @ W^T with W in ggml blocks (Q4_0, Q4_1, Q8_0).

ggml_matmul (float activations), same loop as the NumPy twin over output rows:
  * few rows of x (decoding, M < GEMM_MIN_M): OpenMP over output rows n; for each row, every
    32-value block is decoded in registers and dotted with the M activation blocks
    (`mtx_row_f32` in ggml_simd.h), using
        Q8_0: d * sum q x      Q4_0: d * (sum nib x - 8 sum x)      Q4_1: d * sum nib x + m sum x
    with the block sums of x computed once per call. No decoded weight is stored anywhere.
  * many rows (prompt processing): NR output rows at a time are decoded into a float32 tile
    (NR x K, OpenMP over rows) and multiplied on minitx's float32 GEMM, as the NumPy twin does.
ggml_matmul_q8 (the llama.cpp way): x quantized per 32-block to int8 (dx = absmax / 127), then
  integer block dot products (`mtx_row_q8`: AVX2 vpmaddubsw / vpmaddwd),
  one float multiply-add per block; OpenMP over output rows.
Arguments are validated by the NumPy twin's `check_ggml_matmul` before the GIL is released.
"""
cimport cython
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, uint8_t, uint16_t
from libc.math cimport fabsf, floorf
from minitx_c.omp cimport mtx_get_max_threads
from minitx.kernels.ggml import check_ggml_matmul
from minitx_c.gemm import matmul as _sgemm

cnp.import_array()

cdef extern from "ggml_simd.h" nogil:
    int mtx_ggml_simd()
    float mtx_row_f32(int qtype, const uint8_t *row, long nb, const float *x, const float *xs,
                      const float *f16)
    float mtx_row_q8(int qtype, const uint8_t *row, long nb, const int8_t *xq, const float *dx,
                     const float *sx, const float *f16)

cdef enum:
    QK = 32
    Q4_0 = 2
    Q4_1 = 3
    Q8_0 = 8
    GEMM_MIN_M = 16          # from this many rows of x on, decode tiles and use the GEMM
    NR = 256                 # output rows per decoded tile (as the NumPy twin's NR)

cdef Py_ssize_t PARALLEL_MIN_BYTES = 1 << 16     # smaller weights run on one thread

# fp16 -> fp32 for every 16-bit pattern (as ggml's table): exact, no F16C needed
_F16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
cdef const float[::1] F16 = _F16


def _simd():
    """True if the block dot products were compiled with AVX2 + FMA intrinsics."""
    return bool(mtx_ggml_simd())


cdef inline float _half(const uint8_t *p) noexcept nogil:
    return F16[<uint16_t>p[0] | (<uint16_t>p[1] << 8)]


cdef void _block_sums(const float *X, Py_ssize_t M, Py_ssize_t K, float *xs) noexcept nogil:
    """xs[m, b] = sum of x[m, 32 b : 32 b + 32]."""
    cdef Py_ssize_t m, b, j, nb = K // QK
    cdef float s
    for m in range(M):
        for b in range(nb):
            s = 0
            for j in range(QK):
                s = s + X[m * K + b * QK + j]
            xs[m * nb + b] = s


cdef void _row_float(int qtype, const uint8_t *row, Py_ssize_t ts, const float *X,
                     const float *xs, Py_ssize_t M, Py_ssize_t K, float *Y, Py_ssize_t N,
                     Py_ssize_t n) noexcept nogil:
    """Y[:, n] = X @ W[n]^T with W[n] decoded block by block in registers (mtx_row_f32:
    Q8_0: d * sum q x; Q4_0: d * (sum nib x - 8 sum x); Q4_1: d * sum nib x + m sum x)."""
    cdef Py_ssize_t m, nb = K // QK
    for m in range(M):
        Y[m * N + n] = mtx_row_f32(qtype, row, nb, X + m * K, xs + m * nb, &F16[0])


cdef void _decode_row(int qtype, const uint8_t *row, Py_ssize_t ts, Py_ssize_t K,
                      float *t) noexcept nogil:
    """t[0:K] = W[n] decoded (prompt path only: one row of the NR x K tile)."""
    cdef Py_ssize_t b, j
    cdef const uint8_t *blk
    cdef float d, m
    for b in range(K // QK):
        blk = row + b * ts
        d = _half(blk)
        if qtype == Q8_0:
            for j in range(QK):
                t[b * QK + j] = d * (<const int8_t *>(blk + 2))[j]
        else:
            m = _half(blk + 2) if qtype == Q4_1 else -8 * d
            blk = blk + (4 if qtype == Q4_1 else 2)
            for j in range(QK // 2):
                t[b * QK + j] = d * (blk[j] & 15) + m
                t[b * QK + j + QK // 2] = d * (blk[j] >> 4) + m


def ggml_matmul(x, w, int qtype):
    """y = x @ W^T with W in ggml blocks, float activations. See minitx.kernels.ggml.

    Args:
        x: (M, K) float32 C-contiguous. w: (N, K / 32 * type_size) uint8 ggml rows.
        qtype: 2 (Q4_0), 3 (Q4_1) or 8 (Q8_0).
    Returns:
        (M, N) float32.
    """
    cdef Py_ssize_t M, K, N, ts, n, n0, nr, nb
    M, K, N, ts = check_ggml_matmul(x, w, qtype)
    cdef cnp.ndarray Y = np.empty((M, N), np.float32)
    cdef cnp.ndarray X = x, W = w, XS, T
    cdef const float *xp = <const float *>cnp.PyArray_DATA(X)
    cdef const uint8_t *wp = <const uint8_t *>cnp.PyArray_DATA(W)
    cdef float *yp = <float *>cnp.PyArray_DATA(Y)
    cdef float *tp
    cdef int nthreads = mtx_get_max_threads() if N * ts * (K // QK) >= PARALLEL_MIN_BYTES else 1
    if M == 0 or N == 0:
        return Y
    if M < GEMM_MIN_M:
        XS = np.empty((M, K // QK), np.float32)
        with nogil:
            _block_sums(xp, M, K, <float *>cnp.PyArray_DATA(XS))
            for n in prange(N, schedule="static", num_threads=nthreads):
                _row_float(qtype, wp + n * (K // QK) * ts, ts, xp,
                           <const float *>cnp.PyArray_DATA(XS), M, K, yp, N, n)
        return Y
    T = np.empty((min(<Py_ssize_t>NR, N), K), np.float32)
    tp = <float *>cnp.PyArray_DATA(T)
    nb = K // QK
    for n0 in range(0, N, NR):                                  # tiles of output rows
        nr = min(<Py_ssize_t>NR, N - n0)
        with nogil:
            for n in prange(nr, schedule="static", num_threads=nthreads):
                _decode_row(qtype, wp + (n0 + n) * nb * ts, ts, K, tp + n * K)
        _sgemm(x, T[:nr].T, out=Y[:, n0:n0 + nr])               # (M, nr)
    return Y


cdef void _quantize_q8(const float *X, Py_ssize_t M, Py_ssize_t K, int8_t *xq, float *dx,
                       float *sx) noexcept nogil:
    """Per 32-block of x: dx = absmax / 127, xq = round(x / dx) (half away from 0), sx = dx sum xq."""
    cdef Py_ssize_t m, b, j, nb = K // QK
    cdef float amax, d, inv, v
    cdef int s, q
    cdef const float *xb
    for m in range(M):
        for b in range(nb):
            xb = X + m * K + b * QK
            amax = 0
            for j in range(QK):
                amax = max(amax, fabsf(xb[j]))
            d = amax / 127
            inv = 1 / d if d > 0 else 0
            s = 0
            for j in range(QK):
                v = xb[j] * inv
                q = <int>floorf(fabsf(v) + 0.5)
                q = -q if v < 0 else q
                xq[m * K + b * QK + j] = <int8_t>q
                s = s + q
            dx[m * nb + b] = d
            sx[m * nb + b] = d * s


cdef void _row_q8(int qtype, const uint8_t *row, Py_ssize_t ts, const int8_t *xq,
                  const float *dx, const float *sx, Py_ssize_t M, Py_ssize_t K, float *Y,
                  Py_ssize_t N, Py_ssize_t n) noexcept nogil:
    """Y[:, n] by integer block dot products against the int8 activations (mtx_row_q8)."""
    cdef Py_ssize_t m, nb = K // QK
    for m in range(M):
        Y[m * N + n] = mtx_row_q8(qtype, row, nb, xq + m * K, dx + m * nb, sx + m * nb, &F16[0])


def ggml_matmul_q8(x, w, int qtype):
    """y = x @ W^T the llama.cpp way (int8 activations, integer block dots). See
    minitx.kernels.ggml. Args and Returns as `ggml_matmul`."""
    cdef Py_ssize_t M, K, N, ts, n
    M, K, N, ts = check_ggml_matmul(x, w, qtype)
    cdef cnp.ndarray Y = np.empty((M, N), np.float32)
    cdef cnp.ndarray X = x, W = w
    cdef cnp.ndarray XQ = np.empty((M, K), np.int8)
    cdef cnp.ndarray DX = np.empty((M, K // QK), np.float32), SX = np.empty((M, K // QK), np.float32)
    cdef const uint8_t *wp = <const uint8_t *>cnp.PyArray_DATA(W)
    cdef int nthreads = mtx_get_max_threads() if N * ts * (K // QK) >= PARALLEL_MIN_BYTES else 1
    if M == 0 or N == 0:
        return Y
    with nogil:
        _quantize_q8(<const float *>cnp.PyArray_DATA(X), M, K, <int8_t *>cnp.PyArray_DATA(XQ),
                     <float *>cnp.PyArray_DATA(DX), <float *>cnp.PyArray_DATA(SX))
        for n in prange(N, schedule="static", num_threads=nthreads):
            _row_q8(qtype, wp + n * (K // QK) * ts, ts, <const int8_t *>cnp.PyArray_DATA(XQ),
                    <const float *>cnp.PyArray_DATA(DX), <const float *>cnp.PyArray_DATA(SX),
                    M, K, <float *>cnp.PyArray_DATA(Y), N, n)
    return Y
