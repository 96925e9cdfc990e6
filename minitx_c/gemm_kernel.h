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
/* kp = number of k pairs; a: kp x MR pairs (int16), b: kp x NR pairs (int16), c: int32. */
static inline void mtx_i8gemm_ukernel(ptrdiff_t kp, const int16_t *restrict a,
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

#endif
