"""Thread control shared by every minitx_c kernel.

OpenMP keeps its thread count (the `nthreads-var` ICV) per OS thread: `omp_set_num_threads`
called in the main thread does not reach a `threading.Thread`, whose parallel regions would
still use every core. minitx_c therefore keeps ONE process-wide setting here, and every kernel
passes it explicitly to its parallel loops (`prange(..., num_threads=...)`), so the setting
holds in whichever Python thread calls the kernel. Other modules read it with
`from minitx_c.runtime cimport num_threads`.
"""
from minitx_c.omp cimport mtx_have_openmp, mtx_get_max_threads, mtx_set_num_threads

# Read once, in the importing thread: OMP_NUM_THREADS if set, else the number of cores.
cdef int _num_threads = max(1, mtx_get_max_threads())


cdef int num_threads() noexcept nogil:
    """The process-wide thread count (1 without OpenMP)."""
    return _num_threads if mtx_have_openmp() else 1


def have_openmp():
    """True if the extension was built with OpenMP (otherwise every kernel runs serially)."""
    return bool(mtx_have_openmp())


def get_num_threads():
    """Number of threads the parallel kernels use, in every Python thread (1 without OpenMP)."""
    return num_threads()


def set_num_threads(int n):
    """Set the number of threads of every minitx_c kernel, process-wide.

    The default is OMP_NUM_THREADS (else the number of cores), read when minitx_c is imported.
    Unlike `omp_set_num_threads` the setting is not per OS thread: kernels called from any
    `threading.Thread` use it too. (It also sets the calling thread's OpenMP default, for
    OpenMP code outside minitx_c's kernels.)

    Args:
        n: a positive number of threads.
    """
    global _num_threads
    if n < 1:
        raise ValueError(f"set_num_threads needs n >= 1, got {n}")
    _num_threads = n
    mtx_set_num_threads(n)
