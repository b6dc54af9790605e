/*
 * bwd_sm90.cu -- FlashAttention backward main kernel for Hopper (sm_90a): TMA + wgmma, 384
 * threads = one producer and two consumer warpgroups. The preprocess (delta, zeroed
 * dq_accum) and the dq conversion are bwd_sm80_aux.cu's; kernels.h has the contract of the
 * three launches.
 *
 *   grid = (ceil(seqlen_k / 128), heads_kv, batch), block = 384, dynamic smem from
 *   sm90_bwd_tiles.h. CTA (n, hk, b) owns keys [128 n, 128 n + 128) of kv head hk, 64 per
 *   consumer warpgroup, and walks every q head of its group and every query block that sees
 *   its keys (fa_block_range_cols); masks, score hook and lengths come from csrc/common/.
 *   Instantiated for head_dim_padded 64 (128-row query blocks) and 128 (64-row blocks) x
 *   {fp16, bf16}; mask kind, softcap and determinism are runtime, as in the sm80 backward.
 *   Uniform and packed (cu_seqlens) batches: fa_sm90_bwd_unsupported (sm90_bwd_tiles.h)
 *   names what runs on the sm80 family's backward instead. Packed boxes read past their
 *   entry's rows and keys into the next entry's (finite: P = 0 there, as in the forward);
 *   dK and dV are stored row by row below len_k, and a query block that crosses its entry's
 *   end adds its dQ rows below len_q without TMA. Deterministic, the dQ warp adds each query
 *   block's dQ in key-block order (dq_turns.cuh).
 *
 * Design (FlashAttention-3's Hopper backward, in its plainest form): K and V stay in shared
 * memory and dK, dV in fp32 registers for the CTA's life; Q and dO stream through a two-slot
 * ring by TMA, with the rows' lse and delta beside them. Each consumer warpgroup computes its
 * keys' S^T and dP^T with wgmma (keys as the M dimension, so P^T and dS^T come out in the
 * A-fragment layout of dV += P^T dO and dK += dS^T Q), writes dS^T to shared memory, and
 * after a meeting of both warpgroups computes its half of dQ = dS K from it, staged in shared
 * memory for a third warp of the producer warpgroup, whose TMA reductions add it into
 * dq_accum. sm90_bwd_kernel.cuh has the step in detail.
 *
 * Build (as the project does):
 *   nvcc -c -O3 -std=c++17 --use_fast_math -Xptxas -v -lineinfo -Xcompiler -fPIC \
 *        -gencode arch=compute_90a,code=sm_90a -DFA_WITH_SM90 -I csrc csrc/kernels/bwd_sm90.cu
 */
#include <cuda_runtime.h>

#include <cstring>

#include "kernels.h"
#include "sm90_bwd_kernel.cuh"
#include "sm90_bwd_tiles.h"
#include "sm90_fwd_launch.cuh"  // built_for_sm90
#include "sm90_tensor_map.h"

namespace fa_sm90 {

// Calls f(BwdConfig<...>{}) for the instance that serves p; false when there is none.
template <class F>
bool dispatch_bwd(const fa_params *p, const fa_grad_params *g, F &&f) {
    fa_tile t;
    if (fa_sm90_bwd_tile(p, g, &t) != 0) return false;
    const bool bf16 = p->dtype == FA_BFLOAT16;
    if (t.head_dim_padded == 64) {
        if (bf16) f(BwdConfig<64, true>{});
        else f(BwdConfig<64, false>{});
    } else {
        if (bf16) f(BwdConfig<128, true>{});
        else f(BwdConfig<128, false>{});
    }
    return true;
}

template <class Cfg>
bool make_bwd_params(const fa_params *p, const fa_grad_params *g, const fa_bwd_workspace *ws,
                     fa_sm90_host::EncodeTiledFn encode, BwdParams *prm) {
    using fa_sm90_host::encode_map;
    std::memset(prm, 0, sizeof(*prm));
    const CUtensorMapDataType dt = Cfg::kBf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    const MapExtent qx = q_map_extent(p), kvx = kv_map_extent(p);
    // dq_accum: the lse's layout times head_dim, fp32 (kernels.h), in boxes of 32 columns.
    auto encode_dq = [&](CUtensorMap *map, int box_rows) {
        return fa_sm90_host::encode_map_box(encode, map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, ws->dq_accum,
                                            p->head_dim, qx.rows, p->heads_q, qx.batches, p->head_dim,
                                            (int64_t)qx.rows * p->head_dim,
                                            (int64_t)p->heads_q * qx.rows * p->head_dim, 32, box_rows);
    };
    const bool ok =
        encode_map(encode, &prm->tmap_q, dt, p->q, p->head_dim, qx.rows, p->heads_q, qx.batches, p->q_row_stride,
                   p->q_head_stride, p->q_batch_stride, Cfg::kBlockM) &&
        encode_map(encode, &prm->tmap_do, dt, g->dout, p->head_dim, qx.rows, p->heads_q, qx.batches,
                   g->do_row_stride, g->do_head_stride, g->do_batch_stride, Cfg::kBlockM) &&
        encode_map(encode, &prm->tmap_k, dt, p->k, p->head_dim, kvx.rows, p->heads_kv, kvx.batches, p->k_row_stride,
                   p->k_head_stride, p->k_batch_stride, Cfg::kBlockN) &&
        encode_map(encode, &prm->tmap_v, dt, p->v, p->head_dim, kvx.rows, p->heads_kv, kvx.batches, p->v_row_stride,
                   p->v_head_stride, p->v_batch_stride, Cfg::kBlockN) &&
        encode_dq(&prm->tmap_dq, Cfg::kBlockM) && encode_dq(&prm->tmap_dq_row, 1);
    if (!ok) return false;
    prm->lse = p->lse;
    prm->delta = ws->delta;
    prm->dk = g->dk;
    prm->dv = g->dv;
    prm->dk_batch_stride = g->dk_batch_stride;
    prm->dk_row_stride = g->dk_row_stride;
    prm->dk_head_stride = g->dk_head_stride;
    prm->dv_batch_stride = g->dv_batch_stride;
    prm->dv_row_stride = g->dv_row_stride;
    prm->dv_head_stride = g->dv_head_stride;
    prm->seq = fa_seq_layout_of(p);
    prm->heads_q = p->heads_q;
    prm->heads_per_kv = p->heads_q / p->heads_kv;
    prm->head_dim = p->head_dim;
    const fa_mask mask = fa_mask_make(p->seqlen_q, p->seqlen_k, p->window_left, p->window_right, p->causal);
    prm->window_left = mask.left;
    prm->window_right = mask.right;
    prm->score = fa_score_make(p->softmax_scale, p->softcap);
    prm->softmax_scale = p->softmax_scale;
    prm->deterministic = g->deterministic ? 1 : 0;
    prm->dq_lock = ws->dq_lock;
    prm->lock_blocks = (p->seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM;
    return true;
}

}  // namespace fa_sm90

extern "C" {

const void *fa_sm90_bwd_kernel_fn(const fa_params *p, const fa_grad_params *g, const fa_tile *t) {
    (void)t;
    const void *fn = nullptr;
    if (p != nullptr && fa_sm90::built_for_sm90())
        fa_sm90::dispatch_bwd(p, g, [&](auto cfg) {
            fn = reinterpret_cast<const void *>(&fa_sm90::bwd_kernel<decltype(cfg)>);
        });
    return fn;
}

cudaError_t fa_sm90_bwd_launch(const fa_params *p, const fa_grad_params *g, const fa_bwd_workspace *ws,
                               const fa_launch *cfg, cudaStream_t stream) {
    fa_sm90_host::EncodeTiledFn encode = fa_sm90_host::encode_tiled_fn();
    if (!fa_sm90::built_for_sm90() || encode == nullptr) return cudaErrorInvalidValue;
    cudaError_t status = cudaErrorInvalidDeviceFunction;
    fa_sm90::dispatch_bwd(p, g, [&](auto cfg_tag) {
        using Cfg = decltype(cfg_tag);
        // The launch config must describe this instance (backward.c and sm90_bwd_tiles.h agree).
        // The turn counters are indexed by the kernel's own query blocks.
        if (cfg->block_n != Cfg::kBlockN || cfg->block_m != Cfg::kBlockM || cfg->head_dim_padded != Cfg::kHeadDim ||
            cfg->smem_bytes < Cfg::kSmemBytes ||
            (g->deterministic && (ws->dq_lock == nullptr || ws->block_m != Cfg::kBlockM))) {
            status = cudaErrorInvalidValue;
            return;
        }
        fa_sm90::BwdParams prm;
        if (!fa_sm90::make_bwd_params<Cfg>(p, g, ws, encode, &prm)) {
            status = cudaErrorInvalidValue;
            return;
        }
        prm.key_blocks = fa_key_block_order_of(g->deterministic, (int)cfg->grid[0]);
        const dim3 grid(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
        const dim3 block(cfg->block[0], cfg->block[1], cfg->block[2]);
        fa_sm90::bwd_kernel<Cfg><<<grid, block, cfg->smem_bytes, stream>>>(prm);
        status = cudaGetLastError();
    });
    return status;
}

}  // extern "C"
