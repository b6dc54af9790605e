/*
 * sm90_epilogue.cuh -- writes one consumer warpgroup's 64 x D output rows and their LSE.
 *
 * O is normalised in registers (times 1/rowsum), converted to 16-bit and written with stmatrix
 * into a staging area of 64 rows: a buffer of its own where shared memory allows (its rows of
 * the Q tile are then free as soon as its last Q K^T retired), else the warpgroup's own 64-row
 * half of the Q tile (no longer read by then). Either is laid out as TMA's 128-byte swizzle
 * expects: [D/64 chunks][64 rows][128 bytes] (chunks chunk_bytes apart), 16-byte unit u of row r
 * stored at unit u ^ (r % 8). That XOR spreads the 8 row addresses of each stmatrix phase over
 * all 32 banks. One thread then issues a TMA store per 64-column chunk; TMA clips rows past
 * the tensor's end and columns past head_dim, so only real elements reach global memory.
 * Packed rows (common/seqlen.h) end inside the tensor, at the next entry: the warpgroup whose
 * 64 rows cross its entry's end copies its rows below len_q from the staging area with 16-byte
 * stores instead (store_rows_direct: at most 64 x head_dim x 2 bytes, once per entry and head).
 * LSE goes straight from registers (one lane of each quad), at fa_lse_index.
 * Device-only; included by fwd_sm90.cu.
 */
#ifndef FA_SM90_EPILOGUE_CUH
#define FA_SM90_EPILOGUE_CUH

#include <stdint.h>

#include "sm90_ptx.cuh"
#include "sm90_softmax.cuh"

namespace fa_sm90 {

// Where lane `lane` of warp warp_in_wg addresses the rows of stmatrix_cols16 in a warpgroup's
// 64-row area at region (its rows in chunk 0, 1024-byte aligned).
struct StmatrixLane {
    int mat;            // which of the four 8x8 matrices this lane addresses
    int row;            // the row it addresses
    uint32_t row_addr;  // that row's 128-byte line in chunk 0
    __device__ __forceinline__ StmatrixLane(uint32_t region, int warp_in_wg, int lane) {
        mat = lane >> 3;
        row = 16 * warp_in_wg + (mat & 1) * 8 + (lane & 7);
        row_addr = region + (uint32_t)row * 128u;
    }
};

// Columns 16i .. 16i + 15 of a warpgroup's 64 rows from the accumulator fragment, packed to
// 16 bit (r0..r3 as stmatrix_x4 takes them, which is also the wgmma A fragment of k-step i),
// into the swizzled area (64-column chunks chunk_bytes apart).
__device__ __forceinline__ void stmatrix_cols16(const StmatrixLane &at, uint32_t chunk_bytes, int i, uint32_t r0,
                                                uint32_t r1, uint32_t r2, uint32_t r3) {
    const int unit_global = 2 * i + (at.mat >> 1);  // 8-column group this lane's row address covers
    const uint32_t addr = at.row_addr + (uint32_t)(unit_global >> 3) * chunk_bytes +
                          ((uint32_t)((unit_global & 7) ^ (at.row & 7)) << 4);
    stmatrix_x4(addr, r0, r1, r2, r3);
}

// region: shared address of this warpgroup's rows in chunk 0 (1024-byte aligned);
// chunk_bytes: distance between 64-column chunks of the staging area. has_keys == false writes zeros
// without reading o (a tile that saw no key never ran a wgmma, so o is undefined).
template <int kHeadDim, bool kBf16>
__device__ __forceinline__ void stage_output(const float (&o)[kHeadDim / 2], const float (&inv_l)[2], bool has_keys,
                                             uint32_t region, uint32_t chunk_bytes, int warp_in_wg, int lane) {
    const StmatrixLane at(region, warp_in_wg, lane);
#pragma unroll
    for (int i = 0; i < kHeadDim / 16; ++i) {
        float v[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            // Elements 0,1 and 4,5 are row g; 2,3 and 6,7 are row g + 8.
            const float f = inv_l[(e >> 1) & 1];
            v[e] = has_keys ? o[8 * i + e] * f : 0.f;
        }
        const uint32_t r0 = pack2<kBf16>(v[0], v[1]);  // rows 0-7,  columns 16i .. 16i+7
        const uint32_t r1 = pack2<kBf16>(v[2], v[3]);  // rows 8-15, columns 16i .. 16i+7
        const uint32_t r2 = pack2<kBf16>(v[4], v[5]);  // rows 0-7,  columns 16i+8 .. 16i+15
        const uint32_t r3 = pack2<kBf16>(v[6], v[7]);  // rows 8-15, columns 16i+8 .. 16i+15
        stmatrix_cols16(at, chunk_bytes, i, r0, r1, r2, r3);
    }
}

// Rows [0, rows) of a warpgroup's staging area (as stage_output wrote it) straight to global
// memory, for the rows a TMA store would write past their entry. out_row0: element 0 of staged
// row 0 in out; row_stride in elements; only the head_dim real columns (a multiple of 8) are
// written. Thread t moves 16-byte unit t % (kHeadDim / 8) of a row, so 8 consecutive threads
// read one 128-byte line (conflict-free through the swizzle) and write contiguous bytes;
// 16-byte alignment holds as for TMA (base and strides in 16-byte units, launch.c).
template <int kHeadDim>
__device__ __forceinline__ void store_rows_direct(uint16_t *out_row0, int64_t row_stride, int rows, int head_dim,
                                                  uint32_t region, uint32_t chunk_bytes, int tid_in_wg) {
    constexpr int kUnits = kHeadDim / 8;
    const int units = head_dim / 8;
    for (int idx = tid_in_wg; idx < rows * kUnits; idx += 128) {
        const int r = idx / kUnits, u = idx % kUnits;
        if (u >= units) continue;
        const uint32_t addr =
            region + (uint32_t)r * 128u + (uint32_t)(u >> 3) * chunk_bytes + ((uint32_t)((u & 7) ^ (r & 7)) << 4);
        *reinterpret_cast<uint4 *>(out_row0 + r * row_stride + 8 * u) = ld_shared_v4(addr);
    }
}

// lse_entry: this (entry, head)'s LSE row 0 (fa_lse_index; NULL: not written); rows at or past
// len_q are skipped.
__device__ __forceinline__ void store_lse(float *lse_entry, int row0, int len_q, const float (&lse)[2], int lane) {
    if (lse_entry == nullptr || (lane & 3) != 0) return;
    if (row0 < len_q) lse_entry[row0] = lse[0];
    if (row0 + 8 < len_q) lse_entry[row0 + 8] = lse[1];
}

}  // namespace fa_sm90

#endif /* FA_SM90_EPILOGUE_CUH */
