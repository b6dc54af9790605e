/*
 * device_buffer.h -- one device buffer, from the stream-ordered pool or, for memory checkers,
 * an exact cudaMalloc. Plain C with no Python: the DeviceArray outputs (device_array.c) and the
 * backward's workspace (backward.c) are made here.
 */
#ifndef FA_DEVICE_BUFFER_H
#define FA_DEVICE_BUFFER_H

#include <stddef.h>

#include <cuda_runtime_api.h>

/* FLASHATTN_C_EXACT_ALLOC -- opt-in allocation mode for memory checkers, read from the
 * environment each time a DeviceArray or a backward workspace is made (so a test may set it
 * for one call).
 *
 *   unset, "" or "0"             cudaMallocAsync / cudaFreeAsync on the launch stream, from the
 *                                device's stream-ordered pool (the default, and the fast one)
 *   "1", "true", "yes" or "on"   cudaMalloc of exactly nbytes / cudaFree
 *
 * Why: a pool hands out slices of larger blocks, so a kernel that runs past the end of its
 * output usually lands in memory that is valid as far as compute-sanitizer's memcheck can tell,
 * and nothing is reported. A dedicated cudaMalloc allocation has bounds memcheck knows exactly.
 * cudaFree synchronizes the device: this mode is for sanitizer runs (tools/sanitize.sh sets
 * it), not for production. DeviceArray.allocator says which mode an array was made with. */
#define FA_EXACT_ALLOC_ENV "FLASHATTN_C_EXACT_ALLOC"

/* 1 when FLASHATTN_C_EXACT_ALLOC asks for exact allocations now. Reads the environment: from
 * Python, call with the GIL held (os.environ writes take it too). */
int fa_exact_alloc_requested(void);

/* One device buffer of nbytes: cudaMalloc when `exact`, else cudaMallocAsync on `stream`.
 * nbytes == 0 gives *ptr = NULL and cudaSuccess. The current device must be the target one.
 * No Python calls: usable with the GIL released. */
cudaError_t fa_device_buffer_alloc(void **ptr, size_t nbytes, cudaStream_t stream, int exact);

/* Frees what fa_device_buffer_alloc gave, with the same `exact` (NULL is a no-op): cudaFree,
 * or cudaFreeAsync on `stream`, ordered after the work already enqueued there. */
cudaError_t fa_device_buffer_free(void *ptr, cudaStream_t stream, int exact);

#endif /* FA_DEVICE_BUFFER_H */
