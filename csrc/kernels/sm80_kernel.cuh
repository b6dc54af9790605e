/*
 * sm80_kernel.cuh -- the sm80 forward kernel's skeleton: prologue (the tile's key-block range,
 * Q and the first K/V blocks), the walk over key blocks n_max - 1 down to n_min (key_block
 * for one of them), the epilogue. fwd_sm80.cu instantiates it (its top comment has the
 * design); a translation unit per head_dim can include this header and instantiate its own
 * third of the table.
 */
#ifndef FA_SM80_KERNEL_CUH
#define FA_SM80_KERNEL_CUH

#include "../common/block_range.h"
#include "../common/mask.h"
#include "../common/score.h"
#include "../common/seqlen.h"
#include "sm80_config.cuh"
#include "sm80_epilogue.cuh"
#include "sm80_load.cuh"
#include "sm80_softmax.cuh"

namespace fa_sm80 {

/* What a warp needs of its place in the CTA inside the main loop. */
struct WarpPos {
    int lane, warp, row_group;
    uint32_t k_lane_off; /* ldmatrix offsets inside a stage, see the kernel */
    uint32_t v_lane_off;
};

/* The warp's Q fragments (its 16 rows, its head_dim columns from d_first) from the Q tile:
   ldmatrix x4 matrices, rows 0-7 / 8-15 of the m16 tile at columns +0, then +8. */
template <class C>
__device__ __forceinline__ void load_q_frags(uint32_t (&q_frag)[C::kQSteps][4], uint32_t smem_base,
                                             int row_group, int d_first, int lane)
{
    const int r = row_group * C::kWarpRows + (lane & 7) + ((lane >> 3) & 1) * 8;
    const uint32_t row_addr = smem_base + C::kQOffset + r * C::kRowBytes;
#pragma unroll
    for (int ks = 0; ks < C::kQSteps; ++ks) {
        const int chunk = d_first / 8 + 2 * ks + (lane >> 4);
        ldmatrix_x4(q_frag[ks], row_addr + swizzle(r, chunk));
    }
}

/* One key block kb (in the smem stage at `stage`): its sub-blocks through qk and attend. In
   unmasked blocks with QK_AHEAD, S of the next sub-block is computed before the softmax of
   this one, so its mmas run on the tensor cores while the warp works through the exp2s and
   shuffles. */
template <class C, bool BF16, fa_mask_kind MASK, bool SOFTCAP, bool SEQ>
__device__ __forceinline__ void key_block(const Args &p, RowState<C> &st,
                                          const uint32_t (&q_frag)[C::kQSteps][4],
                                          const WarpPos &w, const EntryMask<SEQ> &masks,
                                          uint32_t stage, int kb, bool masked,
                                          unsigned char *smem)
{
    const int key_block0 = kb * C::kBlockN;
    if (!C::kQKAhead || masked) {
#pragma unroll
        for (int sub = 0; sub < C::kSubs; ++sub) {
            const int key_first = key_block0 + sub * C::kSubN;
            /* Used by masked blocks only, and recomputed there from fresh reads of %tid and
               %ctaid rather than held across the main loop (see reread_thread_index): the
               warp's first row, this lane's fragment row g and first key column 2t. */
            const int m_tid = reread_thread_index();
            const int w_first =
                tile_row0<C, MASK, SEQ>() + (m_tid >> 5) / C::kDS * C::kWarpRows;
            const int row_lo = w_first + ((m_tid & 31) >> 2);
            const int lane_key = 2 * (m_tid & 3);
            if (masked) {
                /* the entry's mask (EntryMask, at this use) */
                const fa_mask mask = masks.template get<MASK>(p);
                /* skip a sub-block no row of this warp sees (warp-uniform): the rows' spans
                   slide right with the row, so their union runs from the first row's lo to the
                   last row's hi */
                const int w_last = min(w_first + C::kWarpRows, mask.len_q) - 1;
                const fa_key_span first = fa_mask_row(&mask, w_first);
                const fa_key_span last = fa_mask_row(&mask, w_last);
                if (key_first > last.hi ||
                    (MASK == FA_MASK_LOCAL && key_first + C::kSubN <= first.lo)) {
                    exchange_skip<C>(w.row_group);
                    continue;
                }
            }
            float s[C::kSTiles][4];
            qk<C, BF16>(s, q_frag, stage + sub * C::kSubN * C::kRowBytes, w.k_lane_off);
            exchange_s<C>(s, smem, w.warp, w.lane, w.row_group);
            attend<C, BF16, MASK, SOFTCAP>(s, st, masked, p, masks, row_lo, key_first + lane_key,
                                           stage + C::kKVBytes + sub * C::kSubN * C::kRowBytes,
                                           w.v_lane_off);
        }
    } else {
        float s_next[C::kSTiles][4];
        qk<C, BF16>(s_next, q_frag, stage, w.k_lane_off);
#pragma unroll
        for (int sub = 0; sub < C::kSubs; ++sub) {
            float s[C::kSTiles][4];
#pragma unroll
            for (int t = 0; t < C::kSTiles; ++t)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    s[t][e] = s_next[t][e];
            if (sub + 1 < C::kSubs)
                qk<C, BF16>(s_next, q_frag, stage + (sub + 1) * C::kSubN * C::kRowBytes,
                            w.k_lane_off);
            attend<C, BF16, MASK, SOFTCAP>(s, st, false, p, masks, 0, 0,
                                           stage + C::kKVBytes + sub * C::kSubN * C::kRowBytes,
                                           w.v_lane_off);
        }
    }
}

/* The tile's Q rows from row0 of (entry, head) into their region, one commit group; rows
   past len_q and columns past head_dim read as zeros (load_tile_async). */
template <class C>
__device__ __forceinline__ void load_q_tile(uint32_t smem_base, const Args &p, const fa_seqlen &entry, int batch,
                                            int head, int row0, bool copy_col_ok, int tid)
{
    const uint16_t *q_ptr = static_cast<const uint16_t *>(p.q) +
                            fa_q_row_offset(&entry, batch, 0, p.q_batch_stride, p.q_row_stride) +
                            static_cast<int64_t>(head) * p.q_head_stride;
    load_tile_async<C, C::kBlockM, kThreads>(smem_base + C::kQOffset, q_ptr, p.q_row_stride, row0, entry.len_q,
                                             copy_col_ok, tid);
    cp_async_commit_group();
}

/* The entry's walk into its slot (SEQ), with key 0 of the entry in k and v (unpaged; paged
   loads address every row themselves). */
__device__ __forceinline__ void store_entry(const EntrySlot &slot, const Args &p, const fa_seqlen &entry, int batch,
                                            int n_max, int n_vis, int n_top, int n_bottom, int rows)
{
    const bool paged = p.layout.block_table != nullptr;
    const int64_t k_off = paged ? 0 : fa_k_row_offset(&p.layout, &entry, batch, 0, p.k_batch_stride, p.k_row_stride);
    const int64_t v_off = paged ? 0 : fa_k_row_offset(&p.layout, &entry, batch, 0, p.v_batch_stride, p.v_row_stride);
    slot.store(entry, n_max, n_vis, n_top, n_bottom, rows, k_off, v_off);
}

/* SEQ false: a uniform batch (layout_of: no layout array), everything from the constant bank
   as before sequence layouts existed; SEQ true: any layout of seqlen.h, the entry and its walk
   kept in shared memory (EntrySlot). The host picks by whether p has a layout array. */
template <int HDP, bool BF16, fa_mask_kind MASK, bool SOFTCAP, bool SEQ>
__global__ void __launch_bounds__(FA_THREADS_PER_BLOCK, 1) fwd_sm80_kernel(const Args p)
{
    using C = Config<HDP, SOFTCAP>;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t smem_base = smem_addr(smem);

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int d_half = warp % C::kDS;
    const int row_group = warp / C::kDS;
    const int d_first = d_half * C::kWarpDim; /* first head_dim column of this warp */

    const int m_block = m_block_of<MASK>(blockIdx.x, gridDim.x);
    const int head = blockIdx.y;
    const int batch = blockIdx.z;
    const int kv_head = head / p.heads_per_kv;
    /* grid.y and grid.z are at most 65535 (launch.c checks), so each fits 16 bits */
    const uint32_t batch_kv_head = (static_cast<uint32_t>(batch) << 16) | kv_head;
    /* The batch entry (seqlen.h): its lengths and where its rows are. The grid covers the
       longest entry; a tile past this entry's rows has nothing to do, and every later row test
       is against the entry's len_q, so no row of the next packed entry is read or written. */
    const fa_seq_layout layout = layout_of<SEQ>(p);
    const fa_seqlen entry = fa_seqlen_at(&layout, batch);
    const int head_dim = p.head_dim;
    const int row0 = m_block * C::kBlockM;
    const int row_end = min(row0 + C::kBlockM, entry.len_q);
    if (row_end <= row0)
        return;

    /* ---- the key blocks this tile visits ---- */
    /* Key blocks n_min <= n < n_max hold every key a row of this tile sees (block_range.h);
       they are visited from n_max - 1 down, n_vis of them. Empty tiles leave here rather than
       run a zero-trip main loop, and len_k == 0 is tested before the range: the range
       function's own empty tests are then dominated by these, its results carry no "or
       empty" alternative, and in the uniform instances without a window the compiler
       recomputes them from the constant bank in the main loop instead of holding registers
       (ptxas spilled at head_dim 128 otherwise). */
    const fa_mask mask = make_mask<MASK>(p, entry.len_q, entry.len_k);
    if (entry.len_k <= 0) {
        store_empty_tile<C>(p, layout, entry, batch, head, row0, row_end);
        return;
    }
    const fa_block_range range = fa_block_range_rows(&mask, row0, row_end, C::kBlockN);
    if (range.n_max <= range.n_min) {
        store_empty_tile<C>(p, layout, entry, batch, head, row0, row_end);
        return;
    }
    const int n_max = range.n_max;
    const int n_vis = range.n_max - range.n_min;
    /* fa_block_needs_mask(&range, kb) in visiting order (kb = n_max - 1 - it): it < n_top
       (kb >= n_full_max) or it >= n_bottom (kb < n_full_min, only with a left window: the
       compare folds away otherwise). As counts, the compiler derives them from the constant
       bank in the main loop of the full uniform instance. */
    const int n_top = range.n_max - range.n_full_max;
    const int n_bottom = range.n_max - range.n_full_min;

    /* ---- prologue: Q and key blocks n_max - 1 .. n_max - (STAGES - 1) ---- */
    /* a thread whose 16-byte chunk lies past head_dim copies zeros (see load_tile_async) */
    const bool copy_col_ok = (tid % C::kChunksPerRow) * 8 < head_dim;
    __shared__ __align__(8) uint64_t stage_bars[2 * C::kStages]; /* full[], then empty[] */
    __shared__ __align__(8) unsigned char slot_bytes[SEQ ? kSlotBytes : 8];
    const EntrySlot slot{smem_addr(slot_bytes)};
    if (SEQ && tid == 0) /* read after ring.init's barrier */
        store_entry(slot, p, entry, batch, n_max, n_vis, n_top, n_bottom, row_end - row0);
    const KVRing<C, SEQ> ring{smem_base, smem_addr(stage_bars), p, batch_kv_head, slot,
                              entry.len_k};
    ring.init(tid);
    load_q_tile<C>(smem_base, p, entry, batch, head, row0, copy_col_ok, tid);
    ring.prologue(n_max, n_vis, copy_col_ok, tid);
    __syncthreads();

    uint32_t q_frag[C::kQSteps][4];
    load_q_frags<C>(q_frag, smem_base, row_group, d_first, lane);
    if constexpr (C::kMbar)
        __syncthreads(); /* Q is in registers: its region (the last stage) may be refilled */

    /* Per-lane ldmatrix offsets inside a stage (rows are keys). Lanes 8i..8i+7 give the row
       addresses of matrix i; each x4 load fills four consecutive registers, and an mma takes
       its two B registers consecutive, so the matrix order differs:
       K (plain), k_lane_off: i = 0..3 at (rows 0-7, +0), (rows 0-7, +8), (rows 8-15, +0),
         (rows 8-15, +8) columns: r0, r1 = b0, b1 of key tile 2n; r2, r3 of key tile 2n+1.
       V (.trans), v_lane_off: i = 0..3 at (rows 0-7, +0), (rows 8-15, +0), (rows 0-7, +8),
         (rows 8-15, +8): r0, r1 = b0, b1 of head_dim tile 2n; r2, r3 of tile 2n+1.
       Chunk 8*h + c lands at 8*h + (c ^ (lane & 7)), and for the two chunks 2j, 2j+1 of k16
       step j within a 128-byte group that is (2j ^ c0) with c0 = col_bit ^ (lane & 7): the
       offset of step j is lane_off ^ (j << 5), one register for all steps; the group and tile
       offsets are compile-time constants. */
    WarpPos w;
    w.lane = lane;
    w.warp = warp;
    w.row_group = row_group;
    {
        const int k_bit = (lane >> 3) & 1, v_bit = lane >> 4;
        w.k_lane_off = ((lane & 7) + (lane >> 4) * 8) * C::kRowBytes + d_first * 2 +
                       ((k_bit ^ (lane & 7)) << 4);
        w.v_lane_off = ((lane & 7) + k_bit * 8) * C::kRowBytes + d_first * 2 +
                       ((v_bit ^ (lane & 7)) << 4);
    }

    RowState<C> st;
    st.init();

    /* ---- main loop: key blocks n_max - 1 down to n_min ---- */
    /* SEQ: the walk's bounds are read back from the slot at each use (EntrySlot) */
    const EntryMask<SEQ> masks{slot, mask};
#pragma unroll 1
    for (int it = 0; it < (SEQ ? slot.n_vis() : n_vis); ++it) {
        const int kb = (SEQ ? slot.n_max() : n_max) - 1 - it;
        const uint32_t stage =
            ring.acquire(it, kb, SEQ ? slot.n_vis() : n_vis, head_dim, copy_col_ok, tid);
        const bool masked = it < (SEQ ? slot.n_top() : n_top) ||
                            (MASK == FA_MASK_LOCAL && it >= (SEQ ? slot.n_bottom() : n_bottom));
        /* a warp whose rows all lie past len_q (the entry's last tile) has nothing to compute;
           SEQ: its row group from a fresh read of %tid, as in key_block */
        const bool warp_active =
            SEQ ? (reread_thread_index() >> 5) / C::kDS * C::kWarpRows < slot.rows()
                : row0 + row_group * C::kWarpRows < entry.len_q;
        if (warp_active) {
            key_block<C, BF16, MASK, SOFTCAP, SEQ>(p, st, q_frag, w, masks, stage, kb, masked,
                                                   smem);
        } else {
#pragma unroll
            for (int sub = 0; sub < C::kSubs; ++sub)
                exchange_skip<C>(row_group);
        }
        ring.release(it);
    }

    store_tile<C, BF16, MASK, SEQ>(p, st, smem, slot, entry);
}

} /* namespace fa_sm80 */

#endif /* FA_SM80_KERNEL_CUH */
