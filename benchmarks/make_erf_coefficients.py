"""Fit the polynomial coefficients of the vectorisable erf in minitx/kernels/fused_act.py and
minitx_c/vmath.h, and print them (they are pasted into both files).

    python benchmarks/make_erf_coefficients.py

erf is split at |x| = 1 (Abramowitz & Stegun 7.1; the split and the erfc form follow the usual
libm design, the coefficients are fitted here from float64 math.erf / math.erfc):
    |x| < 1:      erf(x)  = x * P(x^2)                        P: degree ERF_SMALL_DEG in s = x^2
    1 <= |x| < 4: erfc(x) = exp(-x^2) * Q(1 / (1 + |x|/2) - 1/2)   Q: degree ERF_LARGE_DEG
    |x| >= 4:     erf(x)  = sign(x)  (1 - erfc(4) = 1 - 1.5e-8 rounds to 1 in float32)
Each polynomial is a least-squares Chebyshev fit at 2000 Chebyshev nodes, converted to the
monomial (Horner) basis; its maximum relative error on a dense grid is printed.
"""
import math

import numpy as np
from numpy.polynomial import chebyshev, polynomial

ERF_SMALL_DEG, ERF_LARGE_DEG = 8, 9


def _small(s):                       # erf(x) / x as a function of s = x^2
    return math.erf(math.sqrt(s)) / math.sqrt(s) if s > 0 else 2 / math.sqrt(math.pi)


def _large(v):                       # erfc(x) exp(x^2) as a function of v = 1/(1 + x/2) - 1/2
    x = 2 * (1 / (v + 0.5) - 1)
    return math.erfc(x) * math.exp(x * x)


def fit(f, a, b, deg, n=2000):
    """Monomial coefficients (lowest first) of a degree-`deg` fit of f on [a, b], max rel error."""
    z = np.cos(np.pi * (np.arange(n) + 0.5) / n) * 0.5 * (b - a) + 0.5 * (b + a)
    c = chebyshev.chebfit(z, [f(v) for v in z], deg)
    m = chebyshev.cheb2poly(c)
    grid = np.linspace(a, b, 100001)
    exact = np.array([f(v) for v in grid])
    return m, float(np.max(np.abs(polynomial.polyval(grid, m) - exact) / np.abs(exact)))


if __name__ == "__main__":
    for name, f, a, b, deg in (("ERF_SMALL", _small, 0.0, 1.0, ERF_SMALL_DEG),
                               ("ERF_LARGE", _large, 1 / 3 - 0.5, 2 / 3 - 0.5, ERF_LARGE_DEG)):
        m, err = fit(f, a, b, deg)
        print(f"# {name}: degree {deg}, max relative error {err:.2e}")
        print(f"{name} = (" + ", ".join(repr(float(c)) for c in m) + ")")
