# The process-wide thread count every minitx_c kernel reads (see runtime.pyx).
cdef int num_threads() noexcept nogil
