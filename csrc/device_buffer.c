/*
 * device_buffer.c -- device_buffer.h's allocation modes.
 */
#include <ctype.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

#define FA_POOL_DEVICES 64

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static cudaMemPool_t pools[FA_POOL_DEVICES];

/* The device's pool (device_buffer.h), made on first use. */
static cudaError_t pool_of(int device, cudaMemPool_t *pool)
{
    if (device < 0 || device >= FA_POOL_DEVICES)
        return cudaErrorInvalidDevice;
    cudaError_t err = cudaSuccess;
    pthread_mutex_lock(&pool_lock);
    if (!pools[device]) {
        struct cudaMemPoolProps props;
        memset(&props, 0, sizeof props);
        props.allocType = cudaMemAllocationTypePinned;
        props.location.type = cudaMemLocationTypeDevice;
        props.location.id = device;
        cudaMemPool_t made = NULL;
        err = cudaMemPoolCreate(&made, &props);
        uint64_t keep = FA_POOL_KEEP_BYTES;
        if (err == cudaSuccess)
            err = cudaMemPoolSetAttribute(made, cudaMemPoolAttrReleaseThreshold, &keep);
        if (err == cudaSuccess)
            pools[device] = made;
        else if (made)
            (void)cudaMemPoolDestroy(made);
    }
    *pool = pools[device];
    pthread_mutex_unlock(&pool_lock);
    return err;
}

cudaError_t fa_device_buffer_alloc(void **ptr, size_t nbytes, cudaStream_t stream, int exact)
{
    *ptr = NULL;
    if (nbytes == 0)
        return cudaSuccess;
    cudaError_t err;
    if (exact) {
        err = cudaMalloc(ptr, nbytes);
    } else {
        int device = 0;
        cudaMemPool_t pool = NULL;
        if ((err = cudaGetDevice(&device)) == cudaSuccess &&
            (err = pool_of(device, &pool)) == cudaSuccess)
            err = cudaMallocFromPoolAsync(ptr, nbytes, pool, stream);
    }
    if (err != cudaSuccess)
        *ptr = NULL;
    return err;
}

cudaError_t fa_device_pool_usage(int device, size_t *used, size_t *reserved)
{
    *used = *reserved = 0;
    if (device < 0 || device >= FA_POOL_DEVICES)
        return cudaErrorInvalidDevice;
    pthread_mutex_lock(&pool_lock);
    cudaMemPool_t pool = pools[device];
    pthread_mutex_unlock(&pool_lock);
    if (!pool)
        return cudaSuccess;
    uint64_t u = 0, r = 0;
    cudaError_t err = cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &u);
    if (err == cudaSuccess)
        err = cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &r);
    *used = (size_t)u;
    *reserved = (size_t)r;
    return err;
}

cudaError_t fa_device_buffer_free(void *ptr, cudaStream_t stream, int exact)
{
    if (!ptr)
        return cudaSuccess;
    /* cudaFree waits for the device to finish the work that may still use ptr. */
    return exact ? cudaFree(ptr) : cudaFreeAsync(ptr, stream);
}
