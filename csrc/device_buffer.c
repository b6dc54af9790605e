/*
 * device_buffer.c -- device_buffer.h's allocation modes.
 */
#include <ctype.h>
#include <stdlib.h>

#include "device_buffer.h"

int fa_exact_alloc_requested(void)
{
    const char *value = getenv(FA_EXACT_ALLOC_ENV);
    if (!value)
        return 0;
    static const char *const yes[] = {"1", "true", "yes", "on"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        const char *a = value, *b = yes[i];
        while (*a && *b && tolower((unsigned char)*a) == *b) {
            a++;
            b++;
        }
        if (!*a && !*b)
            return 1;
    }
    return 0;
}

cudaError_t fa_device_buffer_alloc(void **ptr, size_t nbytes, cudaStream_t stream, int exact)
{
    *ptr = NULL;
    if (nbytes == 0)
        return cudaSuccess;
    cudaError_t err = exact ? cudaMalloc(ptr, nbytes) : cudaMallocAsync(ptr, nbytes, stream);
    if (err != cudaSuccess)
        *ptr = NULL;
    return err;
}

cudaError_t fa_device_buffer_free(void *ptr, cudaStream_t stream, int exact)
{
    if (!ptr)
        return cudaSuccess;
    /* cudaFree waits for the device to finish the work that may still use ptr. */
    return exact ? cudaFree(ptr) : cudaFreeAsync(ptr, stream);
}
