/* Row reductions for the normalisation kernels (minitx_c/fused.pyx LayerNorm,
 * minitx_c/fused_act.pyx RMSNorm), accumulated in double.
 *
 * A plain `for (j) s += x[j]` is a chain of dependent adds (4 cycles each) that the compiler may
 * not reorder, so it runs one element per add latency. These keep MTX_LANES independent partial
 * sums, lane k taking elements k, k + MTX_LANES, ..., and add them pairwise at the end: a fixed
 * order (the same bits on every run and thread count) that gcc -O3 maps onto vector registers.
 * The tail (n mod MTX_LANES elements) is added after the pairwise total, in order.
 */
#ifndef MINITX_ROWSUM_H
#define MINITX_ROWSUM_H

#include <stdint.h>

#define MTX_LANES 8

static inline double mtx_lanes_total(const double *acc) {
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

#define MTX_DEFINE_ROWSUMS(T, SUFFIX)                                                          \
/* sum_j x[j] */                                                                               \
static inline double mtx_sum_##SUFFIX(const T *restrict x, int64_t n) {                       \
    double acc[MTX_LANES] = {0}, s;                                                            \
    int64_t j, k, m = n - n % MTX_LANES;                                                       \
    for (j = 0; j < m; j += MTX_LANES)                                                         \
        for (k = 0; k < MTX_LANES; k++)                                                        \
            acc[k] += (double)x[j + k];                                                        \
    s = mtx_lanes_total(acc);                                                                  \
    for (j = m; j < n; j++)                                                                    \
        s += (double)x[j];                                                                     \
    return s;                                                                                  \
}                                                                                              \
/* sum_j (x[j] - mu)^2 */                                                                      \
static inline double mtx_sumsq_dev_##SUFFIX(const T *restrict x, double mu, int64_t n) {       \
    double acc[MTX_LANES] = {0}, s, d;                                                         \
    int64_t j, k, m = n - n % MTX_LANES;                                                       \
    for (j = 0; j < m; j += MTX_LANES)                                                         \
        for (k = 0; k < MTX_LANES; k++) {                                                      \
            d = (double)x[j + k] - mu;                                                         \
            acc[k] += d * d;                                                                   \
        }                                                                                      \
    s = mtx_lanes_total(acc);                                                                  \
    for (j = m; j < n; j++) {                                                                  \
        d = (double)x[j] - mu;                                                                 \
        s += d * d;                                                                            \
    }                                                                                          \
    return s;                                                                                  \
}                                                                                              \
/* sum_j dy[j] w[j] */                                                                        \
static inline double mtx_dot_##SUFFIX(const T *restrict dy, const T *restrict w, int64_t n) {  \
    double acc[MTX_LANES] = {0}, s;                                                            \
    int64_t j, k, m = n - n % MTX_LANES;                                                       \
    for (j = 0; j < m; j += MTX_LANES)                                                         \
        for (k = 0; k < MTX_LANES; k++)                                                        \
            acc[k] += (double)dy[j + k] * (double)w[j + k];                                    \
    s = mtx_lanes_total(acc);                                                                  \
    for (j = m; j < n; j++)                                                                    \
        s += (double)dy[j] * (double)w[j];                                                     \
    return s;                                                                                  \
}                                                                                              \
/* sum_j dy[j] w[j] (x[j] - mu)  (one accumulator array per loop: gcc vectorises one, not two) */ \
static inline double mtx_dot_dev_##SUFFIX(const T *restrict dy, const T *restrict w,           \
                                          const T *restrict x, double mu, int64_t n) {         \
    double acc[MTX_LANES] = {0}, s;                                                            \
    int64_t j, k, m = n - n % MTX_LANES;                                                       \
    for (j = 0; j < m; j += MTX_LANES)                                                         \
        for (k = 0; k < MTX_LANES; k++)                                                        \
            acc[k] += ((double)dy[j + k] * (double)w[j + k]) * ((double)x[j + k] - mu);        \
    s = mtx_lanes_total(acc);                                                                  \
    for (j = m; j < n; j++)                                                                    \
        s += ((double)dy[j] * (double)w[j]) * ((double)x[j] - mu);                             \
    return s;                                                                                  \
}                                                                                              \
/* LayerNorm dx of one row: (g - mean(g) - xhat mean(g xhat)) rstd, g = dy w */                \
static inline void mtx_ln_dx_##SUFFIX(const T *restrict dy, const T *restrict x,               \
                                      const T *restrict w, double mean, double rstd,           \
                                      double g_mean, double gx_mean, T *restrict dx,           \
                                      int64_t n) {                                             \
    for (int64_t j = 0; j < n; j++) {                                                          \
        double g = (double)dy[j] * (double)w[j], xhat = ((double)x[j] - mean) * rstd;          \
        dx[j] = (T)((g - g_mean - xhat * gx_mean) * rstd);                                     \
    }                                                                                          \
}                                                                                              \
/* LayerNorm parameter gradients, one row added: dw += dy xhat, db += dy (in T, row by row) */ \
static inline void mtx_ln_params_##SUFFIX(const T *restrict dy, const T *restrict x, T mean,   \
                                          T rstd, T *restrict dw, T *restrict db, int64_t n) { \
    for (int64_t j = 0; j < n; j++) {                                                          \
        dw[j] += dy[j] * (x[j] - mean) * rstd;                                                 \
        db[j] += dy[j];                                                                        \
    }                                                                                          \
}

MTX_DEFINE_ROWSUMS(float, f32)
MTX_DEFINE_ROWSUMS(double, f64)

#endif
