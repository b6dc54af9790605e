/*
 * tma_store_initcheck.cu -- does this compute-sanitizer's initcheck see global memory written by
 * a TMA store (cp.async.bulk.tensor, shared -> global)?
 *
 * One CTA writes a 64 x 64 bf16 tile (8 KB) into a fresh cudaMalloc buffer, either with plain
 * st.global ("plain", the control) or with one TMA tensor store ("tma", as the sm90 family's
 * epilogue does), and the buffer is copied to the host, which initcheck checks. The program
 * verifies every value itself and exits non-zero when one is wrong, so a clean control plus an
 * initcheck report on "tma" means the tool does not record TMA stores, not that data is
 * missing. tools/sanitize.sh runs both before its initcheck pass.
 *
 * Build and run (sm_90a; the tensor map is encoded through the runtime's driver entry point):
 *     nvcc -O2 -gencode arch=compute_90a,code=sm_90a -o tma_store_initcheck tools/tma_store_initcheck.cu
 *     compute-sanitizer --tool initcheck ./tma_store_initcheck plain   # expected clean
 *     compute-sanitizer --tool initcheck ./tma_store_initcheck tma
 */
#include <cuda.h> /* CUtensorMap types only; nothing links libcuda */
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>

#define TILE 64
#define TILE_ELEMS (TILE * TILE)

#define CHECK(call)                                                                          \
    do {                                                                                     \
        cudaError_t err_ = (call);                                                           \
        if (err_ != cudaSuccess) {                                                           \
            fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(err_));             \
            return 1;                                                                        \
        }                                                                                    \
    } while (0)

__global__ void store_plain(uint16_t *dst)
{
    for (int i = threadIdx.x; i < TILE_ELEMS; i += blockDim.x)
        dst[i] = static_cast<uint16_t>(i);
}

__global__ void store_tma(const __grid_constant__ CUtensorMap dst_map)
{
    __shared__ __align__(1024) uint16_t tile[TILE_ELEMS];
    for (int i = threadIdx.x; i < TILE_ELEMS; i += blockDim.x)
        tile[i] = static_cast<uint16_t>(i);
    /* generic-proxy writes of the tile become visible to the async proxy that reads it */
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    if (threadIdx.x == 0) {
        const uint32_t src = static_cast<uint32_t>(__cvta_generic_to_shared(tile));
        asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %2}], [%1];"
                     ::"l"(&dst_map), "r"(src), "r"(0)
                     : "memory");
        asm volatile("cp.async.bulk.commit_group;" ::: "memory");
        asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
    }
}

typedef CUresult (*encode_tiled_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                                    const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                                    const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
                                    CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

static int launch_tma(uint16_t *dst)
{
    void *fn = NULL;
    cudaDriverEntryPointQueryResult found;
    CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                           &found));
    if (found != cudaDriverEntryPointSuccess || fn == NULL) {
        fprintf(stderr, "cuTensorMapEncodeTiled not available\n");
        return 1;
    }
    CUtensorMap map;
    const cuuint64_t dims[2] = {TILE, TILE}, row_stride_bytes[1] = {TILE * 2};
    const cuuint32_t box[2] = {TILE, TILE}, elem_strides[2] = {1, 1};
    const CUresult res = ((encode_tiled_fn)fn)(
        &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, dst, dims, row_stride_bytes, box, elem_strides,
        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_NONE,
        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (res != CUDA_SUCCESS) {
        fprintf(stderr, "cuTensorMapEncodeTiled failed: %d\n", (int)res);
        return 1;
    }
    store_tma<<<1, 128>>>(map);
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "plain") != 0 && strcmp(mode, "tma") != 0) {
        fprintf(stderr, "usage: %s plain|tma\n", argv[0]);
        return 2;
    }
    uint16_t *dst = NULL;
    CHECK(cudaMalloc(&dst, TILE_ELEMS * sizeof(uint16_t)));
    if (strcmp(mode, "plain") == 0)
        store_plain<<<1, 128>>>(dst);
    else if (launch_tma(dst) != 0)
        return 1;
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    static uint16_t host[TILE_ELEMS];
    CHECK(cudaMemcpy(host, dst, sizeof(host), cudaMemcpyDeviceToHost));
    int wrong = 0;
    for (int i = 0; i < TILE_ELEMS; i++)
        wrong += host[i] != static_cast<uint16_t>(i);
    CHECK(cudaFree(dst));
    printf("%s store: %d of %d values wrong\n", mode, wrong, TILE_ELEMS);
    return wrong == 0 ? 0 : 1;
}
