/* The register-tiled micro-kernels of minitx's GEMMs (used by gemm.pyx and qgemm.pyx).
 *
 * mtx_sgemm_ukernel: C[0:MR, 0:NR] (+)= Ap_panel (kc x MR) . Bp_panel (kc x NR), float32.
 *   Ap is one packed micro-panel of A: for each p, the MR values A[i, p] (i = 0..MR-1).
 *   Bp is one packed micro-panel of B: for each p, the NR values B[p, j] (j = 0..NR-1).
 *   The 6 x 16 tile of C lives in 12 AVX registers (6 rows x 2 vectors of 8 floats) for the
 *   whole k loop: each step loads 2 vectors of B, broadcasts 6 scalars of A and issues 12 FMAs
 *   (the "rank-1 update" of the BLIS paper, Van Zee & van de Geijn 2015, Fig. 2).
 *   C is addressed as c[i * rs_c + j] (unit column stride); beta = 0 overwrites, 1 accumulates.
 *
 * mtx_i8gemm_ukernel: the same with int16 pairs: Ap holds, for each pair of k (p, p+1), the MR
 *   pairs (A[i, p], A[i, p+1]) as int16; Bp holds for each pair the NR pairs (B[p, j], B[p+1, j]).
 *   `vpmaddwd` multiplies 16 int16 pairs and adds each pair into one int32: 8 columns x 2 k per
 *   instruction, exact.
 *
 * Every kernel has a portable scalar fallback (same arithmetic, plain loops) for compilers or
 * processors without AVX2 + FMA; build with MINITX_PORTABLE=1 to get it on x86 too.
 */
#ifndef MINITX_GEMM_KERNEL_H
#define MINITX_GEMM_KERNEL_H
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MTX_MR 6
#define MTX_NR 16

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MTX_SIMD 1
static const char *mtx_gemm_isa(void) { return "avx2+fma"; }
#else
#define MTX_SIMD 0
static const char *mtx_gemm_isa(void) { return "scalar"; }
#endif

/* 64-byte aligned buffers (portable: no posix_memalign / _aligned_malloc). */
static void *mtx_aligned_malloc(size_t nbytes)
{
    unsigned char *raw = (unsigned char *)malloc(nbytes + 64 + sizeof(void *));
    uintptr_t p;
    if (raw == NULL) return NULL;
    p = ((uintptr_t)(raw + sizeof(void *)) + 63) & ~(uintptr_t)63;
    ((void **)p)[-1] = raw;
    return (void *)p;
}

static void mtx_aligned_free(void *p)
{
    if (p != NULL) free(((void **)p)[-1]);
}

/* Packing buffers are reused between calls: allocating (and page-faulting) a fresh MiB-sized
 * buffer per call costs more than a whole 256 x 256 product. One cached buffer per module; a
 * call that finds it taken (another Python thread is inside a kernel) allocates its own.
 * Callers hold the GIL around acquire and release, which makes the slot thread-safe. */
static void *mtx_cached_buf = NULL;
static size_t mtx_cached_size = 0;

/* A buffer of at least nbytes (its real size in *capacity), or NULL when out of memory. */
static void *mtx_buffer_acquire(size_t nbytes, size_t *capacity)
{
    void *p;
    if (mtx_cached_buf != NULL && mtx_cached_size >= nbytes) {
        p = mtx_cached_buf;
        *capacity = mtx_cached_size;
        mtx_cached_buf = NULL;
        return p;
    }
    *capacity = nbytes;
    return mtx_aligned_malloc(nbytes);
}

/* Give back a buffer of `capacity` bytes: keep it if it is the largest seen, else free it. */
static void mtx_buffer_release(void *p, size_t capacity)
{
    if (mtx_cached_buf == NULL || mtx_cached_size < capacity) {
        mtx_aligned_free(mtx_cached_buf);
        mtx_cached_buf = p;
        mtx_cached_size = capacity;
    } else {
        mtx_aligned_free(p);
    }
}

/* Pack one full MR-tall micro-panel of a row-major A (unit column stride):
 * dst[p * 6 + i] = src[i * rs_a + p] for i < 6, p < kc. With AVX2: 8 k at a time, the 6 x 8
 * block is transposed in registers (unpack / shuffle / permute, as an 8 x 8 transpose whose
 * rows 6 and 7 are zero) and stored as 8 overlapping groups of 6. */
static inline void mtx_pack_a6_rows(ptrdiff_t kc, const float *restrict src, ptrdiff_t rs_a,
                                    float *restrict dst)
{
    ptrdiff_t p = 0;
    int i;
#if MTX_SIMD
    const __m256i keep6 = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
    const __m256 z = _mm256_setzero_ps();
    for (; p + 8 <= kc; p += 8) {
        __m256 r0 = _mm256_loadu_ps(src + 0 * rs_a + p), r1 = _mm256_loadu_ps(src + 1 * rs_a + p);
        __m256 r2 = _mm256_loadu_ps(src + 2 * rs_a + p), r3 = _mm256_loadu_ps(src + 3 * rs_a + p);
        __m256 r4 = _mm256_loadu_ps(src + 4 * rs_a + p), r5 = _mm256_loadu_ps(src + 5 * rs_a + p);
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
        __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        __m256 u4 = _mm256_shuffle_ps(t4, z, 0x44), u5 = _mm256_shuffle_ps(t4, z, 0xEE);
        __m256 u6 = _mm256_shuffle_ps(t5, z, 0x44), u7 = _mm256_shuffle_ps(t5, z, 0xEE);
        /* column p+j of the 6 rows = (low half of u_j | low half of u_{j+4}) for j < 4,
         * and the high halves for p+4+j */
        float *d = dst + p * 6;
        _mm256_storeu_ps(d + 0, _mm256_permute2f128_ps(u0, u4, 0x20));
        _mm256_storeu_ps(d + 6, _mm256_permute2f128_ps(u1, u5, 0x20));
        _mm256_storeu_ps(d + 12, _mm256_permute2f128_ps(u2, u6, 0x20));
        _mm256_storeu_ps(d + 18, _mm256_permute2f128_ps(u3, u7, 0x20));
        _mm256_storeu_ps(d + 24, _mm256_permute2f128_ps(u0, u4, 0x31));
        _mm256_storeu_ps(d + 30, _mm256_permute2f128_ps(u1, u5, 0x31));
        _mm256_storeu_ps(d + 36, _mm256_permute2f128_ps(u2, u6, 0x31));
        _mm256_maskstore_ps(d + 42, keep6, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
#endif
    for (; p < kc; p++)
        for (i = 0; i < 6; i++)
            dst[p * 6 + i] = src[i * rs_a + p];
}

/* ---------------------------------------------------------------- float32, 6 x 16 */
static inline void mtx_sgemm_ukernel(ptrdiff_t kc, const float *restrict a,
                                     const float *restrict b, float *restrict c,
                                     ptrdiff_t rs_c, int beta)
{
#if MTX_SIMD
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    __m256 b0, b1, ai;
    ptrdiff_t p;
    _mm_prefetch((const char *)(c + 0 * rs_c), _MM_HINT_T0);
    _mm_prefetch((const char *)(c + 1 * rs_c), _MM_HINT_T0);
    _mm_prefetch((const char *)(c + 2 * rs_c), _MM_HINT_T0);
    _mm_prefetch((const char *)(c + 3 * rs_c), _MM_HINT_T0);
    _mm_prefetch((const char *)(c + 4 * rs_c), _MM_HINT_T0);
    _mm_prefetch((const char *)(c + 5 * rs_c), _MM_HINT_T0);
#pragma GCC unroll 4
    for (p = 0; p < kc; p++) {              /* C += a[:, p] (outer product) b[p, :] */
        b0 = _mm256_load_ps(b);
        b1 = _mm256_load_ps(b + 8);
        _mm_prefetch((const char *)(a + 48), _MM_HINT_T0);
        ai = _mm256_broadcast_ss(a + 0); c00 = _mm256_fmadd_ps(ai, b0, c00); c01 = _mm256_fmadd_ps(ai, b1, c01);
        ai = _mm256_broadcast_ss(a + 1); c10 = _mm256_fmadd_ps(ai, b0, c10); c11 = _mm256_fmadd_ps(ai, b1, c11);
        ai = _mm256_broadcast_ss(a + 2); c20 = _mm256_fmadd_ps(ai, b0, c20); c21 = _mm256_fmadd_ps(ai, b1, c21);
        ai = _mm256_broadcast_ss(a + 3); c30 = _mm256_fmadd_ps(ai, b0, c30); c31 = _mm256_fmadd_ps(ai, b1, c31);
        ai = _mm256_broadcast_ss(a + 4); c40 = _mm256_fmadd_ps(ai, b0, c40); c41 = _mm256_fmadd_ps(ai, b1, c41);
        ai = _mm256_broadcast_ss(a + 5); c50 = _mm256_fmadd_ps(ai, b0, c50); c51 = _mm256_fmadd_ps(ai, b1, c51);
        a += MTX_MR;
        b += MTX_NR;
    }
#define MTX_STORE_ROW(i, x0, x1)                                                   \
    do {                                                                           \
        float *ci = c + (i) * rs_c;                                                \
        if (beta) {                                                                \
            x0 = _mm256_add_ps(x0, _mm256_loadu_ps(ci));                           \
            x1 = _mm256_add_ps(x1, _mm256_loadu_ps(ci + 8));                       \
        }                                                                          \
        _mm256_storeu_ps(ci, x0);                                                  \
        _mm256_storeu_ps(ci + 8, x1);                                              \
    } while (0)
    MTX_STORE_ROW(0, c00, c01);
    MTX_STORE_ROW(1, c10, c11);
    MTX_STORE_ROW(2, c20, c21);
    MTX_STORE_ROW(3, c30, c31);
    MTX_STORE_ROW(4, c40, c41);
    MTX_STORE_ROW(5, c50, c51);
#undef MTX_STORE_ROW
#else
    float acc[MTX_MR][MTX_NR];
    ptrdiff_t p;
    int i, j;
    memset(acc, 0, sizeof(acc));
    for (p = 0; p < kc; p++) {
        for (i = 0; i < MTX_MR; i++)
            for (j = 0; j < MTX_NR; j++)
                acc[i][j] += a[i] * b[j];
        a += MTX_MR;
        b += MTX_NR;
    }
    for (i = 0; i < MTX_MR; i++)
        for (j = 0; j < MTX_NR; j++)
            c[i * rs_c + j] = beta ? c[i * rs_c + j] + acc[i][j] : acc[i][j];
#endif
}

/* ---------------------------------------------------------------- int8 via int16 pairs, 6 x 16 */
/* kp = number of k pairs; a: kp x MR pairs (int16), b: kp x NR pairs (int16), c: int32.
 * Not inlined: inlined into the macro-kernel, GCC 12 spilled the 12 accumulators to the stack
 * on every iteration (measured ~15% slower). */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void mtx_i8gemm_ukernel(ptrdiff_t kp, const int16_t *restrict a,
                                      const int16_t *restrict b, int32_t *restrict c,
                                      ptrdiff_t rs_c, int beta)
{
#if MTX_SIMD
    __m256i c00 = _mm256_setzero_si256(), c01 = _mm256_setzero_si256();
    __m256i c10 = _mm256_setzero_si256(), c11 = _mm256_setzero_si256();
    __m256i c20 = _mm256_setzero_si256(), c21 = _mm256_setzero_si256();
    __m256i c30 = _mm256_setzero_si256(), c31 = _mm256_setzero_si256();
    __m256i c40 = _mm256_setzero_si256(), c41 = _mm256_setzero_si256();
    __m256i c50 = _mm256_setzero_si256(), c51 = _mm256_setzero_si256();
    __m256i b0, b1, ai;
    ptrdiff_t p;
    const int32_t *a32 = (const int32_t *)a;   /* one (A[i,p], A[i,p+1]) pair = 32 bits */
#pragma GCC unroll 2
    for (p = 0; p < kp; p++) {
        b0 = _mm256_load_si256((const __m256i *)b);        /* columns 0..7, 2 k each */
        b1 = _mm256_load_si256((const __m256i *)(b + 16)); /* columns 8..15 */
#define MTX_ROW(i, x0, x1)                                                          \
        ai = _mm256_set1_epi32(a32[i]);                                             \
        x0 = _mm256_add_epi32(x0, _mm256_madd_epi16(ai, b0));                       \
        x1 = _mm256_add_epi32(x1, _mm256_madd_epi16(ai, b1));
        MTX_ROW(0, c00, c01) MTX_ROW(1, c10, c11) MTX_ROW(2, c20, c21)
        MTX_ROW(3, c30, c31) MTX_ROW(4, c40, c41) MTX_ROW(5, c50, c51)
#undef MTX_ROW
        a32 += MTX_MR;
        b += 2 * MTX_NR;
    }
#define MTX_STORE_ROW(i, x0, x1)                                                   \
    do {                                                                           \
        int32_t *ci = c + (i) * rs_c;                                              \
        if (beta) {                                                                \
            x0 = _mm256_add_epi32(x0, _mm256_loadu_si256((const __m256i *)ci));    \
            x1 = _mm256_add_epi32(x1, _mm256_loadu_si256((const __m256i *)(ci + 8))); \
        }                                                                          \
        _mm256_storeu_si256((__m256i *)ci, x0);                                    \
        _mm256_storeu_si256((__m256i *)(ci + 8), x1);                              \
    } while (0)
    MTX_STORE_ROW(0, c00, c01);
    MTX_STORE_ROW(1, c10, c11);
    MTX_STORE_ROW(2, c20, c21);
    MTX_STORE_ROW(3, c30, c31);
    MTX_STORE_ROW(4, c40, c41);
    MTX_STORE_ROW(5, c50, c51);
#undef MTX_STORE_ROW
#else
    int32_t acc[MTX_MR][MTX_NR];
    ptrdiff_t p;
    int i, j;
    memset(acc, 0, sizeof(acc));
    for (p = 0; p < kp; p++) {
        for (i = 0; i < MTX_MR; i++)
            for (j = 0; j < MTX_NR; j++)
                acc[i][j] += (int32_t)a[2 * i] * b[2 * j] + (int32_t)a[2 * i + 1] * b[2 * j + 1];
        a += 2 * MTX_MR;
        b += 2 * MTX_NR;
    }
    for (i = 0; i < MTX_MR; i++)
        for (j = 0; j < MTX_NR; j++)
            c[i * rs_c + j] = beta ? c[i * rs_c + j] + acc[i][j] : acc[i][j];
#endif
}

/* ---------------------------------------------------------------- weight-only rows */
/* One output of a weight-only quantized Linear:
 *   y = sum_g scale[g] * sum_{k in group g} x[k] * q[k],   G values per group, n_groups groups.
 * int8: w holds q as int8. int4: w holds bytes, q[2j] = (w[j] & 15) - 8, q[2j+1] = (w[j] >> 4) - 8.
 * The AVX2 path widens 16 weights to float per step (int8 -> int32 -> float, or nibbles
 * unpacked in k order), keeps the group's partial sums in vector registers, folds each group
 * into the row accumulator with one FMA by its scale, and reduces horizontally once per row. */
#if MTX_SIMD
static inline float mtx_hsum8(__m256 v)
{
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* q[0..15] as int8 in k order, from 16 int8 or 8 packed int4 bytes */
static inline __m128i mtx_load16_i8(const int8_t *w) { return _mm_loadu_si128((const __m128i *)w); }
static inline __m128i mtx_load16_i4(const uint8_t *wp)
{
    const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    __m128i by = _mm_loadl_epi64((const __m128i *)wp);
    __m128i lo = _mm_and_si128(by, mask);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(by, 4), mask);
    return _mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), eight);
}
#endif

static inline float mtx_qrow_dot(const float *restrict x, const void *restrict w, int int4,
                                 const float *restrict scales, ptrdiff_t n_groups, ptrdiff_t G)
{
    const int8_t *w8 = (const int8_t *)w;
    const uint8_t *w4 = (const uint8_t *)w;
    float tail = 0.0f;
    ptrdiff_t g, k, k0;
#if MTX_SIMD
    __m256 acc = _mm256_setzero_ps();
    for (g = 0; g < n_groups; g++) {
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        float st = 0.0f;
        k0 = g * G;
        for (k = 0; k + 16 <= G; k += 16) {
            __m128i q = int4 ? mtx_load16_i4(w4 + (k0 + k) / 2) : mtx_load16_i8(w8 + k0 + k);
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k0 + k),
                                 _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k0 + k + 8),
                                 _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))), s1);
        }
        for (; k < G; k++) {
            ptrdiff_t kk = k0 + k;
            int q = int4 ? ((kk & 1) ? (w4[kk / 2] >> 4) : (w4[kk / 2] & 0x0F)) - 8 : w8[kk];
            st += x[kk] * (float)q;
        }
        acc = _mm256_fmadd_ps(_mm256_add_ps(s0, s1), _mm256_set1_ps(scales[g]), acc);
        tail += st * scales[g];
    }
    return mtx_hsum8(acc) + tail;
#else
    for (g = 0; g < n_groups; g++) {
        float st = 0.0f;
        k0 = g * G;
        for (k = 0; k < G; k++) {
            ptrdiff_t kk = k0 + k;
            int q = int4 ? ((kk & 1) ? (w4[kk / 2] >> 4) : (w4[kk / 2] & 0x0F)) - 8 : w8[kk];
            st += x[kk] * (float)q;
        }
        tail += st * scales[g];
    }
    return tail;
#endif
}

/* Four consecutive outputs (weight rows w, w + row_bytes, ...) of the same x: x is loaded once
 * per 16 k for all four rows. Vector path when G is a multiple of 16, else four mtx_qrow_dot. */
static inline void mtx_qrow_dot4(const float *restrict x, const void *restrict w,
                                 ptrdiff_t row_bytes, int int4, const float *restrict scales,
                                 ptrdiff_t n_groups, ptrdiff_t G, float *restrict out)
{
    int r;
#if MTX_SIMD
    if (G % 16 == 0) {
        __m256 acc[4], part[4], xa, xb;
        __m128i q;
        ptrdiff_t g, k, k0;
        for (r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();
        for (g = 0; g < n_groups; g++) {
            k0 = g * G;
            for (r = 0; r < 4; r++) part[r] = _mm256_setzero_ps();
            for (k = k0; k < k0 + G; k += 16) {
                xa = _mm256_loadu_ps(x + k);
                xb = _mm256_loadu_ps(x + k + 8);
                for (r = 0; r < 4; r++) {
                    const char *wr = (const char *)w + r * row_bytes;
                    q = int4 ? mtx_load16_i4((const uint8_t *)wr + k / 2)
                             : mtx_load16_i8((const int8_t *)wr + k);
                    part[r] = _mm256_fmadd_ps(xa, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), part[r]);
                    part[r] = _mm256_fmadd_ps(xb, _mm256_cvtepi32_ps(
                        _mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))), part[r]);
                }
            }
            for (r = 0; r < 4; r++)
                acc[r] = _mm256_fmadd_ps(part[r], _mm256_set1_ps(scales[r * n_groups + g]), acc[r]);
        }
        for (r = 0; r < 4; r++) out[r] = mtx_hsum8(acc[r]);
        return;
    }
#endif
    for (r = 0; r < 4; r++)
        out[r] = mtx_qrow_dot(x, (const char *)w + r * row_bytes, int4, scales + r * n_groups,
                              n_groups, G);
}

#endif
