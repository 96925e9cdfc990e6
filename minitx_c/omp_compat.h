/* OpenMP shims so that kernels build (serially) with compilers that lack OpenMP.
 * Cython's prange already degrades to a plain loop without -fopenmp; these cover the
 * runtime calls. */
#ifndef MINITX_OMP_COMPAT_H
#define MINITX_OMP_COMPAT_H
#ifdef _OPENMP
#include <omp.h>
static int mtx_have_openmp(void) { return 1; }
static int mtx_get_max_threads(void) { return omp_get_max_threads(); }
static void mtx_set_num_threads(int n) { omp_set_num_threads(n); }
static int mtx_get_thread_num(void) { return omp_get_thread_num(); }
#else
static int mtx_have_openmp(void) { return 0; }
static int mtx_get_max_threads(void) { return 1; }
static void mtx_set_num_threads(int n) { (void)n; }
static int mtx_get_thread_num(void) { return 0; }
#endif
#endif
