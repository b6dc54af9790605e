/*
 * sm80_bwd_config.cuh -- compile-time shape of one sm80 backward instance (BwdConfig), the
 * kernel's argument block (BwdArgs), ldmatrix operand addressing, and the few PTX wrappers the
 * forward's sm80_ptx.cuh does not have (4-byte cp.async, shared loads and stores that stay in
 * place, the fp32 reductions into dq_accum).
 *
 * Warp layouts (12 warps; each GEMM of a query block is cut into whole warp tiles, and a warp
 * past a GEMM's layout sits that GEMM out):
 *   tier    hd   S, dP (BM x BN)        dK, dV (BN x hd)        dQ (BM x hd)
 *                warps   tile           warps   tile            warps   tile
 *   narrow  64   3 x 4   16 x 48        6 x 2   32 x 32         3 x 4   16 x 16
 *   narrow  128  3 x 4   16 x 24        3 x 4   32 x 32         3 x 4   16 x 32
 *   narrow  256  2 x 6   16 x 8         3 x 4   16 x 64         2 x 4   16 x 64  (8 warps)
 *   wide    64   4 x 3   16 x 64        6 x 2   32 x 32         4 x 2   16 x 32  (8 warps)
 *   wide    128  4 x 3   16 x 32        3 x 4   32 x 32         2 x 4   32 x 32  (8 warps)
 *   wide    256  4 x 3   16 x 16        3 x 4   16 x 64         2 x 4   32 x 32  (8 warps,
 *                                                                     two passes over hd)
 * Registers per thread (fp32): dK + dV accumulators 64, kept across the whole CTA; S held
 * whole while dP runs in passes of DP_TILES n8 tiles (narrow hd 64: 24 + 8, hd 128: 12 + 12,
 * hd 256: 4 + 4; wide hd 64: 32 + 16, hd 128: 16 + 8, hd 256: 8 + 8); the dQ accumulator
 * (narrow hd 64: 8, 128: 16, 256: 32; wide hd 64: 16, 128: 32, 256: 32 a pass) once S and dP
 * are gone; ldmatrix fragments of up
 * to kGemmStepsInFlight k16 steps (sm80_bwd_math.cuh). ptxas fills the rest with fragments
 * loaded ahead: 160 to 168 of 168, no spills (bwd_sm80.cu has the report). The block walk
 * lives in shared memory, not registers (sm80_bwd_kernel.cuh). Layouts tried for the wide
 * tier and dropped because ptxas spilled (4 to 96 bytes, sm_80 or sm_90): 96 x 96 at hd 128
 * with 32 x 24 S/dP tiles; 32 x 16 S/dP tiles with dP in passes of 2 at 64 x 96; 32 x 32
 * S/dP tiles at hd 64 (64 x 192); a 64-row dQ at hd 256 in one pass (64 x 48; 8 warps of
 * 32 x 64 or 16 x 128).
 *
 * SCHEDULE, the order of a query block's GEMMs, copies and barriers with one Q/dO stage
 * (sm80_bwd_kernel.cuh; two stages, the wide tier at head_dim 64 and 128, ignore it):
 *   0  dK | copy Q' | dV | copy dO' | dQ        4 barriers; Q' overlaps dV and dQ, dO' dQ
 *   1  dK, dV | copy Q', dO' | dQ               3 barriers; both copies overlap dQ only
 *   two stages: copy Q', dO' | S, dP | dK, dV, dQ  2 barriers; the copies overlap the step
 * At head_dim 128 (H200, bf16, 16k tokens) 1 ran at 174 TFLOP/s against 170 for 0; dP before
 * S with the wait for Q' between them (5 barriers, Q' overlapping dQ and dP) ran at 162.
 *
 * ldmatrix lane patterns (lane l gives the row address of matrix l / 8, row l % 8; r_l is the
 * lane's row and c_l its 16-byte chunk relative to the fragment's origin):
 *   X  r_l = l % 8 + 8 * (l / 8 % 2), c_l = l / 16   A row-major (m x k), and B stored k x n
 *                                                     (.trans), two n8 tiles
 *   Y  r_l = l % 8 + 8 * (l / 16),    c_l = l / 8 % 2 A stored k x m (.trans), and B stored
 *                                                     n x k, two n8 tiles
 *   Z  r_l = l % 8,                   c_l = l / 8     B stored n x k, one n8 tile, two k16 steps
 */
#ifndef FA_SM80_BWD_CONFIG_CUH
#define FA_SM80_BWD_CONFIG_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "../common/mask.h"
#include "../common/score.h"
#include "../common/seqlen.h"
#include "../launch_contract.h"
#include "kernels.h"
#include "sm80_bwd_tiles.h"
#include "sm80_config.cuh"
#include "sm80_ptx.cuh"

namespace fa_sm80 {

/* k16 steps between two __syncwarp in warp_gemm (its STEPS). ptxas hoists ldmatrix as far up
   as registers allow: over the 8 to 16 steps of S and dP it took every register not held by
   dK/dV and spilled the loop's own state. Shared-memory loads do not cross a __syncwarp, which
   caps the fragments in flight at STEPS steps. At head_dim 128, 8 ran 2% faster than 4 and 2
   1.5% slower (H200); 4 is the value every narrow instance was checked with. The wide head_dim
   64 tile runs S and dP with 3 (sdp_steps): with 4 ptxas spilled on sm_90, with 2 (and two
   Q/dO stages) in the packed instances on sm_80. */
constexpr int kGemmStepsInFlight = 4;

/* The tile of head_dim_padded HDP in the wide tier (WIDE) or the narrow one: BM, BN from
   sm80_bwd_tiles.h; warp layouts (rows x columns of warps) per GEMM, the m16 tiles a warp's
   S/dP and dQ tiles are tall (sdp_mt, dq_mt) and the STEPS of S and dP (sdp_steps); DP_TILES
   and SCHEDULE as above (narrow hd 64 and 256 were measured with schedule 0 only; the wide
   tier has not been measured); the Q/dO stages (stages); dQ's passes over head_dim
   (dq_passes). */
template <int HDP, bool WIDE> struct BwdTileOf;
template <> struct BwdTileOf<64, false> {
    static constexpr int bm = FA_SM80_BWD_HD64_BLOCK_M, bn = FA_SM80_BWD_HD64_BLOCK_N;
    static constexpr int sdp_wm = 3, sdp_wn = 4, kv_wn = 6, kv_wd = 2, dq_wm = 3, dq_wd = 4;
    static constexpr int sdp_mt = 1, dq_mt = 1, sdp_steps = kGemmStepsInFlight;
    static constexpr int stages = FA_SM80_BWD_NARROW_STAGES;
    static constexpr int dq_passes = 1;
    static constexpr int dp_tiles = 2, schedule = 0;
};
template <> struct BwdTileOf<128, false> {
    static constexpr int bm = FA_SM80_BWD_HD128_BLOCK_M, bn = FA_SM80_BWD_HD128_BLOCK_N;
    static constexpr int sdp_wm = 3, sdp_wn = 4, kv_wn = 3, kv_wd = 4, dq_wm = 3, dq_wd = 4;
    static constexpr int sdp_mt = 1, dq_mt = 1, sdp_steps = kGemmStepsInFlight;
    static constexpr int stages = FA_SM80_BWD_NARROW_STAGES;
    static constexpr int dq_passes = 1;
    static constexpr int dp_tiles = 3, schedule = 1;
};
template <> struct BwdTileOf<256, false> {
    static constexpr int bm = FA_SM80_BWD_HD256_BLOCK_M, bn = FA_SM80_BWD_HD256_BLOCK_N;
    static constexpr int sdp_wm = 2, sdp_wn = 6, kv_wn = 3, kv_wd = 4, dq_wm = 2, dq_wd = 4;
    static constexpr int sdp_mt = 1, dq_mt = 1, sdp_steps = kGemmStepsInFlight;
    static constexpr int stages = FA_SM80_BWD_NARROW_STAGES;
    static constexpr int dq_passes = 1;
    static constexpr int dp_tiles = 1, schedule = 0;
};
template <> struct BwdTileOf<64, true> {
    static constexpr int bm = FA_SM80_BWD_WIDE_HD64_BLOCK_M, bn = FA_SM80_BWD_WIDE_HD64_BLOCK_N;
    static constexpr int sdp_wm = 4, sdp_wn = 3, kv_wn = 6, kv_wd = 2, dq_wm = 4, dq_wd = 2;
    static constexpr int sdp_mt = 1, dq_mt = 1, sdp_steps = 3;
    static constexpr int stages = FA_SM80_BWD_WIDE_HD64_STAGES;
    static constexpr int dq_passes = 1;
    static constexpr int dp_tiles = 4, schedule = 0;
};
template <> struct BwdTileOf<128, true> {
    static constexpr int bm = FA_SM80_BWD_WIDE_HD128_BLOCK_M, bn = FA_SM80_BWD_WIDE_HD128_BLOCK_N;
    static constexpr int sdp_wm = 4, sdp_wn = 3, kv_wn = 3, kv_wd = 4, dq_wm = 2, dq_wd = 4;
    static constexpr int sdp_mt = 1, dq_mt = 2, sdp_steps = kGemmStepsInFlight;
    static constexpr int stages = FA_SM80_BWD_WIDE_HD128_STAGES;
    static constexpr int dq_passes = 1;
    static constexpr int dp_tiles = 2, schedule = 1;
};
template <> struct BwdTileOf<256, true> {
    static constexpr int bm = FA_SM80_BWD_WIDE_HD256_BLOCK_M, bn = FA_SM80_BWD_WIDE_HD256_BLOCK_N;
    static constexpr int sdp_wm = 4, sdp_wn = 3, kv_wn = 3, kv_wd = 4, dq_wm = 2, dq_wd = 4;
    static constexpr int sdp_mt = 1, dq_mt = 2, sdp_steps = kGemmStepsInFlight;
    static constexpr int stages = FA_SM80_BWD_WIDE_HD256_STAGES;
    static constexpr int dq_passes = 2;
    static constexpr int dp_tiles = 2, schedule = 0;
};

template <int HDP, bool WIDE>
struct BwdConfig {
    using T = BwdTileOf<HDP, WIDE>;
    static constexpr int kHeadDim = HDP;
    static constexpr bool kWide = WIDE;
    static constexpr int kBM = T::bm;
    static constexpr int kBN = T::bn;
    static constexpr int kRowBytes = FA_SM80_BWD_ROW_BYTES(HDP);
    static constexpr int kPSRowBytes = FA_SM80_BWD_PS_ROW_BYTES(kBN);
    /* Q, dO, lse and delta: kStages buffers, the step's stage s at offset + s * stage bytes
       (q_at, do_at, lse_at, delta_at); 2 in the wide tier at head_dim 64 and 128, where the
       next step's are copied while this one runs */
    static constexpr int kStages = T::stages;
    static constexpr int kQdoStageBytes = FA_SM80_BWD_QDO_STAGE_BYTES(HDP, kBM);
    static constexpr int kStatsStageBytes = FA_SM80_BWD_STATS_STAGE_BYTES(kBM);
    static constexpr int kKOffset = FA_SM80_BWD_K_OFFSET(HDP, kBM, kBN);
    static constexpr int kVOffset = FA_SM80_BWD_V_OFFSET(HDP, kBM, kBN);
    static constexpr int kQOffset = FA_SM80_BWD_Q_OFFSET(HDP, kBM, kBN);
    static constexpr int kDOOffset = FA_SM80_BWD_DO_OFFSET(HDP, kBM, kBN);
    static constexpr int kPOffset = FA_SM80_BWD_P_OFFSET(HDP, kBM, kBN, kStages);
    static constexpr int kDSOffset = FA_SM80_BWD_DS_OFFSET(HDP, kBM, kBN, kStages);
    static constexpr int kLseOffset = FA_SM80_BWD_LSE_OFFSET(HDP, kBM, kBN, kStages);
    static constexpr int kDeltaOffset = FA_SM80_BWD_DELTA_OFFSET(HDP, kBM, kBN, kStages);
    static constexpr int kIdsOffset = FA_SM80_BWD_IDS_OFFSET(HDP, kBM, kBN, kStages);
    /* ints per warp after the walk: its step (h, m), and its stage where there are two */
    static constexpr int kWarpPosInts = kStages == 1 ? 2 : 3;
    /* the batch entry of a packed batch's CTA (BwdEntrySlot), after the warps' steps */
    static constexpr int kEntryOffset = kIdsOffset + FA_SM80_BWD_ENTRY_AT(kStages);
    static constexpr int kSmemBytes = FA_SM80_BWD_SMEM_BYTES(HDP, kBM, kBN, kStages);
    /* stage s's Q, dO, lse and delta (s is 0 where there is one stage) */
    __device__ __forceinline__ static uint32_t q_at(int s) { return kQOffset + s * kQdoStageBytes; }
    __device__ __forceinline__ static uint32_t do_at(int s) { return kDOOffset + s * kQdoStageBytes; }
    __device__ __forceinline__ static uint32_t lse_at(int s) { return kLseOffset + s * kStatsStageBytes; }
    __device__ __forceinline__ static uint32_t delta_at(int s) { return kDeltaOffset + s * kStatsStageBytes; }
    /* what load_tile_async (sm80_load.cuh) reads of a config */
    static constexpr int kChunksPerRow = HDP / 8;
    static constexpr int kRowsPerPass = kThreads / kChunksPerRow;

    /* S and dP: warp (wm, wn) owns rows kSdpM wm .. + kSdpM - 1 and keys kSdpN wn .. +
       kSdpN - 1 */
    static constexpr int kSdpWM = T::sdp_wm, kSdpWN = T::sdp_wn;
    static constexpr int kSdpMT = T::sdp_mt;
    static constexpr int kSdpM = 16 * kSdpMT;
    static constexpr int kSdpN = kBN / kSdpWN;
    static constexpr int kSdpNT = kSdpN / 8;
    static constexpr int kSdpKS = HDP / 16;
    static constexpr int kSdpDpTiles = T::dp_tiles; /* n8 tiles per pass (sdp_block) */
    static constexpr int kSdpSteps = T::sdp_steps; /* warp_gemm's STEPS for S and dP */
    /* the order of a query block's GEMMs and copies (sm80_bwd_kernel.cuh) */
    static constexpr int kSchedule = T::schedule;
    /* dK and dV: warp (wn, wd) owns keys kKvM wn .. and head_dim columns kKvD wd .. */
    static constexpr int kKvWN = T::kv_wn, kKvWD = T::kv_wd;
    static constexpr int kKvM = kBN / kKvWN;
    static constexpr int kKvMT = kKvM / 16;
    static constexpr int kKvD = HDP / kKvWD;
    static constexpr int kKvNT = kKvD / 8;
    static constexpr int kKvKS = kBM / 16;
    /* dQ, in kDqPasses passes over head_dim (each kDqPassCols wide, its accumulator live for
       that pass only): warp (wm, wd) owns rows kDqM wm .. and, in pass c, head_dim columns
       c kDqPassCols + kDqD wd ..; warps from kDqWarps on sit it out */
    static constexpr int kDqWM = T::dq_wm, kDqWD = T::dq_wd;
    static constexpr int kDqMT = T::dq_mt;
    static constexpr int kDqM = 16 * kDqMT;
    static constexpr int kDqWarps = kDqWM * kDqWD;
    static constexpr int kDqPasses = T::dq_passes;
    static constexpr int kDqPassCols = HDP / kDqPasses;
    static constexpr int kDqD = kDqPassCols / kDqWD;
    static constexpr int kDqNT = kDqD / 8;
    static constexpr int kDqKS = kBN / 16;

    static_assert(kThreads == 384 && kWarps == 12, "the layout is written for 12 warps");
    static_assert(kSdpWM * kSdpM == kBM && kSdpWM * kSdpWN == kWarps, "S/dP: whole warp tiles");
    static_assert(kSdpN % 8 == 0 && kBN % kSdpWN == 0, "S/dP: whole n8 tiles");
    static_assert(kSdpNT % 2 == 0 || kSdpKS % 2 == 0, "a lone n8 tile loads two k16 steps");
    static_assert(kSdpNT % kSdpDpTiles == 0, "dP passes cover the tile");
    static_assert(kKvWN * kKvWD == kWarps && kKvM % 16 == 0 && kBN % kKvWN == 0,
                  "dK/dV: whole warp tiles");
    static_assert(kKvNT % 2 == 0 && HDP % kKvWD == 0, "dK/dV: pairs of n8 tiles");
    static_assert(kDqWM * kDqM == kBM && kDqWarps <= kWarps, "dQ: whole warp tiles");
    static_assert(kDqNT % 2 == 0 && HDP % (kDqWD * kDqPasses) == 0, "dQ: pairs of n8 tiles");
    static_assert(kDqPasses == 1 || kDqPasses == 2, "dQ in one or two passes");
    /* a warp's head_dim slice starts on a multiple of its width (in chunks), so the swizzle's
       XOR terms of slice, lane and step never share a bit (SmemOperand) */
    static_assert((kKvD / 8 & (kKvD / 8 - 1)) == 0 && (kDqD / 8 & (kDqD / 8 - 1)) == 0,
                  "power-of-two head_dim slices");
    static_assert(kRowBytes % 128 == 0, "swizzled rows span whole 128-byte groups");
    static_assert(kThreads % kChunksPerRow == 0, "a load pass covers whole rows");
    static_assert(2 * kBM <= kThreads, "one thread per row copies lse, one delta");
    static_assert(FA_SM80_BWD_IDS_BYTES(kStages) >= 32 + 4 * kWarpPosInts * kWarps,
                  "the walk and a step per warp");
    static_assert(kStages == 1 || kStages == 2, "Q/dO single or double buffered");
    static_assert(FA_SM80_BWD_ENTRY_AT(kStages) >= 32 + 4 * kWarpPosInts * kWarps &&
                      FA_SM80_BWD_IDS_BYTES(kStages) >= FA_SM80_BWD_ENTRY_AT(kStages) + 20,
                  "the entry's 5 ints after the warps' steps");
    static_assert(kSmemBytes <= (WIDE ? FA_SM80_BWD_WIDE_SMEM_LIMIT : FA_SM80_SMEM_LIMIT),
                  "narrow fits 99 KB of shared memory, wide sm_80's 163 KB");
    static_assert(kKOffset % 128 == 0 && kVOffset % 128 == 0 && kQOffset % 128 == 0 &&
                      kDOOffset % 128 == 0 && kPOffset % 16 == 0 && kDSOffset % 16 == 0 &&
                      kLseOffset % 16 == 0 && kIdsOffset % 16 == 0 && kQdoStageBytes % 128 == 0,
                  "regions keep the alignment of their accesses");
};

/* The kernel's argument block (built by make_bwd_args in bwd_sm80.cu); it lives in the
   constant bank. */
struct BwdArgs {
    const void *q, *k, *v, *dout;
    void *dk, *dv;
    const float *lse;   /* (batch, heads_q, seqlen_q), natural log; packed (heads_q, total_q) */
    const float *delta; /* same layout */
    float *dq_accum;    /* lse's layout, times head_dim */
    int *dq_lock;       /* (batch, heads_q, lock_blocks); deterministic only */
    int64_t q_batch_stride, q_row_stride, q_head_stride;
    int64_t k_batch_stride, k_row_stride, k_head_stride;
    int64_t v_batch_stride, v_row_stride, v_head_stride;
    int64_t do_batch_stride, do_row_stride, do_head_stride;
    int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
    int64_t dv_batch_stride, dv_row_stride, dv_head_stride;
    int seqlen_q, seqlen_k, heads_q, head_dim;
    int heads_per_kv;
    /* the window of the uniform batch, normalised by fa_mask_make on the host */
    int window_left, window_right;
    int lock_blocks; /* ceil(seqlen_q / BLOCK_M) */
    int deterministic;
    fa_key_block_order key_blocks; /* CTA blockIdx.x's key block */
    fa_score score;
    float softmax_scale;
    /* Where each batch entry's rows and keys are (seqlen.h), read by the SEQ instances: packed
       cu_seqlens and seqused_k (the host refuses paged or kv_batch_idx k/v for the backward).
       dq_accum rows and delta are laid out like the LSE (fa_lse_index). Last, so that the
       uniform instances see every field before it where it was. */
    fa_seq_layout layout;
};

/* SEQ instances: the CTA's batch entry (fa_seqlen_at) in shared memory, 5 ints at `at`
   (kEntryOffset: in the dynamic region, as the walk is; in a static array ptxas kept its
   address in a register across the main loop and spilled it in the wide packed instances):
   len_q, len_k, q_row0, k_row0, kv_batch; thread 0 stores it with the walk (CtaWalk::save)
   and every later use reads it back (CtaWalk::saved), as the walk itself is. */
struct BwdEntrySlot {
    uint32_t at;

    __device__ __forceinline__ void store(const fa_seqlen &e) const
    {
        st_shared_s32(at, e.len_q);
        st_shared_s32(at + 4, e.len_k);
        st_shared_s32(at + 8, static_cast<int>(e.q_row0));
        st_shared_s32(at + 12, static_cast<int>(e.k_row0));
        st_shared_s32(at + 16, e.kv_batch);
    }
    __device__ __forceinline__ fa_seqlen load() const
    {
        fa_seqlen e;
        e.len_q = ld_shared_s32(at);
        e.len_k = ld_shared_s32(at + 4);
        e.q_row0 = ld_shared_s32(at + 8);
        e.k_row0 = ld_shared_s32(at + 12);
        e.kv_batch = ld_shared_s32(at + 16);
        return e;
    }
};

__device__ __forceinline__ fa_mask make_bwd_mask(const BwdArgs &a, int len_q, int len_k)
{
    fa_mask m;
    m.len_q = len_q;
    m.len_k = len_k;
    m.left = a.window_left;
    m.right = a.window_right;
    m.first_key = 0;
    return m;
}

/* An ldmatrix operand: a warp's fragment origin in a shared-memory tile, with this lane's
   part (its lane pattern) folded in; at(r, c) adds a compile-time row offset r (a multiple of
   8) and chunk offset c. In a swizzled tile (chunk ^ row % 8) the row offset leaves row % 8
   alone and the chunk offsets of origin, lane and access occupy disjoint bits, so the swizzle
   of the sum is an XOR of constants into the lane's term. */
template <bool SWZ, int RB>
struct SmemOperand {
    uint32_t base; /* tile + origin row * RB + the origin chunk's 128-byte group */
    uint32_t lane; /* lane row * RB + its swizzled chunk within the group, * 16 */

    __device__ __forceinline__ uint32_t at(int r, int c) const
    {
        if constexpr (SWZ)
            return base + (lane ^ static_cast<uint32_t>((c & 7) << 4)) + ((c & ~7) << 4) + r * RB;
        else
            return base + lane + r * RB + c * 16;
    }
};

/* The operand at row row0 (a multiple of 8) and chunk chunk0 of the tile at tile_base, for a
   lane at (r_l, c_l) of its pattern. */
template <bool SWZ, int RB>
__device__ __forceinline__ SmemOperand<SWZ, RB> make_operand(uint32_t tile_base, int row0,
                                                             int chunk0, int r_l, int c_l)
{
    SmemOperand<SWZ, RB> o;
    if constexpr (SWZ) {
        o.base = tile_base + row0 * RB + ((chunk0 & ~7) << 4);
        o.lane = r_l * RB + ((((chunk0 & 7) | c_l) ^ (r_l & 7)) << 4);
    } else {
        o.base = tile_base + row0 * RB + chunk0 * 16;
        o.lane = r_l * RB + c_l * 16;
    }
    return o;
}

__device__ __forceinline__ int lane_row_x(int l) { return (l & 7) + ((l >> 3) & 1) * 8; }
__device__ __forceinline__ int lane_chunk_x(int l) { return l >> 4; }
__device__ __forceinline__ int lane_row_y(int l) { return (l & 7) + (l >> 4) * 8; }
__device__ __forceinline__ int lane_chunk_y(int l) { return (l >> 3) & 1; }
__device__ __forceinline__ int lane_row_z(int l) { return l & 7; }
__device__ __forceinline__ int lane_chunk_z(int l) { return l >> 3; }

/* 4-byte global -> shared copy (through L1: lse and delta rows are not 16-byte aligned);
   src_bytes 0 writes zero. */
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void *src, uint32_t src_bytes)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                 :
                 : "r"(dst), "l"(src), "r"(src_bytes)
                 : "memory");
}

/* at[0] += a, at[1] += b, no value returned: one vector reduction on sm_90 (atomicAdd on a
   float2 became an ATOMG that returns its result), two scalar ones before. */
__device__ __forceinline__ void red_add_f32x2(float *at, float a, float b)
{
#if __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(at), "f"(a), "f"(b) : "memory");
#else
    asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(at), "f"(a) : "memory");
    asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(at + 1), "f"(b) : "memory");
#endif
}

} /* namespace fa_sm80 */

#endif /* FA_SM80_BWD_CONFIG_CUH */
