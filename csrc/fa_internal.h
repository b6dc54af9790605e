/*
 * fa_internal.h -- error reporting shared by the C sources behind flashattn.h.
 * Errors are thread-local: a message buffer and the CUDA code of the last failed call, read
 * back through fa_last_error() / fa_last_cuda_error(). Never printed, never fatal.
 */
#ifndef FA_INTERNAL_H
#define FA_INTERNAL_H

#include "flashattn.h"

/* Sets this thread's error message (printf-style) and returns `status`. */
fa_status fa_fail(fa_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Records a failed CUDA call ("what" at file:line) and returns FA_ERR_CUDA. */
fa_status fa_fail_cuda(cudaError_t err, const char *what, const char *file, int line);

#define FA_CUDA_TRY(call)                                                  \
    do {                                                                   \
        cudaError_t fa_err_ = (call);                                      \
        if (fa_err_ != cudaSuccess)                                        \
            return fa_fail_cuda(fa_err_, #call, __FILE__, __LINE__);       \
    } while (0)

/* The rule of every sized struct of the C API (its first field struct_size): a caller's struct
 * `in` of in_size bytes, in [min_size, full_size], copied over *out, which already holds every
 * field's default, so a caller built against an older, shorter layout gets the defaults of
 * the fields it does not know. `what` names the struct in the error ("params"), `init` its
 * initialiser. */
fa_status fa_resolve_sized(void *out, const void *in, size_t in_size, size_t min_size,
                           size_t full_size, const char *what, const char *init);

/* Copies the caller's params into *out, reading only the caller's struct_size bytes and giving
 * every later field its default (fa_params_init). Every public entry point starts here. */
fa_status fa_params_resolve(const fa_params *in, fa_params *out);

/* The same for the backward's gradients, given the resolved forward params (packed rows
 * zero the batch strides, as fa_params_resolve does for p). */
fa_status fa_grad_params_resolve(const fa_params *p, const fa_grad_params *in,
                                 fa_grad_params *out);

/* True when the params describe no work (an empty output, nothing to launch). */
static inline int fa_params_empty(const fa_params *p)
{
    return p->batch == 0 || p->heads_q == 0 || p->seqlen_q == 0;
}

#endif /* FA_INTERNAL_H */
