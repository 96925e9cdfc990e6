/* Small dense building blocks for minitx_c/flash.pyx: a register-blocked GEMM tile and
 * vectorised exponentials, in float32 (AVX2 + FMA intrinsics when the compiler targets them, plain
 * C loops otherwise) and float64 (plain C loops that gcc -O3 vectorises where it can).
 *
 * GEMM: C[M x N] (+)= A[M x K] B[K x N], all row-major with leading dimensions lda, ldb, ldc.
 *   Callers pad M to a multiple of MTX_MR and N to a multiple of MTX_NR (zero rows/columns).
 *   The AVX2 micro-kernel keeps a 6 x 16 block of C in twelve 8-float registers and streams one
 *   row of B (two loads) and six broadcasts of A per step of K: 12 FMAs per 8 loads, enough
 *   independent accumulators to cover the FMA latency (the register-blocking idea of Goto & van
 *   de Geijn, "Anatomy of High-Performance Matrix Multiplication", ACM TOMS 2008). Where the
 *   compiler targets AVX-512, a 12 x 16 tile holds one 16-float register per row instead.
 *
 * exp: exp(x) = 2^n * e^r with n = round(x / ln 2) and r = x - n ln 2 computed in two steps with
 *   ln 2 split into a short high part and a low correction (Cody & Waite, "Software Manual for the
 *   Elementary Functions", 1980), so |r| <= ln(2)/2; e^r by its Taylor series to degree 7 in Horner
 *   form (truncation error < 0.347^8 / 8! = 5.3e-9, below float32 rounding); 2^n built directly in
 *   the exponent bits. Inputs below -87.3 (including -inf) give exactly 0, inputs above 88
 *   saturate at exp(88) (softmax never asks for them), NaN gives NaN. Max relative error
 *   measured against double exp: ~2e-7 (a couple of float32 ulps).
 *
 * NaN (issue 14): the row max and the exponentials propagate NaN, so a NaN score poisons its row
 * exactly as in the NumPy reference. (_mm256_max_ps/_min_ps return their *second* operand when
 * either is NaN: the clamps below put x second so that NaN passes through, and the row max keeps
 * a separate "saw a NaN" flag because a max over lanes would drop it.)
 */
#ifndef MINITX_FLASH_SIMD_H
#define MINITX_FLASH_SIMD_H

#include <math.h>

#define MTX_MR 4
#define MTX_NR 16

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MTX_HAVE_AVX2 1
#else
#define MTX_HAVE_AVX2 0
#endif
#if MTX_HAVE_AVX2 && defined(__AVX512F__)
#define MTX_HAVE_AVX512 1      /* GEMM tiles only; the exponentials stay 8 wide */
#else
#define MTX_HAVE_AVX512 0
#endif

static int mtx_flash_simd(void) { return MTX_HAVE_AVX2; }

/* ---------------------------------------------------------------- GEMM tiles */

static void mtx_gemm_d(int acc, int M, int N, int K, const double *A, int lda,
                       const double *B, int ldb, double *C, int ldc)
{
    for (int i = 0; i < M; i++) {
        double *c = C + (long)i * ldc;
        if (!acc)
            for (int j = 0; j < N; j++) c[j] = 0.0;
        for (int p = 0; p < K; p++) {
            const double a = A[(long)i * lda + p];
            const double *b = B + (long)p * ldb;
            for (int j = 0; j < N; j++) c[j] += a * b[j];      /* vectorises over j */
        }
    }
}

#if MTX_HAVE_AVX512
/* AVX-512: one row of a 16-wide tile is one register, so MR = 12 rows keep 12 accumulators
 * (hiding the FMA latency on two FMA ports) and each step of K does 12 FMAs per load of B.
 * The sums run over p in the same order with one FMA per step, so the results are bit-equal to
 * the AVX2 tile below. */
static inline __attribute__((always_inline)) void mtx_tile_f(const int MR, int acc, int K,
        const float *A, int lda, const float *B, int ldb, float *C, int ldc)
{
    __m512 x[12];
    for (int r = 0; r < MR; r++)
        x[r] = acc ? _mm512_loadu_ps(C + (long)r * ldc) : _mm512_setzero_ps();
    _Pragma("GCC unroll 4")
    for (int p = 0; p < K; p++, B += ldb) {
        const __m512 b = _mm512_loadu_ps(B);
        for (int r = 0; r < MR; r++)
            x[r] = _mm512_fmadd_ps(_mm512_set1_ps(A[(long)r * lda + p]), b, x[r]);
    }
    for (int r = 0; r < MR; r++)
        _mm512_storeu_ps(C + (long)r * ldc, x[r]);
}

/* M a multiple of 4, N of 16: row blocks of 12, then one of 8 or 4 for the rest. */
static void mtx_gemm_f(int acc, int M, int N, int K, const float *A, int lda,
                       const float *B, int ldb, float *C, int ldc)
{
    int i = 0;
    while (i < M) {
        const int rem = M - i, mr = rem >= 12 ? 12 : rem;      /* 12, 8 or 4 */
        for (int j = 0; j < N; j += MTX_NR) {
            const float *a = A + (long)i * lda;
            float *c = C + (long)i * ldc + j;
            if (mr == 12)
                mtx_tile_f(12, acc, K, a, lda, B + j, ldb, c, ldc);
            else if (mr == 8)
                mtx_tile_f(8, acc, K, a, lda, B + j, ldb, c, ldc);
            else
                mtx_tile_f(4, acc, K, a, lda, B + j, ldb, c, ldc);
        }
        i += mr;
    }
}
#elif MTX_HAVE_AVX2
/* C[MR x 16] (+)= A[MR x K] B[K x 16]: MR rows of C live in 2 MR registers for the whole K loop.
 * MR is a compile-time constant at each call, so the r-loops unroll and x[][] stays in registers. */
static inline __attribute__((always_inline)) void mtx_tile_f(const int MR, int acc, int K,
        const float *A, int lda, const float *B, int ldb, float *C, int ldc)
{
    __m256 x[6][2];
    for (int r = 0; r < MR; r++) {
        if (acc) {
            x[r][0] = _mm256_loadu_ps(C + (long)r * ldc);
            x[r][1] = _mm256_loadu_ps(C + (long)r * ldc + 8);
        } else {
            x[r][0] = x[r][1] = _mm256_setzero_ps();
        }
    }
    _Pragma("GCC unroll 4")     /* 4 steps of K per loop trip: +20-25% measured (loop overhead) */
    for (int p = 0; p < K; p++, B += ldb) {
        const __m256 b0 = _mm256_loadu_ps(B), b1 = _mm256_loadu_ps(B + 8);
        for (int r = 0; r < MR; r++) {
            const __m256 a = _mm256_broadcast_ss(A + (long)r * lda + p);
            x[r][0] = _mm256_fmadd_ps(a, b0, x[r][0]);
            x[r][1] = _mm256_fmadd_ps(a, b1, x[r][1]);
        }
    }
    for (int r = 0; r < MR; r++) {
        _mm256_storeu_ps(C + (long)r * ldc, x[r][0]);
        _mm256_storeu_ps(C + (long)r * ldc + 8, x[r][1]);
    }
}

/* M a multiple of 4, N of 16: row blocks of 6 (12 accumulators hide the FMA latency), and blocks
 * of 4 for the rest (64 = 9 x 6 + 10 -> 6 + 4). */
static void mtx_gemm_f(int acc, int M, int N, int K, const float *A, int lda,
                       const float *B, int ldb, float *C, int ldc)
{
    int i = 0;
    while (i < M) {
        const int rem = M - i;
        if (rem >= 10 || rem == 6) {
            for (int j = 0; j < N; j += MTX_NR)
                mtx_tile_f(6, acc, K, A + (long)i * lda, lda, B + j, ldb, C + (long)i * ldc + j, ldc);
            i += 6;
        } else {
            for (int j = 0; j < N; j += MTX_NR)
                mtx_tile_f(4, acc, K, A + (long)i * lda, lda, B + j, ldb, C + (long)i * ldc + j, ldc);
            i += 4;
        }
    }
}
#else
static void mtx_gemm_f(int acc, int M, int N, int K, const float *A, int lda,
                       const float *B, int ldb, float *C, int ldc)
{
    for (int i = 0; i < M; i++) {
        float *c = C + (long)i * ldc;
        if (!acc)
            for (int j = 0; j < N; j++) c[j] = 0.0f;
        for (int p = 0; p < K; p++) {
            const float a = A[(long)i * lda + p];
            const float *b = B + (long)p * ldb;
            for (int j = 0; j < N; j++) c[j] += a * b[j];
        }
    }
}
#endif

/* ---------------------------------------------------------------- all finite? */
/* 1 if no element of x[0 .. n) is inf or NaN: x * 0 is +-0 for a finite x and NaN otherwise,
 * summed in 16 independent lanes (so the loop vectorises) and tested once at the end. */
#define MTX_FINITE_LANES 16
#define MTX_ALL_FINITE(NAME, T)                                                              \
static int NAME(const T *x, long n)                                                          \
{                                                                                            \
    T acc[MTX_FINITE_LANES] = {0}, sum = 0;                                                  \
    long i = 0;                                                                              \
    for (; i + MTX_FINITE_LANES <= n; i += MTX_FINITE_LANES)                                 \
        for (int j = 0; j < MTX_FINITE_LANES; j++)                                           \
            acc[j] += x[i + j] * 0;                                                          \
    for (; i < n; i++)                                                                       \
        acc[0] += x[i] * 0;                                                                  \
    for (int j = 0; j < MTX_FINITE_LANES; j++)                                               \
        sum += acc[j];                                                                       \
    return sum == 0;                                                                         \
}
MTX_ALL_FINITE(mtx_all_finite_f, float)
MTX_ALL_FINITE(mtx_all_finite_d, double)

/* ---------------------------------------------------------------- exponentials */

#if MTX_HAVE_AVX2
static inline __m256 mtx_exp256(__m256 x)
{
    const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);  /* NaN: no */
    x = _mm256_max_ps(_mm256_set1_ps(-87.3f), x);          /* x second: NaN passes through */
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);      /* x - n ln2_hi */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440054690583e-4f), r); /*   - n ln2_lo */
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);                            /* 1/7! */
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));                       /* e^r */
    const __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);  /* 2^n */
    return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

static inline float mtx_hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float mtx_hmax256(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* Scalar exp with the same method, for the tails of the vector loops (so every score in a row
 * goes through the same formula). */
static inline float mtx_expf(float x)
{
#if MTX_HAVE_AVX2
    return _mm_cvtss_f32(_mm256_castps256_ps128(mtx_exp256(_mm256_set1_ps(x))));
#else
    return expf(x);
#endif
}

/* max(x[0..n)), -inf for n == 0, NaN if any x[c] is NaN */
static float mtx_rowmax_f(const float *x, int n)
{
    int c = 0, nan = 0;
    float m = -INFINITY;
#if MTX_HAVE_AVX2
    if (n >= 8) {
        __m256 v = _mm256_loadu_ps(x);
        __m256 isnan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
        for (c = 8; c + 8 <= n; c += 8) {
            const __m256 y = _mm256_loadu_ps(x + c);
            isnan = _mm256_or_ps(isnan, _mm256_cmp_ps(y, y, _CMP_UNORD_Q));
            v = _mm256_max_ps(v, y);
        }
        m = mtx_hmax256(v);
        nan = _mm256_movemask_ps(isnan);
    }
#endif
    for (; c < n; c++) {
        nan |= x[c] != x[c];
        m = x[c] > m ? x[c] : m;
    }
    return nan ? NAN : m;
}

static double mtx_rowmax_d(const double *x, int n)
{
    double m = -INFINITY;
    int nan = 0;
    for (int c = 0; c < n; c++) {
        nan |= x[c] != x[c];
        m = x[c] > m ? x[c] : m;
    }
    return nan ? (double)NAN : m;
}

/* x[c] = exp(x[c] - shift) in place; returns the sum of the new x (the online-softmax row sum) */
static float mtx_exp_shift_sum_f(float *x, float shift, int n)
{
    int c = 0;
    float s = 0.0f;
#if MTX_HAVE_AVX2
    const __m256 sh = _mm256_set1_ps(shift);
    __m256 acc = _mm256_setzero_ps();
    for (; c + 8 <= n; c += 8) {
        const __m256 e = mtx_exp256(_mm256_sub_ps(_mm256_loadu_ps(x + c), sh));
        _mm256_storeu_ps(x + c, e);
        acc = _mm256_add_ps(acc, e);
    }
    s = mtx_hsum256(acc);
#endif
    for (; c < n; c++) {
        x[c] = mtx_expf(x[c] - shift);
        s += x[c];
    }
    return s;
}

static double mtx_exp_shift_sum_d(double *x, double shift, int n)
{
    double s = 0.0;
    for (int c = 0; c < n; c++) {
        x[c] = exp(x[c] - shift);
        s += x[c];
    }
    return s;
}

/* x[r] = exp(x[r] - L[r]) in place (the backward's P = exp(S - L), one key row of S^T) */
static void mtx_exp_minus_f(float *x, const float *L, int n)
{
    int r = 0;
#if MTX_HAVE_AVX2
    for (; r + 8 <= n; r += 8)
        _mm256_storeu_ps(x + r, mtx_exp256(_mm256_sub_ps(_mm256_loadu_ps(x + r),
                                                         _mm256_loadu_ps(L + r))));
#endif
    for (; r < n; r++) x[r] = mtx_expf(x[r] - L[r]);
}

static void mtx_exp_minus_d(double *x, const double *L, int n)
{
    for (int r = 0; r < n; r++) x[r] = exp(x[r] - L[r]);
}

#endif
