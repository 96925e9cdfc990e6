"""Thread control shared by every minitx_c kernel."""
import os
from minitx_c.omp cimport mtx_have_openmp, mtx_get_max_threads, mtx_set_num_threads


def have_openmp():
    """True if the extension was built with OpenMP (otherwise every kernel runs serially)."""
    return bool(mtx_have_openmp())


def get_num_threads():
    """Number of threads the parallel kernels use (1 without OpenMP)."""
    return mtx_get_max_threads()


def set_num_threads(int n):
    """Set the number of threads for the parallel kernels. Defaults to OMP_NUM_THREADS.

    Args:
        n: a positive number of threads.
    """
    if n < 1:
        raise ValueError(f"set_num_threads needs n >= 1, got {n}")
    mtx_set_num_threads(n)
