# Declarations for omp_compat.h: OpenMP runtime calls that compile to no-ops without OpenMP.
cdef extern from "omp_compat.h" nogil:
    int mtx_have_openmp()
    int mtx_get_max_threads()
    void mtx_set_num_threads(int n)
    int mtx_get_thread_num()
