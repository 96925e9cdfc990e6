# cython: boundscheck=False, cdivision=True, initializedcheck=False
# wraparound stays on at module level: the def wrappers index Python tuples with -1.
# Each nogil kernel turns it off with @cython.wraparound(False).
"""Cython twin of `minitx/kernels/gemm.py`: a BLIS-style float32 matrix product.

Same five loops, names and block sizes as the NumPy reference (read that file first):

    for jc in range(0, N, NC):            5th loop: NC-wide column panel of B and C
      for pc in range(0, K, KC):          4th loop: KC-deep slice; pack B[pc:, jc:] -> Bp
        for ic in range(0, M, MC):        3rd loop: pack A[ic:, pc:] -> Ap
          for jr in range(0, nc, NR):     2nd loop: one NR-wide micro-panel of Bp (stays in L1)
            for ir in range(0, mc, MR):   1st loop: one MR-tall micro-panel of Ap (from L2)
              micro-kernel: C[ir:ir+MR, jr:jr+NR] += Ap_panel @ Bp_panel   (registers)

The micro-kernel (AVX2 + FMA intrinsics with a scalar fallback) is in `gemm_kernel.h`.
Threads (OpenMP, serial without it): by default each thread runs the loops above on its own
slab of rows of C with its own packed B (no barrier inside a call, robust when the cores are
shared); `set_parallel_split("blocks")` selects BLIS's shared packed B with the MC blocks of
the 3rd loop split over threads; batches of small matrices are split matrix by matrix.
Goto & van de Geijn 2008, "Anatomy of High-Performance Matrix Multiplication" (ACM TOMS 34:3);
Van Zee & van de Geijn 2015, "BLIS: A Framework for Rapidly Instantiating BLAS Functionality".
"""
cimport cython
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from minitx_c.omp cimport mtx_get_thread_num
from minitx_c.runtime cimport num_threads
from minitx.kernels.gemm import check_matmul

cnp.import_array()

cdef extern from "gemm_kernel.h" nogil:
    int MTX_MR
    int MTX_NR
    const char *mtx_gemm_isa()
    void *mtx_aligned_malloc(size_t nbytes)
    void mtx_aligned_free(void *p)
    void *mtx_buffer_acquire(size_t nbytes, size_t *capacity)
    void mtx_buffer_release(void *p, size_t capacity)
    void mtx_pack_a6_rows(Py_ssize_t kc, const float *src, Py_ssize_t rs_a, float *dst)
    void mtx_sgemm_ukernel(Py_ssize_t kc, const float *a, const float *b, float *c,
                           Py_ssize_t rs_c, int beta)

# Block sizes for AMD Zen 3 / Intel Haswell-class cores (32 KiB L1d, 512 KiB L2): a KC x NR
# micro-panel of B (16 KiB) stays in L1, an MC x KC block of A (144 KiB) in L2, a KC x NC
# panel of B (4 MiB) in L3. MR x NR = 6 x 16 fills 12 of the 16 AVX registers with C.
# (A C enum, so the compiler sees constants and unrolls the packing loops.)
cdef enum:
    MR = 6
    NR = 16
    MC = 144
    KC = 256
    NC = 4080
cdef enum:
    SPLIT_BLOCKS = 0
    SPLIT_BATCH = 1
    SPLIT_ROWS = 2
cdef bint _split_rows = True          # see _gemm_batched; set_parallel_split() switches


def set_parallel_split(mode):
    """How threads split one product: "rows" (default: each thread a slab of rows of C with
    its own packed B, no barriers) or "blocks" (BLIS: shared packed B, MC blocks split).
    For experiments and benchmarks/gemm.py; both give bitwise the same result."""
    global _split_rows
    if mode not in ("rows", "blocks"):
        raise ValueError(f"mode must be 'rows' or 'blocks', got {mode!r}")
    _split_rows = mode == "rows"


# Below this many multiply-adds one thread is faster than waking a second one.
cdef Py_ssize_t PARALLEL_MIN_MACS = 1 << 18
if MTX_MR != MR or MTX_NR != NR:
    raise ImportError(f"gemm_kernel.h tile {MTX_MR}x{MTX_NR} differs from gemm.pyx {MR}x{NR}")


def gemm_config():
    """Block sizes and instruction set this build uses: dict(MR, NR, MC, KC, NC, isa)."""
    return dict(MR=MTX_MR, NR=MTX_NR, MC=MC, KC=KC, NC=NC, isa=mtx_gemm_isa().decode())


# ---------------------------------------------------------------------------------- packing
@cython.wraparound(False)
cdef void _pack_a(Py_ssize_t mc, Py_ssize_t kc, const float *A, Py_ssize_t rs_a,
                  Py_ssize_t cs_a, float *Ap) noexcept nogil:
    """Ap[ir*kc + p*MR + i] = A[ir + i, p]: MR-tall micro-panels, zero-padded at the edge."""
    cdef Py_ssize_t ip, ir, mr, p, i
    cdef float *dst
    cdef const float *src
    for ip in range((mc + MR - 1) // MR):
        ir = ip * MR
        mr = min(MR, mc - ir)
        dst = Ap + ir * kc
        src = A + ir * rs_a
        if mr == MR and cs_a == 1:                  # rows of A contiguous (C order):
            mtx_pack_a6_rows(kc, src, rs_a, dst)    # 6 x 8 register transposes (header)
        elif mr == MR and rs_a == 1:                # columns contiguous (Fortran order, A^T)
            for p in range(kc):
                for i in range(6):
                    dst[p * 6 + i] = src[i + p * cs_a]
        else:                                       # any strides, or the last, short panel
            for p in range(kc):
                for i in range(MR):
                    dst[p * MR + i] = src[i * rs_a + p * cs_a] if i < mr else 0


@cython.wraparound(False)
cdef void _pack_b_panel(Py_ssize_t jp, Py_ssize_t kc, Py_ssize_t nc, const float *B,
                        Py_ssize_t rs_b, Py_ssize_t cs_b, float *Bp) noexcept nogil:
    """Micro-panel jp: Bp[jr*kc + p*NR + j] = B[p, jr + j] with jr = jp*NR, zero-padded."""
    cdef Py_ssize_t jr = jp * NR, nr = min(<Py_ssize_t>NR, nc - jp * NR), p, j
    cdef float *dst = Bp + jr * kc
    cdef const float *src = B + jr * cs_b
    if nr == NR and cs_b == 1:                      # rows of B contiguous (C order)
        for p in range(kc):
            for j in range(16):
                dst[p * 16 + j] = src[p * rs_b + j]
    elif nr == NR and rs_b == 1:                    # columns contiguous (B is a transposed view)
        for j in range(16):
            for p in range(kc):
                dst[p * 16 + j] = src[j * cs_b + p]
    else:
        for p in range(kc):
            for j in range(NR):
                dst[p * NR + j] = src[p * rs_b + j * cs_b] if j < nr else 0


cdef void _pack_b(Py_ssize_t kc, Py_ssize_t nc, const float *B, Py_ssize_t rs_b,
                  Py_ssize_t cs_b, float *Bp, int nthreads) noexcept nogil:
    """Pack a (kc, nc) block of B into NR-wide micro-panels (threads split the panels)."""
    cdef Py_ssize_t jp, n_panels = (nc + NR - 1) // NR
    if nthreads > 1:                 # (an `if`, not prange's use_threads_if: an OpenMP region
        for jp in prange(n_panels, schedule="static", num_threads=nthreads):  # costs ~1 us)
            _pack_b_panel(jp, kc, nc, B, rs_b, cs_b, Bp)
    else:
        for jp in range(n_panels):
            _pack_b_panel(jp, kc, nc, B, rs_b, cs_b, Bp)


# ------------------------------------------------------------------------ the loop nest
@cython.wraparound(False)
cdef void _macro_kernel(Py_ssize_t mc, Py_ssize_t nc, Py_ssize_t kc, const float *Ap,
                        const float *Bp, float *C, Py_ssize_t rs_c, Py_ssize_t cs_c,
                        int beta) noexcept nogil:
    """Loops 2 and 1: C[0:mc, 0:nc] (+)= Ap @ Bp, one MR x NR tile at a time."""
    cdef Py_ssize_t jp, jr, ip, ir, nr, mr, i, j
    cdef float tile[6 * 16]                          # edge tiles are computed here first
    cdef float *c
    for jp in range((nc + NR - 1) // NR):                      # 2nd loop
        jr = jp * NR
        nr = min(NR, nc - jr)
        for ip in range((mc + MR - 1) // MR):                  # 1st loop
            ir = ip * MR
            mr = min(MR, mc - ir)
            c = C + ir * rs_c + jr * cs_c
            if mr == MR and nr == NR and cs_c == 1:
                mtx_sgemm_ukernel(kc, Ap + ir * kc, Bp + jr * kc, c, rs_c, beta)
            else:
                mtx_sgemm_ukernel(kc, Ap + ir * kc, Bp + jr * kc, tile, NR, 0)
                for i in range(mr):
                    for j in range(nr):
                        if beta:
                            c[i * rs_c + j * cs_c] += tile[i * NR + j]
                        else:
                            c[i * rs_c + j * cs_c] = tile[i * NR + j]


@cython.wraparound(False)
cdef void _ic_block(Py_ssize_t blk, Py_ssize_t mc_blk, Py_ssize_t M, Py_ssize_t kc,
                    Py_ssize_t nc, const float *A, Py_ssize_t rs_a, Py_ssize_t cs_a,
                    const float *Bp, float *Ap, float *C, Py_ssize_t rs_c, Py_ssize_t cs_c,
                    int beta) noexcept nogil:
    """One iteration of the 3rd loop: pack rows ic:ic+mc of A, then loops 2 and 1."""
    cdef Py_ssize_t ic = blk * mc_blk, mc = min(mc_blk, M - blk * mc_blk)
    _pack_a(mc, kc, A + ic * rs_a, rs_a, cs_a, Ap)
    _macro_kernel(mc, nc, kc, Ap, Bp, C + ic * rs_c, rs_c, cs_c, beta)


@cython.wraparound(False)
cdef void _gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                const float *A, Py_ssize_t rs_a, Py_ssize_t cs_a,
                const float *B, Py_ssize_t rs_b, Py_ssize_t cs_b,
                float *C, Py_ssize_t rs_c, Py_ssize_t cs_c, bint accumulate,
                Py_ssize_t mc_blk, int nthreads, float *Bp, float *Ap_all) noexcept nogil:
    """C (+)= A @ B for one (M, K) x (K, N) problem, strides in elements. K >= 1.

    mc_blk: rows of A per block of the 3rd loop (a multiple of MR, at most MC, chosen so the
    blocks split evenly over `nthreads`); Ap_all holds one MC x KC buffer per thread.
    """
    cdef Py_ssize_t jb, jc, nc, pb, pc, kc, blk, n_blk = (M + mc_blk - 1) // mc_blk
    cdef int beta
    for jb in range((N + NC - 1) // NC):                                   # 5th loop
        jc = jb * NC
        nc = min(NC, N - jc)
        for pb in range((K + KC - 1) // KC):                               # 4th loop
            pc = pb * KC
            kc = min(KC, K - pc)
            _pack_b(kc, nc, B + pc * rs_b + jc * cs_b, rs_b, cs_b, Bp, nthreads)
            beta = 1 if (accumulate or pc > 0) else 0
            if nthreads > 1:
                for blk in prange(n_blk, schedule="static", num_threads=nthreads):  # 3rd loop
                    _ic_block(blk, mc_blk, M, kc, nc, A + pc * cs_a, rs_a, cs_a, Bp,
                              Ap_all + mtx_get_thread_num() * mc_blk * KC,
                              C + jc * cs_c, rs_c, cs_c, beta)
            else:
                for blk in range(n_blk):                                         # 3rd loop
                    _ic_block(blk, mc_blk, M, kc, nc, A + pc * cs_a, rs_a, cs_a, Bp, Ap_all,
                              C + jc * cs_c, rs_c, cs_c, beta)


@cython.wraparound(False)
cdef void _gemm_batched(Py_ssize_t L, const Py_ssize_t *off_a, const Py_ssize_t *off_b,
                        const Py_ssize_t *off_c, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                        const float *A, Py_ssize_t rs_a, Py_ssize_t cs_a,
                        const float *B, Py_ssize_t rs_b, Py_ssize_t cs_b,
                        float *C, Py_ssize_t rs_c, Py_ssize_t cs_c, bint accumulate,
                        Py_ssize_t mc_blk, int nthreads, int split, float *Bp_all,
                        Py_ssize_t bp_size, float *Ap_all, Py_ssize_t ap_size) noexcept nogil:
    """L independent products C[l] (+)= A[l] @ B[l], the l-th starting at element offsets
    off_a[l], off_b[l], off_c[l]. How threads share the work (`split`):
      SPLIT_BATCH: each thread takes whole matrices of the batch (small matrices);
      SPLIT_ROWS:  each thread takes a slab of rows of every C and runs the serial loop nest
                   with its own packed copy of B: no barrier inside the call, at the price of
                   packing B once per thread (K x N, small next to the M x N x K work);
      SPLIT_BLOCKS: the BLIS way, threads share one packed B and split the MC blocks of the
                   3rd loop (two fork/joins per KC slice), or the serial loop nest.
    """
    cdef Py_ssize_t l, t, m0, ms = _round_up((M + nthreads - 1) // nthreads, MR)
    if split == SPLIT_BATCH:
        for l in prange(L, schedule="static", num_threads=nthreads):
            t = mtx_get_thread_num()
            _gemm(M, N, K, A + off_a[l], rs_a, cs_a, B + off_b[l], rs_b, cs_b,
                  C + off_c[l], rs_c, cs_c, accumulate, mc_blk, 1,
                  Bp_all + t * bp_size, Ap_all + t * ap_size)
    elif split == SPLIT_ROWS:
        for t in prange(nthreads, schedule="static", num_threads=nthreads):
            m0 = t * ms
            if m0 < M:
                for l in range(L):
                    _gemm(min(ms, M - m0), N, K, A + off_a[l] + m0 * rs_a, rs_a, cs_a,
                          B + off_b[l], rs_b, cs_b, C + off_c[l] + m0 * rs_c, rs_c, cs_c,
                          accumulate, mc_blk, 1, Bp_all + t * bp_size, Ap_all + t * ap_size)
    else:
        for l in range(L):
            _gemm(M, N, K, A + off_a[l], rs_a, cs_a, B + off_b[l], rs_b, cs_b,
                  C + off_c[l], rs_c, cs_c, accumulate, mc_blk, nthreads, Bp_all, Ap_all)


# ------------------------------------------------------------------------ Python wrapper
cdef inline Py_ssize_t _round_up(Py_ssize_t x, Py_ssize_t m) noexcept nogil:
    return (x + m - 1) // m * m


cdef Py_ssize_t _mc_block(Py_ssize_t M, int nthreads) noexcept nogil:
    """Rows per 3rd-loop block: at most MC, a multiple of MR, splitting M evenly over threads."""
    cdef Py_ssize_t n_blk = (M + MC - 1) // MC
    n_blk = _round_up(n_blk, nthreads)
    return min(<Py_ssize_t>MC, _round_up((M + n_blk - 1) // n_blk, MR))


cdef int _run(Py_ssize_t L, cnp.ndarray off_a, cnp.ndarray off_b, cnp.ndarray off_c,
              Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
              const float *A, Py_ssize_t rs_a, Py_ssize_t cs_a,
              const float *B, Py_ssize_t rs_b, Py_ssize_t cs_b,
              float *C, Py_ssize_t rs_c, Py_ssize_t cs_c, bint accumulate) except -1:
    """Pick threads and block sizes, allocate the packing buffers, run without the GIL."""
    cdef const float *T
    cdef Py_ssize_t s, mc_blk, bp_size, ap_size, kc_max
    cdef size_t cap
    cdef int nthreads = num_threads(), nbuf, split
    cdef float *Bp
    cdef float *Ap
    cdef const Py_ssize_t *pa = <const Py_ssize_t *>cnp.PyArray_DATA(off_a)
    cdef const Py_ssize_t *pb = <const Py_ssize_t *>cnp.PyArray_DATA(off_b)
    cdef const Py_ssize_t *pc = <const Py_ssize_t *>cnp.PyArray_DATA(off_c)
    if cs_c != 1 and rs_c == 1:
        # C is column-major: compute C^T = B^T @ A^T so the micro-kernel writes rows of C^T.
        M, N = N, M
        T = A; A = B; B = T
        s = rs_a; rs_a = cs_b; cs_b = s
        s = cs_a; cs_a = rs_b; rs_b = s
        s = rs_c; rs_c = cs_c; cs_c = s
        pa, pb = pb, pa
    if L * M * N * K < PARALLEL_MIN_MACS:
        nthreads = 1
    if nthreads > 1 and L >= nthreads and M * N * K < (1 << 22):
        split = SPLIT_BATCH
    elif nthreads > 1 and _split_rows and M >= nthreads * MR:
        split = SPLIT_ROWS
    else:
        split = SPLIT_BLOCKS
    if split == SPLIT_ROWS:
        mc_blk = _mc_block(_round_up((M + nthreads - 1) // nthreads, MR), 1)
    else:
        mc_blk = _mc_block(M, 1 if split == SPLIT_BATCH else nthreads)
    kc_max = min(<Py_ssize_t>KC, K)
    nbuf = 1 if split == SPLIT_BLOCKS else nthreads           # private buffers per thread?
    bp_size = kc_max * _round_up(min(<Py_ssize_t>NC, N), NR)
    ap_size = nthreads * mc_blk * KC if split == SPLIT_BLOCKS else mc_blk * KC
    bp_size = _round_up(bp_size, 16)                     # keep Ap 64-byte aligned
    Bp = <float *>mtx_buffer_acquire(nbuf * (bp_size + ap_size) * sizeof(float), &cap)
    if Bp == NULL:
        raise MemoryError(f"matmul: cannot allocate packing buffers for {M}x{K} @ {K}x{N}")
    Ap = Bp + nbuf * bp_size
    with nogil:
        _gemm_batched(L, pa, pb, pc, M, N, K, A, rs_a, cs_a, B, rs_b, cs_b, C, rs_c, cs_c,
                      accumulate, mc_blk, nthreads, split, Bp, bp_size, Ap, ap_size)
    mtx_buffer_release(Bp, cap)
    return 0


cdef cnp.ndarray _ZERO_OFF = np.zeros(1, dtype=np.intp)


def _in_place_ok(x):
    """True if the kernel may address x directly: its data pointer and every stride are whole
    float32 elements (NumPy's `aligned` flag alone allows any stride on a dim of size 1)."""
    return x.flags.aligned and all(s % 4 == 0 for s in x.strides)


def _operand(x):
    """x itself if the kernel can read it in place, else an aligned C-contiguous copy (odd byte
    strides, or a data pointer inside a float: views of raw byte buffers)."""
    return x if _in_place_ok(x) else np.array(x, order="C")


def _overlaps_itself(x):
    """True unless every element of x has its own bytes (sufficient test: sorted by |stride|,
    each dim steps past everything the smaller dims span). Broadcast (0-stride) or
    interleaved views fail it; writing such an `out` in parallel would race."""
    span = x.itemsize
    for stride, n in sorted((abs(s), n) for s, n in zip(x.strides, x.shape) if n > 1):
        if stride < span:
            return True
        span += stride * (n - 1)
    return False


def _batch_offsets(x, lead):
    """Element offset of each of the prod(lead) matrices of x broadcast to lead + x.shape[-2:]."""
    xb = np.broadcast_to(x, lead + x.shape[-2:])
    off = np.zeros(lead, dtype=np.intp)
    for d in range(len(lead)):
        shape = [1] * len(lead)
        shape[d] = lead[d]
        off = off + (np.arange(lead[d], dtype=np.intp) * (xb.strides[d] // 4)).reshape(shape)
    return np.ascontiguousarray(off.reshape(-1))


def matmul(a, b, out=None, accumulate=False):
    """Matrix product with np.matmul semantics, float32, on the BLIS-style kernel.

    Args:
        a: (..., M, K) float32, or (K,) (treated as one row, dim dropped from the result).
        b: (..., K, N) float32, or (K,) (one column, dim dropped). Leading dims broadcast.
            Any strides: C order, Fortran order, transposed or sliced views.
        out: optional writable float32 array of the result's shape, written in place.
        accumulate: if True, out += a @ b (out required) instead of out = a @ b.
    Returns:
        (..., M, N) float32 (`out` itself when given).
    """
    cdef cnp.ndarray A, B, C
    cdef Py_ssize_t M, N, K
    # Fast path: two 2-D native, aligned float32 arrays, fresh output. Keeps the call overhead
    # of small products below np.matmul's. Everything else is validated by the reference's own
    # check_matmul in _matmul_general.
    if (out is None and not accumulate and isinstance(a, cnp.ndarray)
            and isinstance(b, cnp.ndarray)):
        A = <cnp.ndarray>a
        B = <cnp.ndarray>b
        if (cnp.PyArray_NDIM(A) == 2 and cnp.PyArray_NDIM(B) == 2
                and cnp.PyArray_TYPE(A) == cnp.NPY_FLOAT32
                and cnp.PyArray_TYPE(B) == cnp.NPY_FLOAT32
                and cnp.PyArray_ISBEHAVED_RO(A) and cnp.PyArray_ISBEHAVED_RO(B)
                and A.shape[1] == B.shape[0] and A.shape[1] > 0
                and A.strides[0] % 4 == 0 and A.strides[1] % 4 == 0
                and B.strides[0] % 4 == 0 and B.strides[1] % 4 == 0):
            M = A.shape[0]
            K = A.shape[1]
            N = B.shape[1]
            C = cnp.PyArray_EMPTY(2, [M, N], cnp.NPY_FLOAT32, 0)
            if M > 0 and N > 0:
                _run(1, _ZERO_OFF, _ZERO_OFF, _ZERO_OFF, M, N, K,
                     <const float *>cnp.PyArray_DATA(A), A.strides[0] // 4, A.strides[1] // 4,
                     <const float *>cnp.PyArray_DATA(B), B.strides[0] // 4, B.strides[1] // 4,
                     <float *>cnp.PyArray_DATA(C), N, 1, False)
            return C
    return _matmul_general(a, b, out, bool(accumulate))


def _matmul_general(a, b, out, bint accumulate):
    cdef cnp.ndarray A, B, C, oa, ob, oc
    cdef Py_ssize_t M, N, K, L
    lead, M, K, N, result_shape = check_matmul(a, b, out, accumulate)
    a2 = a[None, :] if a.ndim == 1 else a                        # (..., M, K)
    b2 = b[:, None] if b.ndim == 1 else b                        # (..., K, N)
    shape = lead + (M, N)                                        # full (..., M, N)
    if out is not None:
        if (not _in_place_ok(out) or out.ndim != len(shape)
                or not (out.flags.c_contiguous or out.flags.f_contiguous or
                        not _overlaps_itself(out))
                or np.may_share_memory(out, a) or np.may_share_memory(out, b)):
            # out has odd strides, overlaps itself or an input, or drops a vector dim: compute
            # aside, then let NumPy write it (as the reference does).
            tmp = _matmul_general(a, b, None, False)
            if accumulate:
                tmp += out
            out[...] = tmp
            return out
        C = out
        result = out
    else:
        C = np.empty(shape, dtype=np.float32)
        result = C.reshape(result_shape)
    if M == 0 or N == 0 or C.size == 0:
        return result
    if K == 0:
        if not accumulate:
            C[...] = 0
        return result
    L = 1
    for n in lead:
        L *= n
    if L > 1 and b2.ndim == 2:
        # b is shared by the whole batch (x @ W in a Linear): fold the batch into M, so B is
        # packed once and the row blocks of all batches feed the threads.
        Cf = C.view()
        try:
            Cf.shape = (L * M, N)                                # a view, never a copy
        except AttributeError:
            Cf = None
        if Cf is not None:
            a2, C, M, L, lead = a2.reshape(L * M, K), Cf, L * M, 1, ()
    A = _operand(a2)
    B = _operand(b2)
    if L == 1:
        oa = ob = oc = _ZERO_OFF
        As, Bs, Cs = (<object>A).strides[-2:], (<object>B).strides[-2:], (<object>C).strides[-2:]
    else:
        oa, ob, oc = _batch_offsets(A, lead), _batch_offsets(B, lead), _batch_offsets(C, lead)
        As, Bs, Cs = (<object>A).strides[-2:], (<object>B).strides[-2:], (<object>C).strides[-2:]
    _run(L, oa, ob, oc, M, N, K,
         <const float *>cnp.PyArray_DATA(A), As[0] // 4, As[1] // 4,
         <const float *>cnp.PyArray_DATA(B), Bs[0] // 4, Bs[1] // 4,
         <float *>cnp.PyArray_DATA(C), Cs[0] // 4, Cs[1] // 4, accumulate)
    return result
