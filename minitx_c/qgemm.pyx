# cython: boundscheck=False, cdivision=True, initializedcheck=False
# wraparound stays on at module level: the def wrappers index Python tuples with -1.
# Each nogil kernel turns it off with @cython.wraparound(False).
"""Cython twins of `minitx/kernels/int8.py`: exact int8 GEMM and weight-only int8/int4 linears.

matmul_int8 runs the same five BLIS loops as `gemm.pyx`, but packs int8 as int16 *pairs* along
k so that one AVX2 `vpmaddwd` does 16 multiplies and 8 pairwise adds (int32, exact): the
micro-kernel `mtx_i8gemm_ukernel` in `gemm_kernel.h` does twice the multiply-adds of the float
FMA kernel per instruction. Conventions (int4 nibble order, scales) are documented in
`minitx/kernels/int8.py`.

linear_w8 / linear_w4: y = x @ (q * scale)^T + bias.
  * few rows (generation, M < QLINEAR_GEMM_MIN_M): dot products, four output channels per
    pass over x, int8 / int4 widened to float in registers, group sums scaled in registers;
    the weight is never dequantized in memory.
  * many rows: dequantize NB output channels at a time into a float32 tile and multiply it on
    the float32 GEMM (`minitx_c.gemm.matmul`), so the extra memory is NB x K floats.
"""
cimport cython
import math
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int16_t, int32_t, uint8_t
from minitx_c.omp cimport mtx_get_thread_num
from minitx_c.runtime cimport num_threads
from minitx.kernels.int8 import _check_qlinear
from minitx_c.gemm import matmul as _sgemm

cnp.import_array()

cdef extern from "gemm_kernel.h" nogil:
    void *mtx_aligned_malloc(size_t nbytes)
    void mtx_aligned_free(void *p)
    void *mtx_buffer_acquire(size_t nbytes, size_t *capacity)
    void mtx_buffer_release(void *p, size_t capacity)
    void mtx_i8gemm_ukernel(Py_ssize_t kp, const int16_t *a, const int16_t *b, int32_t *c,
                            Py_ssize_t rs_c, int beta)
    float mtx_qrow_dot(const float *x, const void *w, int int4, const float *scales,
                       Py_ssize_t n_groups, Py_ssize_t G)
    void mtx_qrow_dot4(const float *x, const void *w, Py_ssize_t row_bytes, int int4,
                       const float *scales, Py_ssize_t n_groups, Py_ssize_t G, float *out)

cdef enum:
    MR = 6
    NR = 16
    MC = 144
    KC = 512          # k values per 4th-loop slice = 256 int16 pairs (same bytes as float KC)
    NC = 4080
    QLINEAR_GEMM_MIN_M = 12  # rows of x from which linear_w* dequantizes tiles for the GEMM
    QLINEAR_NB = 256         # output channels dequantized per tile on the GEMM path
cdef Py_ssize_t PARALLEL_MIN_MACS = 1 << 18
K_MAX = 131071               # K * 128 * 128 must fit in int32


# ---------------------------------------------------------------------------- matmul_int8
@cython.wraparound(False)
cdef void _pack_a_i8(Py_ssize_t mc, Py_ssize_t kc, const int8_t *A, Py_ssize_t rs_a,
                     Py_ssize_t cs_a, int16_t *Ap) noexcept nogil:
    """Ap[ip][q][i] = (A[ip*MR + i, 2q], A[ip*MR + i, 2q + 1]) as int16, zero-padded."""
    cdef Py_ssize_t kp = (kc + 1) // 2, ip, ir, i, q, k
    cdef int16_t *dst
    cdef const int8_t *src
    for ip in range((mc + MR - 1) // MR):
        ir = ip * MR
        dst = Ap + ip * kp * MR * 2
        src = A + ir * rs_a
        if ir + MR <= mc:                             # full panel: no bounds tests on rows
            for q in range(kc // 2):
                for i in range(6):
                    dst[(q * 6 + i) * 2] = src[i * rs_a + 2 * q * cs_a]
                    dst[(q * 6 + i) * 2 + 1] = src[i * rs_a + (2 * q + 1) * cs_a]
            if kc % 2:                                # odd kc: pair the last k with a zero
                q = kc // 2
                for i in range(6):
                    dst[(q * 6 + i) * 2] = src[i * rs_a + 2 * q * cs_a]
                    dst[(q * 6 + i) * 2 + 1] = 0
        else:
            for q in range(kp):
                for i in range(6):
                    for k in range(2):
                        if ir + i < mc and 2 * q + k < kc:
                            dst[(q * 6 + i) * 2 + k] = src[i * rs_a + (2 * q + k) * cs_a]
                        else:
                            dst[(q * 6 + i) * 2 + k] = 0


@cython.wraparound(False)
cdef void _pack_b_i8(Py_ssize_t kc, Py_ssize_t nc, const int8_t *B, Py_ssize_t rs_b,
                     Py_ssize_t cs_b, int16_t *Bp) noexcept nogil:
    """Bp[jp][q][j] = (B[2q, jp*NR + j], B[2q + 1, jp*NR + j]) as int16, zero-padded."""
    cdef Py_ssize_t kp = (kc + 1) // 2, jp, jr, j, q, k
    cdef int16_t *dst
    cdef const int8_t *src
    for jp in range((nc + NR - 1) // NR):
        jr = jp * NR
        dst = Bp + jp * kp * NR * 2
        src = B + jr * cs_b
        if jr + NR <= nc and kc % 2 == 0:             # full panel
            for q in range(kp):
                for j in range(16):
                    dst[(q * 16 + j) * 2] = src[2 * q * rs_b + j * cs_b]
                    dst[(q * 16 + j) * 2 + 1] = src[(2 * q + 1) * rs_b + j * cs_b]
        else:
            for q in range(kp):
                for j in range(16):
                    for k in range(2):
                        if jr + j < nc and 2 * q + k < kc:
                            dst[(q * 16 + j) * 2 + k] = src[(2 * q + k) * rs_b + j * cs_b]
                        else:
                            dst[(q * 16 + j) * 2 + k] = 0


@cython.wraparound(False)
cdef void _macro_kernel_i8(Py_ssize_t mc, Py_ssize_t nc, Py_ssize_t kp, const int16_t *Ap,
                           const int16_t *Bp, int32_t *C, Py_ssize_t rs_c,
                           int beta) noexcept nogil:
    cdef Py_ssize_t jp, jr, ip, ir, nr, mr, i, j
    cdef int32_t tile[6 * 16]
    for jp in range((nc + NR - 1) // NR):                      # 2nd loop
        jr = jp * NR
        nr = min(NR, nc - jr)
        for ip in range((mc + MR - 1) // MR):                  # 1st loop
            ir = ip * MR
            mr = min(MR, mc - ir)
            if mr == MR and nr == NR:
                mtx_i8gemm_ukernel(kp, Ap + ip * kp * MR * 2, Bp + jp * kp * NR * 2,
                                   C + ir * rs_c + jr, rs_c, beta)
            else:
                mtx_i8gemm_ukernel(kp, Ap + ip * kp * MR * 2, Bp + jp * kp * NR * 2,
                                   tile, NR, 0)
                for i in range(mr):
                    for j in range(nr):
                        if beta:
                            C[(ir + i) * rs_c + jr + j] += tile[i * NR + j]
                        else:
                            C[(ir + i) * rs_c + jr + j] = tile[i * NR + j]


@cython.wraparound(False)
cdef void _ic_block_i8(Py_ssize_t blk, Py_ssize_t mc_blk, Py_ssize_t M, Py_ssize_t kc,
                       Py_ssize_t nc, const int8_t *A, Py_ssize_t rs_a, Py_ssize_t cs_a,
                       const int16_t *Bp, int16_t *Ap, int32_t *C, Py_ssize_t rs_c,
                       int beta) noexcept nogil:
    """One iteration of the 3rd loop: pack rows ic:ic+mc of A as int16 pairs, loops 2 and 1."""
    cdef Py_ssize_t ic = blk * mc_blk, mc = min(mc_blk, M - blk * mc_blk)
    _pack_a_i8(mc, kc, A + ic * rs_a, rs_a, cs_a, Ap)
    _macro_kernel_i8(mc, nc, (kc + 1) // 2, Ap, Bp, C + ic * rs_c, rs_c, beta)


@cython.wraparound(False)
cdef void _gemm_i8(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                   const int8_t *A, Py_ssize_t rs_a, Py_ssize_t cs_a,
                   const int8_t *B, Py_ssize_t rs_b, Py_ssize_t cs_b,
                   int32_t *C, Py_ssize_t rs_c, Py_ssize_t mc_blk, int nthreads,
                   int16_t *Bp, int16_t *Ap_all) noexcept nogil:
    """C = A @ B (int32, C row-major with row stride rs_c), the five BLIS loops. K >= 1."""
    cdef Py_ssize_t jb, jc, nc, pb, pc, kc, blk, n_blk = (M + mc_blk - 1) // mc_blk
    cdef bint threaded = nthreads > 1
    for jb in range((N + NC - 1) // NC):                       # 5th loop
        jc = jb * NC
        nc = min(NC, N - jc)
        for pb in range((K + KC - 1) // KC):                   # 4th loop
            pc = pb * KC
            kc = min(KC, K - pc)
            _pack_b_i8(kc, nc, B + pc * rs_b + jc * cs_b, rs_b, cs_b, Bp)
            if threaded:
                for blk in prange(n_blk, schedule="static", num_threads=nthreads):  # 3rd loop
                    _ic_block_i8(blk, mc_blk, M, kc, nc, A + pc * cs_a, rs_a, cs_a, Bp,
                                 Ap_all + mtx_get_thread_num() * mc_blk * KC, C + jc, rs_c,
                                 1 if pc > 0 else 0)
            else:
                for blk in range(n_blk):
                    _ic_block_i8(blk, mc_blk, M, kc, nc, A + pc * cs_a, rs_a, cs_a, Bp, Ap_all,
                                 C + jc, rs_c, 1 if pc > 0 else 0)


@cython.wraparound(False)
cdef void _gemm_i8_rows(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                        const int8_t *A, Py_ssize_t rs_a, Py_ssize_t cs_a,
                        const int8_t *B, Py_ssize_t rs_b, Py_ssize_t cs_b,
                        int32_t *C, Py_ssize_t rs_c, Py_ssize_t mc_blk, int nthreads,
                        int16_t *Bp_all, Py_ssize_t bp_size, int16_t *Ap_all,
                        Py_ssize_t ap_size) noexcept nogil:
    """Threads split C into row slabs, each with its own packed B (as gemm.pyx SPLIT_ROWS)."""
    cdef Py_ssize_t t, m0, ms = ((M + nthreads - 1) // nthreads + MR - 1) // MR * MR
    for t in prange(nthreads, schedule="static", num_threads=nthreads):
        m0 = t * ms
        if m0 < M:
            _gemm_i8(min(ms, M - m0), N, K, A + m0 * rs_a, rs_a, cs_a, B, rs_b, cs_b,
                     C + m0 * rs_c, rs_c, mc_blk, 1, Bp_all + t * bp_size, Ap_all + t * ap_size)


cdef _matmul_int8_2d(cnp.ndarray A, cnp.ndarray B, cnp.ndarray C):
    cdef Py_ssize_t M = A.shape[0], K = A.shape[1], N = B.shape[1]
    cdef Py_ssize_t rs_a = A.strides[0], cs_a = A.strides[1]
    cdef Py_ssize_t rs_b = B.strides[0], cs_b = B.strides[1], rs_c = C.strides[0] // 4
    cdef int nthreads = num_threads()
    cdef Py_ssize_t n_blk, mc_blk, m_thread, kc_max = min(<Py_ssize_t>KC, K) + 1
    cdef Py_ssize_t bp_size, ap_size
    cdef size_t cap
    cdef int16_t *Bp
    cdef int16_t *Ap
    cdef bint rows
    if M * N * K < PARALLEL_MIN_MACS:
        nthreads = 1
    rows = nthreads > 1 and M >= nthreads * MR
    m_thread = (M + nthreads - 1) // nthreads if rows else M
    n_blk = (m_thread + MC - 1) // MC
    if not rows:
        n_blk = (n_blk + nthreads - 1) // nthreads * nthreads
    mc_blk = min(<Py_ssize_t>MC, ((m_thread + n_blk - 1) // n_blk + MR - 1) // MR * MR)
    bp_size = kc_max * ((min(<Py_ssize_t>NC, N) + NR - 1) // NR * NR)
    bp_size = (bp_size + 31) // 32 * 32                        # keep Ap 64-byte aligned
    ap_size = mc_blk * KC
    Bp = <int16_t *>mtx_buffer_acquire(nthreads * (bp_size + ap_size) * 2, &cap)
    if Bp == NULL:
        raise MemoryError(f"matmul_int8: cannot allocate packing buffers for {M}x{K} @ {K}x{N}")
    Ap = Bp + nthreads * bp_size
    with nogil:
        if rows:
            _gemm_i8_rows(M, N, K, <const int8_t *>cnp.PyArray_DATA(A), rs_a, cs_a,
                          <const int8_t *>cnp.PyArray_DATA(B), rs_b, cs_b,
                          <int32_t *>cnp.PyArray_DATA(C), rs_c, mc_blk, nthreads, Bp, bp_size,
                          Ap, ap_size)
        else:
            _gemm_i8(M, N, K, <const int8_t *>cnp.PyArray_DATA(A), rs_a, cs_a,
                     <const int8_t *>cnp.PyArray_DATA(B), rs_b, cs_b,
                     <int32_t *>cnp.PyArray_DATA(C), rs_c, mc_blk, nthreads, Bp, Ap)
    mtx_buffer_release(Bp, cap)


def matmul_int8(a, b):
    """Exact integer matrix product of int8 operands, with np.matmul broadcasting.

    Args:
        a: (..., M, K) int8, any strides.
        b: (..., K, N) int8, any strides.
    Returns:
        (..., M, N) int32, exactly a @ b (K <= 131071 so that no sum can overflow).
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, np.ndarray) or t.dtype != np.int8:
            raise TypeError(f"{name} must be an int8 ndarray, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dims, got shape {t.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul_int8: inner dims differ: a {a.shape} @ b {b.shape}")
    if a.shape[-1] > K_MAX:
        raise ValueError(f"matmul_int8: K={a.shape[-1]} could overflow int32 (max {K_MAX})")
    try:
        lead = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    except ValueError:
        raise ValueError(f"matmul_int8: batch dims do not broadcast: a {a.shape} @ b {b.shape}")
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    C = np.zeros(lead + (M, N), dtype=np.int32)                  # (..., M, N)
    if C.size == 0 or K == 0:
        return C
    a_full = np.broadcast_to(a, lead + (M, K))
    b_full = np.broadcast_to(b, lead + (K, N))
    for idx in np.ndindex(*lead):
        _matmul_int8_2d(a_full[idx], b_full[idx], C[idx])
    return C


# ------------------------------------------------------------------ weight-only linears
@cython.wraparound(False)
cdef void _qlinear_rows(const float *X, Py_ssize_t M, Py_ssize_t K, const void *W,
                        Py_ssize_t row_bytes, bint int4, const float *S, Py_ssize_t n_groups,
                        Py_ssize_t G, const float *bias, float *Y, Py_ssize_t N,
                        int nthreads) noexcept nogil:
    """Y[m, n] = sum_g scale[n, g] * dot(X[m, gG:(g+1)G], q[n, gG:(g+1)G]) (+ bias[n])."""
    cdef Py_ssize_t n4, n_quads = N // 4
    if nthreads > 1:
        for n4 in prange(n_quads, schedule="static", num_threads=nthreads):
            _qlinear_quad(4 * n4, X, M, K, W, row_bytes, int4, S, n_groups, G, bias, Y, N)
    else:
        for n4 in range(n_quads):
            _qlinear_quad(4 * n4, X, M, K, W, row_bytes, int4, S, n_groups, G, bias, Y, N)
    for n4 in range(4 * n_quads, N):                            # the last N % 4 channels
        _qlinear_channel(n4, X, M, K, W, row_bytes, int4, S, n_groups, G, bias, Y, N)


@cython.wraparound(False)
cdef void _qlinear_channel(Py_ssize_t n, const float *X, Py_ssize_t M, Py_ssize_t K,
                           const void *W, Py_ssize_t row_bytes, bint int4, const float *S,
                           Py_ssize_t n_groups, Py_ssize_t G, const float *bias, float *Y,
                           Py_ssize_t N) noexcept nogil:
    """Output channel n for every row m."""
    cdef Py_ssize_t m
    cdef const char *wrow = <const char *>W + n * row_bytes
    for m in range(M):
        Y[m * N + n] = (mtx_qrow_dot(X + m * K, wrow, int4, S + n * n_groups, n_groups, G)
                        + (bias[n] if bias != NULL else 0))


@cython.wraparound(False)
cdef void _qlinear_quad(Py_ssize_t n, const float *X, Py_ssize_t M, Py_ssize_t K,
                        const void *W, Py_ssize_t row_bytes, bint int4, const float *S,
                        Py_ssize_t n_groups, Py_ssize_t G, const float *bias, float *Y,
                        Py_ssize_t N) noexcept nogil:
    """Output channels n..n+3 for every row m (x row loaded once for four weight rows)."""
    cdef Py_ssize_t m, r
    cdef float out[4]
    for m in range(M):
        mtx_qrow_dot4(X + m * K, <const char *>W + n * row_bytes, row_bytes, int4,
                      S + n * n_groups, n_groups, G, out)
        for r in range(4):
            Y[m * N + n + r] = out[r] + (bias[n + r] if bias != NULL else 0)


@cython.wraparound(False)
cdef void _dequant_rows(const void *W, Py_ssize_t row_bytes, bint int4, const float *S,
                        Py_ssize_t n_groups, Py_ssize_t G, Py_ssize_t n0, Py_ssize_t nb,
                        Py_ssize_t K, float *T) noexcept nogil:
    """T[r, k] = q[n0 + r, k] * scale[n0 + r, k // G] for r < nb: one float32 weight tile."""
    cdef Py_ssize_t r, g, j
    cdef const int8_t *w8
    cdef const uint8_t *w4
    cdef float s
    cdef float *t
    for r in range(nb):
        w8 = <const int8_t *>W + (n0 + r) * row_bytes
        w4 = <const uint8_t *>W + (n0 + r) * row_bytes
        for g in range(n_groups):
            s = S[(n0 + r) * n_groups + g]
            t = T + r * K + g * G
            if int4:
                for j in range(G // 2):                  # low nibble = even k
                    t[2 * j] = s * <float>(<int>(w4[g * G // 2 + j] & 0x0F) - 8)
                    t[2 * j + 1] = s * <float>(<int>(w4[g * G // 2 + j] >> 4) - 8)
            else:
                for j in range(G):
                    t[j] = s * <float>w8[g * G + j]


def _aligned_c(a):
    """a as a C-contiguous array with an aligned data pointer (a itself when it is one);
    np.ascontiguousarray alone keeps a contiguous view whose pointer is misaligned."""
    return np.ascontiguousarray(a) if a.flags.aligned else np.array(a, order="C")


cdef _qlinear(x, cnp.ndarray w, bint int4, scales, group_size, bias, Py_ssize_t K):
    """Shared driver of linear_w8 / linear_w4 once the arguments are validated."""
    cdef Py_ssize_t N, n_groups, G, M, n0, nb
    cdef int nthreads = num_threads()
    cdef cnp.ndarray X, S, Bv, Y, T
    cdef const float *bias_p = NULL
    N, n_groups, G = _check_qlinear(x, w, scales, group_size, bias, K)
    M = math.prod(x.shape[:-1])
    # Contiguous and aligned copies where needed (views of byte buffers may have neither).
    w = np.ascontiguousarray(w)                                 # (N, K) int8 / (N, K/2) uint8
    X = _aligned_c(x.reshape(M, K))                             # (M, K)
    S = _aligned_c(scales)                                      # (N, n_groups) flat
    Y = np.empty((M, N), dtype=np.float32)                      # (M, N)
    if bias is not None:
        Bv = _aligned_c(bias)
        bias_p = <const float *>cnp.PyArray_DATA(Bv)
    if M == 0 or N == 0:
        return Y.reshape(x.shape[:-1] + (N,))
    if K == 0:                                                  # empty sums: y = bias, or 0
        Y[...] = 0
        if bias is not None:
            Y += bias
        return Y.reshape(x.shape[:-1] + (N,))
    if M < QLINEAR_GEMM_MIN_M:                                  # matrix-vector path
        if M * N * K < PARALLEL_MIN_MACS:
            nthreads = 1
        with nogil:
            _qlinear_rows(<const float *>cnp.PyArray_DATA(X), M, K, cnp.PyArray_DATA(w),
                          w.strides[0], int4, <const float *>cnp.PyArray_DATA(S), n_groups, G,
                          bias_p, <float *>cnp.PyArray_DATA(Y), N, nthreads)
    else:                                                       # tile-wise dequant + GEMM
        T = np.empty((min(<Py_ssize_t>QLINEAR_NB, N), K), dtype=np.float32)
        for n0 in range(0, N, QLINEAR_NB):
            nb = min(<Py_ssize_t>QLINEAR_NB, N - n0)
            with nogil:
                _dequant_rows(cnp.PyArray_DATA(w), w.strides[0], int4,
                              <const float *>cnp.PyArray_DATA(S), n_groups, G, n0, nb, K,
                              <float *>cnp.PyArray_DATA(T))
            _sgemm(X, T[:nb].T, out=Y[:, n0:n0 + nb])           # (M, nb)
        if bias is not None:
            Y += bias
    return Y.reshape(x.shape[:-1] + (N,))


def linear_w8(x, w_q, scales, group_size=None, bias=None):
    """Weight-only int8 linear layer: y = x @ (w_q * scales)^T + bias.

    Args:
        x: (..., K) float32 activations.
        w_q: (N, K) int8 quantized weight, laid out like nn.Linear.weight.
        scales: float32, (N,) if group_size is None (per output channel), else
            (N, K // group_size) (per group of `group_size` consecutive k).
        group_size: None, or a positive divisor of K.
        bias: (N,) float32 or None.
    Returns:
        (..., N) float32.
    """
    if not isinstance(w_q, np.ndarray) or w_q.dtype != np.int8 or w_q.ndim != 2:
        raise TypeError(f"w_q must be a 2-D int8 ndarray, got "
                        f"{getattr(w_q, 'dtype', type(w_q).__name__)} {getattr(w_q, 'shape', '')}")
    return _qlinear(x, w_q, False, scales, group_size, bias, w_q.shape[1])


def linear_w4(x, w_packed, scales, group_size=None, bias=None):
    """Weight-only int4 linear layer on two-per-byte packed weights.

    Args:
        x: (..., K) float32 activations, K even.
        w_packed: (N, K // 2) uint8, from `pack_int4` (even k in the low nibble, q + 8).
        scales: float32, (N,) if group_size is None, else (N, K // group_size).
        group_size: None, or a positive even divisor of K (e.g. 32, 64, 128).
        bias: (N,) float32 or None.
    Returns:
        (..., N) float32.
    """
    if not isinstance(w_packed, np.ndarray) or w_packed.dtype != np.uint8 or w_packed.ndim != 2:
        raise TypeError(f"w_packed must be a 2-D uint8 ndarray, got "
                        f"{getattr(w_packed, 'dtype', type(w_packed).__name__)}")
    if group_size is not None and int(group_size) % 2 != 0:
        raise ValueError(f"group_size must be even for packed int4, got {group_size}")
    return _qlinear(x, w_packed, True, scales, group_size, bias, 2 * w_packed.shape[1])
