/*
 * sm90_tensor_map.h -- host side of TMA: 4-D tensor maps over (head_dim, rows, heads, batch).
 *
 * cuTensorMapEncodeTiled is taken from the driver the CUDA runtime already loaded (its ABI of
 * CUDA 12.0, resolved once), so nothing links libcuda and the module imports on a machine
 * without a driver. Maps are encoded per call: they hold the tensors' addresses.
 * Host-only; shared by every sm90 kernel that loads or stores through TMA.
 */
#ifndef FA_SM90_TENSOR_MAP_H
#define FA_SM90_TENSOR_MAP_H

#include <cuda.h>  // CUtensorMap and the cuTensorMapEncodeTiled types only
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

namespace fa_sm90_host {

typedef CUresult (*EncodeTiledFn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                  const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled from the driver the runtime already loaded (ABI of CUDA 12.0);
// resolved once, a failure is retried on the next call.
inline EncodeTiledFn encode_tiled_fn() {
    static std::atomic<EncodeTiledFn> cached{nullptr};
    EncodeTiledFn fn = cached.load(std::memory_order_acquire);
    if (fn != nullptr) return fn;
    void *sym = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    const cudaError_t err =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &sym, 12000, cudaEnableDefault, &found);
#else
    const cudaError_t err = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &sym, cudaEnableDefault, &found);
#endif
    if (err != cudaSuccess || found != cudaDriverEntryPointSuccess || sym == nullptr) {
        (void)cudaGetLastError();  // the failure is reported as the launch's status, not left behind
        return nullptr;
    }
    fn = reinterpret_cast<EncodeTiledFn>(sym);
    cached.store(fn, std::memory_order_release);
    return fn;
}

// A 4-D map over a (cols, rows, heads, batch) tensor of elem_bytes-byte elements with element
// strides (1, row, head, batch), box (box_cols, box_rows, 1, 1), 128-byte swizzle (box_cols *
// elem_bytes must be 128), zero fill outside the tensor.
inline bool encode_map_box(EncodeTiledFn encode, CUtensorMap *map, CUtensorMapDataType dtype, int elem_bytes,
                           const void *base, int cols, int rows, int heads, int batch, int64_t row_stride,
                           int64_t head_stride, int64_t batch_stride, int box_cols, int box_rows) {
    // Empty extents never get a box issued; TMA just needs a legal map.
    const cuuint64_t dims[4] = {(cuuint64_t)cols, (cuuint64_t)(rows > 0 ? rows : 1),
                                (cuuint64_t)(heads > 0 ? heads : 1), (cuuint64_t)(batch > 0 ? batch : 1)};
    const int64_t elem_strides[3] = {row_stride, head_stride, batch_stride};
    cuuint64_t strides[3];
    for (int i = 0; i < 3; ++i) {
        const int64_t bytes = elem_strides[i] * elem_bytes;
        // The stride of an extent-1 dimension is never used; replace any value TMA would refuse.
        const bool legal = bytes > 0 && bytes % 16 == 0 && bytes < ((int64_t)1 << 40);
        strides[i] = legal || dims[i + 1] != 1 ? (cuuint64_t)bytes : (cuuint64_t)16;
    }
    const cuuint32_t box[4] = {(cuuint32_t)box_cols, (cuuint32_t)box_rows, 1u, 1u};
    const cuuint32_t unit[4] = {1u, 1u, 1u, 1u};
    return encode(map, dtype, 4, const_cast<void *>(base), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                  CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The 16-bit operands' map: (head_dim, rows, heads, batch), box (64, box_rows, 1, 1).
inline bool encode_map(EncodeTiledFn encode, CUtensorMap *map, CUtensorMapDataType dtype, const void *base, int head_dim,
                int rows, int heads, int batch, int64_t row_stride, int64_t head_stride, int64_t batch_stride,
                int box_rows) {
    return encode_map_box(encode, map, dtype, 2, base, head_dim, rows, heads, batch, row_stride, head_stride,
                          batch_stride, 64, box_rows);
}

}  // namespace fa_sm90_host

#endif /* FA_SM90_TENSOR_MAP_H */
