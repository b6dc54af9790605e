/*
 * sm80_config.cuh -- compile-time shape of one sm80 instance (Config), the kernel's argument
 * block (Args), and the small index helpers every part of the kernel shares.
 *
 * A CTA: 384 threads = 12 warps; warp w owns query rows 16 * row_group .. + 15 of the tile
 * (row_group = w / D_SPLIT) and, with D_SPLIT 2, head_dim half d_half = w % 2. Per warp and
 * sub-block of SUB_N keys, in registers (fp32 unless noted; lane = 4 g + t, PTX fragments):
 *   Q  A fragments   kQSteps x 4 (16-bit pairs)   16 rows x WARP_DIM columns, loaded once
 *   S  C fragments   kSTiles x 4                  16 rows x SUB_N keys
 *   P  A fragments   kPSteps x 4 (16-bit pairs)   S after exp2, packed
 *   O  C fragments   kOTiles x 4                  16 rows x WARP_DIM columns
 *   m, l             2 + 2                        rows g and g + 8: running max, partial sums
 * At head_dim 128: Q 32 + S 24 + P 12 + O 64 registers, of 168.
 */
#ifndef FA_SM80_CONFIG_CUH
#define FA_SM80_CONFIG_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "../common/mask.h"
#include "../common/score.h"
#include "../common/seqlen.h"
#include "../launch_contract.h"
#include "kernels.h"
#include "sm80_ptx.cuh"
#include "sm80_tiles.h"

namespace fa_sm80 {

constexpr int kThreads = FA_THREADS_PER_BLOCK;
constexpr int kWarps = FA_NUM_WARPS_PER_BLOCK;
static_assert(kWarps * FA_WARP_SIZE == kThreads, "12 warps of 32 threads");
static_assert(kThreads == 384 && kWarps == 12, "the sm80 layout is written for 384 threads");

template <int HDP> struct TileOf;
#define FA_SM80_TILE_OF(HD)                                                                    \
    template <> struct TileOf<HD> {                                                            \
        static constexpr int block_n = FA_SM80_HD##HD##_BLOCK_N, sub_n = FA_SM80_HD##HD##_SUB_N, \
                             sub_n_softcap = FA_SM80_HD##HD##_SUB_N_SOFTCAP,                   \
                             d_split = FA_SM80_HD##HD##_D_SPLIT,                               \
                             stages = FA_SM80_HD##HD##_STAGES,                                 \
                             qk_ahead = FA_SM80_HD##HD##_QK_AHEAD,                             \
                             mbar = FA_SM80_HD##HD##_MBAR;                                     \
    };
FA_SM80_TILE_OF(64)
FA_SM80_TILE_OF(128)
FA_SM80_TILE_OF(256)
#undef FA_SM80_TILE_OF

template <int HDP, bool SOFTCAP>
struct Config {
    using T = TileOf<HDP>;
    static constexpr int kHeadDim = HDP;
    static constexpr int kDS = T::d_split; /* warps splitting head_dim */
    static constexpr int kStages = T::stages;
    static constexpr int kBlockN = T::block_n;
    static constexpr int kSubN = SOFTCAP ? T::sub_n_softcap : T::sub_n;
    static constexpr int kSubs = kBlockN / kSubN;
    static constexpr int kWarpRows = 16;
    static constexpr int kBlockM = FA_SM80_BLOCK_M(kDS);
    static constexpr int kRowGroups = kWarps / kDS;
    /* head_dim columns a warp reduces over in Q K^T and owns in O */
    static constexpr int kWarpDim = HDP / kDS;
    static constexpr int kRowBytes = FA_SM80_ROW_BYTES(HDP);
    static constexpr int kKVBytes = FA_SM80_KV_BYTES(HDP, kBlockN);
    static constexpr int kStageBytes = FA_SM80_STAGE_BYTES(HDP, kBlockN);
    static constexpr int kQOffset = FA_SM80_Q_OFFSET(HDP, kBlockN, kStages);
    static constexpr int kXchgOffset = FA_SM80_XCHG_OFFSET(HDP, kBlockN, kStages);
    static constexpr int kSmemBytes = FA_SM80_SMEM_BYTES(HDP, kBlockN, kDS, kStages);
    /* 16-byte chunks per smem row; a pass of all 384 threads covers kRowsPerPass whole rows */
    static constexpr int kChunksPerRow = HDP / 8;
    static constexpr int kRowsPerPass = kThreads / kChunksPerRow;
    static constexpr int kSTiles = kSubN / 8;     /* n8 tiles of S per sub-block */
    static constexpr int kOTiles = kWarpDim / 8;  /* n8 tiles of O */
    static constexpr int kQSteps = kWarpDim / 16; /* k16 steps of Q K^T */
    static constexpr int kPSteps = kSubN / 16;    /* k16 steps of P V per sub-block */
    static constexpr bool kQKAhead = T::qk_ahead != 0 && kSubs > 1;
    /* K/V pipeline: false, every thread loads and one __syncthreads per block; true, the
       block at visiting index i is loaded by warpgroup i % 3 alone, full/empty mbarriers per
       stage replace the block-wide barrier */
    static constexpr bool kMbar = T::mbar != 0;
    static constexpr int kLoadThreads = kMbar ? kThreads / FA_NUM_WARPGROUPS : kThreads;

    static_assert(kRowGroups * kDS == kWarps, "every warp has a role");
    static_assert(kRowGroups * kWarpRows == kBlockM, "warps tile BLOCK_M exactly");
    static_assert(kBlockM <= kThreads, "one thread per row writes an empty tile's LSE");
    static_assert(kDS == 1 || kDS == 2, "pairs of warps share head_dim at most");
    static_assert(kStages >= 2 && kStages <= 4, "cp.async ring of 2 to 4 stages");
    static_assert(kThreads % kChunksPerRow == 0, "a load pass covers whole rows");
    /* the swizzle permutes chunks within 128-byte groups; a warp's columns start on one */
    static_assert(kWarpDim % 64 == 0, "a warp's head_dim slice spans whole 128-byte groups");
    static_assert(kBlockN % kSubN == 0, "blocks are whole sub-blocks");
    static_assert(kSubN % 16 == 0, "sub-blocks are whole k16 steps");
    /* the exchange buffer holds one sub-block and is reused only after a __syncthreads */
    static_assert(kDS == 1 || kSubs == 1, "split head_dim runs one sub-block per block");
    static_assert(kDS == 1 || !kQKAhead, "the S exchange runs on the plain path only");
    /* the exchange buffer is rewritten only after a block-wide barrier */
    static_assert(kDS == 1 || !kMbar, "split head_dim needs the __syncthreads pipeline");
    static_assert(kSmemBytes <= FA_SM80_SMEM_LIMIT, "fits 99 KB of shared memory");
    static_assert(kQOffset + kBlockM * kRowBytes <= kSmemBytes, "Q fits its region");
};

/* The kernel's argument block, built on the host by make_args from the public fa_params
   (which may grow, and carries host-only fields): what the kernel reads, in the form it reads
   it. Kernel arguments live in the constant bank, so a field used in the main loop costs no
   register. */
struct Args {
    const void *q, *k, *v;
    void *out;
    float *lse;         /* NULL: not written */
    const float *sinks; /* NULL, or one logit per q head */
    int64_t q_batch_stride, q_row_stride, q_head_stride;
    int64_t k_batch_stride, k_row_stride, k_head_stride; /* k's batch stride: the page's, paged */
    int64_t v_batch_stride, v_row_stride, v_head_stride;
    int64_t o_batch_stride, o_row_stride, o_head_stride;
    int seqlen_q, seqlen_k; /* = layout's: what the uniform instances read (layout_of) */
    int heads_q, head_dim;
    int heads_per_kv; /* heads_q / heads_kv: consecutive q heads share one kv head */
    /* The window, normalised by fa_mask_make on the host against the longest entry (make_args) */
    int window_left, window_right;
    fa_score score;
    /* Where each batch entry's rows and keys are (seqlen.h): lengths (the maxima when packed),
       cu_seqlens, seqused_k, kv_batch_idx, block_table; the SEQ instances read it. Every row
       address, length and LSE index of the kernel comes through seqlen.h's functions. Last,
       so that the uniform instances see the fields before it where they were: ptxas's
       register allocation followed the argument offsets (up to 4 registers at head_dim 64). */
    fa_seq_layout layout;
};

/* The mask of one batch entry (mask.h), for its own lengths. make_args ran fa_mask_make once
   on the host, against seqlen_q and seqlen_k (the maxima of a packed batch), and the window
   arrives in the constant bank: normalising it here held two more registers across the main
   loop and spilled. Normalising against an entry's own lengths gives the same spans: a bound
   is dropped only where it reaches past every key of every row (left >= len_k, right >=
   len_q), and a bound at least the maxima reaches past those of every entry. The full and
   causal instances were picked for a window of (-1, -1) or (-1, 0) (fa_params_mask_kind):
   spelled as constants, every compare against them folds, and these instances run the code
   they ran before windows existed. */
template <fa_mask_kind MASK>
__device__ __forceinline__ fa_mask make_mask(const Args &a, int len_q, int len_k)
{
    fa_mask m;
    m.len_q = len_q;
    m.len_k = len_k;
    m.left = MASK == FA_MASK_LOCAL ? a.window_left : -1;
    m.right = MASK == FA_MASK_LOCAL ? a.window_right : MASK == FA_MASK_CAUSAL ? 0 : -1;
    m.first_key = 0;
    return m;
}

/* A 32-bit shared-memory load that stays where it is written: values kept in shared memory
   are read there at each use, not hoisted into a register held across the main loop. */
__device__ __forceinline__ int ld_shared_s32(uint32_t addr)
{
    int v;
    asm volatile("ld.shared.s32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
    return v;
}

__device__ __forceinline__ void st_shared_s32(uint32_t addr, int v)
{
    asm volatile("st.shared.s32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}

__device__ __forceinline__ int64_t ld_shared_s64(uint32_t addr)
{
    int64_t v;
    asm volatile("ld.shared.s64 %0, [%1];\n" : "=l"(v) : "r"(addr) : "memory");
    return v;
}

__device__ __forceinline__ void st_shared_s64(uint32_t addr, int64_t v)
{
    asm volatile("st.shared.s64 [%0], %1;\n" ::"r"(addr), "l"(v) : "memory");
}

/* The layout of a uniform batch (no cu_seqlens, seqused_k, kv_batch_idx or block table): a's
   lengths with every array pointer a constant NULL, so that each seqlen.h function folds to
   the uniform arithmetic (entry b: batch index b, len_q = seqlen_q, len_k = seqlen_k) and the
   lengths stay in the constant bank. The uniform instances (SEQ false) read the layout
   through this; the host picks them only when p has none of those arrays. A: the forward's
   Args or the backward's BwdArgs (seqlen_q, seqlen_k, layout). */
template <bool SEQ, class A>
__device__ __forceinline__ fa_seq_layout layout_of(const A &a)
{
    if constexpr (SEQ)
        return a.layout;
    fa_seq_layout l;
    l.seqlen_q = a.seqlen_q;
    l.seqlen_k = a.seqlen_k;
    l.total_q = 0;
    l.cu_seqlens_q = l.cu_seqlens_k = nullptr;
    l.seqused_k = nullptr;
    l.kv_batch_idx = nullptr;
    l.block_table = nullptr;
    l.block_table_stride = 0;
    l.page_size = 1;
    l.seqlen_new = 0;
    return l;
}

/* SEQ instances: what the main loop and the epilogue need of the CTA's batch entry (seqlen.h)
   and of its walk over key blocks, in static shared memory at `at` (8-byte aligned):
     int     len_q, len_k, q_row0, n_max, n_vis, n_top, n_bottom, rows   (bytes 0 .. 31)
     int64   k_off, v_off                                                 (bytes 32 .. 47)
   q_row0 is the entry's first packed row (an int32 cu_seqlens value); rows = row_end - row0,
   the tile's rows inside the entry; k_off and v_off are fa_k_row_offset of the entry's key 0
   in k and v (unpaged: key j is at k_off + j * row_stride). The prologue takes the entry from
   global memory into registers; thread 0 stores this before the prologue's barrier, and the
   main loop and the epilogue read back, at each use, the fields they need: held across the
   main loop they spilled (ptxas, head_dim 128), where the uniform instances derive them from
   the constant bank. */
struct EntrySlot {
    uint32_t at;

    __device__ __forceinline__ void store(const fa_seqlen &e, int n_max, int n_vis, int n_top,
                                          int n_bottom, int rows, int64_t k_off,
                                          int64_t v_off) const
    {
        st_shared_s32(at, e.len_q);
        st_shared_s32(at + 4, e.len_k);
        st_shared_s32(at + 8, static_cast<int>(e.q_row0));
        st_shared_s32(at + 12, n_max);
        st_shared_s32(at + 16, n_vis);
        st_shared_s32(at + 20, n_top);
        st_shared_s32(at + 24, n_bottom);
        st_shared_s32(at + 28, rows);
        st_shared_s64(at + 32, k_off);
        st_shared_s64(at + 40, v_off);
    }
    __device__ __forceinline__ int len_q() const { return ld_shared_s32(at); }
    __device__ __forceinline__ int len_k() const { return ld_shared_s32(at + 4); }
    /* what q's rows and the LSE need (fa_q_row_offset, fa_lse_index) */
    __device__ __forceinline__ fa_seqlen q_side() const
    {
        fa_seqlen e;
        e.len_q = ld_shared_s32(at);
        e.len_k = 0;
        e.q_row0 = ld_shared_s32(at + 8);
        e.k_row0 = 0;
        e.kv_batch = 0;
        return e;
    }
    __device__ __forceinline__ int n_max() const { return ld_shared_s32(at + 12); }
    __device__ __forceinline__ int n_vis() const { return ld_shared_s32(at + 16); }
    __device__ __forceinline__ int n_top() const { return ld_shared_s32(at + 20); }
    __device__ __forceinline__ int n_bottom() const { return ld_shared_s32(at + 24); }
    __device__ __forceinline__ int rows() const { return ld_shared_s32(at + 28); }
    __device__ __forceinline__ int64_t k_off() const { return ld_shared_s64(at + 32); }
    __device__ __forceinline__ int64_t v_off() const { return ld_shared_s64(at + 40); }
};
constexpr int kSlotBytes = 48;

/* The mask of the CTA's batch entry where the main loop needs it (masked blocks): built there
   from the slot's lengths (SEQ), or the one the kernel built at its top (uniform: every entry
   has seqlen_q and seqlen_k, and the compiler derives its fields from the constant bank;
   built inside the loop, its window's loads and differences were hoisted out of it and held,
   and ptxas spilled at head_dim 64). */
template <bool SEQ>
struct EntryMask {
    EntrySlot slot;
    fa_mask uniform;

    template <fa_mask_kind MASK>
    __device__ __forceinline__ fa_mask get(const Args &p) const
    {
        if constexpr (SEQ)
            return make_mask<MASK>(p, slot.len_q(), slot.len_k());
        return uniform;
    }
};

/* Whether a key is visible in a row's span; the lower bound exists only with a left window. */
template <fa_mask_kind MASK>
__device__ __forceinline__ bool key_visible(const fa_key_span &span, int key)
{
    return key <= span.hi && (MASK != FA_MASK_LOCAL || key >= span.lo);
}

/* Query tiles in reverse launch order when masked: with a causal or right-bounded window the
   last rows see the most keys, and the longest tiles then start first. */
template <fa_mask_kind MASK>
__device__ __forceinline__ int m_block_of(int block_x, int grid_x)
{
    return MASK != FA_MASK_NONE ? grid_x - 1 - block_x : block_x;
}

/* threadIdx.x, read afresh: values derived from it after the main loop are then recomputed
   there instead of being held (or spilled) across the loop. */
__device__ __forceinline__ int reread_thread_index()
{
    int tid;
    asm volatile("mov.u32 %0, %%tid.x;" : "=r"(tid));
    return tid;
}

/* blockIdx.x and gridDim.x, read afresh (as reread_thread_index). */
__device__ __forceinline__ int reread_block_index_x()
{
    int bx;
    asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(bx));
    return bx;
}
/* blockIdx.z (the batch entry), read afresh: the paged K/V loads of the main loop need it. */
__device__ __forceinline__ int reread_block_index_z()
{
    int bz;
    asm volatile("mov.u32 %0, %%ctaid.z;" : "=r"(bz));
    return bz;
}
__device__ __forceinline__ int reread_grid_dim_x()
{
    int nx;
    asm volatile("mov.u32 %0, %%nctaid.x;" : "=r"(nx));
    return nx;
}

/* The tile's first query row, from a fresh read of blockIdx.x. gridDim.x is a constant-bank
   value, yet ptxas held it in a register across the main loop (and spilled it) where the row
   is needed there: the local softcap instance at head_dim 128, and in the SEQ instances,
   whose per-block row tests read the entry's rows from shared memory, the causal ones on
   sm_90. Those read it afresh too. */
template <class C, fa_mask_kind MASK, bool SEQ = false>
__device__ __forceinline__ int tile_row0()
{
    const int grid_x = MASK == FA_MASK_LOCAL || SEQ ? reread_grid_dim_x()
                                                    : static_cast<int>(gridDim.x);
    return m_block_of<MASK>(reread_block_index_x(), grid_x) * C::kBlockM;
}

/* Byte offset, inside smem row `row`, of the row's logical 16-byte chunk `chunk`. The XOR
   spreads the 8 rows an ldmatrix phase reads (and the 8 chunks a cp.async phase writes) over
   all 32 banks. */
__device__ __forceinline__ uint32_t swizzle(int row, int chunk)
{
    return static_cast<uint32_t>((chunk ^ (row & 7)) << 4);
}

template <bool BF16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi)
{
    uint32_t bits;
    if constexpr (BF16) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        bits = *reinterpret_cast<uint32_t *>(&v);
    } else {
        __half2 v = __floats2half2_rn(lo, hi);
        bits = *reinterpret_cast<uint32_t *>(&v);
    }
    return bits;
}

template <bool BF16>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1)
{
    if constexpr (BF16)
        mma_m16n8k16_bf16(d, a, b0, b1);
    else
        mma_m16n8k16_f16(d, a, b0, b1);
}

} /* namespace fa_sm80 */

#endif /* FA_SM80_CONFIG_CUH */
