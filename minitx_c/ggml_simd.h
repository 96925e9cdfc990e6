/* Block dot products for minitx_c/ggml.pyx: one 32-value ggml block of a weight row against 32
 * activations. AVX2 + FMA intrinsics when the compiler targets them, plain C otherwise (the same
 * sums in a different order; the integer ones are exact either way).
 *
 * Per block (32 values) of a weight row:
 *   float activations:  sum_j nib_j x_j  (qs: 16 bytes, nib_j = qs[j] & 15 for j < 16,
 *                       qs[j - 16] >> 4 for j >= 16)    or  sum_j q_j x_j  (q: 32 int8)
 *   int8 activations (the llama.cpp way): the same sums with x_j -> xq_j, exact in int32.
 * `mtx_row_f32` / `mtx_row_q8` (end of file) run a whole row; the plain-C helpers
 * mtx_dot_q4_f32, mtx_dot_q8_f32, mtx_dot_q4_q8, mtx_dot_q8_q8 are the per-block sums without
 * AVX2.
 * AVX2 integer trick: `vpmaddubsw` multiplies 32 unsigned bytes by 32 signed bytes and adds
 * adjacent pairs into 16 int16 (here at most 2 * 128 * 127 = 32512, no saturation), `vpmaddwd`
 * with ones adds pairs again into 8 int32. For int8 x int8 the sign of w moves onto x first
 * (|w| * (x sign(w)), `vpsignb`), as llama.cpp does.
 */
#ifndef MINITX_GGML_SIMD_H
#define MINITX_GGML_SIMD_H

#include <stdint.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MTX_GGML_AVX2 1
#else
#define MTX_GGML_AVX2 0
#endif

static int mtx_ggml_simd(void) { return MTX_GGML_AVX2; }

#if MTX_GGML_AVX2
static inline float mtx_hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int mtx_hsum8i(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* 16 packed bytes -> 32 unsigned bytes: low nibbles (elements 0..15), then high (16..31) */
static inline __m256i mtx_unpack_nibbles(const uint8_t *qs)
{
    __m128i b = _mm_loadu_si128((const __m128i *)qs);
    __m128i lo = _mm_and_si128(b, _mm_set1_epi8(15));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(15));
    return _mm256_set_m128i(hi, lo);
}

#else   /* plain C: eight partial sums so that compilers can still vectorise */

static inline float mtx_dot_q4_f32(const uint8_t *qs, const float *x)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int j = 0; j < 16; j += 8)
        for (int k = 0; k < 8; k++) {
            s[k] += (float)(qs[j + k] & 15) * x[j + k];
            s[k] += (float)(qs[j + k] >> 4) * x[j + k + 16];
        }
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static inline float mtx_dot_q8_f32(const int8_t *q, const float *x)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int j = 0; j < 32; j += 8)
        for (int k = 0; k < 8; k++)
            s[k] += (float)q[j + k] * x[j + k];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static inline int mtx_dot_q4_q8(const uint8_t *qs, const int8_t *xq)
{
    int s = 0;
    for (int j = 0; j < 16; j++)
        s += (qs[j] & 15) * xq[j] + (qs[j] >> 4) * xq[j + 16];
    return s;
}

static inline int mtx_dot_q8_q8(const int8_t *q, const int8_t *xq)
{
    int s = 0;
    for (int j = 0; j < 32; j++)
        s += q[j] * xq[j];
    return s;
}
#endif


/* ---------------------------------------------------------------- whole rows
 * One output value: row n of W (nb blocks of type qtype) against one row of activations.
 *   mtx_row_f32: x float (K), xs = block sums of x (nb)
 *   mtx_row_q8:  xq int8 (K), dx = block scales (nb), sx = dx * block sums of xq (nb)
 * The block scales multiply vectors of partial sums that stay in registers across the row; a
 * single horizontal sum ends it (with AVX2). f16 is the fp16 -> fp32 table. */
#define MTX_Q4_0 2
#define MTX_Q4_1 3
#define MTX_Q8_0 8

static inline int mtx_type_size(int qtype)
{
    return qtype == MTX_Q8_0 ? 34 : (qtype == MTX_Q4_0 ? 18 : 20);
}

static inline float mtx_half(const uint8_t *p, const float *f16)
{
    return f16[(uint16_t)(p[0] | (p[1] << 8))];
}

#if MTX_GGML_AVX2
static inline __m256 mtx_q4_f32_v(const uint8_t *qs, const float *x)
{
    __m128i b = _mm_loadu_si128((const __m128i *)qs);
    __m128i lo = _mm_and_si128(b, _mm_set1_epi8(15));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(15));
    __m256 acc = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), _mm256_loadu_ps(x));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
                          _mm256_loadu_ps(x + 8), acc);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), _mm256_loadu_ps(x + 16),
                          acc);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
                           _mm256_loadu_ps(x + 24), acc);
}

static inline __m256 mtx_q8_f32_v(const int8_t *q, const float *x)
{
    __m128i a = _mm_loadu_si128((const __m128i *)q);
    __m128i b = _mm_loadu_si128((const __m128i *)(q + 16));
    __m256 acc = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a)), _mm256_loadu_ps(x));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a, 8))),
                          _mm256_loadu_ps(x + 8), acc);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), _mm256_loadu_ps(x + 16),
                          acc);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8))),
                           _mm256_loadu_ps(x + 24), acc);
}
#endif

static inline float mtx_row_f32(int qtype, const uint8_t *row, long nb, const float *x,
                                const float *xs, const float *f16)
{
    int ts = mtx_type_size(qtype);
    float off = 0;
#if MTX_GGML_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (long b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * ts;
        __m256 d = _mm256_set1_ps(mtx_half(blk, f16));
        if (qtype == MTX_Q8_0) {
            acc = _mm256_fmadd_ps(d, mtx_q8_f32_v((const int8_t *)(blk + 2), x + 32 * b), acc);
        } else if (qtype == MTX_Q4_0) {
            acc = _mm256_fmadd_ps(d, mtx_q4_f32_v(blk + 2, x + 32 * b), acc);
            off -= 8 * mtx_half(blk, f16) * xs[b];
        } else {
            acc = _mm256_fmadd_ps(d, mtx_q4_f32_v(blk + 4, x + 32 * b), acc);
            off += mtx_half(blk + 2, f16) * xs[b];
        }
    }
    return mtx_hsum8(acc) + off;
#else
    float acc = 0;
    for (long b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * ts;
        float d = mtx_half(blk, f16);
        if (qtype == MTX_Q8_0) {
            acc += d * mtx_dot_q8_f32((const int8_t *)(blk + 2), x + 32 * b);
        } else if (qtype == MTX_Q4_0) {
            acc += d * mtx_dot_q4_f32(blk + 2, x + 32 * b);
            off -= 8 * d * xs[b];
        } else {
            acc += d * mtx_dot_q4_f32(blk + 4, x + 32 * b);
            off += mtx_half(blk + 2, f16) * xs[b];
        }
    }
    return acc + off;
#endif
}

static inline float mtx_row_q8(int qtype, const uint8_t *row, long nb, const int8_t *xq,
                               const float *dx, const float *sx, const float *f16)
{
    int ts = mtx_type_size(qtype);
    float off = 0;
#if MTX_GGML_AVX2
    __m256 acc = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (long b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * ts;
        float d = mtx_half(blk, f16);
        __m256i x = _mm256_loadu_si256((const __m256i *)(xq + 32 * b));
        __m256i p;
        if (qtype == MTX_Q8_0) {
            __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 2));
            p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        } else {
            p = _mm256_maddubs_epi16(mtx_unpack_nibbles(blk + (qtype == MTX_Q4_1 ? 4 : 2)), x);
            off += qtype == MTX_Q4_1 ? mtx_half(blk + 2, f16) * sx[b] : -8 * d * sx[b];
        }
        __m256 v = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * dx[b]), v, acc);
    }
    return mtx_hsum8(acc) + off;
#else
    float acc = 0;
    for (long b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * ts;
        float d = mtx_half(blk, f16);
        int isum;
        if (qtype == MTX_Q8_0) {
            isum = mtx_dot_q8_q8((const int8_t *)(blk + 2), xq + 32 * b);
        } else {
            isum = mtx_dot_q4_q8(blk + (qtype == MTX_Q4_1 ? 4 : 2), xq + 32 * b);
            off += qtype == MTX_Q4_1 ? mtx_half(blk + 2, f16) * sx[b] : -8 * d * sx[b];
        }
        acc += d * dx[b] * isum;
    }
    return acc + off;
#endif
}

#endif
