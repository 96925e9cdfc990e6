# cython: boundscheck=False, cdivision=True, initializedcheck=False
# wraparound stays on at module level: the def wrappers index Python tuples with -1.
# Each nogil kernel turns it off with @cython.wraparound(False).
"""Cython twin of `minitx/attention/flash2.py`: FlashAttention-2 forward and backward.

Dao 2023, arXiv 2307.08691, Algorithms 1 (forward) and 2 (backward). Same names, signature and
loop structure as the NumPy reference; "# Alg1 l.N" cites the paper line. What differs is only
how each tile is computed:
  - tiles are copied ("packed") once into zero-padded, contiguous panels (Q_i scaled by `scale`,
    K_j^T, V_j, ...) with Brp, Bcp, dp the block sizes and head dim rounded up to multiples of 16,
    so every product is one call of the register-blocked GEMM tile in flash_simd.h;
  - exponentials are vectorised (flash_simd.h: Cody-Waite reduction + degree-7 polynomial);
  - the backward works on transposed tiles S^T, P^T, dS^T (keys as rows), so that every product
    is a plain row-major GEMM: dV_j += P^T dO_i, dK_j += dS^T Q_i and dQ_i^T += K_j^T dS^T.
Parallelism (OpenMP, when built with it): the forward runs (batch x head x Q block) tasks, the
backward one task per (batch x KV head), since the query heads of a GQA group all add into
their KV head's dK, dV.
Scratch memory is allocated by NumPy before the GIL is released, one slice per thread, so the
kernels never allocate. Inputs are validated and made contiguous first.
NaN (issue 14, masks.py): a pair masked by the window rule or a -inf bias never contributes, NaN
or not. Masked scores are set to -inf (forward) or masked probabilities to exactly 0 (backward,
the tile M of allowed pairs); operands whose rows hold NaN/inf (V in the forward; Q, K, dO in the
backward) are packed with those entries as 0 and flagged, and each flagged row is added back pair
by pair where allowed -- the twin of masks.matmul_allowed. The row max and exp propagate NaN.
"""
cimport cython
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport INFINITY, exp, isfinite, log
from libc.string cimport memset

from minitx_c.omp cimport mtx_get_thread_num
from minitx_c.runtime cimport num_threads

cnp.import_array()

cdef extern from "flash_simd.h" nogil:
    int mtx_flash_simd()
    int mtx_all_finite_f(const float *x, long n)
    int mtx_all_finite_d(const double *x, long n)
    void mtx_gemm_f(int acc, int M, int N, int K, const float *A, int lda, const float *B,
                    int ldb, float *C, int ldc)
    void mtx_gemm_d(int acc, int M, int N, int K, const double *A, int lda, const double *B,
                    int ldb, double *C, int ldc)
    float mtx_rowmax_f(const float *x, int n)
    double mtx_rowmax_d(const double *x, int n)
    float mtx_exp_shift_sum_f(float *x, float shift, int n)
    double mtx_exp_shift_sum_d(double *x, double shift, int n)
    void mtx_exp_minus_f(float *x, const float *L, int n)
    void mtx_exp_minus_d(double *x, const double *L, int n)

ctypedef fused real:
    float
    double

cdef enum:
    SKIP = 0
    FULL = 1
    PARTIAL = 2

cdef struct Shape:
    Py_ssize_t B, Hq, Hkv, G, Nq, Nk, d, dp, Br, Bc, Brp, Bcp, Tr, Tc, Bb, Hb
    Py_ssize_t left, right          # window, -1 = unbounded (masks.resolve_window)
    double scale
    bint nonfinite                  # forward: v holds NaN/inf; backward: q, k, v or do does
    Py_ssize_t tile_r, tile_c       # Br, Bc as asked (or defaulted) before clipping to Nq, Nk
    Py_ssize_t Hl                   # block layout: 1 (shared) or Hq (per query head) layouts
    const unsigned char *layout     # (Hl, Tr, Tc), 0 = tile never read; NULL = dense


def simd_enabled():
    """True if the kernel was compiled with the AVX2/FMA tiles (else portable C loops)."""
    return bool(mtx_flash_simd())


# ------------------------------------------------------------------ small helpers

cdef inline Py_ssize_t _round16(Py_ssize_t n) noexcept nogil:
    return (n + 15) // 16 * 16


cdef inline bint _allowed(const Shape *s, Py_ssize_t r, Py_ssize_t c) noexcept nogil:
    """Twin of masks.allowed for one (query row, key column) pair."""
    cdef Py_ssize_t pos = r + s.Nk - s.Nq
    if s.left >= 0 and c < pos - s.left:
        return False
    if s.right >= 0 and c > pos + s.right:
        return False
    return True


cdef inline void _allowed_keys(const Shape *s, Py_ssize_t r, Py_ssize_t c0, Py_ssize_t nc,
                               Py_ssize_t *lo, Py_ssize_t *hi) noexcept nogil:
    """The keys c0 + [lo, hi) (0 <= lo <= hi <= nc) that query row r may see: _allowed solved
    for c (pos - left <= c <= pos + right, pos = r + Nk - Nq)."""
    cdef Py_ssize_t pos = r + s.Nk - s.Nq, a = 0, b = nc
    if s.left >= 0:
        a = max(a, pos - s.left - c0)
    if s.right >= 0:
        b = min(b, pos + s.right - c0 + 1)
    a = min(a, nc)
    lo[0], hi[0] = a, max(a, b)


cdef inline void _allowed_cols(const Shape *s, Py_ssize_t r0, Py_ssize_t nr, Py_ssize_t c,
                               Py_ssize_t *lo, Py_ssize_t *hi) noexcept nogil:
    """The query rows r0 + [lo, hi) (0 <= lo <= hi <= nr) that may see key c: _allowed solved
    for r (c <= pos + right and c >= pos - left, pos = r + Nk - Nq)."""
    cdef Py_ssize_t off = s.Nk - s.Nq, a = 0, b = nr
    if s.right >= 0:
        a = max(a, c - s.right - off - r0)
    if s.left >= 0:
        b = min(b, c + s.left - off - r0 + 1)
    a = min(a, nr)
    lo[0], hi[0] = a, max(a, b)


cdef inline bint _ok(const Shape *s, const real *biash, Py_ssize_t r, Py_ssize_t c) noexcept nogil:
    """Pair (r, c) is allowed: by the window rule and by the bias (-inf masks), masks.tile_allowed."""
    if not _allowed(s, r, c):
        return False
    return biash == NULL or biash[r * s.Nk + c] != -INFINITY


cdef inline real _nanmax(real a, real b) noexcept nogil:
    """max(a, b), NaN if either is NaN (np.maximum's rule; C's a > b ? a : b drops NaN)."""
    if a != a or b != b:
        return a + b
    return a if a > b else b


cdef inline int _tile_kind(const Shape *s, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0,
                           Py_ssize_t c1) noexcept nogil:
    """Twin of masks.tile_kind (rows [r0, r1), cols [c0, c1), both within range)."""
    cdef Py_ssize_t off = s.Nk - s.Nq
    if s.right >= 0 and c0 > r1 - 1 + off + s.right:
        return SKIP
    if s.left >= 0 and c1 - 1 < r0 + off - s.left:
        return SKIP
    if s.right >= 0 and c1 - 1 > r0 + off + s.right:
        return PARTIAL
    if s.left >= 0 and c0 < r1 - 1 + off - s.left:
        return PARTIAL
    return FULL


cdef inline void _gemm(int acc, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const real *A,
                       Py_ssize_t lda, const real *B, Py_ssize_t ldb, real *C,
                       Py_ssize_t ldc) noexcept nogil:
    """C (M x N) (+)= A (M x K) B (K x N); M, N multiples of 4 and 16 (padded panels)."""
    if real is float:
        mtx_gemm_f(acc, <int>M, <int>N, <int>K, A, <int>lda, B, <int>ldb, C, <int>ldc)
    else:
        mtx_gemm_d(acc, <int>M, <int>N, <int>K, A, <int>lda, B, <int>ldb, C, <int>ldc)


@cython.wraparound(False)
cdef void _pack_rows(const real *X, Py_ssize_t N, Py_ssize_t d, Py_ssize_t Bx, Py_ssize_t Bxp,
                     Py_ssize_t dp, real mult, real *out, real *bad) noexcept nogil:
    """X (N, d) -> out (T, Bxp, dp): block t holds rows [t Bx, t Bx + Bx) times mult, zero-padded.
    `out` must be zeroed by the caller. With `bad` (N flags, zeroed by the caller), non-finite
    entries are packed as 0 and bad[n] = 1 marks their row (added back where allowed)."""
    cdef Py_ssize_t n, t
    cdef real x
    cdef real *o
    for n in range(N):
        o = out + ((n // Bx) * Bxp + n % Bx) * dp
        if bad == NULL:                                   # inputs known finite: a plain copy
            for t in range(d):
                o[t] = mult * X[n * d + t]
            continue
        for t in range(d):
            x = mult * X[n * d + t]
            if not isfinite(x):
                bad[n] = 1
                x = 0
            o[t] = x


@cython.wraparound(False)
cdef void _pack_cols(const real *X, Py_ssize_t N, Py_ssize_t d, Py_ssize_t Bx, Py_ssize_t Bxp,
                     Py_ssize_t dp, real mult, real *out, real *bad) noexcept nogil:
    """X (N, d) -> out (T, dp, Bxp): block t holds X[t Bx : t Bx + Bx]^T times mult, zero-padded.
    `out` must be zeroed by the caller; `bad` as in _pack_rows."""
    cdef Py_ssize_t n, t
    cdef real x
    cdef real *o
    for n in range(N):
        o = out + (n // Bx) * dp * Bxp + n % Bx
        if bad == NULL:                                   # inputs known finite: a plain copy
            for t in range(d):
                o[t * Bxp] = mult * X[n * d + t]
            continue
        for t in range(d):
            x = mult * X[n * d + t]
            if not isfinite(x):
                bad[n] = 1
                x = 0
            o[t * Bxp] = x


# ------------------------------------------------------------------ forward (Algorithm 1)

@cython.wraparound(False)
cdef void _fwd_q_block(const Shape *s, const real *Qh, const real *KTh, const real *Vh,
                       const real *vh, const real *vbad, const real *biash,
                       const unsigned char *lay, Py_ssize_t i, real *Qi, real *S, real *Oi,
                       real *m, real *l, real *Oh, real *Lh) noexcept nogil:
    """One Q block of one head: Alg1 lines 4-14. Qh, Oh (Nq, d); Lh (Nq,); KTh (Tc, dp, Bcp) and
    Vh (Tc, Bcp, dp) packed (non-finite V entries as 0, flagged in vbad (Nk,); vh (Nk, d) is V
    itself); biash (Nq, Nk) or NULL; lay: the layout's row i (Tc,) or NULL. Qi, S, Oi, m, l:
    scratch tiles."""
    cdef Py_ssize_t Br = s.Br, Bc = s.Bc, Brp = s.Brp, Bcp = s.Bcp, d = s.d, dp = s.dp
    cdef Py_ssize_t r0 = i * Br, r1 = min(r0 + Br, s.Nq), nr = r1 - r0
    cdef Py_ssize_t j, c0, c1, nc, r, c, t, lo, hi
    cdef int kind
    cdef real mx, m_new, m_use, alpha, rowsum, inv, bv
    cdef real *Sr
    memset(Qi, 0, Brp * d * sizeof(real))                     # Alg1 l.4: load Q_i (scaled)
    for r in range(nr):
        for t in range(d):
            Qi[r * d + t] = <real>s.scale * Qh[(r0 + r) * d + t]
    memset(Oi, 0, Brp * dp * sizeof(real))                    # Alg1 l.5: O = 0, l = 0, m = -inf
    for r in range(Brp):
        m[r] = -INFINITY
        l[r] = 0
    for j in range(s.Tc):                                     # Alg1 l.6: for 1 <= j <= Tc
        c0 = j * Bc
        c1 = min(c0 + Bc, s.Nk)
        nc = c1 - c0
        kind = _tile_kind(s, r0, r1, c0, c1)
        if kind == SKIP or (lay != NULL and lay[j] == 0):     # causal/window/layout skipping
            continue
        _gemm(0, Brp, Bcp, d, Qi, d, KTh + j * dp * Bcp, Bcp, S, Bcp)  # Alg1 l.8: S = Q_i K_j^T
        for r in range(nr):
            Sr = S + r * Bcp
            if biash != NULL:
                for c in range(nc):
                    bv = biash[(r0 + r) * s.Nk + c0 + c]
                    Sr[c] = -INFINITY if bv == -INFINITY else Sr[c] + bv   # -inf even if S NaN
            if kind == PARTIAL:                               # -inf outside the row's keys
                _allowed_keys(s, r0 + r, c0, nc, &lo, &hi)
                for c in range(lo):
                    Sr[c] = -INFINITY
                for c in range(hi, nc):
                    Sr[c] = -INFINITY
            if real is float:
                mx = mtx_rowmax_f(Sr, <int>nc)
            else:
                mx = mtx_rowmax_d(Sr, <int>nc)
            m_new = _nanmax(m[r], mx)                         # Alg1 l.9: m = max(m, rowmax S)
            m_use = 0 if m_new == -INFINITY else m_new        # all masked so far: exp(-inf) = 0
            if real is float:                                 # Alg1 l.9: P = exp(S - m), rowsum
                rowsum = mtx_exp_shift_sum_f(Sr, m_use, <int>nc)
            else:
                rowsum = mtx_exp_shift_sum_d(Sr, m_use, <int>nc)
            for c in range(nc, Bcp):
                Sr[c] = 0
            alpha = exp(m[r] - m_use)                         # exp(m_old - m_new)
            l[r] = alpha * l[r] + rowsum                      # Alg1 l.9: l = e^(..) l + rowsum P
            if alpha != 1:
                for t in range(dp):                           # Alg1 l.10: O = diag(e^(..)) O ...
                    Oi[r * dp + t] *= alpha
            m[r] = m_new
        _gemm(1, Brp, dp, Bcp, S, Bcp, Vh + j * Bcp * dp, dp, Oi, dp)  # Alg1 l.10: ... + P V_j
        for c in range(nc):                                   # non-finite V rows, allowed pairs
            if vbad[c0 + c] != 0:
                for r in range(nr):
                    if _ok(s, biash, r0 + r, c0 + c):
                        for t in range(d):
                            bv = vh[(c0 + c) * d + t]
                            if not isfinite(bv):              # (finite ones are in the GEMM)
                                Oi[r * dp + t] += S[r * Bcp + c] * bv
    for r in range(nr):
        if m[r] == -INFINITY:                                 # nothing to attend to
            for t in range(d):
                Oh[(r0 + r) * d + t] = 0
            Lh[r0 + r] = INFINITY
        else:                                                 # (NaN rows stay NaN)
            inv = 1 / l[r]
            for t in range(d):                                # Alg1 l.12: O = diag(l)^-1 O
                Oh[(r0 + r) * d + t] = Oi[r * dp + t] * inv
            Lh[r0 + r] = m[r] + log(l[r])                     # Alg1 l.13: L = m + log(l)


cdef inline Py_ssize_t _fwd_scratch(const Shape *s) noexcept nogil:
    """Scratch floats per thread for the forward: Q_i, S, O_i tiles and m, l."""
    return s.Brp * s.d + s.Brp * s.Bcp + s.Brp * s.dp + 2 * s.Brp


@cython.wraparound(False)
cdef void _fwd(const Shape *s, const real *q, const real *k, const real *v, const real *bias,
               real *KT, real *Vp, real *vbad, real *scratch, int nthreads, real *o,
               real *L) noexcept nogil:
    """All heads: pack K^T and V per KV head (vbad: B Hkv Nk zeroed flags of non-finite V rows),
    then one task per (b, h, Q block); each thread works in its own slice of `scratch`
    (nthreads x _fwd_scratch)."""
    cdef Py_ssize_t Nq = s.Nq, Nk = s.Nk, d = s.d, kvsize = s.Tc * s.Bcp * s.dp
    cdef Py_ssize_t bh, task, b, h, hk, i
    cdef const real *biash
    cdef const unsigned char *lay
    cdef real *Qi
    for bh in prange(s.B * s.Hkv, schedule="static", num_threads=nthreads):
        _pack_cols(k + bh * Nk * d, Nk, d, s.Bc, s.Bcp, s.dp, <real>1, KT + bh * kvsize, NULL)
        _pack_rows(v + bh * Nk * d, Nk, d, s.Bc, s.Bcp, s.dp, <real>1, Vp + bh * kvsize,
                   vbad + bh * Nk if s.nonfinite else NULL)   # (s.nonfinite: V is not finite)
    for task in prange(s.B * s.Hq * s.Tr, schedule="dynamic", num_threads=nthreads):
        i = task % s.Tr                                       # Alg1 l.3, in parallel
        h = (task // s.Tr) % s.Hq
        b = task // (s.Tr * s.Hq)
        hk = h // s.G                                 # GQA: query head h uses KV head h // G
        biash = NULL
        if bias != NULL:
            biash = bias + ((b if s.Bb > 1 else 0) * s.Hb + (h if s.Hb > 1 else 0)) * Nq * Nk
        lay = NULL
        if s.layout != NULL:
            lay = s.layout + ((h if s.Hl > 1 else 0) * s.Tr + i) * s.Tc
        Qi = scratch + mtx_get_thread_num() * _fwd_scratch(s)
        _fwd_q_block(s, q + (b * s.Hq + h) * Nq * d, KT + (b * s.Hkv + hk) * kvsize,
                     Vp + (b * s.Hkv + hk) * kvsize, v + (b * s.Hkv + hk) * Nk * d,
                     vbad + (b * s.Hkv + hk) * Nk, biash, lay, i, Qi, Qi + s.Brp * d,
                     Qi + s.Brp * d + s.Brp * s.Bcp,
                     Qi + s.Brp * d + s.Brp * s.Bcp + s.Brp * s.dp,
                     Qi + s.Brp * d + s.Brp * s.Bcp + s.Brp * s.dp + s.Brp,
                     o + (b * s.Hq + h) * Nq * d, L + (b * s.Hq + h) * Nq)


# ------------------------------------------------------------------ backward (Algorithm 2)

cdef inline Py_ssize_t _bwd_scratch(const Shape *s) noexcept nogil:
    """Scratch floats per thread for the backward of one KV head: packed K, K^T, V, dK, dV
    panels, packed Q, Q^T, dO, dO^T, dQ^T panels, L, D and the non-finite-row flags of Q, dO
    and K, and the P^T, dS^T and allowed-pair (M^T) tiles."""
    return (5 * s.Tc * s.Bcp * s.dp + 5 * s.Tr * s.Brp * s.dp + 4 * s.Tr * s.Brp
            + s.Tc * s.Bcp + 3 * s.Bcp * s.Brp)


@cython.wraparound(False)
cdef void _bwd_tile(const Shape *s, int kind, Py_ssize_t r0, Py_ssize_t nr, Py_ssize_t c0,
                    Py_ssize_t nc, const real *biash, const real *Kj, const real *KTj,
                    const real *Vj, const real *Qi, const real *QTi, const real *dOi,
                    const real *dOTi, const real *Li, const real *Di, const real *qh,
                    const real *doh, const real *kh, const real *qbad, const real *dobad,
                    const real *kbad, real *PT, real *dPT, real *MT, real *dKj, real *dVj,
                    real *dQTi) noexcept nogil:
    """Alg2 lines 10-16 for tile (i, j), on transposed tiles (keys as rows). Qi, KTj, dOi are
    packed with non-finite entries as 0; qbad, dobad (Nq,) and kbad (Nk,) flag those rows of
    qh, doh (Nq, d) and kh (Nk, d), which are added back over allowed pairs only."""
    cdef Py_ssize_t Brp = s.Brp, Bcp = s.Bcp, d = s.d, dp = s.dp, r, c, t, lo, hi
    cdef bint masked = kind == PARTIAL or biash != NULL
    # With finite inputs and no bias, exp(-inf) and L = inf already give 0 on padding rows, and
    # a causal/window tile's mask is a range of query columns per key row (_allowed_cols). A
    # bias (-inf entries) or non-finite inputs (NaN must not leak from masked pairs) take the
    # general per-pair mask M^T instead.
    cdef bint use_mask = biash != NULL or s.nonfinite
    cdef real x
    cdef real *row
    cdef real *mrow
    if use_mask:
        for c in range(Bcp):                                  # M^T: 1 where (r, c) is allowed
            mrow = MT + c * Brp
            for r in range(Brp):
                mrow[r] = c < nc and r < nr and (not masked or _ok(s, biash, r0 + r, c0 + c))
    _gemm(0, Bcp, Brp, d, Kj, dp, QTi, Brp, PT, Brp)          # Alg2 l.10: S^T = K_j Q_i^T
    for c in range(Bcp):
        row = PT + c * Brp
        if c >= nc:                                           # padding key rows: P = 0
            memset(row, 0, Brp * sizeof(real))
            continue
        if biash != NULL:
            for r in range(nr):
                row[r] += biash[(r0 + r) * s.Nk + c0 + c]
        if real is float:                                     # Alg2 l.11: P = exp(S - L_i)
            mtx_exp_minus_f(row, Li, <int>Brp)
        else:
            mtx_exp_minus_d(row, Li, <int>Brp)
        if use_mask:
            mrow = MT + c * Brp
            for r in range(Brp):                              # exactly 0 where masked or
                row[r] = row[r] if mrow[r] != 0 else 0        # padding, even if S or L is NaN
        elif kind == PARTIAL:
            _allowed_cols(s, r0, nr, c0 + c, &lo, &hi)
            memset(row, 0, lo * sizeof(real))                 # 0 outside the allowed columns
            memset(row + hi, 0, (Brp - hi) * sizeof(real))
    _gemm(1, Bcp, dp, Brp, PT, Brp, dOi, dp, dVj, dp)         # Alg2 l.12: dV_j += P^T dO_i
    for r in range(nr):                                       # ... + non-finite dO rows
        if dobad[r0 + r] != 0:
            for c in range(nc):
                if MT[c * Brp + r] != 0:
                    for t in range(d):
                        x = doh[(r0 + r) * d + t]
                        if not isfinite(x):                   # (finite ones are in the GEMM)
                            dVj[c * dp + t] += PT[c * Brp + r] * x
    _gemm(0, Bcp, Brp, d, Vj, dp, dOTi, Brp, dPT, Brp)        # Alg2 l.13: dP^T = V_j dO_i^T
    for c in range(Bcp):                                      # Alg2 l.14: dS = P * (dP - D_i)
        row = dPT + c * Brp
        if use_mask:                                          # (0 where masked, NaN or not)
            mrow = MT + c * Brp
            for r in range(Brp):
                row[r] = PT[c * Brp + r] * (row[r] - Di[r]) if mrow[r] != 0 else 0
        else:
            for r in range(Brp):
                row[r] = PT[c * Brp + r] * (row[r] - Di[r])
            if kind == PARTIAL and c < nc:                    # exactly 0 where masked, even if
                _allowed_cols(s, r0, nr, c0 + c, &lo, &hi)    # dP overflowed to inf
                memset(row, 0, lo * sizeof(real))
                memset(row + hi, 0, (Brp - hi) * sizeof(real))
    _gemm(1, Bcp, dp, Brp, dPT, Brp, Qi, dp, dKj, dp)         # Alg2 l.16: dK_j += dS^T Q_i
    for r in range(nr):                                       # ... + non-finite Q rows
        if qbad[r0 + r] != 0:
            for c in range(nc):
                if MT[c * Brp + r] != 0:
                    for t in range(d):
                        x = <real>s.scale * qh[(r0 + r) * d + t]
                        if not isfinite(x):
                            dKj[c * dp + t] += dPT[c * Brp + r] * x
    _gemm(1, dp, Brp, Bcp, KTj, Bcp, dPT, Brp, dQTi, Brp)     # Alg2 l.15: dQ_i^T += K_j^T dS^T
    for c in range(nc):                                       # ... + non-finite K rows
        if kbad[c0 + c] != 0:
            for r in range(nr):
                if MT[c * Brp + r] != 0:
                    for t in range(d):
                        x = kh[(c0 + c) * d + t]
                        if not isfinite(x):
                            dQTi[t * Brp + r] += x * dPT[c * Brp + r]


@cython.wraparound(False)
cdef void _bwd_kv_head(const Shape *s, Py_ssize_t b, Py_ssize_t hk, const real *q, const real *k,
                       const real *v, const real *bias, const real *o, const real *L,
                       const real *do, real *buf, real *dq, real *dk, real *dv) noexcept nogil:
    """Alg2 for one KV head and the G query heads that share it; `buf` holds _bwd_scratch
    floats."""
    cdef Py_ssize_t Nq = s.Nq, Nk = s.Nk, d = s.d, dp = s.dp, Brp = s.Brp, Bcp = s.Bcp
    cdef Py_ssize_t kvsize = s.Tc * Bcp * dp, qsize = s.Tr * Brp * dp, tile = Bcp * Brp
    cdef Py_ssize_t g, h, i, j, r, t, r0, r1, c0, c1, n
    cdef int kind
    cdef real acc
    cdef const real *biash
    cdef const unsigned char *layh = NULL
    cdef const real *qh
    cdef const real *oh
    cdef const real *doh
    memset(buf, 0, _bwd_scratch(s) * sizeof(real))
    cdef real *Kp = buf
    cdef real *KTp = Kp + kvsize
    cdef real *Vp = KTp + kvsize
    cdef real *dKp = Vp + kvsize
    cdef real *dVp = dKp + kvsize
    cdef real *Qp = dVp + kvsize
    cdef real *QTp = Qp + qsize
    cdef real *dOp = QTp + qsize
    cdef real *dOTp = dOp + qsize
    cdef real *dQT = dOTp + qsize
    cdef real *Lp = dQT + qsize
    cdef real *Dp = Lp + s.Tr * Brp
    cdef real *qbad = Dp + s.Tr * Brp                         # flags of non-finite rows
    cdef real *dobad = qbad + s.Tr * Brp
    cdef real *kbad = dobad + s.Tr * Brp
    cdef real *PT = kbad + s.Tc * Bcp
    cdef real *dPT = PT + tile
    cdef real *MT = dPT + tile
    cdef const real *kh = k + (b * s.Hkv + hk) * Nk * d
    _pack_rows(kh, Nk, d, s.Bc, Bcp, dp, <real>1, Kp, NULL)   # Alg2 l.6: load K_j, V_j (all j)
    _pack_cols(kh, Nk, d, s.Bc, Bcp, dp, <real>1, KTp,        # (K^T only feeds dQ: flagged;
               kbad if s.nonfinite else NULL)                 # finite inputs need no flags)
    _pack_rows(v + (b * s.Hkv + hk) * Nk * d, Nk, d, s.Bc, Bcp, dp, <real>1, Vp, NULL)
    for g in range(s.G):
        h = hk * s.G + g
        n = (b * s.Hq + h) * Nq * d
        qh, oh, doh = q + n, o + n, do + n
        biash = NULL
        if bias != NULL:
            biash = bias + ((b if s.Bb > 1 else 0) * s.Hb + (h if s.Hb > 1 else 0)) * Nq * Nk
        if s.layout != NULL:                                  # this head's layout (Tr, Tc)
            layh = s.layout + (h if s.Hl > 1 else 0) * s.Tr * s.Tc
        memset(Qp, 0, 5 * qsize * sizeof(real))               # Qp, QTp, dOp, dOTp, dQT
        memset(qbad, 0, 2 * s.Tr * Brp * sizeof(real))        # qbad, dobad
        _pack_rows(qh, Nq, d, s.Br, Brp, dp, <real>s.scale, Qp,   # Q_i scaled: S = (scale Q) K^T
                   qbad if s.nonfinite else NULL)                 # (Q rows feed dK: flagged)
        _pack_cols(qh, Nq, d, s.Br, Brp, dp, <real>s.scale, QTp, NULL)
        _pack_rows(doh, Nq, d, s.Br, Brp, dp, <real>1, dOp,             # (dO rows feed dV: flagged)
                   dobad if s.nonfinite else NULL)
        _pack_cols(doh, Nq, d, s.Br, Brp, dp, <real>1, dOTp, NULL)
        for r in range(s.Tr * Brp):
            Lp[r] = INFINITY                                  # padding rows: P = exp(-inf) = 0
            Dp[r] = 0
        for r in range(Nq):                                   # Alg2 l.4: D = rowsum(dO * O)
            acc = 0
            for t in range(d):
                acc = acc + doh[r * d + t] * oh[r * d + t]
            Dp[(r // s.Br) * Brp + r % s.Br] = acc
            Lp[(r // s.Br) * Brp + r % s.Br] = L[(b * s.Hq + h) * Nq + r]
        for j in range(s.Tc):                                 # Alg2 l.5: for 1 <= j <= Tc
            c0 = j * s.Bc
            c1 = min(c0 + s.Bc, Nk)
            for i in range(s.Tr):                             # Alg2 l.8: for 1 <= i <= Tr
                r0 = i * s.Br
                r1 = min(r0 + s.Br, Nq)
                kind = _tile_kind(s, r0, r1, c0, c1)
                if kind == SKIP or (layh != NULL and layh[i * s.Tc + j] == 0):
                    continue
                _bwd_tile(s, kind, r0, r1 - r0, c0, c1 - c0, biash,
                          Kp + j * Bcp * dp, KTp + j * dp * Bcp, Vp + j * Bcp * dp,
                          Qp + i * Brp * dp, QTp + i * dp * Brp, dOp + i * Brp * dp,
                          dOTp + i * dp * Brp, Lp + i * Brp, Dp + i * Brp, qh, doh, kh, qbad,
                          dobad, kbad, PT, dPT, MT, dKp + j * Bcp * dp, dVp + j * Bcp * dp,
                          dQT + i * dp * Brp)
        for r in range(Nq):                                   # write dQ_i = scale (dQ_i^T)^T
            for t in range(d):
                dq[n + r * d + t] = <real>s.scale * dQT[((r // s.Br) * dp + t) * Brp + r % s.Br]
    n = (b * s.Hkv + hk) * Nk * d
    for r in range(Nk):                                       # Alg2 l.18: write dK_j, dV_j
        for t in range(d):
            dk[n + r * d + t] = dKp[((r // s.Bc) * Bcp + r % s.Bc) * dp + t]
            dv[n + r * d + t] = dVp[((r // s.Bc) * Bcp + r % s.Bc) * dp + t]


@cython.wraparound(False)
cdef void _bwd(const Shape *s, const real *q, const real *k, const real *v, const real *bias,
               const real *o, const real *L, const real *do, real *scratch, int nthreads,
               real *dq, real *dk, real *dv) noexcept nogil:
    """One task per (b, KV head); each thread works in its own slice of `scratch`."""
    cdef Py_ssize_t bh
    for bh in prange(s.B * s.Hkv, schedule="dynamic", num_threads=nthreads):
        _bwd_kv_head(s, bh // s.Hkv, bh % s.Hkv, q, k, v, bias, o, L, do,
                     scratch + mtx_get_thread_num() * _bwd_scratch(s), dq, dk, dv)


# ------------------------------------------------------------------ Python entry points

cdef Shape _shape(q, k, v, bias, scale, is_causal, window, Br, Bc) except *:
    """Validate the inputs with the NumPy reference's own checks, then fill a Shape.

    The rules and messages live once, in minitx.attention.checks and .masks (imported here, at
    call time, because minitx imports minitx_c while it initialises)."""
    cdef Shape s
    from minitx.attention import checks
    from minitx.attention.masks import resolve_window
    s.B, s.Hq, s.Hkv, s.Nq, s.Nk, s.d, s.scale = checks.check_qkv(q, k, v, bias, scale, Br, Bc)
    s.nonfinite = False
    s.Hl, s.layout = 1, NULL
    s.G = s.Hq // s.Hkv
    s.Bb, s.Hb = (1, 1) if bias is None else bias.shape[:2]
    s.left, s.right = resolve_window(is_causal, window)
    Br, Bc = checks.default_tiles(Br, Bc, s.Nq, s.Nk, skipping=s.left >= 0 or s.right >= 0)
    s.tile_r, s.tile_c = Br, Bc
    s.Br, s.Bc = min(Br, s.Nq), min(Bc, s.Nk)         # a block never needs to exceed N
    s.Brp, s.Bcp, s.dp = _round16(s.Br), _round16(s.Bc), _round16(s.d)
    s.Tr, s.Tc = (s.Nq + s.Br - 1) // s.Br, (s.Nk + s.Bc - 1) // s.Bc
    if max(s.Brp, s.Bcp, s.dp) * max(s.Nq, s.Nk) >= 2 ** 31:
        raise ValueError(f"attention too large for 32-bit tile indexing: q {q.shape}, k {k.shape}")
    return s


def _all_finite(a):
    """True if the C-ordered float array `a` holds no inf or NaN (one pass, no temporary)."""
    cdef const float[::1] f
    cdef const double[::1] g
    cdef int ok
    if a.size == 0:
        return True
    if a.dtype == np.float32:
        f = a.reshape(-1)
        with nogil:
            ok = mtx_all_finite_f(&f[0], f.shape[0])
    else:
        g = a.reshape(-1)
        with nogil:
            ok = mtx_all_finite_d(&g[0], g.shape[0])
    return ok != 0


cdef object _layout(block_layout, Shape *s):
    """Validate a block layout with the reference's check_layout; return it as contiguous uint8
    (Hl, Tr, Tc) (or None) and set s.Hl."""
    from minitx.attention.checks import check_layout
    lay = check_layout(block_layout, s.Hq, s.Nq, s.Nk, s.tile_r, s.tile_c)
    if lay is None:
        return None
    s.Hl = lay.shape[0]
    return np.ascontiguousarray(lay, dtype=np.uint8)


def flash2_forward(q, k, v, bias=None, scale=None, is_causal=False, window=None, Br=None,
                   Bc=None, block_layout=None):
    """FlashAttention-2 forward (Algorithm 1), twin of minitx.attention.flash2.flash2_forward.

    Args:
        q: (B, Hq, Nq, d); k, v: (B, Hkv, Nk, d), Hq a multiple of Hkv; float32 or float64.
        bias: None or additive (Bb, Hb, Nq, Nk), Bb in {1, B}, Hb in {1, Hq}.
        scale: None means 1/sqrt(d). is_causal: bottom-right aligned. window: (left, right).
        Br, Bc: block sizes (any ints >= 1); None: the twin's default (checks.default_tiles).
        block_layout: None or bool (Tr, Tc) / (1 or Hq, Tr, Tc) block-sparse layout over tiles
            Br = Bc (checks.check_layout); tiles outside it are never read.
    Returns:
        o (B, Hq, Nq, d) and L (B, Hq, Nq) row logsumexp (+inf for fully masked rows).
    """
    cdef Shape s = _shape(q, k, v, bias, scale, is_causal, window, Br, Bc)
    cdef const unsigned char[:, :, ::1] lay_v
    lay = _layout(block_layout, &s)                          # kept alive until the kernel returns
    if lay is not None:
        lay_v = lay
        s.layout = &lay_v[0, 0, 0]
    q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    s.nonfinite = not _all_finite(v)                   # the forward flags non-finite V rows
    if bias is not None:
        bias = np.ascontiguousarray(bias)
    o = np.empty(q.shape, dtype=q.dtype)
    L = np.empty(q.shape[:3], dtype=q.dtype)
    KT = np.zeros(s.B * s.Hkv * s.Tc * s.Bcp * s.dp, dtype=q.dtype)   # packed K_j^T panels
    Vp = np.zeros(s.B * s.Hkv * s.Tc * s.Bcp * s.dp, dtype=q.dtype)   # packed V_j panels
    vbad = np.zeros(s.B * s.Hkv * s.Nk, dtype=q.dtype)                # flags: non-finite V rows
    cdef int nthreads = max(1, num_threads())         # process-wide (runtime.pyx)
    scratch = np.empty(nthreads * _fwd_scratch(&s), dtype=q.dtype)   # per-thread tiles
    if q.dtype == np.float32:
        _fwd_entry[float](&s, q, k, v, bias, KT, Vp, vbad, scratch, nthreads, o, L)
    else:
        _fwd_entry[double](&s, q, k, v, bias, KT, Vp, vbad, scratch, nthreads, o, L)
    return o, L


def flash2_backward(q, k, v, bias, o, L, do, scale=None, is_causal=False, window=None,
                    Br=None, Bc=None, block_layout=None):
    """FlashAttention-2 backward (Algorithm 2), twin of minitx.attention.flash2.flash2_backward.

    Args:
        q, k, v, bias, scale, is_causal, window: as given to flash2_forward.
        Br, Bc: block sizes (independent of the forward's); None: the twin's default.
        block_layout: as in flash2_forward (then Br = Bc = its block size).
        o: (B, Hq, Nq, d), L: (B, Hq, Nq) from flash2_forward; do: (B, Hq, Nq, d).
    Returns:
        dq (B, Hq, Nq, d), dk (B, Hkv, Nk, d), dv (B, Hkv, Nk, d).
    """
    cdef Shape s = _shape(q, k, v, bias, scale, is_causal, window, Br, Bc)
    cdef const unsigned char[:, :, ::1] lay_v
    lay = _layout(block_layout, &s)                          # kept alive until the kernel returns
    if lay is not None:
        lay_v = lay
        s.layout = &lay_v[0, 0, 0]
    from minitx.attention.checks import check_forward_outputs
    check_forward_outputs(q, o, L, do)
    q, k, v, o, L, do = (np.ascontiguousarray(a) for a in (q, k, v, o, L, do))
    s.nonfinite = not all(_all_finite(a) for a in (q, k, v, do))
    if bias is not None:
        bias = np.ascontiguousarray(bias)
    dq = np.empty(q.shape, dtype=q.dtype)
    dk = np.empty(k.shape, dtype=q.dtype)
    dv = np.empty(v.shape, dtype=q.dtype)
    cdef int nthreads = max(1, min(num_threads(), s.B * s.Hkv))
    scratch = np.empty(nthreads * _bwd_scratch(&s), dtype=q.dtype)   # per-thread panels
    if q.dtype == np.float32:
        _bwd_entry[float](&s, q, k, v, bias, o, L, do, scratch, nthreads, dq, dk, dv)
    else:
        _bwd_entry[double](&s, q, k, v, bias, o, L, do, scratch, nthreads, dq, dk, dv)
    return dq, dk, dv


# Typed entry points: take memoryviews, release the GIL, call the fused kernels.
# One definition per direction, specialised for float and double by `real`.

cdef void _fwd_entry(const Shape *s, const real[:, :, :, ::1] q, const real[:, :, :, ::1] k,
                     const real[:, :, :, ::1] v, bias, real[::1] KT, real[::1] Vp,
                     real[::1] vbad, real[::1] scratch, int nthreads, real[:, :, :, ::1] o,
                     real[:, :, ::1] L) except *:
    cdef const real[:, :, :, ::1] b4
    cdef const real *bp = NULL
    if bias is not None:
        b4 = bias
        bp = &b4[0, 0, 0, 0]
    with nogil:
        _fwd(s, &q[0, 0, 0, 0], &k[0, 0, 0, 0], &v[0, 0, 0, 0], bp, &KT[0], &Vp[0], &vbad[0],
             &scratch[0], nthreads, &o[0, 0, 0, 0], &L[0, 0, 0])


cdef void _bwd_entry(const Shape *s, const real[:, :, :, ::1] q, const real[:, :, :, ::1] k,
                     const real[:, :, :, ::1] v, bias, const real[:, :, :, ::1] o,
                     const real[:, :, ::1] L, const real[:, :, :, ::1] do, real[::1] scratch,
                     int nthreads, real[:, :, :, ::1] dq, real[:, :, :, ::1] dk,
                     real[:, :, :, ::1] dv) except *:
    cdef const real[:, :, :, ::1] b4
    cdef const real *bp = NULL
    if bias is not None:
        b4 = bias
        bp = &b4[0, 0, 0, 0]
    with nogil:
        _bwd(s, &q[0, 0, 0, 0], &k[0, 0, 0, 0], &v[0, 0, 0, 0], bp, &o[0, 0, 0, 0],
             &L[0, 0, 0], &do[0, 0, 0, 0], &scratch[0], nthreads, &dq[0, 0, 0, 0],
             &dk[0, 0, 0, 0], &dv[0, 0, 0, 0])
