/* Vectorisable elementary functions and elementwise loops for minitx_c/fused_act.pyx.
 *
 * The loops below read float32 arrays, compute in double and round once to float32 at the end.
 * They contain no calls and no branches (selects only) and reach their arrays through restrict
 * pointers, so gcc -O3 vectorises each loop (checked with -fopt-info-vec; with -march=native the
 * double lanes run 4 or 8 wide). The NumPy twins in minitx/kernels/fused_act.py hold the same
 * formulas and coefficients.
 *
 * mtx_exp(y): exp(y) = 2^k * e^r, k = round(y / ln 2), r = y - k ln 2 with ln 2 split into a
 *   high part and a low correction (Cody & Waite 1980), |r| <= ln(2)/2; e^r by its Taylor series
 *   to degree 11 in Horner form (truncation < 0.347^12 / 12! = 6e-15); k is rounded by adding
 *   1.5 * 2^52 (the sum's low mantissa bits are k) and 2^k is built in the exponent bits.
 *   y > 709.78 gives +inf (as libm); y < -708 gives 0 (float32 results never need less); NaN
 *   gives NaN (both clamps are written so that a NaN compares false and passes through).
 * mtx_erf(x): |x| < 1: x P(x^2); 1 <= |x| < 4: 1 - exp(-x^2) Q(1 / (1 + |x|/2) - 1/2); beyond,
 *   sign(x). P, Q are least-squares Chebyshev fits (benchmarks/make_erf_coefficients.py), max
 *   relative errors 9.3e-13 and 4.4e-12, so the float32 result is float64 erf correctly rounded
 *   except within ~1e-11 of a rounding midpoint (measured over every float32: max error 0.500 ulp,
 *   99.99957% correctly rounded; benchmarks/erf_accuracy.py).
 * mtx_tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2 min(|u|, 20)) (tanh(20) = 1 - 8e-18): absolute
 *   error ~1e-16, which is what GELU needs (it uses 1 + tanh and 1 - tanh^2).
 */
#ifndef MINITX_VMATH_H
#define MINITX_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define MTX_LOG2E 1.4426950408889634
#define MTX_LN2_HI 0.6931471803691238      /* ln 2 rounded to 33 bits: k * LN2_HI is exact */
#define MTX_LN2_LO 1.9082149292705877e-10  /* ln 2 - LN2_HI */
#define MTX_ROUND 6755399441055744.0       /* 1.5 * 2^52 */
#define MTX_SQRT1_2 0.7071067811865476      /* 1 / sqrt(2) */
#define MTX_INV_SQRT_2PI 0.3989422804014327 /* 1 / sqrt(2 pi) */
#define MTX_SQRT_2_OVER_PI 0.7978845608028654
#define MTX_GELU_C 0.044715

static inline double mtx_exp(double y) {
    double yc = y > 709.0 ? 709.0 : y;
    double big = y > 709.78 ? HUGE_VAL : 1.0;             /* overflow: +inf, as libm's exp */
    double kd = yc * MTX_LOG2E + MTX_ROUND;
    int64_t kbits, round_bits, sbits;
    double round = MTX_ROUND, scale, r, p;
    memcpy(&kbits, &kd, 8);
    memcpy(&round_bits, &round, 8);
    kd -= MTX_ROUND;                                       /* k as a double */
    r = (yc - kd * MTX_LN2_HI) - kd * MTX_LN2_LO;          /* |r| <= ln(2)/2 */
    p = 1.0 / 39916800.0;                                  /* 1/11! */
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;                                       /* e^r */
    sbits = (kbits - round_bits + 1023) << 52;             /* 2^k */
    memcpy(&scale, &sbits, 8);
    p = yc < -708.0 ? 0.0 : p * scale;
    return p * big;                           /* (a multiply, not a select: gcc vectorises it) */
}

static inline double mtx_erf(double x) {
    double z = fabs(x), s, small, v, q, e;
    double far = z >= 4.0 ? 0.0 : 1.0;          /* erfc(z) < 1.6e-8 beyond 4: taken as 0, so */
    z = z > 4.0 ? 4.0 : z;                      /* erf = +-1 exactly and Phi(x) = 0 below -4 sqrt 2 */
    s = z * z;
    small = 1.0595272639123914e-06;                        /* P(s), erf(z) / z */
    small = small * s - 1.3911700071046196e-05;
    small = small * s + 0.0001195694667367337;
    small = small * s - 0.0008542670553352821;
    small = small * s + 0.005223785006074322;
    small = small * s - 0.026866133625192;
    small = small * s + 0.112837913135022;
    small = small * s - 0.3761263888986904;
    small = small * s + 1.1283791670946917;
    v = 1.0 / (1.0 + 0.5 * z) - 0.5;
    q = -0.0850066740705399;                               /* Q(v), erfc(z) exp(z^2) */
    q = q * v + 0.01293291930867431;
    q = q * v + 0.1255750260234434;
    q = q * v - 0.05425911165781439;
    q = q * v - 0.22391734417993012;
    q = q * v + 0.059726687791272916;
    q = q * v + 0.6318286410341851;
    q = q * v + 0.9666327755626261;
    q = q * v + 0.8543716948377637;
    q = q * v + 0.2553956763112823;
    e = z < 1.0 ? z * small : 1.0 - mtx_exp(-s) * q * far;
    return copysign(e, x);
}

static inline double mtx_tanh(double u) {
    double a = fabs(u), e;
    a = a > 20.0 ? 20.0 : a;
    e = mtx_exp(-2.0 * a);                                 /* in (0, 1]: no overflow */
    return copysign((1.0 - e) / (1.0 + e), u);
}

/* ------------------------------------------------------------------ float32 loops over n */
static void mtx_erf_f32(const float *restrict x, float *restrict y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)mtx_erf((double)x[i]);
}

/* exact GELU: y = x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2, saved in t */
static void mtx_gelu_erf_fwd_f32(const float *restrict x, float *restrict y, float *restrict t,
                                 int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double xi = x[i];
        double phi = 0.5 * (1.0 + mtx_erf(xi * MTX_SQRT1_2));
        y[i] = (float)(xi * phi);
        t[i] = (float)phi;
    }
}

/* dx = dy (Phi(x) + x phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi) */
static void mtx_gelu_erf_bwd_f32(const float *restrict dy, const float *restrict x,
                                 const float *restrict t, float *restrict dx, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double xi = x[i];
        double pdf = mtx_exp(-0.5 * xi * xi) * MTX_INV_SQRT_2PI;
        dx[i] = (float)((double)dy[i] * ((double)t[i] + xi * pdf));
    }
}

/* tanh GELU: u = sqrt(2/pi) (x + 0.044715 x^3), y = x (1 + tanh u) / 2, tanh u saved in t */
static void mtx_gelu_tanh_fwd_f32(const float *restrict x, float *restrict y, float *restrict t,
                                  int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double xi = x[i];
        double th = mtx_tanh(MTX_SQRT_2_OVER_PI * xi * (1.0 + MTX_GELU_C * xi * xi));
        y[i] = (float)(0.5 * xi * (1.0 + th));
        t[i] = (float)th;
    }
}

/* dx = dy ((1 + th) + x (1 - th^2) du/dx) / 2, du/dx = sqrt(2/pi) (1 + 3 0.044715 x^2) */
static void mtx_gelu_tanh_bwd_f32(const float *restrict dy, const float *restrict x,
                                  const float *restrict t, float *restrict dx, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double xi = x[i], th = t[i];
        double du = MTX_SQRT_2_OVER_PI * (1.0 + 3.0 * MTX_GELU_C * xi * xi);
        dx[i] = (float)((double)dy[i] * 0.5 * ((1.0 + th) + xi * (1.0 - th * th) * du));
    }
}

/* SiLU: s = 1 / (1 + exp(-x)) saved, y = x s */
static void mtx_silu_fwd_f32(const float *restrict x, float *restrict y, float *restrict s,
                             int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double xi = x[i];
        double si = 1.0 / (1.0 + mtx_exp(-xi));
        y[i] = (float)(xi * si);
        s[i] = (float)si;
    }
}

/* dx = dy s (1 + x (1 - s)) */
static void mtx_silu_bwd_f32(const float *restrict dy, const float *restrict x,
                             const float *restrict s, float *restrict dx, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double si = s[i];
        dx[i] = (float)((double)dy[i] * si * (1.0 + (double)x[i] * (1.0 - si)));
    }
}

#endif
