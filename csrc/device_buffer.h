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
 *   unset, "" or "0"             cudaMallocFromPoolAsync / cudaFreeAsync on the launch stream,
 *                                from flashattn_c's stream-ordered pool of the device (the
 *                                default, and the fast one)
 *   "1", "true", "yes" or "on"   cudaMalloc of exactly nbytes / cudaFree
 *
 * Why: a pool hands out slices of larger blocks, so a kernel that runs past the end of its
 * output usually lands in memory that is valid as far as compute-sanitizer's memcheck can tell,
 * and nothing is reported. A dedicated cudaMalloc allocation has bounds memcheck knows exactly.
 * cudaFree synchronizes the device: this mode is for sanitizer runs (tools/sanitize.sh sets
 * it), not for production. DeviceArray.allocator says which mode an array was made with. */
#define FA_EXACT_ALLOC_ENV "FLASHATTN_C_EXACT_ALLOC"

/* The pool: one per device, made at the first allocation there, holding on to up to
 * FA_POOL_KEEP_BYTES of freed memory across synchronisations. The device's default pool keeps
 * nothing (its release threshold is 0), so the first stream-ordered allocation after every
 * synchronisation mapped memory anew: about 200 us of host time on an H200, paid once per
 * decode step by a serving loop that reads its tokens back (benches/NOTES.md, "Serving v2").
 * A pool of our own leaves the default pool, and every other library's use of it, as it was;
 * memory that a larger workspace (a training backward's) took beyond the threshold still
 * goes back at the next synchronisation. Under stream capture an allocation becomes a graph
 * node that the graph owns, as before. */
#define FA_POOL_KEEP_BYTES ((size_t)64 << 20)

/* 1 when FLASHATTN_C_EXACT_ALLOC asks for exact allocations now. Reads the environment: from
 * Python, call with the GIL held (os.environ writes take it too). */
int fa_exact_alloc_requested(void);

/* One device buffer of nbytes: cudaMalloc when `exact`, else from the current device's pool
 * on `stream`.
 * nbytes == 0 gives *ptr = NULL and cudaSuccess. The current device must be the target one.
 * No Python calls: usable with the GIL released. */
cudaError_t fa_device_buffer_alloc(void **ptr, size_t nbytes, cudaStream_t stream, int exact);

/* Bytes of `device`'s pool: `used` by live buffers and `reserved` from the device (both 0
 * before the pool's first allocation). Tests read them to tell this process's memory from
 * other processes' on the same GPU. */
cudaError_t fa_device_pool_usage(int device, size_t *used, size_t *reserved);

/* Frees what fa_device_buffer_alloc gave, with the same `exact` (NULL is a no-op): cudaFree,
 * or cudaFreeAsync on `stream`, ordered after the work already enqueued there. */
cudaError_t fa_device_buffer_free(void *ptr, cudaStream_t stream, int exact);

#endif /* FA_DEVICE_BUFFER_H */
