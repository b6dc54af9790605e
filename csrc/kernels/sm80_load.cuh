/*
 * sm80_load.cuh -- global -> shared copies of the sm80 kernel: the Q tile, and the K/V ring
 * that streams key blocks n_max - 1 down to n_min through kStages stages.
 *
 * Every copy is a 16-byte cp.async into XOR-swizzled rows (sm80_config.cuh: swizzle); rows
 * past the sequence and chunks past head_dim are zero-filled. Two pipelines (sm80_tiles.h):
 *   mbarrier ring (MBAR 1): the block at visiting index i is copied by warpgroup i % 3 alone;
 *     full[s] completes when its copies into stage s land (cp.async.mbarrier.arrive), empty[s]
 *     when all 384 threads have read the stage. No block-wide barrier in the main loop, so
 *     warps drift apart and one warp's softmax overlaps another's mmas.
 *   __syncthreads ring (MBAR 0): every thread copies, one barrier per block; the S exchange
 *     of head_dim 256 (D_SPLIT 2) relies on that barrier.
 * Visiting index it reads stage it % kStages; block it + kStages - 1 is issued at the top of
 * iteration it, into the stage iteration it - 1 read.
 */
#ifndef FA_SM80_LOAD_CUH
#define FA_SM80_LOAD_CUH

#include "sm80_config.cuh"

namespace fa_sm80 {

/* The slice of kv head batch_kv_head & 0xffff in k or v, and in the uniform instances (SEQ
   false) also batch entry batch_kv_head >> 16's (fa_k_row_offset of its key 0), rebuilt at
   each use from the packed register, which the compiler cannot see through: otherwise the
   64-bit pointers are hoisted and held in four registers across the main loop, where Q, O
   and S fragments take nearly all of 168. The SEQ instances add the entry's offsets from
   the slot (load_kv_block). */
template <bool SEQ>
__device__ __forceinline__ const uint16_t *kv_slice(const Args &p, const void *base,
                                                   int64_t batch_stride, int64_t row_stride,
                                                   int64_t head_stride, uint32_t batch_kv_head)
{
    asm volatile("" : "+r"(batch_kv_head));
    const uint16_t *slice = static_cast<const uint16_t *>(base);
    if constexpr (!SEQ) {
        const fa_seq_layout l = layout_of<false>(p);
        const int batch = static_cast<int>(batch_kv_head >> 16);
        const fa_seqlen e = fa_seqlen_at(&l, batch);
        slice += fa_k_row_offset(&l, &e, batch, 0, batch_stride, row_stride);
    }
    return slice + static_cast<int64_t>(batch_kv_head & 0xffffu) * head_stride;
}

/* Thread t's share (of THREADS copying threads) of copying rows [first_row, first_row + ROWS)
   of a (rows x head_dim) tensor slice at `base` into swizzled smem at `dst`: 16-byte chunk
   t % kChunksPerRow of tile rows t / kChunksPerRow + i * (THREADS / kChunksPerRow). Rows at or
   past row_end and chunks past head_dim (col_ok false) are zero-filled (src-size 0); their
   source address is clamped into row 0 of the slice, which exists whenever a tile is loaded,
   and is not read. */
template <class C, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_async(uint32_t dst, const uint16_t *base,
                                                int64_t row_stride, int first_row, int row_end,
                                                bool col_ok, int t)
{
    constexpr int kRowsPerPass = THREADS / C::kChunksPerRow;
    constexpr int kPasses = (ROWS + kRowsPerPass - 1) / kRowsPerPass;
    static_assert(THREADS % C::kChunksPerRow == 0, "a load pass covers whole rows");
    const int chunk = t % C::kChunksPerRow;
    const int r_first = t / C::kChunksPerRow;
    const int col = col_ok ? chunk * 8 : 0;
    /* Passes step the source pointer. Where a pass spans a multiple of 8 rows (every K/V
       load) the loop is unrolled 4 times, not fully: a loader warpgroup's 128 threads issue up
       to 24 copies per block, and with all their addresses computed up front ptxas spills at
       head_dim 128. Not unrolled at all measured slower. */
    const uint16_t *src = base + static_cast<int64_t>(first_row + r_first) * row_stride + col;
    const int64_t pass_stride = static_cast<int64_t>(kRowsPerPass) * row_stride;
#pragma unroll(kRowsPerPass % 8 == 0 ? 4 : kPasses)
    for (int i = 0; i < kPasses; ++i) {
        const int r = r_first + i * kRowsPerPass;
        if (ROWS % kRowsPerPass == 0 || r < ROWS) {
            const bool ok = col_ok && first_row + r < row_end;
            cp_async_16(dst + r * C::kRowBytes + swizzle(r, chunk), ok ? src : base + col,
                        ok ? 16u : 0u);
        }
        src += pass_stride;
    }
}

/* Paged K and V (seqlen.h): key j of the entry lives in row j % page_size of page
   block_table[batch][j / page_size]. When page_size is a multiple of BLOCK_N the block (key0
   a multiple of BLOCK_N) is one run of rows of one page, looked up once; otherwise it may
   span several pages (any page_size from 1 up) and every row is addressed on its own through
   fa_k_row_offset, K and V sharing the row's page lookup. Same copy pattern and zero-fill as
   load_tile_async; a row past len_k copies zeros from the slice's start (page 0, which exists
   when k/v does). The batch entry is read afresh from %ctaid.z. */
template <class C>
__device__ __forceinline__ void load_kv_paged(uint32_t dst, const Args &p, const uint16_t *k_base,
                                              const uint16_t *v_base, int key0, int len_k,
                                              bool col_ok, int t)
{
    const int batch = reread_block_index_z();
    constexpr int kRowsPerPass = C::kLoadThreads / C::kChunksPerRow;
    constexpr int kPasses = (C::kBlockN + kRowsPerPass - 1) / kRowsPerPass;
    const int chunk = t % C::kChunksPerRow;
    const int r_first = t / C::kChunksPerRow;
    const int col = col_ok ? chunk * 8 : 0;
    const fa_seqlen unused = {}; /* paged rows need only the layout and the batch entry */
    const bool one_run = fa_key_runs_share_page(&p.layout, C::kBlockN);
    int64_t k_run = 0, v_run = 0;
    if (one_run && key0 < len_k) {
        k_run = fa_k_row_offset(&p.layout, &unused, batch, key0, p.k_batch_stride, p.k_row_stride);
        v_run = fa_k_row_offset(&p.layout, &unused, batch, key0, p.v_batch_stride, p.v_row_stride);
    }
#pragma unroll 2
    for (int i = 0; i < kPasses; ++i) {
        const int r = r_first + i * kRowsPerPass;
        if (C::kBlockN % kRowsPerPass == 0 || r < C::kBlockN) {
            const int key = key0 + r;
            const bool ok = col_ok && key < len_k;
            int64_t k_off = 0, v_off = 0;
            if (ok && one_run) {
                k_off = k_run + r * p.k_row_stride;
                v_off = v_run + r * p.v_row_stride;
            } else if (ok) {
                k_off = fa_k_row_offset(&p.layout, &unused, batch, key, p.k_batch_stride,
                                        p.k_row_stride);
                v_off = fa_k_row_offset(&p.layout, &unused, batch, key, p.v_batch_stride,
                                        p.v_row_stride);
            }
            const uint32_t at = dst + r * C::kRowBytes + swizzle(r, chunk);
            cp_async_16(at, k_base + k_off + col, ok ? 16u : 0u);
            cp_async_16(at + C::kKVBytes, v_base + v_off + col, ok ? 16u : 0u);
        }
    }
}

/* K and V keys [key0, key0 + BLOCK_N) of the CTA's batch entry and kv head into the stage at
   `dst`, by the kLoadThreads threads of the block's loaders (t = thread index among them);
   keys at or past the entry's len_k are zero-filled. Unpaged, the entry's keys are rows of
   one slice, key j at fa_k_row_offset(j) = fa_k_row_offset(0) + j * row_stride, so
   load_tile_async walks them from key 0: in the uniform instances batch entry b's row 0 and
   len_k = uniform_len_k (seqlen_k), in the SEQ ones the entry's offsets and len_k from
   the slot (each read just before its copies). Paged (SEQ, a uniform branch on the table
   pointer), rows go through load_kv_paged. */
template <class C, bool SEQ>
__device__ __forceinline__ void load_kv_block(uint32_t dst, const Args &p, uint32_t batch_kv_head,
                                              EntrySlot entry, int uniform_len_k, int key0,
                                              bool col_ok, int t)
{
    /* each slice is built right before its copies: V's built with K's held both across the K
       copies (ptxas: up to 4 more registers at head_dim 64) */
    if constexpr (!SEQ) {
        load_tile_async<C, C::kBlockN, C::kLoadThreads>(
            dst, kv_slice<SEQ>(p, p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride,
                               batch_kv_head),
            p.k_row_stride, key0, uniform_len_k, col_ok, t);
        load_tile_async<C, C::kBlockN, C::kLoadThreads>(
            dst + C::kKVBytes,
            kv_slice<SEQ>(p, p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride,
                          batch_kv_head),
            p.v_row_stride, key0, uniform_len_k, col_ok, t);
    } else {
        if (p.layout.block_table != nullptr) {
            load_kv_paged<C>(dst, p,
                             kv_slice<SEQ>(p, p.k, p.k_batch_stride, p.k_row_stride,
                                           p.k_head_stride, batch_kv_head),
                             kv_slice<SEQ>(p, p.v, p.v_batch_stride, p.v_row_stride,
                                           p.v_head_stride, batch_kv_head),
                             key0, entry.len_k(), col_ok, t);
            return;
        }
        load_tile_async<C, C::kBlockN, C::kLoadThreads>(
            dst,
            kv_slice<SEQ>(p, p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride,
                          batch_kv_head) +
                entry.k_off(),
            p.k_row_stride, key0, entry.len_k(), col_ok, t);
        load_tile_async<C, C::kBlockN, C::kLoadThreads>(
            dst + C::kKVBytes,
            kv_slice<SEQ>(p, p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride,
                          batch_kv_head) +
                entry.v_off(),
            p.v_row_stride, key0, entry.len_k(), col_ok, t);
    }
}

/* The ring of one CTA. full_bar: kStages mbarriers (8 bytes each) in static shared memory,
   then the kStages empty ones; used by the MBAR pipeline only. */
template <class C, bool SEQ>
struct KVRing {
    uint32_t smem_base; /* stage 0 */
    uint32_t full_bar;
    const Args &p;
    uint32_t batch_kv_head; /* batch << 16 | kv_head */
    EntrySlot entry;        /* SEQ: stored by thread 0 before init() */
    int uniform_len_k;      /* uniform: seqlen_k */

    __device__ __forceinline__ uint32_t empty_bar() const { return full_bar + C::kStages * 8; }
    __device__ __forceinline__ uint32_t stage(int it) const
    {
        return smem_base + (it % C::kStages) * C::kStageBytes;
    }

    /* Before any arrival: one thread, constant offsets. ptxas then counts every barrier
       object (EIATTR_NUM_MBARRIERS), which compute-sanitizer sizes its barrier tracking by;
       with offsets from tid it counted 2 of the 4 and racecheck/synccheck lost track. The
       barrier also publishes the entry slot (SEQ), which every copy reads. */
    __device__ __forceinline__ void init(int tid) const
    {
        if constexpr (C::kMbar) {
            if (tid == 0) {
#pragma unroll
                for (int s = 0; s < C::kStages; ++s) {
                    mbar_init(full_bar + s * 8, C::kLoadThreads);
                    mbar_init(empty_bar() + s * 8, kThreads);
                }
            }
        }
        if constexpr (C::kMbar || SEQ)
            __syncthreads(); /* the barriers are initialized before anyone arrives */
    }

    /* Blocks n_max - 1 .. n_max - (kStages - 1) (those that exist) into stages 0 .. kStages - 2,
       after the Q copies were committed as one group. */
    __device__ __forceinline__ void prologue(int n_max, int n_vis, bool col_ok, int tid) const
    {
        const int warpgroup = tid / (FA_WARPS_PER_WARPGROUP * FA_WARP_SIZE);
#pragma unroll
        for (int s = 0; s < C::kStages - 1; ++s) {
            const uint32_t dst = smem_base + s * C::kStageBytes;
            const int key0 = (n_max - 1 - s) * C::kBlockN;
            if constexpr (C::kMbar) {
                if (s < n_vis && warpgroup == s % FA_NUM_WARPGROUPS) {
                    load_kv_block<C, SEQ>(dst, p, batch_kv_head, entry, uniform_len_k, key0,
                                          col_ok, tid % C::kLoadThreads);
                    cp_async_mbar_arrive(full_bar + s * 8);
                }
            } else {
                /* groups: Q with block 0, then one per block */
                if (s < n_vis)
                    load_kv_block<C, SEQ>(dst, p, batch_kv_head, entry, uniform_len_k, key0,
                                          col_ok, tid);
                cp_async_commit_group();
            }
        }
        if constexpr (C::kMbar)
            cp_async_wait_group<0>(); /* the Q group; K/V copies are tracked by the mbarriers */
        else
            cp_async_wait_group<C::kStages - 2>();
    }

    /* Top of iteration it (block kb = n_max - 1 - it): issue block it + kStages - 1 into the
       stage read in iteration it - 1, then wait until block it has landed; returns its stage.
       copy_col_ok serves the __syncthreads ring; the mbarrier loaders recompute theirs. */
    __device__ __forceinline__ uint32_t acquire(int it, int kb, int n_vis, int head_dim,
                                                bool copy_col_ok, int tid) const
    {
        if constexpr (C::kMbar) {
            /* The loaders refill once every warp has released the stage. */
            const int load_it = it + C::kStages - 1;
            const int load_tid = reread_thread_index();
            if (load_it < n_vis && load_tid / C::kLoadThreads == load_it % FA_NUM_WARPGROUPS) {
                const int ls = load_it % C::kStages;
                if (it >= 1)
                    mbar_wait(empty_bar() + ls * 8, ((it - 1) / C::kStages) & 1);
                const int t = load_tid % C::kLoadThreads;
                load_kv_block<C, SEQ>(smem_base + ls * C::kStageBytes, p, batch_kv_head, entry,
                                      uniform_len_k, (kb - (C::kStages - 1)) * C::kBlockN,
                                      (t % C::kChunksPerRow) * 8 < head_dim, t);
                cp_async_mbar_arrive(full_bar + ls * 8);
            }
            mbar_wait(full_bar + (it % C::kStages) * 8, (it / C::kStages) & 1);
        } else {
            /* Block kb has landed for this thread; the barrier makes it visible to all and
               proves every warp is done with the stage refilled next (read in iteration
               it - 1, or Q when it == 0). */
            cp_async_wait_group<C::kStages - 2>();
            __syncthreads();
            if (it + C::kStages - 1 < n_vis)
                load_kv_block<C, SEQ>(stage(it + C::kStages - 1), p, batch_kv_head, entry,
                                      uniform_len_k, (kb - (C::kStages - 1)) * C::kBlockN,
                                      copy_col_ok, tid);
            cp_async_commit_group();
        }
        return stage(it);
    }

    /* Bottom of iteration it: this thread is done reading the stage. Every thread arrives (a
       single lane after __syncwarp would order them too, but per-thread arrivals are what
       racecheck can follow). */
    __device__ __forceinline__ void release(int it) const
    {
        if constexpr (C::kMbar)
            mbar_arrive(empty_bar() + (it % C::kStages) * 8);
    }
};

} /* namespace fa_sm80 */

#endif /* FA_SM80_LOAD_CUH */
