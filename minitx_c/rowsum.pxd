# Row sums in double with 8 interleaved partial sums in a fixed order (rowsum.h), shared by
# the fused kernels: `from minitx_c.rowsum cimport ...`.
cdef extern from "rowsum.h" nogil:      # row sums in double, 8 interleaved partial sums
    double mtx_sum_f32(const float *x, Py_ssize_t n)
    double mtx_sum_f64(const double *x, Py_ssize_t n)
    double mtx_sumsq_dev_f32(const float *x, double mu, Py_ssize_t n)
    double mtx_sumsq_dev_f64(const double *x, double mu, Py_ssize_t n)
    double mtx_dot_f32(const float *dy, const float *w, Py_ssize_t n)
    double mtx_dot_f64(const double *dy, const double *w, Py_ssize_t n)
    double mtx_dot_dev_f32(const float *dy, const float *w, const float *x, double mu,
                           Py_ssize_t n)
    double mtx_dot_dev_f64(const double *dy, const double *w, const double *x, double mu,
                           Py_ssize_t n)
    void mtx_ln_dx_f32(const float *dy, const float *x, const float *w, double mean, double rstd,
                       double g_mean, double gx_mean, float *dx, Py_ssize_t n)
    void mtx_ln_dx_f64(const double *dy, const double *x, const double *w, double mean,
                       double rstd, double g_mean, double gx_mean, double *dx, Py_ssize_t n)
    void mtx_ln_params_f32(const float *dy, const float *x, float mean, float rstd, float *dw,
                           float *db, Py_ssize_t n)
    void mtx_ln_params_f64(const double *dy, const double *x, double mean, double rstd,
                           double *dw, double *db, Py_ssize_t n)
