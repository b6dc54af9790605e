/*
 * sm90_bwd_kernel.cuh -- the sm90 backward main kernel: its roles, one query block's GEMMs
 * and elementwise pass, and the dQ and dK/dV stores. bwd_sm90.cu has the design and the
 * launch.
 *
 * Roles (384 threads):
 *   warpgroup 0 (24 registers; 32 at head_dim 256): warp 0, one thread, issues every TMA
 *     load -- K and V once, then per step the Q and dO blocks into their rings; warp 1 writes
 *     each step's base-2 lse and delta rows beside them (row stats) and arrives on the same
 *     full barriers; warp 2 adds the consumers' staged dQ halves into dq_accum by TMA
 *     reductions (dQ warp).
 *   warpgroups 1 and 2 (240 registers; 232 at head_dim 256): consumer c owns keys
 *     key0 + 64c .. + 63 and keeps their dK and dV in registers through the whole walk. Per
 *     query block:
 *       S^T  = K_c Q^T,  dP^T = V_c dO^T                 wgmma, both operands in shared
 *                                                        memory, two commit groups
 *       P^T  = exp2(t * scale_log2 - lse2),  t = S^T or tanh(S^T * softcap_pre)   (score.h)
 *              0 where mask.h hides the pair (masked blocks only, block_range.h); this runs
 *              while the dP^T GEMM is in flight
 *       dS^T = P^T (dP^T - delta), times (1 - t^2) with softcap
 *       dS^T to shared memory (stmatrix)
 *       dV  += P^T dO                                    wgmma, A = the 16-bit P^T fragment in
 *                                                        registers, B = dO read MN-major
 *       both warpgroups meet (named barrier): all of dS^T is written
 *       dQ half (64 x D/2) = dS K                        wgmma, both operands MN-major
 *       dK  += dS^T Q                                    as dV; the dQ half is staged for the
 *                                                        dQ warp while it runs
 *       then the Q/dO slot is freed.
 *     At the end dK (times softmax_scale) and dV go straight from registers to global memory,
 *     keys below len_k and columns below head_dim.
 *   head_dim 256 (Cfg::kSplitRows, sm90_bwd_tiles.h): both consumers share the CTA's 64 keys.
 *     Consumer c computes S^T and dP^T for query rows 32c .. 32c + 31 of the block (wgmma N
 *     = 32), writes P^T as well as dS^T to shared memory, and after the meeting owns head_dim
 *     columns 128c .. 128c + 127: dV += P^T dO and dK += dS^T Q with A read from shared memory
 *     (K-major), and its dQ half. The dQ half is staged in the consumer's own columns of the
 *     step's dO and Q slots (no room for a staging area), which the dQ warp frees once read.
 * Rows past len_q read as zeros (TMA) and get lse2 = +inf, so their P and dS are exactly 0;
 * keys past len_k are masked (their block is never unmasked, block_range.h).
 * Device-only.
 */
#ifndef FA_SM90_BWD_KERNEL_CUH
#define FA_SM90_BWD_KERNEL_CUH

#include "dq_turns.cuh"
#include "sm90_bwd_config.cuh"
#include "sm90_epilogue.cuh"
#include "sm90_pipeline.cuh"
#include "sm90_ptx.cuh"
#include "sm90_scheduler.cuh"
#include "sm90_softmax.cuh"
#include "sm90_wgmma.cuh"

namespace fa_sm90 {

// ---------------------------------------------------------------- producer warpgroup

// One Q or dO block (rows from `at`, q head h) into its ring slot at pos.
__device__ __forceinline__ void load_row_block(const CUtensorMap *tmap, uint32_t dst, uint32_t full, uint32_t empty,
                                               uint32_t phase, uint32_t bytes, int chunks, uint32_t chunk_bytes,
                                               TmaRow at, int h) {
    mbarrier_wait(empty, phase ^ 1u);
    mbarrier_arrive_expect_tx(full, bytes);
    for (int c = 0; c < chunks; ++c) cp_async_bulk_tensor_4d_g2s(dst + c * chunk_bytes, tmap, full, 64 * c, at.row, h, at.batch);
}

// One thread: K and V, then every step's Q and dO.
template <class Cfg>
__device__ __forceinline__ void bwd_producer(const BwdParams &prm, uint32_t smem, const BwdWalk &w) {
    const uint32_t bars = smem + Cfg::kOffBar;
    prefetch_tensormap(&prm.tmap_q);
    prefetch_tensormap(&prm.tmap_k);
    prefetch_tensormap(&prm.tmap_v);
    prefetch_tensormap(&prm.tmap_do);
    const TmaRow k_at = kv_tma_row(prm.seq, w.e, w.batch, w.key0);
    mbarrier_arrive_expect_tx(bars + 8 * Cfg::kBarKV, 2 * Cfg::kKVBytes);
#pragma unroll
    for (int c = 0; c < Cfg::kChunks; ++c) {
        cp_async_bulk_tensor_4d_g2s(smem + Cfg::kOffK + c * Cfg::kKVChunkBytes, &prm.tmap_k, bars + 8 * Cfg::kBarKV,
                                    64 * c, k_at.row, w.hk, k_at.batch);
        cp_async_bulk_tensor_4d_g2s(smem + Cfg::kOffV + c * Cfg::kKVChunkBytes, &prm.tmap_v, bars + 8 * Cfg::kBarKV,
                                    64 * c, k_at.row, w.hk, k_at.batch);
    }
    RingPos pos{0, 0u};
    for (int it = 0; it < w.steps; ++it) {
        const int h = w.head(it);
        const TmaRow at = q_tma_row(prm.seq, w.e, w.batch, w.m_block(it) * Cfg::kBlockM);
        load_row_block(&prm.tmap_q, Cfg::q_slot(smem, pos.slot),
                       bars + 8 * (Cfg::kBarQFull + pos.slot), bars + 8 * (Cfg::kBarQEmpty + pos.slot), pos.phase,
                       Cfg::kRowSlotBytes, Cfg::kChunks, Cfg::kRowChunkBytes, at, h);
        load_row_block(&prm.tmap_do, Cfg::do_slot(smem, pos.slot),
                       bars + 8 * (Cfg::kBarDoFull + pos.slot), bars + 8 * (Cfg::kBarDoEmpty + pos.slot), pos.phase,
                       Cfg::kRowSlotBytes, Cfg::kChunks, Cfg::kRowChunkBytes, at, h);
        pos.advance(Cfg::kStages);
    }
}

// One warp: per step, lse in base 2 (+inf for rows past len_q and rows that saw no key, so
// that their P is exactly 0, never from -inf - -inf) beside the Q slot, and delta (0 past
// len_q) beside the dO slot. Every lane arrives after its own stores.
template <class Cfg>
__device__ __forceinline__ void bwd_row_stats(const BwdParams &prm, uint32_t smem, const BwdWalk &w, int lane) {
    const uint32_t bars = smem + Cfg::kOffBar;
    RingPos pos{0, 0u};
    for (int it = 0; it < w.steps; ++it) {
        const int row0 = w.m_block(it) * Cfg::kBlockM;
        const int64_t base = fa_lse_index(&prm.seq, &w.e, w.batch, prm.heads_q, w.head(it), 0);
        const uint32_t lse_slot = Cfg::lse_slot(smem, pos.slot);
        const uint32_t delta_slot = Cfg::delta_slot(smem, pos.slot);
        mbarrier_wait(bars + 8 * (Cfg::kBarQEmpty + pos.slot), pos.phase ^ 1u);
        for (int r = lane; r < Cfg::kBlockM; r += FA_WARP_SIZE) {
            const float l = row0 + r < w.e.len_q ? prm.lse[base + row0 + r] : -INFINITY;
            st_shared_f32(lse_slot + 4 * r, l == -INFINITY ? INFINITY : l * FA_LOG2E);
        }
        mbarrier_arrive(bars + 8 * (Cfg::kBarQFull + pos.slot));
        mbarrier_wait(bars + 8 * (Cfg::kBarDoEmpty + pos.slot), pos.phase ^ 1u);
        for (int r = lane; r < Cfg::kBlockM; r += FA_WARP_SIZE)
            st_shared_f32(delta_slot + 4 * r, row0 + r < w.e.len_q ? prm.delta[base + row0 + r] : 0.f);
        mbarrier_arrive(bars + 8 * (Cfg::kBarDoFull + pos.slot));
        pos.advance(Cfg::kStages);
    }
}

// Rows [0, rows) of consumer c's staged dQ half into dq_accum, one TMA reduction per row and
// 32-column chunk, issued by every lane (rows lane, lane + 32): for a packed query block that
// crosses its entry's end, where a whole box would also add into the next entry's rows. A
// one-row box reads the staged row as it lies: the 128-byte swizzle is a function of the
// address bits.
template <class Cfg>
__device__ __forceinline__ void reduce_dq_rows(const BwdParams &prm, uint32_t staging, int c, int rows, TmaRow at,
                                               int h, int lane) {
    for (int r = lane; r < rows; r += FA_WARP_SIZE)
#pragma unroll(Cfg::kSplitRows ? 1 : Cfg::kDqChunks)  // rolled in the 32 registers of head_dim 256
        for (int ch = 0; ch < Cfg::kDqChunks; ++ch)
            cp_reduce_async_bulk_tensor_4d_add_s2g(&prm.tmap_dq_row, staging + Cfg::dq_chunk_offset(ch) + r * 128,
                                                   c * Cfg::kDqCols + 32 * ch, at.row + r, h, at.batch);
    cp_async_bulk_commit_group();
}

// One warp: per step, each consumer's staged dQ half into dq_accum by one TMA reduction per
// 32-column chunk (rows past the tensor's and columns past head_dim clipped; a packed block
// crossing its entry's end row by row, reduce_dq_rows), then the staging is handed back once the
// reduction has read it. Both halves start free (when there is a step); the last ones are not
// handed back, so that every arrival on the named barriers meets a wait. At head_dim 256 the
// halves lie in the step's Q and dO slot (Cfg::dq_staging), and the slot is freed instead,
// once both are read.
// Deterministic: the step's reductions wait for this key block's turn at the query block and
// complete before the turn passes on and the staging is handed back (dq_turns.cuh); the proxy
// fences order the TMA's global accesses against the counter's acquire and release. (Handing
// the staging back once read, before the completion, measured slower: 0.85x against 0.94x
// of the default at head_dim 128, 0.75x against 0.89x at 64.)
template <class Cfg>
__device__ __forceinline__ void bwd_dq_writer(const BwdParams &prm, uint32_t smem, const BwdWalk &w, int lane) {
    if (w.steps == 0) return;
    if (lane == 0) prefetch_tensormap(&prm.tmap_dq);
    const bool det = prm.deterministic != 0;
    if constexpr (!Cfg::kSplitRows)
#pragma unroll
        for (int c = 0; c < FA_NUM_CONSUMER_WARPGROUPS; ++c) bar_arrive(kBarDqEmpty + c, kDqBarThreads);
    for (int it = 0; it < w.steps; ++it) {
        const int slot = it % Cfg::kStages;  // the step's Q and dO slot
        const int h = w.head(it), m = w.m_block(it), row0 = m * Cfg::kBlockM;
        const TmaRow at = q_tma_row(prm.seq, w.e, w.batch, row0);
        const int rows = prm.seq.cu_seqlens_q != nullptr ? min(w.e.len_q - row0, Cfg::kBlockM) : Cfg::kBlockM;
        int *counter = nullptr;
        if (det && lane == 0) {
            counter = dq_turn_counter(prm.dq_lock, w.batch, prm.heads_q, h, prm.lock_blocks, m);
            const int turn = dq_turn_of(w.mask, m, w.key0 / Cfg::kBlockN, Cfg::kBlockM, Cfg::kBlockN);
            while (ld_acquire_gpu_s32(counter) != turn) {
            }
            fence_proxy_async();
        }
        __syncwarp();  // converged for the aligned barriers below
#pragma unroll
        for (int c = 0; c < FA_NUM_CONSUMER_WARPGROUPS; ++c) {
            const uint32_t staging = Cfg::dq_staging(smem, c, slot);
            bar_sync(Cfg::dq_full_bar(c, slot), kDqBarThreads);
            if (rows < Cfg::kBlockM) {
                reduce_dq_rows<Cfg>(prm, staging, c, rows, at, h, lane);
            } else if (lane == 0) {
#pragma unroll
                for (int ch = 0; ch < Cfg::kDqChunks; ++ch)
                    cp_reduce_async_bulk_tensor_4d_add_s2g(&prm.tmap_dq, staging + Cfg::dq_chunk_offset(ch),
                                                           c * Cfg::kDqCols + 32 * ch, at.row, h, at.batch);
                cp_async_bulk_commit_group();
            }
            if (!det) {
                cp_async_bulk_wait_group_read_0();
                __syncwarp();
                if (!Cfg::kSplitRows && it + 1 < w.steps) bar_arrive(kBarDqEmpty + c, kDqBarThreads);
            }
        }
        if (det) {
            // Lane 0's boxes, and every lane's rows when the block crosses its entry's end.
            if (lane == 0 || rows < Cfg::kBlockM) {
                cp_async_bulk_wait_group_0();
                fence_proxy_async();
            }
            __syncwarp();
            if (lane == 0) red_release_gpu_add_s32(counter, 1);
            if (!Cfg::kSplitRows && it + 1 < w.steps)
                for (int c = 0; c < FA_NUM_CONSUMER_WARPGROUPS; ++c) bar_arrive(kBarDqEmpty + c, kDqBarThreads);
        }
        if constexpr (Cfg::kSplitRows) {
            if (lane == 0) {
                const uint32_t bars = smem + Cfg::kOffBar;
                mbarrier_arrive(bars + 8 * (Cfg::kBarQEmpty + slot));
                mbarrier_arrive(bars + 8 * (Cfg::kBarDoEmpty + slot));
            }
        }
    }
    cp_async_bulk_wait_group_0();
}

// ---------------------------------------------------------------- consumer GEMMs

// acc (64 keys x the consumer's kScoreCols query rows) = X_c Y^T over head_dim: S^T with (K,
// Q), dP^T with (V, dO). Both K-major; rows: the consumer's first row in the slot.
template <class Cfg>
__device__ __forceinline__ void issue_key_scores(float (&acc)[Cfg::kScoreCols / 2], uint32_t key_rows,
                                                 uint32_t rows) {
    wgmma_ss_kmajor<Cfg::kScoreCols, Cfg::kHeadDim, Cfg::kBf16>(acc, key_rows, Cfg::kKVChunkBytes, rows,
                                                                Cfg::kRowChunkBytes);
}

// acc (64 keys x D) += A (registers: P^T or dS^T, 64 x M) x Y (dO or Q, M x D, read MN-major).
template <class Cfg>
__device__ __forceinline__ void issue_key_grad(float (&acc)[Cfg::kKeyCols / 2], const uint32_t (&a)[Cfg::kScoreCols / 4],
                                               uint32_t row_slot) {
#pragma unroll
    for (int kk = 0; kk < Cfg::kBlockM / 16; ++kk)
        Wgmma<Cfg::kHeadDim>::template rs<Cfg::kBf16>(acc, a[4 * kk], a[4 * kk + 1], a[4 * kk + 2], a[4 * kk + 3],
                                                       make_smem_desc(row_slot + kk * 2048, Cfg::kRowChunkBytes, 1024),
                                                       1);
}

// head_dim 256: acc (64 keys x the consumer's D/2 columns) += A (P^T or dS^T of the whole
// block, from shared memory, K-major) x Y (dO or Q from the consumer's first column chunk,
// read MN-major).
template <class Cfg>
__device__ __forceinline__ void issue_key_grad_smem(float (&acc)[Cfg::kKeyCols / 2], uint32_t a_buf, uint32_t y_cols) {
#pragma unroll
    for (int kk = 0; kk < Cfg::kBlockM / 16; ++kk)
        Wgmma<Cfg::kKeyCols>::template ss_kmn<Cfg::kBf16>(acc, make_smem_desc(a_buf + kk * 32, 16, 1024),
                                                           make_smem_desc(y_cols + kk * 2048, Cfg::kRowChunkBytes, 1024),
                                                           1);
}

// dq (64 rows x D/2 columns, consumer c's half from column c D/2) = dS (dS^T read MN-major)
// x K (read MN-major), over the CTA's N keys. At head_dim 64 a half starts 64 bytes into the
// 128-byte swizzled rows, which the descriptor takes as it takes the forward's 32-byte k-steps:
// the swizzle is a function of the address bits.
template <class Cfg>
__device__ __forceinline__ void issue_dq(float (&dq)[Cfg::kDqCols / 2], uint32_t ds_buf, uint32_t k_base, int c) {
    const int col0 = c * Cfg::kDqCols;
    const uint32_t b0 = k_base + (col0 / 64) * Cfg::kKVChunkBytes + (col0 % 64) * 2;
#pragma unroll
    for (int kk = 0; kk < Cfg::kBlockN / 16; ++kk)
        Wgmma<Cfg::kDqCols>::template ss_mn<Cfg::kBf16>(dq, make_smem_desc(ds_buf + kk * 2048, Cfg::kDsChunkBytes, 1024),
                                                         make_smem_desc(b0 + kk * 2048, Cfg::kKVChunkBytes, 1024),
                                                         kk > 0 ? 1 : 0);
}

// ---------------------------------------------------------------- consumer elementwise pass

// P^T from S^T (element 4j + e of a fragment is key key_lo + 8 (e >> 1) and query row
// row0 + 8j + 2 (lane % 4) + (e & 1); lse_slot: row0's lse), packed into p as the A fragment of
// dV += P^T dO; st keeps what dS^T multiplies: P^T, times (1 - t^2) with softcap. Runs while
// the dP^T GEMM is in flight.
template <class Cfg, bool kSoftcap>
__device__ __forceinline__ void probs(float (&st)[Cfg::kScoreCols / 2], uint32_t (&p)[Cfg::kScoreCols / 4],
                                      uint32_t lse_slot, bool masked, const fa_mask &mask, int row0, int key_lo,
                                      const fa_score &score, int lane) {
    fa_key_span rows[2];
    if (masked) {
        rows[0] = fa_mask_col(&mask, key_lo);
        rows[1] = fa_mask_col(&mask, key_lo + 8);
    }
#pragma unroll
    for (int j = 0; j < Cfg::kScoreCols / 8; ++j) {
        const int col = 8 * j + 2 * (lane & 3);
        const float2 lse2 = ld_shared_f32x2(lse_slot + 4 * col);
        float pv[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int i = 4 * j + e;
            float t = st[i];
            if constexpr (kSoftcap) t = tanh_approx_f32(t * score.softcap_pre);
            float pe = exp2f(fmaf(t, score.scale_log2, -((e & 1) ? lse2.y : lse2.x)));
            if (masked) {
                const int row = row0 + col + (e & 1);
                const fa_key_span &r = rows[e >> 1];
                if (row < r.lo || row > r.hi) pe = 0.f;
            }
            pv[e] = pe;
            st[i] = kSoftcap ? pe * (1.f - t * t) : pe;
        }
        p[2 * j] = pack2<Cfg::kBf16>(pv[0], pv[1]);
        p[2 * j + 1] = pack2<Cfg::kBf16>(pv[2], pv[3]);
    }
}

// dS^T = st (dP^T - delta), packed into ds as the A fragment of dK += dS^T Q (delta_slot: the
// delta of st's first row).
template <class Cfg>
__device__ __forceinline__ void grads(const float (&st)[Cfg::kScoreCols / 2], float (&dpt)[Cfg::kScoreCols / 2],
                                      uint32_t (&ds)[Cfg::kScoreCols / 4], uint32_t delta_slot, int lane) {
#pragma unroll
    for (int j = 0; j < Cfg::kScoreCols / 8; ++j) {
        const float2 delta = ld_shared_f32x2(delta_slot + 4 * (8 * j + 2 * (lane & 3)));
#pragma unroll
        for (int e = 0; e < 4; ++e) dpt[4 * j + e] = st[4 * j + e] * (dpt[4 * j + e] - ((e & 1) ? delta.y : delta.x));
    }
    pack_probs<Cfg::kBf16>(dpt, ds);
}

// ---------------------------------------------------------------- consumer stores

// 32-column chunks [kFirst, kFirst + kCount) of consumer c's dQ half into their staging
// (Cfg::dq_staging, dq_chunk_offset), as the TMA reduction's 128-byte swizzle lays out a box of 32 fp32
// columns x 64 rows: 16-byte unit u of row r at unit u ^ (r % 8), which also spreads each
// store's 8 rows over all banks. Element 4j + e is row 16 warp + lane / 4 + 8 (e >> 1) and
// column 8j + 2 (lane % 4) + (e & 1) of the half.
template <class Cfg, int kFirst = 0, int kCount = Cfg::kDqChunks>
__device__ __forceinline__ void stage_dq(uint32_t smem, int c, int slot, const float (&dq)[Cfg::kDqCols / 2],
                                         int warp_in_wg, int lane) {
    const uint32_t staging = Cfg::dq_staging(smem, c, slot);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int row = 16 * warp_in_wg + (lane >> 2) + 8 * half;
        const uint32_t line = staging + (uint32_t)row * 128u + (uint32_t)(lane & 1) * 8u;
#pragma unroll
        for (int j = 4 * kFirst; j < 4 * (kFirst + kCount); ++j) {
            const int unit = (8 * j % 32 + 2 * (lane & 3)) / 4;
            st_shared_v2_f32(line + Cfg::dq_chunk_offset(j / 4) + ((uint32_t)(unit ^ (row & 7)) << 4),
                             dq[4 * j + 2 * half], dq[4 * j + 2 * half + 1]);
        }
    }
}

// dK (times softmax_scale) or dV of the consumer's 64 keys and kKeyCols columns, 16-bit,
// straight from registers.
template <class Cfg>
__device__ __forceinline__ void store_key_rows(void *base, int64_t batch_stride, int64_t row_stride,
                                               int64_t head_stride, const BwdParams &prm, const BwdWalk &w, int c,
                                               const float (&acc)[Cfg::kKeyCols / 2], float scale, int warp_in_wg,
                                               int lane) {
    const int key_lo = w.key0 + Cfg::key_offset(c) + 16 * warp_in_wg + (lane >> 2);
    const int col0 = Cfg::key_col0(c);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int key = key_lo + 8 * half;
        if (key >= w.e.len_k) continue;
        uint16_t *row = static_cast<uint16_t *>(base) +
                        fa_k_row_offset(&prm.seq, &w.e, w.batch, key, batch_stride, row_stride) +
                        (int64_t)w.hk * head_stride + col0 + 2 * (lane & 3);
#pragma unroll
        for (int j = 0; j < Cfg::kKeyCols / 8; ++j)
            if (col0 + 8 * j + 2 * (lane & 3) < prm.head_dim)
                *reinterpret_cast<uint32_t *>(row + 8 * j) =
                    pack2<Cfg::kBf16>(acc[4 * j + 2 * half] * scale, acc[4 * j + 2 * half + 1] * scale);
    }
}

// ---------------------------------------------------------------- consumer

// Waits for the Q and dO of ring slot pos, then issues consumer c's S^T and dP^T as two commit
// groups.
template <class Cfg>
__device__ __forceinline__ void issue_scores(uint32_t smem, const RingPos &pos, int c, uint32_t k_rows,
                                             uint32_t v_rows, float (&st)[Cfg::kScoreCols / 2],
                                             float (&dpt)[Cfg::kScoreCols / 2]) {
    const uint32_t bars = smem + Cfg::kOffBar;
    const uint32_t rows = (uint32_t)Cfg::score_col0(c) * 128u;
    // Both waits before the fence: a wait loop between the fence and a wgmma makes ptxas
    // fence again (C7519).
    mbarrier_wait(bars + 8 * (Cfg::kBarQFull + pos.slot), pos.phase);
    mbarrier_wait(bars + 8 * (Cfg::kBarDoFull + pos.slot), pos.phase);
    wgmma_fence();
    issue_key_scores<Cfg>(st, k_rows, Cfg::q_slot(smem, pos.slot) + rows);
    wgmma_commit_group();
    issue_key_scores<Cfg>(dpt, v_rows, Cfg::do_slot(smem, pos.slot) + rows);
    wgmma_commit_group();
}

// Columns 16 first .. of a consumer's 64 keys x kScoreCols fragment, 16-bit, into a dS^T or
// P^T buffer (rows: the consumer's first key row).
template <class Cfg>
__device__ __forceinline__ void store_key_frags(uint32_t rows, int first, const uint32_t (&f)[Cfg::kScoreCols / 4],
                                                int warp_in_wg, int lane) {
    const StmatrixLane at(rows, warp_in_wg, lane);
#pragma unroll
    for (int i = 0; i < Cfg::kScoreCols / 16; ++i)
        stmatrix_cols16(at, Cfg::kDsChunkBytes, first + i, f[4 * i], f[4 * i + 1], f[4 * i + 2], f[4 * i + 3]);
}

// P^T and dS^T of a step from consumer c's S^T and dP^T in flight (probs runs under the dP^T
// GEMM); dS^T also to shared memory for both warpgroups' dQ GEMMs, and at head_dim 256 P^T
// too, for both dV GEMMs.
template <class Cfg>
__device__ __forceinline__ void step_probs_grads(const BwdParams &prm, uint32_t smem, const BwdWalk &w, int c,
                                                 int slot, int m, uint32_t ds_buf, int key_lo,
                                                 float (&st)[Cfg::kScoreCols / 2], float (&dpt)[Cfg::kScoreCols / 2],
                                                 uint32_t (&p)[Cfg::kScoreCols / 4],
                                                 uint32_t (&ds)[Cfg::kScoreCols / 4], int warp_in_wg, int lane) {
    const int col0 = Cfg::score_col0(c);
    wgmma_wait_group<1>();  // S^T done; dP^T may still run
    fence_operands(st);
    const bool masked = fa_row_block_needs_mask(&w.range, m);
    const uint32_t lse_slot = Cfg::lse_slot(smem, slot) + 4 * col0;
    const int row0 = m * Cfg::kBlockM + col0;
    if (prm.score.softcap_pre != 0.f)
        probs<Cfg, true>(st, p, lse_slot, masked, w.mask, row0, key_lo, prm.score, lane);
    else
        probs<Cfg, false>(st, p, lse_slot, masked, w.mask, row0, key_lo, prm.score, lane);
    wgmma_wait_group<0>();
    fence_operands(dpt);
    grads<Cfg>(st, dpt, ds, Cfg::delta_slot(smem, slot) + 4 * col0, lane);
    store_key_frags<Cfg>(ds_buf + c * Cfg::kWgKeyBytes, col0 / 16, ds, warp_in_wg, lane);
    if constexpr (Cfg::kSplitRows) store_key_frags<Cfg>(ds_buf + (Cfg::kOffP - Cfg::kOffDs), col0 / 16, p, warp_in_wg, lane);
    fence_proxy_async_shared_cta();
}

// The dQ half of a step into its staging area once the dQ warp has read the previous one.
template <class Cfg>
__device__ __forceinline__ void hand_over_dq(uint32_t smem, int c, int slot, const float (&dq)[Cfg::kDqCols / 2],
                                             int warp_in_wg, int lane) {
    bar_sync(kBarDqEmpty + c, kDqBarThreads);
    stage_dq<Cfg>(smem, c, slot, dq, warp_in_wg, lane);
    fence_proxy_async_shared_cta();
    bar_arrive(Cfg::dq_full_bar(c, slot), kDqBarThreads);
}

// One step's registers: S^T and dP^T (then P^T and dS^T in st and dpt), their 16-bit
// fragments, and the consumer's dQ half.
template <class Cfg>
struct StepRegs {
    float st[Cfg::kScoreCols / 2], dpt[Cfg::kScoreCols / 2], dq[Cfg::kDqCols / 2];
    uint32_t p[Cfg::kScoreCols / 4], ds[Cfg::kScoreCols / 4];
};

// A step from its scores in flight (issue_scores) to its GEMMs issued: P^T and dS^T, dS^T to
// shared memory, dV += P^T dO, the meeting, the dQ half = dS K and dK += dS^T Q (three commit
// groups: dV, dQ, dK). At head_dim 256 dV waits for the meeting too: it reads both
// consumers' P^T from shared memory. The buffers alternate: the ones written here were last
// read by the GEMMs of the step before last, which both warpgroups waited for before the
// previous meeting.
template <class Cfg>
__device__ __forceinline__ void step_gemms(const BwdParams &prm, uint32_t smem, const BwdWalk &w, int c, int it,
                                           const RingPos &pos, int key_lo, float (&dk)[Cfg::kKeyCols / 2],
                                           float (&dv)[Cfg::kKeyCols / 2], StepRegs<Cfg> &r, int warp_in_wg, int lane) {
    const uint32_t ds_buf = smem + Cfg::kOffDs + (it & 1) * Cfg::kDsBytes;
    step_probs_grads<Cfg>(prm, smem, w, c, pos.slot, w.m_block(it), ds_buf, key_lo, r.st, r.dpt, r.p, r.ds,
                          warp_in_wg, lane);
    if constexpr (Cfg::kSplitRows) {
        const uint32_t cols = (uint32_t)(Cfg::key_col0(c) / 64) * Cfg::kRowChunkBytes;
        bar_sync(kBarDsReady, 2 * 128);
        fence_operands(dv);
        fence_operands(dk);
        wgmma_fence();
        issue_key_grad_smem<Cfg>(dv, ds_buf + (Cfg::kOffP - Cfg::kOffDs), Cfg::do_slot(smem, pos.slot) + cols);
        wgmma_commit_group();
        issue_dq<Cfg>(r.dq, ds_buf, smem + Cfg::kOffK, c);
        wgmma_commit_group();
        issue_key_grad_smem<Cfg>(dk, ds_buf, Cfg::q_slot(smem, pos.slot) + cols);
        wgmma_commit_group();
    } else {
        fence_operands(dv);
        fence_operands(r.p);
        wgmma_fence();
        issue_key_grad<Cfg>(dv, r.p, Cfg::do_slot(smem, pos.slot));
        wgmma_commit_group();
        bar_sync(kBarDsReady, 2 * 128);
        fence_operands(dk);
        fence_operands(r.ds);
        wgmma_fence();
        issue_dq<Cfg>(r.dq, ds_buf, smem + Cfg::kOffK, c);
        wgmma_commit_group();
        issue_key_grad<Cfg>(dk, r.ds, Cfg::q_slot(smem, pos.slot));
        wgmma_commit_group();
    }
}

// A step's end: its dV and dQ retired, the dQ half staged while dK runs, then dK retired and
// the slot freed -- by every consumer thread, after its own reads of the slot's lse and delta,
// which the row-stats warp refills with plain stores (freed by lane 0 alone, after a
// __syncwarp, racecheck reported the refill racing with those reads). At head_dim 256 the
// half goes into the slot itself: its first two chunks into the consumer's dO columns while
// dK runs, the other two into its Q columns once dK has retired (Cfg::dq_staging); the dQ
// warp's arrival completes the slot's release. Those columns are the B operand of all four
// warps' dV (dK) GEMM, and a warp's wait_group speaks for its own groups only: the warpgroup
// meets before each half is written over them.
template <class Cfg>
__device__ __forceinline__ void finish_step(uint32_t smem, int c, const RingPos &pos, float (&dk)[Cfg::kKeyCols / 2],
                                            float (&dv)[Cfg::kKeyCols / 2], StepRegs<Cfg> &r, int warp_in_wg,
                                            int lane) {
    wgmma_wait_group<1>();  // dV and dQ done; dK may still run
    fence_operands(dv);
    fence_operands(r.p);
    fence_operands(r.dq);
    if constexpr (Cfg::kSplitRows) {
        bar_sync(kBarWgReads + c, 128);
        stage_dq<Cfg, 0, 2>(smem, c, pos.slot, r.dq, warp_in_wg, lane);
        wgmma_wait_group<0>();
        fence_operands(dk);
        fence_operands(r.ds);
        bar_sync(kBarWgReads + c, 128);
        stage_dq<Cfg, 2, 2>(smem, c, pos.slot, r.dq, warp_in_wg, lane);
        fence_proxy_async_shared_cta();
        bar_arrive(Cfg::dq_full_bar(c, pos.slot), kDqBarThreads);
    } else {
        hand_over_dq<Cfg>(smem, c, pos.slot, r.dq, warp_in_wg, lane);
        wgmma_wait_group<0>();
        fence_operands(dk);
        fence_operands(r.ds);
    }
    const uint32_t bars = smem + Cfg::kOffBar;
    mbarrier_arrive(bars + 8 * (Cfg::kBarQEmpty + pos.slot));
    mbarrier_arrive(bars + 8 * (Cfg::kBarDoEmpty + pos.slot));
}

// The walk of consumer c. Each step's GEMMs retire inside it (wgmma groups in flight across
// the loop's back edge made ptxas serialise them, C7515/C7517). Inside a step: dV, then the
// meeting, dQ, and dK issued behind it, so the dQ half is staged while dK runs.
template <class Cfg>
__device__ __forceinline__ void bwd_consumer(const BwdParams &prm, uint32_t smem, const BwdWalk &w, int c,
                                             int warp_in_wg, int lane) {
    const uint32_t k_rows = smem + Cfg::kOffK + c * Cfg::kWgKeyBytes;
    const uint32_t v_rows = smem + Cfg::kOffV + c * Cfg::kWgKeyBytes;
    const int key_lo = w.key0 + Cfg::key_offset(c) + 16 * warp_in_wg + (lane >> 2);  // this thread's first key

    float dk[Cfg::kKeyCols / 2], dv[Cfg::kKeyCols / 2];
#pragma unroll
    for (int i = 0; i < Cfg::kKeyCols / 2; ++i) dk[i] = dv[i] = 0.f;
    mbarrier_wait(smem + Cfg::kOffBar + 8 * Cfg::kBarKV, 0);
    RingPos pos{0, 0u};
#pragma unroll 1
    for (int it = 0; it < w.steps; ++it) {
        StepRegs<Cfg> r;
        issue_scores<Cfg>(smem, pos, c, k_rows, v_rows, r.st, r.dpt);
        step_gemms<Cfg>(prm, smem, w, c, it, pos, key_lo, dk, dv, r, warp_in_wg, lane);
        finish_step<Cfg>(smem, c, pos, dk, dv, r, warp_in_wg, lane);
        pos.advance(Cfg::kStages);
    }
    store_key_rows<Cfg>(prm.dk, prm.dk_batch_stride, prm.dk_row_stride, prm.dk_head_stride, prm, w, c, dk,
                        prm.softmax_scale, warp_in_wg, lane);
    store_key_rows<Cfg>(prm.dv, prm.dv_batch_stride, prm.dv_row_stride, prm.dv_head_stride, prm, w, c, dv, 1.f,
                        warp_in_wg, lane);
}

template <class Cfg>
__global__ void __launch_bounds__(FA_THREADS_PER_BLOCK, 1) bwd_kernel(const __grid_constant__ BwdParams prm) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ uint8_t smem_raw[];
    const uint32_t smem = swizzle_aligned_smem(smem_raw);
    const uint32_t bars = smem + Cfg::kOffBar;
    const int warp = threadIdx.x / FA_WARP_SIZE;
    const int lane = threadIdx.x % FA_WARP_SIZE;
    const int warpgroup = warp / FA_WARPS_PER_WARPGROUP;
    const BwdWalk w = make_walk<Cfg>(prm);
    if (w.key0 >= w.e.len_k) return;  // a key block past a shorter entry's keys: nothing to do

    if (threadIdx.x == 0) {
        mbarrier_init(bars + 8 * Cfg::kBarKV, 1);
#pragma unroll
        for (int st = 0; st < Cfg::kStages; ++st) {
            mbarrier_init(bars + 8 * (Cfg::kBarQFull + st), Cfg::kFullArrivals);
            mbarrier_init(bars + 8 * (Cfg::kBarQEmpty + st), Cfg::kEmptyArrivals);
            mbarrier_init(bars + 8 * (Cfg::kBarDoFull + st), Cfg::kFullArrivals);
            mbarrier_init(bars + 8 * (Cfg::kBarDoEmpty + st), Cfg::kEmptyArrivals);
        }
        fence_mbarrier_init();
    }
    __syncthreads();

    if (warpgroup == 0) {
        setmaxnreg_dec<Cfg::kProducerRegs>();
        if (warp == 0 && lane == 0) bwd_producer<Cfg>(prm, smem, w);
        if (warp == 1) bwd_row_stats<Cfg>(prm, smem, w, lane);
        if (warp == 2) bwd_dq_writer<Cfg>(prm, smem, w, lane);
        return;
    }
    setmaxnreg_inc<Cfg::kConsumerRegs>();
    bwd_consumer<Cfg>(prm, smem, w, warpgroup - 1, warp % FA_WARPS_PER_WARPGROUP, lane);
#endif
}

}  // namespace fa_sm90

#endif /* FA_SM90_BWD_KERNEL_CUH */
